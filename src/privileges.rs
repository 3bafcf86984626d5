//! Who the server runs as, and what it may touch while still root.
//!
//! Owns: the `[server] user` lookup (our own reading of /etc/passwd and
//! /etc/group: a static binary has no NSS, and a router may have no
//! getpwnam worth the name), the drop itself (setgroups, setgid, setuid),
//! the start-up checks of `data_dir` and of the config file's mode, and the
//! read-only probe for a server already running on `data_dir`.
//!
//! Start-up order (see `server::serve`): config, this user's lookup, the
//! probe, bind the listeners, [`prepare_data_dir`] as root, [`drop_to`],
//! then everything that writes into `data_dir` (self-signed certificate,
//! pid file, queue, mail) as the user, and only then the worker threads.
//! Root never opens or creates anything *inside* a `data_dir` the user
//! owns: the user (the one parsing network input) could have planted a
//! symlink there, and root would follow it.
//!
//! Must not: start threads (the drop must happen while the process has one
//! thread), or change anything when `user` is not set.

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::config::Config;

pub const PASSWD_FILE: &str = "/etc/passwd";
pub const GROUP_FILE: &str = "/etc/group";

/// A folder `data_dir` made for the user is the user's only (the Maildir
/// convention, as `store::durable::DIR_MODE`).
pub const DATA_DIR_MODE: u32 = 0o700;

/// Linux's NGROUPS_MAX since 2.6.4 (include/uapi/linux/limits.h): more
/// supplementary groups than this are refused by setgroups(2).
pub const MAX_GROUPS: usize = 65536;

/// The most of a pid file read: a pid is at most 7 digits (Linux's
/// pid_max limit is 2^22, proc(5)) plus a line end; 32 leaves room.
const PID_FILE_MAX: u64 = 32;

/// Write permission for the group or for others (S_IWGRP | S_IWOTH).
const GROUP_OR_WORLD_WRITABLE: u32 = 0o022;

/// Read permission for others (S_IROTH).
const WORLD_READABLE: u32 = 0o004;

/// What `data_dir` holds; each must belong to the user mailgate runs as.
const DATA_DIR_ENTRIES: [&str; 6] = [
    "mail",
    "queue",
    crate::store::spool::SPOOL_DIR,
    "smartpop",
    "tls",
    crate::control::PID_FILE,
];

/// A user from /etc/passwd with its groups from /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    /// The primary group (passwd's fourth field).
    pub gid: u32,
    /// Every group to hold after the drop: the primary one first, then
    /// each /etc/group entry naming the user, without repeats.
    pub groups: Vec<u32>,
}

/// The user `[server] user` names, when it is set.
pub fn configured_account(config: &Config) -> Result<Option<Account>, String> {
    let Some(name) = config.server.user.as_deref() else {
        return Ok(None);
    };
    let passwd = fs::read_to_string(PASSWD_FILE)
        .map_err(|e| format!("[server] user = {name}: cannot read {PASSWD_FILE}: {e}"))?;
    // A system without /etc/group still has the primary group.
    let group = fs::read_to_string(GROUP_FILE).unwrap_or_default();
    lookup(&passwd, &group, name).map(Some)
}

