//! The POP3 maildrop: a POP3 view (RFC 1939) of one Maildir.
//!
//! Owns: listing the messages of `new/` and `cur/` in delivery order with
//! their sizes as POP3 reports them (CRLF line ends) and their unique-ids
//! (UIDL, RFC 1939 7); and the UPDATE state's changes: removing deleted
//! messages and moving retrieved ones from `new/` to `cur/NAME:2,S`, as
//! Dovecot does, so that other Maildir readers see them as seen.
//!
//! Must not: write messages (delivery is `store`'s durable-write helper),
//! take locks (the driver holds the mailbox lock), or open message files
//! whose size is written in their name: a scan of a big maildrop on a slow
//! USB stick must cost one directory read, not one open per message.
//! Called from the worker pool, never from the event loop thread.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Longest unique-id (RFC 1939 7: "1 to 70 characters").
const MAX_UIDL_LEN: usize = 70;
/// Characters allowed in a unique-id (RFC 1939 7: 0x21 to 0x7E).
const UIDL_CHARS: std::ops::RangeInclusive<u8> = 0x21..=0x7E;
/// Separates the unique name from the Maildir info (`:2,FLAGS`).
const INFO_SEPARATOR: u8 = b':';
/// The info a retrieved message gets in `cur/`: version 2, flag Seen.
const SEEN_INFO: &str = ":2,S";
/// Read size when a file's size must be computed from its content.
const READ_CHUNK: usize = 64 * 1024;
/// Maildir subfolders a POP3 maildrop shows (`tmp/` is work in progress).
const NEW: &str = "new";
const CUR: &str = "cur";

pub use crate::proto::pop3_server::MessageInfo;

