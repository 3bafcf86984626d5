//! Maildir folders: `data_dir/mail/DOMAIN/LOCALPART/{tmp,new,cur}`.
//!
//! Owns: the path of a mailbox's Maildir (refusing names that could escape
//! `data_dir`), unique file names (`TIME.M<usec>P<pid>Q<n>.HOST,S=..,W=..`),
//! the CRLF -> LF conversion of stored messages and their sizes, staging a
//! message in `tmp/` and moving it to `new/`, listing and quota usage,
//! and the per-mailbox quota lock.
//!
//! Stored form: messages are kept with LF line ends (the Maildir
//! convention, what mutt and Python's `mailbox` expect). The wire form is
//! recovered by turning every LF into CRLF; `S=` is the size on disk and
//! `W=` the wire size, so `W = S + number of LFs` (Dovecot's convention, what
//! POP3 LIST reports).
//!
//! Must not: fsync or write a final name except through `durable`.

use crate::store::durable;
use std::fs;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest file name component on the usual Linux filesystems (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// The Maildir "info" separator and the flags of a message a POP3 client
/// has retrieved (Maildir spec: `:2,` then flags; `S` = seen).
pub const INFO_SEEN: &str = ":2,S";

/// The lock file in a Maildir's root that serialises quota checks (see
/// [`Maildir::lock_quota`]). Dovecot and mutt ignore files in the root
/// other than their own and `tmp/ new/ cur/`.
pub const QUOTA_LOCK: &str = "mailgate-quota.lock";

/// Which Maildir subfolder a message sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sub {
    New,
    Cur,
}

impl Sub {
    pub fn dir_name(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// One message found by [`Maildir::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sub: Sub,
    /// File name, info (`:2,...`) included.
    pub name: String,
    /// Size on disk: `S=` from the name, else from stat(2).
    pub size: u64,
    /// Wire size with CRLF line ends, when the name carries `W=`.
    pub vsize: Option<u64>,
}

/// Refuse a domain or local part that could name anything but one plain
/// folder below `data_dir/mail`: empty, `.`-leading (covers `.` and `..`),
/// `/`, NUL or other control characters, or longer than a file name.
/// Defense in depth: the SMTP core and the config already refuse these.
pub fn check_component(s: &str) -> io::Result<()> {
    let bad = s.is_empty()
        || s.len() > MAX_COMPONENT
        || s.starts_with('.')
        || s.chars().any(|c| c == '/' || c.is_control());
    if bad {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unsafe mailbox path component {:?}",
                s.escape_debug().to_string()
            ),
        ))
    } else {
        Ok(())
    }
}