/// Finds `name` in the texts of /etc/passwd and /etc/group.
pub fn lookup(passwd: &str, group: &str, name: &str) -> Result<Account, String> {
    let (uid, gid) = passwd_entry(passwd, name)?
        .ok_or_else(|| format!("[server] user = {name}: no such user in {PASSWD_FILE}"))?;
    let mut groups = vec![gid];
    for line in group.lines() {
        // name:password:GID:member,member
        let mut fields = line.split(':');
        let (Some(_), Some(_), Some(id), Some(members)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(id) = id.trim().parse::<u32>() else {
            continue;
        };
        if members.split(',').any(|m| m.trim() == name) && !groups.contains(&id) {
            groups.push(id);
        }
    }
    if groups.len() > MAX_GROUPS {
        return Err(format!(
            "[server] user = {name}: member of {} groups, more than the kernel's {MAX_GROUPS}",
            groups.len()
        ));
    }
    Ok(Account {
        name: name.to_string(),
        uid,
        gid,
        groups,
    })
}

/// `(uid, gid)` of `name`, None when absent; a malformed entry for `name`
/// is an error (never a silent fallback to some other id).
fn passwd_entry(passwd: &str, name: &str) -> Result<Option<(u32, u32)>, String> {
    for (i, line) in passwd.lines().enumerate() {
        // name:password:UID:GID:gecos:home:shell. Lines of NIS compat
        // (`+name`, `-name`) and comments never match a plain name.
        let mut fields = line.split(':');
        if fields.next() != Some(name) || name.is_empty() {
            continue;
        }
        let _password = fields.next();
        let bad = || format!("{PASSWD_FILE}:{}: malformed entry for {name}", i + 1);
        let uid = fields
            .next()
            .and_then(|f| f.trim().parse::<u32>().ok())
            .ok_or_else(bad)?;
        let gid = fields
            .next()
            .and_then(|f| f.trim().parse::<u32>().ok())
            .ok_or_else(bad)?;
        return Ok(Some((uid, gid)));
    }
    Ok(None)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// What to do about `user` given who we are: Ok(true) to drop, Ok(false)
/// when there is nothing to do (already that user), Err when it cannot be
/// applied (a non-root process cannot become another user).
pub fn must_drop(account: &Account, euid: u32) -> Result<bool, String> {
    if euid == account.uid {
        return Ok(false);
    }
    if euid != 0 {
        return Err(format!(
            "[server] user = {}: mailgate runs as uid {euid} and cannot switch to uid {}; \
             start it as root (it drops to {} after binding its ports) or as {} itself",
            account.name, account.uid, account.name, account.name
        ));
    }
    Ok(true)
}

/// As root, before the drop: makes sure `data_dir` exists and belongs to
/// the user. A missing `data_dir` is created (parents as root with the
/// usual modes, `data_dir` itself [`DATA_DIR_MODE`]) and given to the user;
/// so is an empty one owned by root (what `mkdir` or a package leaves).
/// Anything else is left as it is for [`check_data_dir`] to judge: root
/// never changes the owner of files the user could have put there.
pub fn prepare_data_dir(data_dir: &Path, account: &Account) -> Result<(), String> {
    let shown = data_dir.display();
    let give = match fs::metadata(data_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            DirBuilder::new()
                .mode(DATA_DIR_MODE)
                .create(data_dir)
                .map_err(|e| format!("cannot create data_dir {shown}: {e}"))?;
            crate::store::durable::fsync_parent(data_dir)
                .map_err(|e| format!("cannot sync the folder above {shown}: {e}"))?;
            true
        }
        Err(e) => return Err(format!("cannot reach data_dir {shown}: {e}")),
        Ok(m) if !m.is_dir() => return Err(format!("data_dir {shown} is not a folder")),
        Ok(m) => m.uid() == 0 && m.uid() != account.uid && is_empty_dir(data_dir),
    };
    if give {
        std::os::unix::fs::chown(data_dir, Some(account.uid), Some(account.gid))
            .map_err(|e| format!("cannot give data_dir {shown} to {}: {e}", account.name))?;
        log::info!("data_dir {shown} now belongs to {}", account.name);
    }
    Ok(())
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(false)
}

/// Becomes `account` for good: supplementary groups, then the group, then
/// the user (the order matters: after setuid we could no longer change
/// groups). Checks the result and that root cannot be regained.
///
/// Call while the process has one thread. (glibc and musl apply set*id to
/// every thread anyway, but a thread started as root may have opened
/// things as root.)
pub fn drop_to(account: &Account) -> Result<(), String> {
    let name = &account.name;
    let fail = |what: &str| {
        format!(
            "cannot drop privileges to {name} ({what}): {}",
            io::Error::last_os_error()
        )
    };
    // SAFETY: the pointer and length describe `account.groups`, a live
    // Vec<u32> (gid_t is u32 on Linux); setgroups(2) only reads it.
    if unsafe { libc::setgroups(account.groups.len() as _, account.groups.as_ptr()) } != 0 {
        return Err(fail("setgroups"));
    }
    // SAFETY: setgid(2)/setuid(2) take plain integers.
    if unsafe { libc::setgid(account.gid) } != 0 {
        return Err(fail("setgid"));
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(account.uid) } != 0 {
        return Err(fail("setuid"));
    }
    // SAFETY: the get*id(2) calls cannot fail and touch no memory.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if (uid, euid, gid, egid) != (account.uid, account.uid, account.gid, account.gid) {
        return Err(format!(
            "privilege drop to {name} did not take: uid {uid}/{euid}, gid {gid}/{egid}"
        ));
    }
    // SAFETY: as above; this must fail now that the saved uid is gone too.
    if account.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(format!(
            "privilege drop to {name} can be undone; refusing to run"
        ));
    }
    log::info!(
        "running as {name} (uid {}, gid {}, groups {:?})",
        account.uid,
        account.gid,
        account.groups
    );
    Ok(())
}

