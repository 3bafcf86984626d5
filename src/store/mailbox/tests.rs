//! Tests of the store as a whole: folders, operations, crash leftovers,
//! POP3 sharing, scale.

use super::dotlock::test_table;
use super::flags::{self, Flags, DELETED, FLAGGED, SEEN};
use super::folder::{FlagOp, Folder, NewMessage};
use super::names::{FolderName, Separator};
use super::tree::Mailbox;
use super::uidlist::{self, Parsed, Uidlist};
use crate::store::durable::tests::TempDir;
use crate::store::maildrop;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn spool(t: &TempDir, n: usize, body: &str) -> PathBuf {
    let p = t.path().join(format!("spool-{n}"));
    fs::write(&p, format!("Subject: m{n}\r\n\r\n{body}\r\n")).unwrap();
    p
}

fn inbox(root: &Path) -> Folder {
    let f = Folder::new(root, FolderName::Inbox, &test_table());
    f.create_dirs().unwrap();
    f
}

fn read_uidlist(dir: &Path) -> Uidlist {
    match Uidlist::read(dir).unwrap().unwrap() {
        Parsed::Ok { list, damaged } => {
            assert!(!damaged);
            list
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn append_store_expunge_round_trip() {
    let t = TempDir::new("folder");
    let root = t.path().join("mail");
    let f = inbox(&root);
    let s1 = spool(&t, 1, "one");
    let s2 = spool(&t, 2, "two");
    let date = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let (uids, snap) = f
        .append(&[
            NewMessage {
                spool: &s1,
                system: 0,
                keywords: &[],
                internal_date: Some(date),
            },
            NewMessage {
                spool: &s2,
                system: SEEN,
                keywords: &["$Work"],
                internal_date: None,
            },
        ])
        .unwrap();
    assert_eq!(uids, [1, 2]);
    assert_eq!(snap.uid_next, 3);
    let m1 = snap.find(1).unwrap();
    let m2 = snap.find(2).unwrap();
    // Stored with LF; W is the CRLF size.
    assert_eq!(
        fs::read(
            f.open(m1)
                .unwrap()
                .metadata()
                .map(|_| f.resolve(m1).unwrap())
                .unwrap()
        )
        .unwrap(),
        b"Subject: m1\n\none\n"
    );
    assert_eq!((m1.size, m1.vsize), (Some(17), Some(20)));
    assert_eq!(f.rfc822_size(m1).unwrap(), 20);
    assert_eq!(f.internal_date(m1).unwrap(), date);
    assert!(m1.name.contains(",S=17,W=20") && !m1.name.contains(':'));
    assert!(
        f.dir().join("new").join(&*m1.name).exists(),
        "no flags: new/"
    );
    assert!(m2.name.ends_with(":2,Sa"), "{}", m2.name);
    assert_eq!(snap.keyword_names(m2.flags), ["$Work"]);
    assert_eq!(
        fs::read_to_string(f.dir().join("dovecot-keywords")).unwrap(),
        "0 $Work\n"
    );
    let list = read_uidlist(f.dir());
    assert_eq!(
        list.records.iter().map(|r| r.uid).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(list.records[0].base, flags::base(&m1.name));
    assert!(m2.modseq > m1.modseq);

    // STORE: new/ -> cur/ with flags; modseq grows; UNCHANGEDSINCE.
    let st = f
        .store(&[1], FlagOp::Add, FLAGGED | DELETED, &[], None)
        .unwrap();
    assert_eq!(st.changed.len(), 1);
    let m1b = st.snapshot.find(1).unwrap();
    assert!(m1b.name.ends_with(":2,FT") && f.dir().join("cur").join(&*m1b.name).exists());
    assert!(m1b.modseq > m2.modseq);
    assert_eq!(st.snapshot.highest_modseq, m1b.modseq);
    let st2 = f
        .store(
            &[1, 2],
            FlagOp::Remove,
            FLAGGED,
            &["$work"],
            Some(m2.modseq),
        )
        .unwrap();
    assert_eq!(st2.modified, [1]);
    assert_eq!(
        st2.snapshot.find(2).unwrap().flags,
        Flags {
            system: SEEN,
            keywords: 0
        }
    );
    // A fresh sync sees the same.
    let again = f.sync().unwrap();
    assert_eq!(again.messages, st2.snapshot.messages);
    assert_eq!(again.diff(&snap).flags, [1, 2]);

    // EXPUNGE only \Deleted; UID EXPUNGE restricted to a set.
    let (gone, after) = f.expunge(Some(&[2])).unwrap();
    assert!(gone.is_empty());
    let (gone, after2) = f.expunge(None).unwrap();
    assert_eq!(gone, [1]);
    assert_eq!(after2.messages.len(), 1);
    assert_eq!(after2.diff(&after).expunged, [1]);
    assert_eq!(read_uidlist(f.dir()).records.len(), 1);
    assert_eq!(
        f.vanished_since(after2.uidvalidity, m2.modseq).unwrap(),
        Some(vec![1])
    );
    assert_eq!(
        f.vanished_since(after2.uidvalidity, 0).unwrap(),
        None,
        "older than the records"
    );
    assert_eq!(fs::read_dir(f.dir().join("tmp")).unwrap().count(), 0);
}

#[test]
fn outside_changes_are_numbered_and_get_modseqs() {
    let t = TempDir::new("folder-outside");
    let f = inbox(&t.path().join("m"));
    let s = f.sync().unwrap();
    assert!(s.messages.is_empty() && s.uid_next == 1);
    // SMTP delivers two (out of order on disk names), someone else marks one seen.
    fs::write(f.dir().join("new/1700000002.M5P1Q1.h,S=3,W=4"), "b\n\n").unwrap();
    fs::write(f.dir().join("new/1700000001.M9P1Q2.h,S=3,W=4"), "a\n\n").unwrap();
    assert!(f.changed_since(&s));
    settle(f.dir());
    let s2 = f.sync_from(&s).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&f.sync_from(&s2).unwrap(), &s2),
        "unchanged: same snapshot"
    );
    let names: Vec<&str> = s2.messages.iter().map(|m| m.base()).collect();
    assert_eq!(
        names,
        ["1700000001.M9P1Q2.h,S=3,W=4", "1700000002.M5P1Q1.h,S=3,W=4"]
    );
    assert!(!f.changed_since(&s2));
    fs::rename(
        f.dir().join("new/1700000002.M5P1Q1.h,S=3,W=4"),
        f.dir().join("cur/1700000002.M5P1Q1.h,S=3,W=4:2,S"),
    )
    .unwrap();
    let s3 = f.sync().unwrap();
    let d = s3.diff(&s2);
    assert_eq!(d.flags, [2]);
    assert!(s3.find(2).unwrap().modseq > s2.highest_modseq);
    // A POP3 DELE.
    fs::remove_file(f.dir().join("new/1700000001.M9P1Q2.h,S=3,W=4")).unwrap();
    let s4 = f.sync().unwrap();
    assert_eq!(s4.diff(&s3).expunged, [1]);
    assert_eq!(
        f.vanished_since(s4.uidvalidity, s3.highest_modseq).unwrap(),
        Some(vec![1])
    );
}

/// Dates `new/` and `cur/` back past the settle time, as if the last
/// change to the folder were a minute old.
fn settle(dir: &Path) {
    let then = SystemTime::now() - Duration::from_secs(60);
    for sub in ["new", "cur"] {
        let d = fs::File::open(dir.join(sub)).unwrap();
        d.set_times(fs::FileTimes::new().set_modified(then))
            .unwrap();
    }
}

#[test]
fn a_delivery_in_the_same_clock_tick_as_a_sync_is_not_missed() {
    let t = TempDir::new("folder-tick");
    let f = inbox(&t.path().join("m"));
    fs::write(f.dir().join("new/1700000001.M1P1Q1.h,S=3,W=4"), "a\n\n").unwrap();
    let s = f.sync().unwrap();
    assert_eq!(s.messages.len(), 1);
    // A second delivery whose mtime lands on the same tick (a coarse
    // clock, FAT's 2 s): the stamps alone cannot tell it happened.
    let new = f.dir().join("new");
    let tick = fs::metadata(&new).unwrap().modified().unwrap();
    fs::write(new.join("1700000002.M2P1Q1.h,S=3,W=4"), "b\n\n").unwrap();
    let d = fs::File::open(&new).unwrap();
    d.set_times(fs::FileTimes::new().set_modified(tick))
        .unwrap();
    assert!(f.changed_since(&s), "a fresh stamp does not vouch");
    let s2 = f.sync_from(&s).unwrap();
    assert_eq!(s2.messages.len(), 2, "IDLE and NOOP see the second one");
    // Once the folder has been quiet past the settle time, the stamps
    // vouch again and a poll is three stats.
    settle(f.dir());
    let s3 = f.sync().unwrap();
    assert!(!f.changed_since(&s3));
    assert!(std::sync::Arc::ptr_eq(&f.sync_from(&s3).unwrap(), &s3));
}

#[test]
fn sessions_share_the_snapshot_whose_stamp_can_vouch() {
    use std::sync::Arc;
    let t = TempDir::new("folder-share");
    let f = inbox(&t.path().join("m"));
    fs::write(f.dir().join("new/1700000001.M1P1Q1.h,S=3,W=4"), "a\n\n").unwrap();
    let mut shared = super::SharedSnapshots::default();
    // Just after the delivery: equal contents, but only the second can vouch.
    let early = shared.share(f.dir(), f.sync().unwrap());
    assert!(f.changed_since(&early));
    settle(f.dir());
    let late = f.sync().unwrap();
    let got = shared.share(f.dir(), Arc::clone(&late));
    assert!(
        Arc::ptr_eq(&got, &late),
        "not the early one, which rescans on every poll"
    );
    assert!(!f.changed_since(&got));
    let again = shared.share(f.dir(), f.sync().unwrap());
    assert!(Arc::ptr_eq(&again, &late), "an equal one is shared");
    assert_eq!(again.messages.len(), 1);
    drop(early);
}

#[test]
fn select_starts_from_a_known_snapshot_only_when_it_vouches() {
    use std::sync::Arc;
    let t = TempDir::new("folder-known");
    let f = inbox(&t.path().join("m"));
    fs::write(f.dir().join("new/1700000001.M1P1Q1.h,S=3,W=4"), "a\n\n").unwrap();
    let (s1, first) = f.select(None).unwrap();
    assert_eq!((first, s1.uid_next), (1, 2), "the first session claims it");
    let (again, first) = f.select(Some(&s1)).unwrap();
    assert!(!Arc::ptr_eq(&again, &s1), "just changed: no vouching");
    assert_eq!(first, 2);
    settle(f.dir());
    let (s2, _) = f.select(None).unwrap();
    let (s3, first) = f.select(Some(&s2)).unwrap();
    assert!(Arc::ptr_eq(&s3, &s2), "quiet folder: no scan");
    assert_eq!(first, s2.uid_next, "nothing is \\Recent for this one");
    // A delivery since: the known one is stale, the new message is claimed.
    fs::write(f.dir().join("new/1700000002.M2P1Q1.h,S=3,W=4"), "b\n\n").unwrap();
    let (s4, first) = f.select(Some(&s2)).unwrap();
    assert_eq!((s4.messages.len(), first), (2, 2));
    // A snapshot that saw a message no session claimed yet is not used:
    // its SELECT must claim it.
    fs::write(f.dir().join("new/1700000003.M3P1Q1.h,S=3,W=4"), "c\n\n").unwrap();
    settle(f.dir());
    let seen = f.sync().unwrap();
    assert!(!f.changed_since(&seen));
    let (s5, first) = f.select(Some(&seen)).unwrap();
    assert!(!Arc::ptr_eq(&s5, &seen));
    assert_eq!((s5.messages.len(), first), (3, 3));
    let (_, first) = f.select(None).unwrap();
    assert_eq!(first, 4, "claimed once");
}

#[test]
fn pop3_uidls_survive_imap_flag_renames() {
    let t = TempDir::new("folder-pop3");
    let f = inbox(&t.path().join("m"));
    let sp = spool(&t, 1, "x");
    f.append(&[NewMessage {
        spool: &sp,
        system: 0,
        keywords: &[],
        internal_date: None,
    }])
    .unwrap();
    let before = maildrop::scan(f.dir()).unwrap();
    f.store(&[1], FlagOp::Add, SEEN | FLAGGED, &["$Label1"], None)
        .unwrap();
    let after = maildrop::scan(f.dir()).unwrap();
    assert_eq!(before[0].uidl, after[0].uidl);
    assert_eq!(before[0].size, after[0].size);
    assert!(after[0].path.starts_with("cur"));
    // POP3's commit (retrieve-move of a file IMAP already moved) is fine,
    // and its DELE of the renamed file is seen by IMAP as an expunge.
    maildrop::commit(f.dir(), &[&before[0]], &[]).unwrap();
    let s = f.sync().unwrap();
    assert!(s.messages.is_empty());
}

#[test]
fn copy_and_move_remap_keywords_and_keep_one_copy() {
    let t = TempDir::new("folder-copy");
    let root = t.path().join("m");
    let mb = Mailbox::new(&root, Separator::Slash, &test_table());
    let src = inbox(&root);
    mb.create("Archive/2024").unwrap();
    let dst = mb.folder(&mb.parse("Archive/2024").unwrap());
    // Give dst another keyword first so indexes differ.
    let s0 = spool(&t, 0, "zero");
    dst.append(&[NewMessage {
        spool: &s0,
        system: 0,
        keywords: &["Other"],
        internal_date: None,
    }])
    .unwrap();
    let sp: Vec<PathBuf> = (1..=3).map(|i| spool(&t, i, "m")).collect();
    let msgs: Vec<NewMessage> = sp
        .iter()
        .map(|p| NewMessage {
            spool: p,
            system: SEEN,
            keywords: &["Work"],
            internal_date: None,
        })
        .collect();
    src.append(&msgs).unwrap();
    let c = src.copy_to(&[1, 3], &dst).unwrap();
    let (map, dsnap) = (c.uids, c.target);
    assert_eq!(map, [(1, 2), (3, 3)]);
    let copied = dsnap.find(2).unwrap();
    assert_eq!(dsnap.keyword_names(copied.flags), ["Work"]);
    assert_eq!(
        copied.flags.keywords, 0b10,
        "Work is letter b in the target"
    );
    assert_eq!(src.sync().unwrap().messages.len(), 3);
    let m = src.move_to(&[2, 3], &dst).unwrap();
    let (map, ssnap, dsnap) = (m.uids, m.source, m.target);
    assert_eq!(map, [(2, 4), (3, 5)]);
    assert_eq!(
        ssnap.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(dsnap.messages.len(), 5);
    // Every file is in exactly one place; bases are unique per folder.
    let count = |dir: &Path| {
        ["new", "cur"]
            .iter()
            .map(|s| fs::read_dir(dir.join(s)).unwrap().count())
            .sum::<usize>()
    };
    assert_eq!(count(src.dir()) + count(dst.dir()), 6);
    assert_eq!(read_uidlist(src.dir()).records.len(), 1);
    assert_eq!(read_uidlist(dst.dir()).records.len(), 5);

    // MOVE into the folder itself (RFC 6851: new UIDs at the end) and
    // COPY into itself; flags and keywords go along, \Deleted or not.
    let m = dst.move_to(&[2, 4], &dst).unwrap();
    assert_eq!(m.uids, [(2, 6), (4, 7)]);
    let uids: Vec<u32> = m.source.messages.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 3, 5, 6, 7]);
    assert_eq!(
        m.source.keyword_names(m.source.find(6).unwrap().flags),
        ["Work"]
    );
    assert_eq!(
        m.source.diff(&dsnap).expunged,
        [2, 4],
        "the originals are gone, not merely \\Deleted"
    );
    assert_eq!(count(dst.dir()), 5);
    let c = dst.copy_to(&[1], &dst).unwrap();
    assert_eq!(c.uids, [(1, 8)]);
    assert_eq!(count(dst.dir()), 6);
    assert_eq!(read_uidlist(dst.dir()).records.len(), 6);
}

#[test]
fn crash_leftovers_are_repaired_without_losing_uids() {
    let t = TempDir::new("folder-crash");
    let root = t.path().join("m");
    let f = inbox(&root);
    let sp: Vec<PathBuf> = (1..=3).map(|i| spool(&t, i, "m")).collect();
    let msgs: Vec<NewMessage> = sp
        .iter()
        .map(|p| NewMessage {
            spool: p,
            system: 0,
            keywords: &[],
            internal_date: None,
        })
        .collect();
    let (_, s) = f.append(&msgs).unwrap();
    let v = s.uidvalidity;
    // Crash after the file rename, before the uidlist: a numberless file.
    fs::write(f.dir().join("new/1999999999.M1P1Q1.h,S=1,W=2"), "x").unwrap();
    // Crash during an append to the uidlist by another writer: torn line.
    let mut text = fs::read(f.dir().join(uidlist::FILE)).unwrap();
    text.extend_from_slice(b"9 :1999999999.M1P1Q1.h,S=1,W");
    fs::write(f.dir().join(uidlist::FILE), &text).unwrap();
    // A staged tmp file: left alone by syncs, removed by clean_tmp once old.
    fs::write(f.dir().join("tmp/1999999998.M1P1Q1.h"), "half").unwrap();
    assert_eq!(f.clean_tmp(super::folder::TMP_MAX_AGE).unwrap(), 0);
    assert_eq!(f.clean_tmp(Duration::ZERO).unwrap(), 1);
    let s2 = f.sync().unwrap();
    assert_eq!(s2.uidvalidity, v);
    assert_eq!(
        s2.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(!matches!(
        Uidlist::read(f.dir()).unwrap(),
        Some(Parsed::Ok { damaged: true, .. })
    ));
    // The uidlist is lost entirely: UIDVALIDITY is kept (from our modseq
    // file), old UIDs are not reused.
    fs::remove_file(f.dir().join(uidlist::FILE)).unwrap();
    let s3 = f.sync().unwrap();
    assert_eq!(s3.uidvalidity, v);
    assert!(s3.messages.iter().all(|m| m.uid > 4), "{:?}", s3.messages);
    assert_eq!(s3.messages.len(), 4);
    // Both lost: a new UIDVALIDITY, higher than the old one.
    fs::remove_file(f.dir().join(uidlist::FILE)).unwrap();
    fs::remove_file(f.dir().join(super::modseq::FILE)).unwrap();
    let s4 = f.sync().unwrap();
    assert!(s4.uidvalidity > v);
    // A garbage header with good records: same.
    let mut body = fs::read_to_string(f.dir().join(uidlist::FILE)).unwrap();
    body.replace_range(..body.find('\n').unwrap(), "3 Vjunk");
    fs::write(f.dir().join(uidlist::FILE), body).unwrap();
    let s5 = f.sync().unwrap();
    assert_eq!(s5.uidvalidity, s4.uidvalidity);
    assert_eq!(
        s5.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        s4.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        "records kept under the remembered UIDVALIDITY"
    );
}

#[test]
fn mailbox_tree_operations() {
    let t = TempDir::new("mailbox-tree");
    let root = t.path().join("m");
    let mb = Mailbox::new(&root, Separator::Dot, &test_table());
    let made = mb.ensure_defaults().unwrap();
    assert_eq!(made.len(), 5);
    assert!(root.join(".Sent/maildirfolder").exists() && root.join(".Sent/tmp").is_dir());
    assert!(!root.join("maildirfolder").exists(), "never in the root");
    assert!(mb.ensure_defaults().unwrap().is_empty());
    mb.create("Lists.Family.").unwrap();
    assert_eq!(
        mb.create("Lists.Family").unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    assert!(mb.create("../x").is_err() && mb.create("INBOX").is_err());
    let names: Vec<String> = mb
        .list()
        .unwrap()
        .iter()
        .map(|l| l.name.imap(Separator::Dot))
        .collect();
    assert_eq!(
        names,
        [
            "INBOX",
            "Archive",
            "Drafts",
            "Junk",
            "Lists.Family",
            "Sent",
            "Trash"
        ]
    );
    assert_eq!(
        mb.list()
            .unwrap()
            .iter()
            .find(|l| l.name.storage() == "Sent")
            .unwrap()
            .special_use,
        Some(super::names::SpecialUse::Sent)
    );
    // RENAME with children, UIDVALIDITY and UIDs kept.
    mb.create("Lists").unwrap();
    let lists = mb.folder(&mb.parse("Lists.Family").unwrap());
    let sp = spool(&t, 1, "fam");
    lists
        .append(&[NewMessage {
            spool: &sp,
            system: 0,
            keywords: &[],
            internal_date: None,
        }])
        .unwrap();
    let v = lists.sync().unwrap().uidvalidity;
    mb.rename("Lists", "Groups").unwrap();
    let moved = mb
        .folder(&mb.parse("Groups.Family").unwrap())
        .sync()
        .unwrap();
    assert_eq!((moved.uidvalidity, moved.messages.len()), (v, 1));
    assert!(!root.join(".Lists.Family").exists());
    // RENAME INBOX moves its messages.
    let ib = inbox(&root);
    ib.append(&[NewMessage {
        spool: &sp,
        system: SEEN,
        keywords: &[],
        internal_date: None,
    }])
    .unwrap();
    mb.rename("INBOX", "Old").unwrap();
    assert!(ib.sync().unwrap().messages.is_empty());
    assert_eq!(
        mb.folder(&mb.parse("Old").unwrap())
            .sync()
            .unwrap()
            .messages
            .len(),
        1
    );
    // DELETE; a re-created folder gets a new UIDVALIDITY.
    let old_v = mb
        .folder(&mb.parse("Old").unwrap())
        .sync()
        .unwrap()
        .uidvalidity;
    mb.delete("Old").unwrap();
    assert!(!root.join(".Old").exists() && !root.join("..DOVECOT-TRASHED").exists());
    mb.create("Old").unwrap();
    assert!(
        mb.folder(&mb.parse("Old").unwrap())
            .sync()
            .unwrap()
            .uidvalidity
            > old_v
    );
    assert!(mb.delete("INBOX").is_err() && mb.delete("Nope").is_err());
    // Subscriptions.
    mb.subscribe("Groups.Family", true).unwrap();
    let subs = mb.subscriptions().unwrap();
    assert!(
        subs.contains(&mb.parse("Groups.Family").unwrap())
            && subs.contains(&mb.parse("Sent").unwrap())
    );
}

/// SELECT of a big folder costs the uidlist and the listings, no message
/// file: every file here is empty, so a size read from anything but the
/// name would be 0.
#[test]
fn select_of_5000_messages_reads_names_only() {
    let t = TempDir::new("folder-20k");
    let f = inbox(&t.path().join("m"));
    // 20,000 in tests/test_imap_store.py (with strace); here 5,000 keeps
    // `cargo test --lib` quick on slow temp filesystems.
    let n = 5_000u32;
    for q in 0..n {
        let base = format!(
            "{}.M{}P1Q{q}.h,S={},W={}",
            1_700_000_000 + q / 10,
            q % 10,
            100 + q,
            200 + q
        );
        let path = if q % 2 == 0 {
            format!("cur/{base}:2,S")
        } else {
            format!("new/{base}")
        };
        fs::File::create(f.dir().join(path)).unwrap();
    }
    let t0 = Instant::now();
    let first = f.sync().unwrap();
    let numbering = t0.elapsed();
    assert_eq!(first.messages.len(), n as usize);
    let t1 = Instant::now();
    let (snap, _) = f.select(None).unwrap();
    let select = t1.elapsed();
    for (i, m) in snap.messages.iter().enumerate() {
        assert_eq!(m.uid, i as u32 + 1);
        assert_eq!(
            m.vsize,
            Some(200 + i as u64),
            "order and size from the name"
        );
        assert_eq!(m.flags.has(SEEN), i % 2 == 0);
    }
    assert_eq!(
        (snap.unseen(), snap.first_unseen()),
        (n as usize / 2, Some(2))
    );
    eprintln!("{n} messages: first sync (numbering) {numbering:?}, SELECT {select:?}");
    let _ = SystemTime::now();
}

/// Sizes FETCH counted from files without `,W=` are kept as the
/// uidlist's `W` field: the next SELECT has them without a file read,
/// names that carry `,W=` and records that have one are left alone.
#[test]
fn counted_sizes_are_kept_in_the_uidlist() {
    let t = TempDir::new("folder-vsize");
    let f = inbox(&t.path().join("m"));
    fs::write(f.dir().join("new/1700000000.M1P1.h,S=3"), "a\nb").unwrap();
    fs::write(f.dir().join("new/1700000001.M2P1.h,S=3,W=99"), "c\nd").unwrap();
    let (snap, _) = f.select(None).unwrap();
    let (a, b) = (&snap.messages[0], &snap.messages[1]);
    assert_eq!((a.vsize, b.vsize), (None, Some(99)));
    assert_eq!(f.rfc822_size(a).unwrap(), 4, "counted: LF becomes CRLF");
    f.remember_sizes(&[(a.uid, 4), (b.uid, 5), (77, 1)])
        .unwrap();
    let list = read_uidlist(f.dir());
    assert_eq!(list.records[0].ext_value('W'), Some("4"));
    assert_eq!(list.records[1].ext_value('W'), None, "the name has it");
    let (again, _) = f.select(None).unwrap();
    assert_eq!(
        (again.messages[0].vsize, again.messages[1].vsize),
        (Some(4), Some(99))
    );
    assert_eq!(again.uidvalidity, snap.uidvalidity);
    assert_eq!(again.messages[0].uid, a.uid);
    f.remember_sizes(&[]).unwrap();
}

/// POP3 moves `new/X` to `cur/X:2,S` without the uidlist lock: STORE,
/// MOVE and EXPUNGE after that (and a snapshot's `resolve`) find the
/// files by base name. (A rename during an operation takes the same
/// by-base-name path inside `rename_current`/`remove_current`.)
#[test]
fn operations_find_files_pop3_renamed() {
    let t = TempDir::new("folder-race");
    let root = t.path().join("m");
    let mb = Mailbox::new(&root, Separator::Dot, &test_table());
    mb.ensure_defaults().unwrap();
    let f = inbox(&root);
    let sp = spool(&t, 1, "r");
    let msgs: Vec<NewMessage> = (0..3)
        .map(|_| NewMessage {
            spool: &sp,
            system: 0,
            keywords: &[],
            internal_date: None,
        })
        .collect();
    let (_, snap) = f.append(&msgs).unwrap();
    for m in &snap.messages {
        let n = &*m.name;
        fs::rename(
            f.dir().join("new").join(n),
            f.dir().join("cur").join(format!("{n}:2,S")),
        )
        .unwrap();
    }
    // The scan inside each operation sees the renamed files; the stale
    // snapshot's names only matter to resolve().
    assert!(f
        .resolve(&snap.messages[0])
        .unwrap()
        .starts_with(f.dir().join("cur")));
    let st = f.store(&[1], FlagOp::Add, DELETED, &[], None).unwrap();
    assert_eq!(st.changed.len(), 1);
    let (gone, _) = f.expunge(None).unwrap();
    assert_eq!(gone, [1]);
    let archive = mb.folder(&mb.parse("Archive").unwrap());
    let m = f.move_to(&[2], &archive).unwrap();
    assert_eq!(m.uids.len(), 1);
    let after = f.sync().unwrap();
    assert_eq!(
        after.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [3]
    );
    assert_eq!(archive.sync().unwrap().messages.len(), 1);
}

/// A crash (a panic: none of the operation's cleanup runs) at every step
/// between durable writes of APPEND, MOVE and STORE. Afterwards every
/// message acknowledged before is in exactly one folder under its old
/// UID, the uidlists parse, and the interrupted operation's message is in
/// exactly one folder (or, for APPEND, at most once).
#[test]
fn a_crash_at_every_step_keeps_the_invariants() {
    use super::folder::CRASH_AT;
    let steps = [
        "append:staged",
        "append:renamed",
        "append:synced",
        "append:uidlist",
        "store:renamed",
        "store:cur-synced",
        "store:synced",
        "move:hidden",
        "move:renamed",
        "move:synced",
        "move:target-uidlist",
        "move:source-uidlist",
    ];
    for step in steps {
        let t = TempDir::new("crash-step");
        let root = t.path().join("m");
        let mb = Mailbox::new(&root, Separator::Dot, &test_table());
        mb.ensure_defaults().unwrap();
        let inbox = inbox(&root);
        let archive = mb.folder(&mb.parse("Archive").unwrap());
        let sp = spool(&t, 1, "acked");
        let acked: Vec<NewMessage> = (0..2)
            .map(|_| NewMessage {
                spool: &sp,
                system: SEEN,
                keywords: &[],
                internal_date: None,
            })
            .collect();
        let (_, before) = inbox.append(&acked).unwrap();
        let before_uids: Vec<(String, u32)> = before
            .messages
            .iter()
            .map(|m| (m.base().to_string(), m.uid))
            .collect();
        let sp2 = spool(&t, 2, "in flight");
        CRASH_AT.with(|c| c.set(Some(step)));
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match step.split(':').next() {
                Some("append") => {
                    let m = [NewMessage {
                        spool: &sp2,
                        system: 0,
                        keywords: &["K"],
                        internal_date: None,
                    }];
                    inbox.append(&m).map(|_| ())
                }
                Some("store") => inbox
                    .store(&[1], FlagOp::Add, FLAGGED, &["K"], None)
                    .map(|_| ()),
                _ => inbox.move_to(&[1, 2], &archive).map(|_| ()),
            }
        }));
        CRASH_AT.with(|c| c.set(None));
        assert!(crashed.is_err(), "{step} was reached");
        // Recovery: the next sync of each folder.
        let (a, b) = (inbox.sync().unwrap(), archive.sync().unwrap());
        let mut seen: std::collections::HashMap<String, (&str, u32)> = Default::default();
        for (name, snap) in [("INBOX", &a), ("Archive", &b)] {
            for m in &snap.messages {
                let prev = seen.insert(m.base().to_string(), (name, m.uid));
                assert!(prev.is_none(), "{step}: {} in two folders", m.base());
            }
            assert!(matches!(
                Uidlist::read(&root.join(if name == "INBOX" { "" } else { ".Archive" })).unwrap(),
                Some(Parsed::Ok { .. })
            ));
        }
        for (base, uid) in &before_uids {
            let (folder, now) = seen
                .get(base)
                .unwrap_or_else(|| panic!("{step}: {base} lost"));
            if *folder == "INBOX" {
                assert_eq!(now, uid, "{step}: UID of {base} changed");
            }
        }
        assert!(
            seen.len() == 2 || (step.starts_with("append") && seen.len() == 3),
            "{step}: {seen:?}"
        );
        // Nothing half-written is visible; tmp/ may hold a staged copy only.
        for m in a.messages.iter().chain(b.messages.iter()) {
            assert!(m.vsize.is_some());
        }
        // The folders keep working.
        inbox.store(&[2], FlagOp::Add, DELETED, &[], None).unwrap();
    }
}

