//! Drives `store::mailbox` from the command line, for the integration
//! tests (Dovecot interop, open counting, SIGKILL crash test) until the
//! IMAP server exists. Not installed; `cargo build --examples` builds it.
//!
//! mailbox_tool ROOT COMMAND ARGS... (folder names use `.` as separator)
//!   defaults | create NAME | delete NAME | rename A B | subscribe NAME
//!   append NAME SPOOL [FLAG...] [@EPOCH]   -> "UID UIDVALIDITY"
//!   store NAME UID (+|-|=) [FLAG...]       -> "UID MODSEQ FLAGS"
//!   expunge NAME | copy SRC UID DST | move SRC UID DST
//!   dump                                   -> folder/msg/sub lines
//!   select NAME                            -> "N messages in MS ms"
//!   stress SEED                            -> endless APPEND/MOVE/STORE, ACK lines

use mailgate::store::mailbox::flags::{self, Flags};
use mailgate::store::mailbox::{
    FlagOp, Folder, FolderName, LockTable, Mailbox, NewMessage, Separator,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

fn flag_words(snap_kw: &[&str], f: Flags) -> String {
    let mut v: Vec<String> = f.system_names().iter().map(|s| s.to_string()).collect();
    v.extend(snap_kw.iter().map(|s| s.to_string()));
    v.join(",")
}

fn split_flags(words: &[String]) -> (u8, Vec<String>, Option<u64>) {
    let (mut sys, mut kw, mut date) = (0u8, Vec::new(), None);
    for w in words {
        if let Some(d) = w.strip_prefix('@') {
            date = d.parse().ok();
        } else if let Some(b) = flags::system_flag(w) {
            sys |= b;
        } else {
            kw.push(w.clone());
        }
    }
    (sys, kw, date)
}

fn folder(mb: &Mailbox, name: &str) -> Folder {
    mb.folder(&mb.parse(name).unwrap_or_else(|e| die(&e.to_string())))
}

fn die(msg: &str) -> ! {
    eprintln!("mailbox_tool: {msg}");
    std::process::exit(2)
}

fn ok<T>(r: std::io::Result<T>) -> T {
    r.unwrap_or_else(|e| die(&e.to_string()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(root), Some(cmd)) = (args.first(), args.get(1)) else {
        die("usage: mailbox_tool ROOT COMMAND ARGS...")
    };
    let root = PathBuf::from(root);
    let mb = Mailbox::new(&root, Separator::Dot, &LockTable::shared());
    let rest = args.get(2..).unwrap_or(&[]).to_vec();
    let arg = |i: usize| {
        rest.get(i)
            .cloned()
            .unwrap_or_else(|| die("missing argument"))
    };
    match cmd.as_str() {
        "defaults" => {
            ok(mb.ensure_defaults());
        }
        "create" => {
            ok(mb.create(&arg(0)));
        }
        "delete" => ok(mb.delete(&arg(0))),
        "rename" => {
            ok(mb.rename(&arg(0), &arg(1)));
        }
        "subscribe" => {
            ok(mb.subscribe(&arg(0), true));
        }
        "append" => {
            let f = folder(&mb, &arg(0));
            let (sys, kw, date) = split_flags(rest.get(2..).unwrap_or(&[]));
            let kws: Vec<&str> = kw.iter().map(String::as_str).collect();
            let spool = PathBuf::from(arg(1));
            let (uids, snap) = ok(f.append(&[NewMessage {
                spool: &spool,
                system: sys,
                keywords: &kws,
                internal_date: date.map(|d| UNIX_EPOCH + Duration::from_secs(d)),
            }]));
            println!(
                "{} {}",
                uids.first().copied().unwrap_or(0),
                snap.uidvalidity
            );
        }
        "store" => {
            let f = folder(&mb, &arg(0));
            let uid: u32 = arg(1).parse().unwrap_or_else(|_| die("bad uid"));
            let op = match arg(2).as_str() {
                "+" => FlagOp::Add,
                "-" => FlagOp::Remove,
                _ => FlagOp::Set,
            };
            let (sys, kw, _) = split_flags(rest.get(3..).unwrap_or(&[]));
            let kws: Vec<&str> = kw.iter().map(String::as_str).collect();
            let st = ok(f.store(&[uid], op, sys, &kws, None));
            for (uid, fl, ms) in &st.changed {
                println!(
                    "{uid} {ms} {}",
                    flag_words(&st.snapshot.keyword_names(*fl), *fl)
                );
            }
        }
        "expunge" => {
            let (gone, _) = ok(folder(&mb, &arg(0)).expunge(None));
            println!("{gone:?}");
        }
        "copy" | "move" => {
            let src = folder(&mb, &arg(0));
            let uid: u32 = arg(1).parse().unwrap_or_else(|_| die("bad uid"));
            let dst = folder(&mb, &arg(2));
            let map = if cmd == "copy" {
                ok(src.copy_to(&[uid], &dst)).uids
            } else {
                ok(src.move_to(&[uid], &dst)).uids
            };
            for (a, b) in map {
                println!("{a} {b}");
            }
        }
        "dump" => dump(&mb),
        "select" => {
            let f = folder(&mb, &arg(0));
            let t = Instant::now();
            let (snap, _) = ok(f.select(None));
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            println!("{} messages in {ms:.1} ms", snap.messages.len());
        }
        "stress" => stress(&mb, &root, arg(0).parse().unwrap_or(1)),
        other => die(&format!("unknown command {other}")),
    }
}

fn dump(mb: &Mailbox) {
    for l in ok(mb.list()) {
        let f = mb.folder(&l.name);
        let snap = ok(f.sync());
        println!(
            "folder {} {} {} {}",
            l.name.imap(Separator::Dot),
            snap.uidvalidity,
            snap.uid_next,
            snap.highest_modseq
        );
        for m in &snap.messages {
            println!(
                "msg {} {} {} {} {}",
                l.name.imap(Separator::Dot),
                m.uid,
                m.base(),
                m.modseq,
                flag_words(&snap.keyword_names(m.flags), m.flags)
            );
        }
    }
    for s in ok(mb.subscriptions()) {
        println!("sub {}", s.imap(Separator::Dot));
    }
}

/// Endless load: APPEND to INBOX, then MOVE to Archive or STORE flags,
/// printing an ACK line (flushed) only after each operation returned Ok.
fn stress(mb: &Mailbox, root: &Path, seed: u64) {
    ok(mb.ensure_defaults());
    let inbox = mb.folder(&FolderName::Inbox);
    let archive = folder(mb, "Archive");
    let spool = root.join(format!("stress-spool-{}", std::process::id()));
    let mut out = std::io::stdout();
    let mut x = seed.max(1);
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for n in 0u64.. {
        let body = format!(
            "Subject: stress {seed}-{n}\r\n\r\n{}\r\n",
            "x".repeat((rnd() % 4000) as usize)
        );
        ok(std::fs::write(&spool, body));
        let (uids, snap) = ok(inbox.append(&[NewMessage {
            spool: &spool,
            system: 0,
            keywords: &[],
            internal_date: None,
        }]));
        let uid = uids.first().copied().unwrap_or(0);
        let base = snap
            .find(uid)
            .map(|m| m.base().to_string())
            .unwrap_or_default();
        let _ = writeln!(out, "ACK append {base} INBOX {uid}");
        let _ = out.flush();
        match rnd() % 3 {
            0 => {
                let m = ok(inbox.move_to(&[uid], &archive));
                if let Some((_, new_uid)) = m.uids.first() {
                    let _ = writeln!(out, "ACK move {base} Archive {new_uid}");
                }
            }
            1 => {
                let st = ok(inbox.store(
                    &[uid],
                    FlagOp::Add,
                    flags::SEEN | flags::FLAGGED,
                    &["$Stress"],
                    None,
                ));
                if !st.changed.is_empty() {
                    let _ = writeln!(out, "ACK store {base} INBOX {uid} \\Flagged,\\Seen,$Stress");
                }
            }
            _ => {}
        }
        let _ = out.flush();
    }
}