/// For one-shot commands that write into `data_dir` (`sendmail`): when
/// run as root with `user` set, become that user first, so what they write
/// belongs to the server's user and root never writes into the user's
/// folder. Nothing happens otherwise (a non-root caller keeps its own
/// identity and the folder's permissions decide).
pub fn become_configured_user(config: &Config) -> Result<(), String> {
    match configured_account(config)? {
        Some(account) if euid() == 0 && account.uid != 0 => drop_to(&account),
        _ => Ok(()),
    }
}

/// After the drop (or at start when there is none): `data_dir` must be a
/// folder that only the running user can change, and what it holds must
/// be that user's. `user` names the running user in the hints (None: the
/// uid). Err is a message for the administrator, Ok carries warnings.
pub fn check_data_dir(data_dir: &Path, user: Option<&str>) -> Result<Vec<String>, String> {
    let me = euid();
    let who = user.map_or_else(|| me.to_string(), str::to_string);
    let shown = data_dir.display();
    let meta = fs::metadata(data_dir).map_err(|e| {
        format!(
            "cannot reach data_dir {shown} as uid {me}: {e} \
             (every folder above it must be searchable by that user)"
        )
    })?;
    if !meta.is_dir() {
        return Err(format!("data_dir {shown} is not a folder"));
    }
    let mut warnings = Vec::new();
    match data_dir_problem(meta.uid(), meta.mode(), me) {
        None => {}
        Some(Problem::GroupOrWorldWritable(mode)) => {
            return Err(format!(
                "data_dir {shown} is writable by its group or by everyone (mode {mode:04o}): \
                 chmod go-w {shown}"
            ))
        }
        Some(Problem::NotOurs(owner)) => {
            return Err(format!(
                "data_dir {shown} belongs to uid {owner}, not to uid {me} ({who}) that mailgate \
                 runs as: chown -R {who}: {shown}"
            ))
        }
        Some(Problem::RootInOthers(owner)) => warnings.push(format!(
            "data_dir {shown} belongs to uid {owner} while mailgate runs as root; \
             set [server] user to that user, or chown -R root: {shown}"
        )),
    }
    if !accessible(data_dir, libc::W_OK | libc::X_OK) {
        return Err(format!(
            "data_dir {shown} is not writable by uid {me} ({who}): {} (read-only file system?)",
            io::Error::last_os_error()
        ));
    }
    if meta.uid() == me {
        make_private(data_dir).map_err(|e| format!("data_dir {shown}: {e}"))?;
    }
    if me != 0 {
        for entry in DATA_DIR_ENTRIES {
            let path = data_dir.join(entry);
            if let Ok(m) = fs::symlink_metadata(&path) {
                if m.uid() != me {
                    return Err(format!(
                        "{} belongs to uid {}, not to uid {me} ({who}) that mailgate runs as \
                         (left by a run as root?): chown -R {who}: {shown}",
                        path.display(),
                        m.uid()
                    ));
                }
            }
        }
    }
    Ok(warnings)
}

/// Folders of `data_dir` made at start, mode [`DATA_DIR_MODE`], so that
/// mail, queue and SmartPop records are private whoever creates them later
/// (`tls/` is made by `tls.rs`, also 0700).
const PRIVATE_FOLDERS: [&str; 3] = ["mail", "queue", "smartpop"];

/// `data_dir` and its folders are the mailgate user's alone (0700),
/// whether or not `[server] user` is set: mail is private, and a umask
/// of 022 would otherwise leave `queue/` and `smartpop/` readable by every
/// local user. Only what the running user owns is changed; the files in
/// them keep their own (0600) modes.
fn make_private(data_dir: &Path) -> io::Result<()> {
    let me = euid();
    let tighten = |path: &Path| -> io::Result<()> {
        let m = fs::symlink_metadata(path)?;
        if m.is_dir() && m.uid() == me && m.mode() & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7700))?;
        }
        Ok(())
    };
    tighten(data_dir)?;
    for name in PRIVATE_FOLDERS {
        let path = data_dir.join(name);
        match DirBuilder::new().mode(DATA_DIR_MODE).create(&path) {
            Ok(()) => crate::store::durable::fsync_parent(&path)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(&path)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Problem {
    /// Error: others could plant files or symlinks (permission bits given).
    GroupOrWorldWritable(u32),
    /// Error: owned by this other uid, so not ours to write.
    NotOurs(u32),
    /// Warning: root writes anyway, but this owner could swap in symlinks.
    RootInOthers(u32),
}

/// Judges `data_dir`'s owner and mode for a process running as `me`.
fn data_dir_problem(owner: u32, mode: u32, me: u32) -> Option<Problem> {
    let perms = mode & 0o7777;
    if perms & GROUP_OR_WORLD_WRITABLE != 0 {
        Some(Problem::GroupOrWorldWritable(perms))
    } else if owner == me {
        None
    } else if me == 0 {
        Some(Problem::RootInOthers(owner))
    } else {
        Some(Problem::NotOurs(owner))
    }
}

fn accessible(path: &Path, how: libc::c_int) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), how) == 0 }
}