/// What a power cut can leave of a MOVE or a STORE (the names as the
/// folders' syncs kept them) is settled by the next sync: a hidden MOVE
/// name goes when the target holds the file and comes back when it does
/// not; a `new/` twin of a `cur/` file is shown once and then removed.
#[test]
fn interrupted_move_and_store_names_are_settled() {
    let t = TempDir::new("leftovers");
    let root = t.path().join("m");
    let mb = Mailbox::new(&root, Separator::Dot, &test_table());
    mb.ensure_defaults().unwrap();
    let inbox = inbox(&root);
    let archive = mb.folder(&mb.parse("Archive").unwrap());
    let sps: Vec<PathBuf> = (0..3).map(|i| spool(&t, i, "x")).collect();
    let msgs: Vec<NewMessage> = sps
        .iter()
        .map(|sp| NewMessage {
            spool: sp,
            system: 0,
            keywords: &[],
            internal_date: None,
        })
        .collect();
    let (uids, snap) = inbox.append(&msgs).unwrap();
    let names: Vec<String> = snap.messages.iter().map(|m| m.name.to_string()).collect();
    let new = root.join("new");
    // 1: hidden and linked into the target; 2: hidden only; 3: linked
    // into cur/ with its new/ name still there.
    fs::rename(new.join(&names[0]), new.join(format!(".mv.{}", names[0]))).unwrap();
    fs::hard_link(
        new.join(format!(".mv.{}", names[0])),
        root.join(".Archive/new").join(&names[0]),
    )
    .unwrap();
    fs::rename(new.join(&names[1]), new.join(format!(".mv.{}", names[1]))).unwrap();
    fs::hard_link(
        new.join(&names[2]),
        root.join("cur").join(format!("{}:2,S", names[2])),
    )
    .unwrap();

    let a = inbox.sync().unwrap();
    let b = archive.sync().unwrap();
    let in_inbox: Vec<(u32, &str)> = a.messages.iter().map(|m| (m.uid, m.base())).collect();
    assert_eq!(
        in_inbox,
        vec![(uids[1], names[1].as_str()), (uids[2], names[2].as_str())]
    );
    assert_eq!(b.messages.len(), 1);
    assert_eq!(b.messages[0].base(), names[0]);
    assert!(a.messages[1].flags.has(SEEN), "the cur/ name wins");
    let left: Vec<String> = fs::read_dir(&new)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![names[1].clone()],
        "hidden names and twins settled"
    );
    // An expunge now removes the message for good (no twin comes back).
    inbox
        .store(&[uids[2]], FlagOp::Add, DELETED, &[], None)
        .unwrap();
    inbox.expunge(None).unwrap();
    assert_eq!(inbox.sync().unwrap().messages.len(), 1);
}