/// A mailbox's Maildir. Creating the value touches no disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    /// The Maildir of `local@domain` (split at the last `@`), both parts
    /// ASCII-lowercased because addresses match case-insensitively.
    /// Every module (delivery, POP3) finds a mailbox through this.
    pub fn for_mailbox(data_dir: &Path, mailbox: &str) -> io::Result<Maildir> {
        let (local, domain) = mailbox.rsplit_once('@').ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "mailbox without @domain")
        })?;
        let local = local.to_ascii_lowercase();
        let domain = domain.to_ascii_lowercase();
        check_component(&local)?;
        check_component(&domain)?;
        Ok(Maildir {
            root: data_dir.join("mail").join(domain).join(local),
        })
    }

    /// A Maildir at an explicit folder (tests, tools).
    pub fn at(root: PathBuf) -> Maildir {
        Maildir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn new_dir(&self) -> PathBuf {
        self.root.join("new")
    }
    pub fn cur_dir(&self) -> PathBuf {
        self.root.join("cur")
    }
    pub fn path_of(&self, e: &Entry) -> PathBuf {
        self.root.join(e.sub.dir_name()).join(&e.name)
    }

    /// Create the three folders (mode 0700, parents fsynced). `tmp` comes
    /// last, so a `tmp/` that exists implies `new/` and `cur/` do.
    pub fn create(&self) -> io::Result<()> {
        durable::create_dir_all_durable(&self.cur_dir())?;
        durable::create_dir_all_durable(&self.new_dir())?;
        durable::create_dir_all_durable(&self.tmp_dir())
    }

    /// Write `tmp/NAME` through `fill` and fsync it. The folders are made
    /// on demand: the open is tried first and only ENOENT creates them, so
    /// the common case costs no extra syscalls. Removed again on error.
    pub fn stage<F>(&self, name: &str, mut fill: F) -> io::Result<PathBuf>
    where
        F: FnMut(&mut dyn Write) -> io::Result<()>,
    {
        let tmp = self.tmp_dir().join(name);
        match durable::write_synced(&tmp, &mut fill) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.create()?;
                durable::write_synced(&tmp, &mut fill)?;
            }
            other => other?,
        }
        Ok(tmp)
    }

    /// Move a staged `tmp/NAME` to `new/NAME`. The caller fsyncs `new/`
    /// (once for several messages: group commit) before acknowledging.
    pub fn publish(&self, name: &str) -> io::Result<PathBuf> {
        let tmp = self.tmp_dir().join(name);
        let dest = self.new_dir().join(name);
        match fs::rename(&tmp, &dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tmp.exists() => {
                self.create()?;
                fs::rename(&tmp, &dest)?;
            }
            other => other?,
        }
        Ok(dest)
    }

    /// [`Maildir::publish`] as a hard link: the `tmp/` name stays until
    /// the caller removes it, after `new/` is synced. A rename's removal
    /// from `tmp/` can become durable before its addition to `new/` does
    /// (another writer's sync of `tmp/` between the two), and a power cut
    /// then would leave the message nowhere; SmartPop's records name the
    /// `tmp/` copy until it is safe in `new/`. Returns false where links
    /// are refused (FAT, exFAT): then it was renamed.
    pub fn publish_linked(&self, name: &str) -> io::Result<bool> {
        let tmp = self.tmp_dir().join(name);
        let dest = self.new_dir().join(name);
        let link = |tmp: &Path, dest: &Path| fs::hard_link(tmp, dest);
        match link(&tmp, &dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tmp.exists() => {
                self.create()?;
                link(&tmp, &dest)?;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK)
                ) =>
            {
                self.publish(name)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Messages in `new/` then `cur/`, each in delivery order (see
    /// [`delivery_order`]). Hidden files and names that are not UTF-8 are skipped; a
    /// missing Maildir is an empty one.
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for sub in [Sub::New, Sub::Cur] {
            let dir = self.root.join(sub.dir_name());
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let start = out.len();
            for de in rd {
                let de = de?;
                let Ok(name) = de.file_name().into_string() else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let (s, w) = parse_sizes(&name);
                let size = match s {
                    Some(s) => s,
                    None => match de.metadata() {
                        Ok(m) if m.is_file() => m.len(),
                        Ok(_) => continue,
                        // Removed meanwhile (a concurrent POP3 DELE).
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    },
                };
                out.push(Entry {
                    sub,
                    name,
                    size,
                    vsize: w,
                });
            }
            if let Some(part) = out.get_mut(start..) {
                part.sort_by_cached_key(|e| delivery_order(&e.name));
            }
        }
        Ok(out)
    }

    /// Waits for this mailbox's quota lock (an `flock` on [`QUOTA_LOCK`],
    /// creating the Maildir if needed) and holds it until the returned
    /// file is dropped. A delivery holds it from its usage check until its
    /// copy is in `new/`, so two deliveries can never both see room for
    /// one message (six 60 KB messages at once into a 100 KB quota: one
    /// lands, not four). A lock file rather than a table in memory:
    /// `mailgate sendmail` delivers from another process, and flock
    /// excludes open files of one process just as of two. It blocks a
    /// worker thread for at most one other delivery's fsyncs.
    pub fn lock_quota(&self) -> io::Result<fs::File> {
        let path = self.root.join(QUOTA_LOCK);
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.create()?;
                open()?
            }
            other => other?,
        };
        loop {
            // SAFETY: flock(2) on a descriptor we own; the lock goes with
            // the file when it is dropped.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(file);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Bytes on disk in `new/` and `cur/`, for the quota.
    pub fn usage(&self) -> io::Result<u64> {
        Ok(self.list()?.iter().map(|e| e.size).sum())
    }

    /// Move a retrieved message from `new/` to `cur/NAME:2,S` and return
    /// its new entry; a message already in `cur/` is left alone. The
    /// caller fsyncs with [`Maildir::sync`] after a batch.
    pub fn mark_seen(&self, e: &Entry) -> io::Result<Entry> {
        if e.sub == Sub::Cur {
            return Ok(e.clone());
        }
        let base = e.name.split(':').next().unwrap_or(&e.name);
        let name = format!("{base}{INFO_SEEN}");
        fs::rename(self.path_of(e), self.cur_dir().join(&name))?;
        Ok(Entry {
            sub: Sub::Cur,
            name,
            ..e.clone()
        })
    }

    /// fsync `cur/` and `new/` (after renames or removals), the
    /// destination of [`Maildir::mark_seen`] first: a power cut between the
    /// two leaves a moved message under both names, never under neither.
    pub fn sync(&self) -> io::Result<()> {
        durable::fsync_dir(&self.cur_dir())?;
        durable::fsync_dir(&self.new_dir())
    }
}

/// Escape a host name for a Maildir name: `/` -> `\057`, `:` -> `\072`
/// (Maildir spec), also `,` (our field separator), `\`, and anything not
/// visible ASCII, so the name stays one safe component.
pub fn escape_host(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    for b in host.bytes().take(64) {
        if b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b',' | b'\\') {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    if out.is_empty() {
        out.push_str("localhost");
    }
    out
}

/// A unique Maildir name: `TIME.M<usec>P<pid>Q<n>.HOST,S=<size>,W=<vsize>`.
/// `Q` is a process-wide counter, so two calls never collide even within
/// one microsecond or across threads.
pub fn unique_name(now: SystemTime, host: &str, size: u64, vsize: u64) -> String {
    static Q: AtomicU64 = AtomicU64::new(1);
    let q = Q.fetch_add(1, Ordering::Relaxed);
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{},S={},W={}",
        d.as_secs(),
        d.subsec_micros(),
        std::process::id(),
        q,
        escape_host(host),
        size,
        vsize
    )
}

/// Sort key putting names in delivery order: `TIME` and `M<usec>` compared
/// as numbers (they are not zero-padded), then the whole name. Foreign
/// names without them sort by name.
pub fn delivery_order(name: &str) -> (u64, u64, String) {
    let mut parts = name.splitn(3, '.');
    let secs = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    let usec = parts
        .next()
        .and_then(|m| m.strip_prefix('M'))
        .map(|m| m.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    (secs, usec, name.to_string())
}

/// `S=` and `W=` out of a Maildir name (fields after the first `,`, up to
/// the `:` info). Missing or malformed fields are `None`.
pub fn parse_sizes(name: &str) -> (Option<u64>, Option<u64>) {
    let base = name.split(':').next().unwrap_or("");
    let (mut s, mut w) = (None, None);
    for field in base.split(',').skip(1) {
        if let Some(v) = field.strip_prefix("S=") {
            s = v.parse().ok();
        } else if let Some(v) = field.strip_prefix("W=") {
            w = v.parse().ok();
        }
    }
    (s, w)
}

/// Streaming CRLF -> LF conversion. A CR not followed by LF is kept (the
/// wire form `LF -> CRLF` then gives back the input); a CR at the end of
/// one chunk waits for the next.
#[derive(Debug, Default)]
pub struct CrlfToLf {
    pending_cr: bool,
}

impl CrlfToLf {
    pub fn feed<F>(&mut self, input: &[u8], emit: &mut F) -> io::Result<()>
    where
        F: FnMut(&[u8]) -> io::Result<()>,
    {
        let mut rest = input;
        if self.pending_cr {
            self.pending_cr = false;
            match rest.split_first() {
                Some((b'\n', tail)) => {
                    emit(b"\n")?;
                    rest = tail;
                }
                Some(_) => emit(b"\r")?,
                None => {
                    self.pending_cr = true;
                    return Ok(());
                }
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\r') {
            let (head, tail) = rest.split_at(i);
            emit(head)?;
            // tail starts with the CR.
            match tail.get(1) {
                Some(b'\n') => {
                    emit(b"\n")?;
                    rest = tail.get(2..).unwrap_or(&[]);
                }
                Some(_) => {
                    emit(b"\r")?;
                    rest = tail.get(1..).unwrap_or(&[]);
                }
                None => {
                    self.pending_cr = true;
                    rest = &[];
                }
            }
        }
        if !rest.is_empty() {
            emit(rest)?;
        }
        Ok(())
    }

    /// End of input: a trailing lone CR is kept.
    pub fn finish<F>(&mut self, emit: &mut F) -> io::Result<()>
    where
        F: FnMut(&[u8]) -> io::Result<()>,
    {
        if std::mem::take(&mut self.pending_cr) {
            emit(b"\r")?;
        }
        Ok(())
    }
}

/// Sizes of `parts` (CRLF input, concatenated) once stored with LF ends:
/// `(S, W)` with `W = S + LFs`.
pub fn lf_sizes(parts: &[&[u8]]) -> (u64, u64) {
    let (mut s, mut lfs) = (0u64, 0u64);
    let mut conv = CrlfToLf::default();
    let mut count = |b: &[u8]| {
        s += b.len() as u64;
        lfs += b.iter().filter(|&&c| c == b'\n').count() as u64;
        Ok(())
    };
    for p in parts {
        let _ = conv.feed(p, &mut count);
    }
    let _ = conv.finish(&mut count);
    (s, s + lfs)
}

/// Write `parts` (CRLF input, concatenated) to `w` with LF line ends.
pub fn write_lf(w: &mut dyn Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut conv = CrlfToLf::default();
    let mut out = |b: &[u8]| w.write_all(b);
    for p in parts {
        conv.feed(p, &mut out)?;
    }
    conv.finish(&mut out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;
    use std::collections::HashSet;
    use std::time::Duration;

    fn convert(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        write_lf(&mut v, parts).unwrap();
        v
    }

    #[test]
    fn conversion_and_sizes() {
        // (input, stored)
        let table: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"last line\r\nno newline", b"last line\nno newline"),
            (b"bare\rCR\r\n", b"bare\rCR\n"),
            (b"bare\nLF\r\n", b"bare\nLF\n"),
            (b"\r\r\n", b"\r\n"),
            (b"\r", b"\r"),
            (b"\r\n\r\n", b"\n\n"),
            (b"end with cr\r", b"end with cr\r"),
            (b"nul\0and\xff8bit\r\n", b"nul\0and\xff8bit\n"),
        ];
        for (input, stored) in table {
            assert_eq!(convert(&[input]), *stored, "{input:?}");
            let lfs = stored.iter().filter(|&&b| b == b'\n').count() as u64;
            let want = (stored.len() as u64, stored.len() as u64 + lfs);
            assert_eq!(lf_sizes(&[input]), want, "{input:?}");
            // Wire form = every LF back to CRLF; its length is W.
            let wire: Vec<u8> = stored
                .iter()
                .flat_map(|&b| {
                    if b == b'\n' {
                        vec![b'\r', b'\n']
                    } else {
                        vec![b]
                    }
                })
                .collect();
            assert_eq!(wire.len() as u64, want.1);
            // Split at every byte boundary, into two and into single bytes.
            for cut in 0..=input.len() {
                let (a, b) = input.split_at(cut);
                assert_eq!(convert(&[a, b]), *stored, "{input:?} cut {cut}");
                assert_eq!(lf_sizes(&[a, b]), want);
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(convert(&bytes), *stored);
        }
    }

    #[test]
    fn names_unique_across_threads() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_570_409);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..2000)
                        .map(|_| unique_name(now, "mail.example.test", 1, 2))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for n in t.join().unwrap() {
                assert!(n.starts_with("1795570409.M0P"), "{n}");
                assert!(n.ends_with(".mail.example.test,S=1,W=2"), "{n}");
                assert!(seen.insert(n));
            }
        }
    }

    #[test]
    fn host_escaping_and_size_parsing() {
        assert_eq!(escape_host("a/b:c,d"), "a\\057b\\072c\\054d");
        assert_eq!(escape_host("x\ny"), "x\\012y");
        assert_eq!(escape_host(""), "localhost");
        let n = unique_name(SystemTime::now(), "h:o,S=9/st", 1234, 1300);
        assert!(!n.contains('/') && !n.contains(':'));
        assert_eq!(parse_sizes(&n), (Some(1234), Some(1300)));
        type Sizes = (Option<u64>, Option<u64>);
        let table: &[(&str, Sizes)] = &[
            ("1.M1P1Q1.h,S=10,W=12:2,S", (Some(10), Some(12))),
            ("1.M1P1Q1.h,S=10", (Some(10), None)),
            ("1.M1P1Q1.h,W=7", (None, Some(7))),
            ("1.M1P1Q1.h", (None, None)),
            ("1.M1P1Q1.h,S=x,W=-1", (None, None)),
            ("1.M1P1Q1.h:2,S=5", (None, None)),
            ("1.M1P1Q1.h,S=99999999999999999999999", (None, None)),
            ("", (None, None)),
        ];
        for (name, want) in table {
            assert_eq!(parse_sizes(name), *want, "{name}");
        }
    }

    #[test]
    fn delivery_order_is_numeric() {
        let mut names = vec![
            "1795571202.M122021P7Q3.h,S=1",
            "1795571202.M74457P7Q1.h,S=1",
            "999999999.M999999P7Q9.h,S=1",
            "foreign",
            "1795571202.Mjunk.h",
        ];
        names.sort_by_key(|n| delivery_order(n));
        assert_eq!(
            names,
            vec![
                "foreign",
                "999999999.M999999P7Q9.h,S=1",
                "1795571202.Mjunk.h",
                "1795571202.M74457P7Q1.h,S=1",
                "1795571202.M122021P7Q3.h,S=1",
            ]
        );
    }

    #[test]
    fn mailbox_paths_refuse_escapes() {
        let d = Path::new("/data");
        let md = Maildir::for_mailbox(d, "Bob@Example.TEST").unwrap();
        assert_eq!(md.root(), Path::new("/data/mail/example.test/bob"));
        let long = format!("{}@example.test", "a".repeat(300));
        for bad in [
            "bob",
            "@example.test",
            "bob@",
            "../x@example.test",
            "..@example.test",
            ".@example.test",
            "a/b@example.test",
            "bob@../etc",
            "bob@a/b",
            "b\0b@example.test",
            "b\nb@example.test",
            "b\x7fb@example.test",
            long.as_str(),
        ] {
            assert!(Maildir::for_mailbox(d, bad).is_err(), "{bad:?}");
        }
        // Quoted local parts may hold an @: split at the last one.
        let md = Maildir::for_mailbox(d, "\"a@b\"@example.test").unwrap();
        assert_eq!(md.root(), Path::new("/data/mail/example.test/\"a@b\""));
    }

    #[test]
    fn stage_publish_list_mark_seen() {
        let t = TempDir::new("maildir");
        let md = Maildir::for_mailbox(t.path(), "bob@example.test").unwrap();
        assert_eq!(md.list().unwrap(), vec![]);
        let body: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";
        let (s, w) = lf_sizes(&[body]);
        let name = unique_name(SystemTime::now(), "host", s, w);
        md.stage(&name, |wr| write_lf(wr, &[body])).unwrap();
        let dest = md.publish(&name).unwrap();
        durable::fsync_dir(&md.new_dir()).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"Subject: hi\n\nhello\n");
        assert_eq!(fs::metadata(&dest).unwrap().len(), s);
        assert_eq!(fs::read_dir(md.tmp_dir()).unwrap().count(), 0);
        // A foreign message without S= is sized by stat.
        fs::write(md.cur_dir().join("foreign:2,S"), b"12345").unwrap();
        fs::write(md.cur_dir().join(".hidden"), b"x").unwrap();
        let list = md.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].sub, Sub::New);
        assert_eq!((list[0].size, list[0].vsize), (s, Some(w)));
        assert_eq!((list[1].size, list[1].vsize), (5, None));
        assert_eq!(md.usage().unwrap(), s + 5);
        let seen = md.mark_seen(&list[0]).unwrap();
        md.sync().unwrap();
        assert_eq!(seen.name, format!("{name}:2,S"));
        assert!(md.path_of(&seen).exists());
        assert_eq!(
            md.list()
                .unwrap()
                .iter()
                .filter(|e| e.sub == Sub::New)
                .count(),
            0
        );
    }
}