/// Lists the messages of the Maildir `dir` in delivery order. A missing
/// `new/` or `cur/` counts as empty (no mail delivered yet).
pub fn scan(dir: &Path) -> io::Result<Vec<MessageInfo>> {
    let mut found: Vec<(OrderKey, MessageInfo)> = Vec::new();
    for sub in [NEW, CUR] {
        let entries = match fs::read_dir(dir.join(sub)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.as_bytes().first() == Some(&b'.') {
                continue;
            }
            // From readdir's d_type: no open, and at most an lstat.
            match entry.file_type() {
                Ok(t) if t.is_file() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            let base = base_name(&name);
            let size = match size_from_name(base) {
                Some(size) => size,
                None => match crlf_size_of_file(&entry.path()) {
                    Ok(size) => size,
                    // Removed since readdir (another reader, an admin).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                },
            };
            let info = MessageInfo {
                path: Path::new(sub).join(&name),
                size,
                uidl: uidl_for(base),
            };
            found.push((OrderKey::of(base), info));
        }
    }
    // A power cut between the two folder syncs of a move to `cur/` (see
    // `commit`) can leave the message as `new/NAME` and `cur/NAME:2,...`,
    // two names of one file: shown once, as the `cur/` one. Two different
    // files with one unique name (a copy) stay two messages.
    let in_cur: HashMap<Vec<u8>, PathBuf> = found
        .iter()
        .filter_map(|(_, info)| {
            let (sub, name) = checked_parts(&info.path).ok()?;
            (sub == CUR).then(|| (base_name(name).as_bytes().to_vec(), info.path.clone()))
        })
        .collect();
    if !in_cur.is_empty() {
        found.retain(|(_, info)| match checked_parts(&info.path) {
            Ok((NEW, name)) => match in_cur.get(base_name(name).as_bytes()) {
                Some(cur) => !same_file(&dir.join(&info.path), &dir.join(cur)),
                None => true,
            },
            _ => true,
        });
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut listing: Vec<MessageInfo> = found.into_iter().map(|(_, info)| info).collect();
    make_uidls_unique(&mut listing);
    Ok(listing)
}

/// Applies the UPDATE state (RFC 1939 6): removes `deleted`, and moves
/// `retrieved` messages still in `new/` to `cur/NAME:2,S`. Files already
/// gone are fine (another Maildir reader or an admin got there first); a
/// message another reader moved to `cur/` is found there by its unique name.
/// Every change is attempted; the first error is returned after the touched
/// folders are fsynced.
pub fn commit(dir: &Path, deleted: &[&MessageInfo], retrieved: &[&MessageInfo]) -> io::Result<()> {
    let mut first_error: Option<io::Error> = None;
    let mut touched_new = false;
    let mut touched_cur = false;
    let mut cur_index: Option<HashMap<Vec<u8>, OsString>> = None;

    for message in deleted {
        let result = checked_parts(&message.path).and_then(|(sub, name)| {
            // The `new/` twin of an interrupted move (see `scan`) goes too.
            let twin = dir.join(NEW).join(base_name(name));
            if sub == CUR && same_file(&twin, &dir.join(sub).join(name)) {
                ignore_not_found(fs::remove_file(&twin))?;
                touched_new = true;
            }
            match fs::remove_file(dir.join(sub).join(name)) {
                Ok(()) => {
                    mark(sub, &mut touched_new, &mut touched_cur);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Moved to cur/ (or its flags changed) by another reader?
                    let index = cur_index.get_or_insert_with(|| index_cur(dir));
                    match index.get(base_name(name).as_bytes()) {
                        Some(current) => {
                            ignore_not_found(fs::remove_file(dir.join(CUR).join(current)))?;
                            touched_cur = true;
                            Ok(())
                        }
                        None => Ok(()),
                    }
                }
                Err(e) => Err(e),
            }
        });
        keep_first(&mut first_error, result);
    }

    // A move to cur/ is a link, then (once cur/ is synced) the unlink of
    // the new/ name: with rename(2), any other sync of new/ meanwhile (a
    // delivery's) made the removal durable before the cur/ name was, and
    // a power cut between lost the message (found by tests/test_powercut.py,
    // test_pop3_move_survives_a_delivery_between_its_syncs). Where links
    // are refused (FAT and exFAT sticks), rename it is.
    let mut linked: Vec<PathBuf> = Vec::new();
    for message in retrieved {
        let result = checked_parts(&message.path).and_then(|(sub, name)| {
            if sub != NEW {
                return Ok(());
            }
            let mut seen = OsString::from_vec(base_name(name).as_bytes().to_vec());
            seen.push(SEEN_INFO);
            let (from, to) = (dir.join(NEW).join(name), dir.join(CUR).join(seen));
            match fs::hard_link(&from, &to) {
                Ok(()) => {
                    touched_cur = true;
                    linked.push(from);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                // Already there as the same file: an interrupted move.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_file(&from, &to) => {
                    linked.push(from);
                    Ok(())
                }
                // No links here, or another file by that name (replaced,
                // as rename always did).
                Err(_) => {
                    if ignore_not_found(fs::rename(&from, &to))? {
                        touched_new = true;
                        touched_cur = true;
                    }
                    Ok(())
                }
            }
        });
        keep_first(&mut first_error, result);
    }

    // The removals and links are durable only once the folders are
    // synced, each folder on its own: `cur/` first, and the new/ names of
    // linked messages go only once it is (a cut between leaves both names
    // of one file, which `scan` shows once), never under neither.
    let cur_synced = if touched_cur {
        let result = File::open(dir.join(CUR)).and_then(|d| d.sync_all());
        let ok = result.is_ok();
        keep_first(&mut first_error, result);
        ok
    } else {
        true
    };
    // If cur/ could not be synced, both names stay: shown once, no loss.
    if cur_synced {
        for from in &linked {
            let result = ignore_not_found(fs::remove_file(from)).map(|_| ());
            touched_new = true;
            keep_first(&mut first_error, result);
        }
    }
    if touched_new {
        keep_first(
            &mut first_error,
            File::open(dir.join(NEW)).and_then(|d| d.sync_all()),
        );
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The unique name: the file name without the Maildir info (`:2,FLAGS`).
fn base_name(name: &OsStr) -> &OsStr {
    let bytes = name.as_bytes();
    let end = bytes
        .iter()
        .position(|&b| b == INFO_SEPARATOR)
        .unwrap_or(bytes.len());
    OsStr::from_bytes(bytes.get(..end).unwrap_or(bytes))
}

/// The `W=` (size with CRLF line ends) field of a unique name, if any.
/// `S=` alone is the size on disk with LF line ends, not what POP3 reports.
fn size_from_name(base: &OsStr) -> Option<u64> {
    base.as_bytes()
        .split(|&b| b == b',')
        .skip(1)
        .find_map(|field| field.strip_prefix(b"W="))
        .and_then(parse_decimal)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Size of a file as sent with CRLF line ends: every bare LF and bare CR
/// becomes CRLF on the wire (see `proto::dotstuff`). Only for files whose
/// name carries no `W=` (written by other software).
fn crlf_size_of_file(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut size: u64 = 0;
    let mut prev_cr = false;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in buf.get(..n).unwrap_or(&[]) {
            size += 1;
            match b {
                b'\n' if !prev_cr => size += 1,
                _ if prev_cr && b != b'\n' => size += 1,
                _ => {}
            }
            prev_cr = b == b'\r';
        }
    }
    if prev_cr {
        size += 1;
    }
    Ok(size)
}

/// Delivery order: the unique name's seconds, then microseconds (`M<usec>`),
/// then the name. Names that do not start with a time sort last.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct OrderKey {
    secs: u64,
    usecs: u64,
    name: Vec<u8>,
}

impl OrderKey {
    fn of(base: &OsStr) -> OrderKey {
        let bytes = base.as_bytes();
        let mut parts = bytes.splitn(3, |&b| b == b'.');
        let secs = parts.next().and_then(parse_decimal).unwrap_or(u64::MAX);
        let usecs = parts
            .next()
            .and_then(|p| p.strip_prefix(b"M"))
            .map(|p| {
                let end = p
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .unwrap_or(p.len());
                p.get(..end).and_then(parse_decimal).unwrap_or(0)
            })
            .unwrap_or(0);
        OrderKey {
            secs,
            usecs,
            name: bytes.to_vec(),
        }
    }
}

/// The unique-id of a message: its unique name when that is a valid
/// unique-id (RFC 1939 7), else a digest of it.
fn uidl_for(base: &OsStr) -> String {
    let bytes = base.as_bytes();
    if !bytes.is_empty()
        && bytes.len() <= MAX_UIDL_LEN
        && bytes.iter().all(|b| UIDL_CHARS.contains(b))
    {
        // All bytes are printable ASCII, so this never loses anything.
        return String::from_utf8_lossy(bytes).into_owned();
    }
    digest_hex(bytes)
}

/// A 128-bit digest as 32 hex digits: FNV-1a 64 forwards and, with another
/// offset basis, backwards. Written here because it must never change
/// (std's hasher may change between Rust releases, and UIDLs must not).
fn digest_hex(bytes: &[u8]) -> String {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    const OFFSET_A: u64 = 0xcbf2_9ce4_8422_2325; // the FNV-1a 64 offset basis
    const OFFSET_B: u64 = 0x6c62_272e_07bb_0142; // low 64 bits of FNV-1a 128's
    let fnv = |mut h: u64, b: u8| {
        h ^= u64::from(b);
        h.wrapping_mul(FNV_PRIME)
    };
    let a = bytes.iter().fold(OFFSET_A, |h, &b| fnv(h, b));
    let b = bytes.iter().rev().fold(OFFSET_B, |h, &b| fnv(h, b));
    format!("{a:016x}{b:016x}")
}

/// RFC 1939 7: unique-ids are unique within the maildrop. Two files with
/// the same unique name (an admin's copy, a digest collision) get ids
/// derived from their full paths instead.
fn make_uidls_unique(listing: &mut [MessageInfo]) {
    let mut seen: HashSet<String> = HashSet::with_capacity(listing.len());
    for info in listing.iter_mut() {
        let mut salt = 0u32;
        while seen.contains(&info.uidl) {
            let mut key = info.path.as_os_str().as_bytes().to_vec();
            key.extend_from_slice(&salt.to_be_bytes());
            info.uidl = digest_hex(&key);
            salt = salt.wrapping_add(1);
        }
        seen.insert(info.uidl.clone());
    }
}

/// Splits a listing path into its folder (`new` or `cur`) and file name,
/// refusing anything else: nothing outside the maildir is ever touched.
fn checked_parts(path: &Path) -> io::Result<(&'static str, &OsStr)> {
    let mut components = path.components();
    let (Some(Component::Normal(sub)), Some(Component::Normal(name)), None) =
        (components.next(), components.next(), components.next())
    else {
        return Err(invalid_path(path));
    };
    if sub == NEW {
        Ok((NEW, name))
    } else if sub == CUR {
        Ok((CUR, name))
    } else {
        Err(invalid_path(path))
    }
}

fn invalid_path(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a maildrop message path: {}", path.display()),
    )
}

/// Unique name -> current file name in `cur/`. Unreadable means empty: the
/// message is then treated as already gone.
fn index_cur(dir: &Path) -> HashMap<Vec<u8>, OsString> {
    let mut index = HashMap::new();
    if let Ok(entries) = fs::read_dir(dir.join(CUR)) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            index.insert(base_name(&name).as_bytes().to_vec(), name.clone());
        }
    }
    index
}

fn mark(sub: &str, touched_new: &mut bool, touched_cur: &mut bool) {
    if sub == NEW {
        *touched_new = true;
    } else {
        *touched_cur = true;
    }
}

/// Ok(true) if done, Ok(false) if the file was already gone.
/// Are `a` and `b` two names of one file (same device and inode)? False
/// when either is missing.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn keep_first(first: &mut Option<io::Error>, result: io::Result<()>) {
    if let Err(e) = result {
        first.get_or_insert(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A maildir in the system temp folder, removed on drop.
    struct TempMaildir(PathBuf);

    impl TempMaildir {
        fn new() -> TempMaildir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("mailgate-maildrop-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            for sub in ["tmp", NEW, CUR] {
                fs::create_dir_all(dir.join(sub)).unwrap();
            }
            TempMaildir(dir)
        }

        fn put(&self, rel: &str, content: &[u8]) {
            fs::write(self.0.join(rel), content).unwrap();
        }

        fn exists(&self, rel: &str) -> bool {
            self.0.join(rel).exists()
        }
    }

    impl Drop for TempMaildir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn name(time: u64, usec: u64, q: u32, s: u64, w: u64) -> String {
        format!("{time}.M{usec}P4242Q{q}.mail.example.test,S={s},W={w}")
    }

    fn paths(listing: &[MessageInfo]) -> Vec<String> {
        listing
            .iter()
            .map(|m| m.path.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn missing_maildir_is_empty() {
        let dir = std::env::temp_dir().join("mailgate-maildrop-test-does-not-exist");
        assert_eq!(scan(&dir).unwrap(), vec![]);
    }

    #[test]
    fn scan_orders_by_delivery_and_skips_junk() {
        let md = TempMaildir::new();
        let a = name(1_700_000_000, 5, 1, 3, 4);
        let b = name(1_700_000_000, 40, 2, 3, 4); // same second, later usec
        let c = name(1_700_000_001, 1, 3, 3, 4);
        let d = name(1_699_999_999, 900_000, 4, 3, 4);
        md.put(&format!("new/{c}"), b"c\n\n");
        md.put(&format!("cur/{b}:2,S"), b"b\n\n");
        md.put(&format!("new/{a}"), b"a\n\n");
        md.put(&format!("cur/{d}:2,RS"), b"d\n\n");
        md.put(&format!("tmp/{}", name(1, 1, 9, 3, 4)), b"half");
        md.put("new/.hidden", b"x\n");
        fs::create_dir(md.0.join("new/subdir")).unwrap();
        std::os::unix::fs::symlink(md.0.join(format!("new/{a}")), md.0.join("cur/link")).unwrap();

        let listing = scan(&md.0).unwrap();
        assert_eq!(
            paths(&listing),
            vec![
                format!("cur/{d}:2,RS"),
                format!("new/{a}"),
                format!("cur/{b}:2,S"),
                format!("new/{c}"),
            ]
        );
        assert!(listing.iter().all(|m| m.size == 4));
        assert_eq!(listing[1].uidl, a);
        assert_eq!(listing[0].uidl, d, "info suffix is not part of the UIDL");
    }

    #[test]
    fn sizes_without_w_are_computed_from_content() {
        let md = TempMaildir::new();
        // Foreign names: no size, or only S= (LF size, not the POP3 size).
        md.put("new/1600000000.foreign", b"a\nb\r\nc\rd");
        md.put("new/1600000001.other,S=5", b"x\ny\n\n");
        md.put("cur/1600000002.crlf:2,S", b"x\r\n\r\n");
        let listing = scan(&md.0).unwrap();
        let sizes: Vec<u64> = listing.iter().map(|m| m.size).collect();
        // 8 bytes + bare LF + bare CR = 10; 5 bytes + 3 LFs = 8; CRLF as is = 5.
        assert_eq!(sizes, vec![10, 8, 5]);
    }

    #[test]
    fn uidl_rules() {
        let ok = "1700000000.M1P2Q3.host,S=1,W=2";
        assert_eq!(uidl_for(OsStr::new(ok)), ok);
        let long = format!("1700000000.M1P2Q3.{},S=1,W=2", "h".repeat(60));
        let odd = OsStr::from_bytes(b"1700000000.M1P2Q3.h\xc3\xa9st");
        for base in [
            OsStr::new(&long),
            odd,
            OsStr::new("has space"),
            OsStr::new(""),
        ] {
            let uidl = uidl_for(base);
            assert_eq!(uidl.len(), 32);
            assert!(uidl.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(uidl, uidl_for(base), "deterministic");
        }
        assert_ne!(uidl_for(OsStr::new(&long)), uidl_for(odd));
        // Fixed forever: a change here would make clients fetch mail twice.
        assert_eq!(digest_hex(b""), "cbf29ce4842223256c62272e07bb0142");
        assert_eq!(digest_hex(b"a"), "af63dc4c8601ec8ce5c9b63722c2ee79");
        let exact = "x".repeat(MAX_UIDL_LEN);
        assert_eq!(uidl_for(OsStr::new(&exact)), exact);
    }

    #[test]
    fn uidl_stable_across_commit_and_rescan() {
        let md = TempMaildir::new();
        let long = format!("1700000000.M1P2Q3.{},S=2,W=3", "h".repeat(60));
        let short = name(1_700_000_001, 1, 1, 2, 3);
        md.put(&format!("new/{long}"), b"a\n");
        md.put(&format!("new/{short}"), b"b\n");
        let before = scan(&md.0).unwrap();
        let retrieved: Vec<&MessageInfo> = before.iter().collect();
        commit(&md.0, &[], &retrieved).unwrap();
        assert!(md.exists(&format!("cur/{long}:2,S")));
        assert!(md.exists(&format!("cur/{short}:2,S")));
        let after = scan(&md.0).unwrap();
        let uidls = |l: &[MessageInfo]| l.iter().map(|m| m.uidl.clone()).collect::<Vec<_>>();
        assert_eq!(uidls(&before), uidls(&after));
        assert_eq!(
            paths(&after),
            vec![format!("cur/{long}:2,S"), format!("cur/{short}:2,S")]
        );
    }

    #[test]
    fn duplicate_unique_names_get_distinct_uidls() {
        let md = TempMaildir::new();
        let n = name(1_700_000_000, 1, 1, 2, 3);
        md.put(&format!("new/{n}"), b"a\n");
        md.put(&format!("cur/{n}:2,S"), b"a\n");
        let listing = scan(&md.0).unwrap();
        assert_eq!(listing.len(), 2);
        assert_ne!(listing[0].uidl, listing[1].uidl);
    }

    #[test]
    fn commit_deletes_moves_and_tolerates_gone_files() {
        let md = TempMaildir::new();
        let names: Vec<String> = (0..5).map(|q| name(1_700_000_000, 1, q, 2, 3)).collect();
        for n in &names {
            md.put(&format!("new/{n}"), b"x\n");
        }
        let listing = scan(&md.0).unwrap();
        assert_eq!(listing.len(), 5);
        // Another reader: removes #1, moves #2 to cur/ with other flags.
        fs::remove_file(md.0.join(format!("new/{}", names[1]))).unwrap();
        fs::rename(
            md.0.join(format!("new/{}", names[2])),
            md.0.join(format!("cur/{}:2,RS", names[2])),
        )
        .unwrap();
        // Another reader moved #4 before our retrieve-move.
        fs::rename(
            md.0.join(format!("new/{}", names[4])),
            md.0.join(format!("cur/{}:2,S", names[4])),
        )
        .unwrap();

        let deleted = [&listing[0], &listing[1], &listing[2]];
        let retrieved = [&listing[3], &listing[4]];
        commit(&md.0, &deleted, &retrieved).unwrap();

        let left = scan(&md.0).unwrap();
        assert_eq!(
            paths(&left),
            vec![
                format!("cur/{}:2,S", names[3]),
                format!("cur/{}:2,S", names[4])
            ]
        );
        // Committing the same again finds nothing to do and is fine.
        commit(&md.0, &deleted, &retrieved).unwrap();
        commit(&md.0, &[], &[]).unwrap();
    }

    #[test]
    fn a_move_cut_between_its_two_folder_syncs_is_one_message() {
        // A power cut after `cur/` was synced and before `new/` was leaves
        // both names of the same file: listed once, deleted as a whole.
        // (Two different files with one name are two messages: see
        // duplicate_unique_names_get_distinct_uidls.)
        let md = TempMaildir::new();
        let a = name(1_700_000_000, 1, 1, 3, 4);
        let b = name(1_700_000_001, 1, 2, 3, 4);
        md.put(&format!("new/{a}"), b"hi\n");
        fs::hard_link(
            md.0.join(format!("new/{a}")),
            md.0.join(format!("cur/{a}:2,S")),
        )
        .unwrap();
        md.put(&format!("new/{b}"), b"ho\n");
        let listing = scan(&md.0).unwrap();
        assert_eq!(
            paths(&listing),
            vec![format!("cur/{a}:2,S"), format!("new/{b}")]
        );
        commit(&md.0, &[&listing[0]], &[]).unwrap();
        assert!(!md.exists(&format!("cur/{a}:2,S")));
        assert!(!md.exists(&format!("new/{a}")));
        assert_eq!(paths(&scan(&md.0).unwrap()), vec![format!("new/{b}")]);
    }

    #[test]
    fn commit_keeps_retrieved_cur_messages_where_they_are() {
        let md = TempMaildir::new();
        let n = name(1_700_000_000, 1, 1, 2, 3);
        md.put(&format!("cur/{n}:2,FS"), b"x\n");
        let listing = scan(&md.0).unwrap();
        commit(&md.0, &[], &[&listing[0]]).unwrap();
        assert!(md.exists(&format!("cur/{n}:2,FS")));
    }

    #[test]
    fn commit_refuses_paths_outside_the_maildir() {
        let md = TempMaildir::new();
        md.put("tmp/victim", b"x");
        for bad in [
            "tmp/victim",
            "../victim",
            "new/../tmp/victim",
            "/etc/passwd",
            "new",
            "new/a/b",
        ] {
            let m = MessageInfo {
                path: PathBuf::from(bad),
                size: 1,
                uidl: "u".into(),
            };
            let err = commit(&md.0, &[&m], &[&m]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(md.exists("tmp/victim"));
    }

    #[test]
    fn scan_of_10000_messages_uses_names_only() {
        let md = TempMaildir::new();
        // Empty files whose names claim other sizes: a scan that opened or
        // stat-ed them would report 0, or the LF count.
        for q in 0..10_000u32 {
            let sub = if q % 3 == 0 { "cur" } else { "new" };
            let info = if sub == "cur" { ":2,S" } else { "" };
            let n = name(
                1_700_000_000 + u64::from(q / 100),
                u64::from(q % 100),
                q,
                100,
                1000 + u64::from(q),
            );
            fs::File::create(md.0.join(format!("{sub}/{n}{info}"))).unwrap();
        }
        let listing = scan(&md.0).unwrap();
        assert_eq!(listing.len(), 10_000);
        for (q, m) in listing.iter().enumerate() {
            assert_eq!(
                m.size,
                1000 + q as u64,
                "delivery order and size from the name"
            );
        }
    }
}