/// True when the config names any password (mailbox, outbox, SmartPop):
/// then the file should not be readable by every local user.
pub fn holds_passwords(config: &Config) -> bool {
    config.mailboxes.values().any(|m| m.password.is_some())
        || config.outbox.password.is_some()
        || !config.smartpop.is_empty()
}

/// Warnings about the config file's mode: readable by everyone while it
/// holds passwords.
pub fn config_file_warnings(config: &Config) -> Vec<String> {
    let path = &config.path;
    match fs::metadata(path) {
        Ok(m) if m.mode() & WORLD_READABLE != 0 && holds_passwords(config) => vec![format!(
            "{} holds passwords and is readable by every user: chmod 640 {}",
            path.display(),
            path.display()
        )],
        _ => Vec::new(),
    }
}

/// After the drop: the config must stay readable, or SIGHUP reloads fail.
pub fn config_readable_warning(config: &Config, account: &Account) -> Option<String> {
    let path = config.path.display();
    (!accessible(&config.path, libc::R_OK)).then(|| {
        format!(
            "{path} is not readable by {}, so a reload (SIGHUP) will fail: \
             chgrp {} {path} && chmod 640 {path}",
            account.name, account.name
        )
    })
}

/// Is a server already running on `data_dir`? Looks at the locked pid file
/// (see `control`) without creating or changing anything: it only opens
/// the file for reading, never through a symlink, and never blocks on a
/// FIFO put in its place. Some(message) when one runs.
pub fn running_server(data_dir: &Path) -> Option<String> {
    let path = data_dir.join(crate::control::PID_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    if try_lock(&file) {
        return None;
    }
    let pid = read_pid(&mut file)
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    Some(format!(
        "another mailgate is already serving {}{pid}",
        data_dir.display()
    ))
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock(2) on a valid, owned descriptor; the lock goes with
    // the descriptor when `file` is dropped.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.take(PID_FILE_MAX).read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p: &i32| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        +nisuser::::::\n\
        mailgate:x:998:997:mail gateway:/var/lib/mailgate:/usr/sbin/nologin\n\
        broken:x:abc:1::/:/bin/sh\n\
        nogid:x:5\n\
        \n\
        bob:x:1000:1000:Bob,,,:/home/bob:/bin/bash";

    const GROUP: &str = "root:x:0:\n\
        mail:x:8:mailgate\n\
        mailgate:x:997:\n\
        ssl-cert:x:110:postgres, mailgate ,bob\n\
        dup:x:997:mailgate\n\
        junk line without colons\n\
        badgid:x:zz:mailgate\n\
        other:x:200:mailgatex,xmailgate\n\
        users:x:100:bob";

    /// uid, gid and groups of a user found, or part of the error.
    type Want = Result<(u32, u32, &'static [u32]), &'static str>;

    #[test]
    fn lookup_table() {
        let cases: &[(&str, Want)] = &[
            ("mailgate", Ok((998, 997, &[997, 8, 110]))),
            ("root", Ok((0, 0, &[0]))),
            ("bob", Ok((1000, 1000, &[1000, 110, 100]))),
            ("nobody", Err("no such user")),
            ("broken", Err("malformed entry for broken")),
            ("nogid", Err("malformed entry for nogid")),
            ("", Err("no such user")),
            ("+nisuser", Err("malformed")),
            ("mail", Err("no such user")),
            ("MAILGATE", Err("no such user")),
            ("mailgate\0", Err("no such user")),
        ];
        for (name, want) in cases {
            let got = lookup(PASSWD, GROUP, name);
            match (want, &got) {
                (Ok((uid, gid, groups)), Ok(a)) => {
                    assert_eq!(
                        (a.uid, a.gid, a.groups.as_slice()),
                        (*uid, *gid, *groups),
                        "{name}"
                    );
                    assert_eq!(a.name, *name);
                }
                (Err(text), Err(e)) => assert!(e.contains(text), "{name}: {e}"),
                _ => panic!("{name}: got {got:?}"),
            }
        }
    }

    #[test]
    fn lookup_hostile_files() {
        let junk = "\0\0\0\n:::::::\n\u{fffd}:x:1:1\nmailgate";
        for passwd in ["", junk, "mailgate:x:99999999999:1", "mailgate:x:-1:1"] {
            assert!(lookup(passwd, junk, "mailgate").is_err(), "{passwd:?}");
        }
        // CRLF line ends and spaces around numbers still parse.
        let a = lookup(
            "mailgate:x: 998 :997 :\r\n",
            "g:x:5:mailgate\r\n",
            "mailgate",
        )
        .unwrap();
        assert_eq!((a.uid, a.gid, a.groups), (998, 997, vec![997, 5]));
    }

    #[test]
    fn must_drop_table() {
        let acct = lookup(PASSWD, GROUP, "mailgate").unwrap();
        assert_eq!(must_drop(&acct, 0), Ok(true));
        assert_eq!(must_drop(&acct, 998), Ok(false));
        let e = must_drop(&acct, 1000).unwrap_err();
        assert!(e.contains("cannot switch") && e.contains("uid 1000"), "{e}");
        let root = lookup(PASSWD, GROUP, "root").unwrap();
        assert_eq!(must_drop(&root, 0), Ok(false));
    }

    #[test]
    fn data_dir_problem_table() {
        use Problem::*;
        let cases = [
            (998, 0o40700, 998, None),
            (998, 0o40750, 998, None),
            (998, 0o40755, 998, None),
            (998, 0o40770, 998, Some(GroupOrWorldWritable(0o770))),
            (998, 0o40777, 998, Some(GroupOrWorldWritable(0o777))),
            (998, 0o41777, 998, Some(GroupOrWorldWritable(0o1777))),
            (998, 0o40702, 998, Some(GroupOrWorldWritable(0o702))),
            (0, 0o40755, 998, Some(NotOurs(0))),
            (1000, 0o40700, 998, Some(NotOurs(1000))),
            (0, 0o40755, 0, None),
            (998, 0o40700, 0, Some(RootInOthers(998))),
            (998, 0o40777, 0, Some(GroupOrWorldWritable(0o777))),
        ];
        for (owner, mode, me, want) in cases {
            assert_eq!(
                data_dir_problem(owner, mode, me),
                want,
                "{owner} {mode:o} {me}"
            );
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mailgate-priv-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn check_data_dir_cases() {
        let dir = scratch("check");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_data_dir(&dir, None).unwrap().is_empty());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_data_dir(&dir, Some("mailgate")).unwrap_err();
        assert!(e.contains("(mode 0777): chmod go-w"), "{e}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let missing = dir.join("nope");
        assert!(check_data_dir(&missing, None)
            .unwrap_err()
            .contains("cannot reach"));
        let file = dir.join("file");
        fs::write(&file, "x").unwrap();
        assert!(check_data_dir(&file, None)
            .unwrap_err()
            .contains("not a folder"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn running_server_probe() {
        let dir = scratch("probe");
        assert_eq!(running_server(&dir), None, "no pid file");
        let pid = dir.join(crate::control::PID_FILE);
        fs::write(&pid, "12345\n").unwrap();
        assert_eq!(running_server(&dir), None, "stale pid file");
        let held = File::open(&pid).unwrap();
        assert!(try_lock(&held));
        let msg = running_server(&dir).unwrap();
        assert!(
            msg.contains("already serving") && msg.contains("(pid 12345)"),
            "{msg}"
        );
        drop(held);
        // A symlink or a FIFO in its place is not followed or waited on.
        fs::remove_file(&pid).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &pid).unwrap();
        assert_eq!(running_server(&dir), None);
        fs::remove_file(&pid).unwrap();
        let c = CString::new(pid.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(running_server(&dir), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_pid_cases() {
        let dir = scratch("pid");
        let path = dir.join("p");
        for (text, want) in [
            ("42\n", Some(42)),
            ("  7  ", Some(7)),
            ("0\n", None),
            ("-1\n", None),
            ("abc", None),
            ("", None),
            ("\0\0", None),
        ] {
            fs::write(&path, text).unwrap();
            assert_eq!(read_pid(&mut File::open(&path).unwrap()), want, "{text:?}");
        }
        fs::write(&path, "9".repeat(100_000)).unwrap();
        assert_eq!(read_pid(&mut File::open(&path).unwrap()), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
