//! Password hashes as written in `[mailbox] password =`, and the hashing
//! behind `mailgate passwd`.
//!
//! Owns: checking a password against a stored value (`$6$` SHA512-CRYPT as
//! `mkpasswd -m sha-512`, glibc `crypt(3)` and Dovecot make it,
//! `{SHA512-CRYPT}$6$...`, `{PLAIN}secret`), making new `$6$` hashes, and
//! reading a password from the terminal for the `passwd` subcommand.
//! Must not: run on the event-loop thread (a `$6$` check costs milliseconds
//! on a slow router core; the worker pool calls `verify`), log passwords, or
//! panic on any stored value: the config file is hand-edited.

use std::io::{self, BufRead, Write};

/// SHA512-CRYPT rounds for new hashes made by `mailgate passwd`.
///
/// Measured with the release profile (`opt-level = "z"`) on the development
/// machine (`cargo test --release --lib auth::tests::timing -- --nocapture
/// --test-threads=1`): 5000 rounds (the spec's default) verify in ~3.5 ms,
/// 10000 in ~7 ms, 50000 in ~35 ms. A slow ARM router core is ~20x slower:
/// ~70 ms, ~140 ms and ~700 ms. We take 10000: twice the spec default (twice
/// the work for an offline attacker with a stolen config), still ~0.15 s per
/// login on the router, so a household's POP3 clients polling every few
/// minutes, plus a brute-forcer held back by `penalty` (10 tries per 25
/// minutes per address), keep a worker busy for a small fraction of its time.
/// 50000 would put each login at ~0.7 s on the router: not "well under a
/// second", and a few concurrent logins would queue behind each other.
pub const HASH_ROUNDS: u32 = 10_000;

/// Checked instead when the user does not exist and the config has no
/// password to copy the cost of (see [`dummy_like`]): what `mailgate
/// passwd` makes. A real `$6$rounds=10000$` hash of a password nobody uses.
pub const DUMMY_HASH: &str = "$6$rounds=10000$dummysaltdummysa$YuOjPkC.Ukdigl44tBIqKb6nhTb9J4vD.YVkM0jzkaCHDVm4tzA1xvhtUi1WdMSYMuT2Ymcquy0jwC8DuAsQ8/";

/// The stored value checked for an unknown user: it costs what checking a
/// configured password costs, so a wrong user and a wrong password answer
/// in the same time (no user enumeration by timing). It copies the scheme,
/// rounds and salt length most common among `stored` (ties: the dearer
/// one), since SHA-crypt's work is rounds times the salt and password
/// bytes hashed in each round; `{PLAIN}` configs get a `{PLAIN}` compare.
/// Nothing configured: [`DUMMY_HASH`]. Never matches anything: the caller
/// answers "no" whatever `verify` says.
pub fn dummy_like<'a>(stored: impl IntoIterator<Item = &'a str>) -> String {
    // (rounds, salt length); rounds 0 stands for {PLAIN}.
    let mut counts: std::collections::BTreeMap<(u32, usize), usize> = Default::default();
    for s in stored {
        let key = match parse(s) {
            Some(Stored::Plain(_)) => (0, 0),
            Some(Stored::Sha512Crypt(h)) => (h.rounds, h.salt.len()),
            None => continue,
        };
        *counts.entry(key).or_default() += 1;
    }
    // max_by_key keeps the last of equals: the BTreeMap order makes that
    // the most rounds.
    match counts.into_iter().max_by_key(|&(_, n)| n).map(|(k, _)| k) {
        None => DUMMY_HASH.to_string(),
        Some((0, _)) => format!("{PLAIN_PREFIX}{}", "x".repeat(16)),
        Some((rounds, salt_len)) => format!(
            "$6$rounds={rounds}${}${}",
            "s".repeat(salt_len),
            ".".repeat(HASH_CHARS)
        ),
    }
}

/// SHA-crypt spec ("Unix crypt using SHA-256 and SHA-512", U. Drepper):
/// `rounds=` is clamped to this range, not refused.
const ROUNDS_MIN: u64 = 1_000;
const ROUNDS_MAX: u64 = 999_999_999;
/// Rounds when a `$6$` hash has no `rounds=` field (same spec).
const ROUNDS_DEFAULT: u64 = 5_000;
/// Same spec: at most 16 salt characters are used; glibc truncates a longer
/// salt and its output then never equals the stored string, so we refuse it.
const SALT_MAX: usize = 16;
/// A SHA-512 digest is 64 bytes, written as 86 crypt-base64 characters.
const HASH_CHARS: usize = 86;
/// SHA-crypt's work grows with password length times rounds (byte sequence P
/// is hashed in every round), so a peer sending a 10 KB "password" in SASL
/// PLAIN would cost seconds of router CPU per attempt. Real passwords, even
/// from password managers, are far shorter. (Django capped its password
/// length for the same reason, CVE-2013-1443.)
pub const MAX_PASSWORD_LEN: usize = 256;

/// The crypt(3) base64 alphabet (not RFC 4648's).
const CRYPT_B64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Scheme prefixes in Dovecot's `{SCHEME}` notation that we understand.
const PLAIN_PREFIX: &str = "{PLAIN}";
const SHA512_CRYPT_PREFIX: &str = "{SHA512-CRYPT}";
/// Dovecot's `{CRYPT}` hands the value to the system crypt(3); we accept it
/// only around a `$6$` value.
const CRYPT_PREFIX: &str = "{CRYPT}";

/// A stored password, parsed.
enum Stored<'a> {
    Plain(&'a str),
    Sha512Crypt(Sha512Crypt<'a>),
}

/// The fields of `$6$[rounds=N$]SALT$HASH`.
struct Sha512Crypt<'a> {
    rounds: u32,
    salt: &'a [u8],
    hash: &'a [u8],
}

/// Does `password` match the `stored` value from the config?
/// Unknown schemes and malformed hashes are `false`, never a panic.
pub fn verify(stored: &str, password: &str) -> bool {
    match parse(stored) {
        Some(Stored::Plain(secret)) => ct_eq(secret.as_bytes(), password.as_bytes()),
        Some(Stored::Sha512Crypt(h)) => {
            if password.len() > MAX_PASSWORD_LEN {
                return false;
            }
            let computed = sha512_crypt_b64(password.as_bytes(), h.salt, h.rounds);
            ct_eq(&computed, h.hash)
        }
        None => false,
    }
}

/// A new `$6$rounds=N$SALT$HASH` for `password`, with 16 random salt
/// characters. Fails if no random bytes can be had or the password is longer
/// than `MAX_PASSWORD_LEN` (it could never log in).
pub fn hash(password: &str) -> io::Result<String> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("password longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    // 12 random bytes = 96 bits = exactly 16 characters of 6 bits.
    let mut random = [0u8; 12];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut random)
        .map_err(|_| io::Error::other("no random bytes for the salt"))?;
    let salt: Vec<u8> = random
        .chunks(3)
        .flat_map(|c| {
            let w = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
            (0..4).map(move |i| b64_char(w >> (6 * i)))
        })
        .collect();
    let out = sha512_crypt_b64(password.as_bytes(), &salt, HASH_ROUNDS);
    Ok(format!(
        "$6$rounds={HASH_ROUNDS}${}${}",
        String::from_utf8_lossy(&salt),
        String::from_utf8_lossy(&out)
    ))
}

/// Is this a `{PLAIN}` password (for the startup warning)?
pub fn is_plain(stored: &str) -> bool {
    strip_prefix_ci(stored, PLAIN_PREFIX).is_some()
}

/// Is this a scheme and format `verify` understands (for `mailgate check`)?
pub fn scheme_ok(stored: &str) -> bool {
    parse(stored).is_some()
}

/// Reads the password for `mailgate passwd`: from a terminal without echo,
/// asked twice; otherwise one line of stdin. The line end (LF or CRLF) is
/// not part of the password; an empty password is refused.
pub fn read_password_for_passwd_command() -> io::Result<String> {
    // SAFETY: isatty only inspects fd 0.
    let password = if unsafe { libc::isatty(0) } == 1 {
        let first = prompt_no_echo("Password: ")?;
        let second = prompt_no_echo("Retype password: ")?;
        if first != second {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "passwords do not match",
            ));
        }
        first
    } else {
        read_line()?
    };
    if password.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty password",
        ));
    }
    Ok(password)
}

/// Prints `prompt` to stderr and reads a line from the terminal on fd 0
/// with ECHO off, restoring the terminal whatever happens.
fn prompt_no_echo(prompt: &str) -> io::Result<String> {
    eprint!("{prompt}");
    io::stderr().flush()?;
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: a termios obtained from tcgetattr, with flags changed.
    if unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let line = read_line();
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    line
}

/// One line of stdin without its LF or CRLF; EOF before any byte is an error.
fn read_line() -> io::Result<String> {
    let mut line = String::new();
    if io::stdin().lock().read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no password on standard input",
        ));
    }
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

fn parse(stored: &str) -> Option<Stored<'_>> {
    if let Some(secret) = strip_prefix_ci(stored, PLAIN_PREFIX) {
        return Some(Stored::Plain(secret));
    }
    let crypt = strip_prefix_ci(stored, SHA512_CRYPT_PREFIX)
        .or_else(|| strip_prefix_ci(stored, CRYPT_PREFIX))
        .unwrap_or(stored);
    parse_sha512_crypt(crypt).map(Stored::Sha512Crypt)
}

/// `$6$[rounds=N$]SALT$HASH`, following glibc's `sha512-crypt.c`, except
/// that a malformed `rounds=` is refused rather than taken as salt, and the
/// salt must be printable ASCII (mkpasswd uses `[./0-9A-Za-z]`; a NUL would
/// end glibc's C string early).
fn parse_sha512_crypt(s: &str) -> Option<Sha512Crypt<'_>> {
    let rest = s.strip_prefix("$6$")?;
    let (rounds, rest) = match rest.strip_prefix("rounds=") {
        Some(r) => {
            let (digits, rest) = r.split_once('$')?;
            if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let n: u64 = digits.parse().ok()?;
            (n.clamp(ROUNDS_MIN, ROUNDS_MAX), rest)
        }
        None => (ROUNDS_DEFAULT, rest),
    };
    let (salt, hash) = rest.split_once('$')?;
    if salt.len() > SALT_MAX
        || !salt.bytes().all(|b| b.is_ascii_graphic())
        || hash.len() != HASH_CHARS
        || !hash.bytes().all(|b| CRYPT_B64.contains(&b))
    {
        return None;
    }
    Some(Sha512Crypt {
        rounds: u32::try_from(rounds).ok()?,
        salt: salt.as_bytes(),
        hash: hash.as_bytes(),
    })
}

/// The 86-character hash part of a SHA512-CRYPT string.
fn sha512_crypt_b64(password: &[u8], salt: &[u8], rounds: u32) -> Vec<u8> {
    // Rounds are clamped into the crate's accepted range before this point;
    // fall back to the spec default rather than panic if that ever changes.
    let params = sha_crypt::Params::new(rounds).unwrap_or_default();
    let d = sha_crypt::sha512_crypt(password, salt, params);
    // The spec's byte order for the final base64 step (step 22, SHA-512).
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ];
    let mut out = Vec::with_capacity(HASH_CHARS);
    let mut push = |b2: u8, b1: u8, b0: u8, n: usize| {
        let w = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
        for i in 0..n {
            out.push(b64_char(w >> (6 * i)));
        }
    };
    for (a, b, c) in ORDER {
        push(d[a], d[b], d[c], 4);
    }
    push(0, 0, d[63], 2);
    out
}

fn b64_char(w: u32) -> u8 {
    CRYPT_B64[(w & 0x3f) as usize]
}

/// Dovecot scheme names are case-insensitive: `{plain}` works too.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Compares without an early exit on the first differing byte, so response
/// time does not tell a guesser how much of a `{PLAIN}` secret it got right.
/// (The length is not hidden; it is not the secret.)
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From the SHA-crypt specification's test vectors; both also checked
    /// against `openssl passwd -6` and libxcrypt's crypt(3).
    const SPEC_DEFAULT: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
    const SPEC_10000: &str = "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.";

    #[test]
    fn known_answers() {
        let spec_1000 = "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.";
        let table: &[(&str, &str, bool)] = &[
            (SPEC_DEFAULT, "Hello world!", true),
            (SPEC_DEFAULT, "Hello world", false),
            (SPEC_DEFAULT, "", false),
            // The spec vector with its tail corrupted (as once circulated).
            (
                "$6$saltstring$svn8UoSVapNtRuVYqYlMvsLq7QLP.rZqGWu9H3nfp8kLzQHS2Eb6KaLnhw/ko7RQJZf3vDzUjWnbqwAv6NNFV/",
                "Hello world!",
                false,
            ),
            (SPEC_10000, "Hello world!", true),
            (SPEC_10000, "hello world!", false),
            // Spec vector: rounds=10 is clamped to 1000 and output as such.
            (spec_1000, "the minimum number is still observed", true),
            (
                "$6$rounds=10$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
                "the minimum number is still observed",
                true,
            ),
            (&format!("{{SHA512-CRYPT}}{SPEC_DEFAULT}"), "Hello world!", true),
            (&format!("{{sha512-crypt}}{SPEC_DEFAULT}"), "Hello world!", true),
            (&format!("{{CRYPT}}{SPEC_DEFAULT}"), "Hello world!", true),
            (&format!("{{SHA512-CRYPT}}{SPEC_DEFAULT}"), "Hello world", false),
            ("{PLAIN}secret", "secret", true),
            ("{plain}secret", "secret", true),
            ("{PLAIN}secret", "secret ", false),
            ("{PLAIN}secret", "Secret", false),
            ("{PLAIN}secret", "", false),
            ("{PLAIN}", "", true),
            ("{PLAIN}a;b#c", "a;b#c", true),
            ("{PLAIN}pässwörd", "pässwörd", true),
            // Unknown or unsupported schemes.
            ("secret", "secret", false),
            ("{MD5-CRYPT}$1$abc$def", "x", false),
            ("{SHA256-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF", "Hello world!", false),
            ("$2y$10$abcdefghijklmnopqrstuu", "x", false),
            ("", "", false),
        ];
        for (stored, password, want) in table {
            assert_eq!(verify(stored, password), *want, "{stored:?} / {password:?}");
        }
    }

    #[test]
    fn made_hash_verifies() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with(&format!("$6$rounds={HASH_ROUNDS}$")), "{h}");
        let salt = h.split('$').nth(3).unwrap();
        assert_eq!(salt.len(), 16);
        assert!(salt.bytes().all(|b| CRYPT_B64.contains(&b)));
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "correct horsE"));
        assert!(scheme_ok(&h));
        assert!(!is_plain(&h));
        // Two hashes of one password differ by salt.
        assert_ne!(h, hash("correct horse").unwrap());
        assert!(hash(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
    }

    #[test]
    fn malformed_never_panics() {
        let junk = "x".repeat(10 * 1024);
        let long_hash = format!("$6$salt${}", "A".repeat(10 * 1024));
        let valid_tail = SPEC_DEFAULT.trim_start_matches("$6$saltstring$");
        let table: Vec<String> = vec![
            "$6$".into(),
            "$6$$".into(),
            "$6$$$".into(),
            "$6$rounds=abc$x$y".into(),
            "$6$rounds=$x$y".into(),
            "$6$rounds=-5$x$y".into(),
            "$6$rounds=+5000$saltstring$".to_string() + valid_tail,
            "$6$rounds=99999999999999999999$x$y".into(),
            "$6$rounds=5000".into(),
            "$6$rounds=5000$".into(),
            "$6$salt".into(),
            "$6$salt$".into(),
            "$6$saltstring$".to_string() + &valid_tail[1..],
            "$6$saltstring$".to_string() + valid_tail + "A",
            "$6$saltstring$".to_string() + &valid_tail.replace('/', "!"),
            "$6$saltstringsaltstring$".to_string() + valid_tail,
            "$6$salt\0$".to_string() + valid_tail,
            "$6$saltstring$".to_string() + &valid_tail[..85] + "\u{e9}",
            "{SHA512-CRYPT}".into(),
            "{SHA512-CRYPT}$1$abc$def".into(),
            "{SHA512-CRY".into(),
            "{".into(),
            "{PLAIN".into(),
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}".into(),
            "{PLAI\u{e9}".into(),
            "\0".into(),
            "$6$\0\0\0".into(),
            junk.clone(),
            long_hash,
            format!("$6${junk}"),
        ];
        for stored in &table {
            for password in ["", "Hello world!", "\0", junk.as_str()] {
                assert!(!verify(stored, password), "{stored:?}");
            }
            assert!(!scheme_ok(stored), "{stored:?}");
        }
    }

    #[test]
    fn overlong_password_refused_cheaply() {
        let long = "p".repeat(MAX_PASSWORD_LEN + 1);
        let stored = format!("$6${}", "x"); // malformed anyway
        assert!(!verify(&stored, &long));
        // Well-formed hash, overlong password: false without hashing.
        assert!(!verify(SPEC_DEFAULT, &long));
        // {PLAIN} has no such cost and no such limit.
        assert!(verify(&format!("{{PLAIN}}{long}"), &long));
    }

    #[test]
    fn scheme_checks() {
        let table: &[(&str, bool, bool)] = &[
            (SPEC_DEFAULT, true, false),
            (SPEC_10000, true, false),
            ("{PLAIN}secret", true, true),
            ("{Plain}secret", true, true),
            ("{SHA512-CRYPT}$6$x$y", false, false),
            ("plain", false, false),
            ("", false, false),
        ];
        for (stored, ok, plain) in table {
            assert_eq!(scheme_ok(stored), *ok, "{stored}");
            assert_eq!(is_plain(stored), *plain, "{stored}");
        }
    }

    #[test]
    fn ct_eq_table() {
        let table: &[(&[u8], &[u8], bool)] = &[
            (b"", b"", true),
            (b"a", b"a", true),
            (b"a", b"b", false),
            (b"a", b"", false),
            (b"", b"a", false),
            (b"abc", b"abd", false),
            (b"abc", b"abcd", false),
        ];
        for (a, b, want) in table {
            assert_eq!(ct_eq(a, b), *want, "{a:?} {b:?}");
        }
    }

    #[test]
    fn dummy_copies_the_common_cost() {
        let mkpasswd = "$6$SSzUkkHVT6Eczgez$lsJKdTQ6yquR4wk5yVa7yM8ggXoZRvSwU0KONfbkSODtzLVR//YjwuoHlqkFPVoBX8M5sN.I/bgkR5JmNRvhJ1";
        // (stored values, Some((rounds, salt length)) or None for {PLAIN})
        type Case<'a> = (Vec<&'a str>, Option<(u32, usize)>);
        let table: Vec<Case> = vec![
            (vec![], Some((HASH_ROUNDS, 16))),
            (vec![SPEC_DEFAULT], Some((5000, 10))),
            (vec![mkpasswd, SPEC_10000, mkpasswd], Some((5000, 16))),
            (vec![SPEC_10000, mkpasswd], Some((10_000, 16))),
            (vec!["{PLAIN}a", "{PLAIN}b", mkpasswd], None),
            (vec!["junk", "{PLAIN}a"], None),
        ];
        for (stored, want) in table {
            let d = dummy_like(stored.iter().copied());
            match (parse(&d), want) {
                (Some(Stored::Sha512Crypt(h)), Some((rounds, salt))) => {
                    assert_eq!((h.rounds, h.salt.len()), (rounds, salt), "{stored:?}")
                }
                (Some(Stored::Plain(_)), None) => {}
                _ => panic!("{stored:?} gave {d}"),
            }
            assert!(!verify(&d, ""));
        }
    }

    /// Prints verify time per rounds count; see `HASH_ROUNDS`.
    /// `cargo test --lib auth::tests::timing -- --nocapture`
    #[test]
    fn timing() {
        for rounds in [5_000u32, 10_000, 50_000] {
            let salt = b"saltstringsaltst";
            let hash = sha512_crypt_b64(b"Hello world!", salt, rounds);
            let stored = format!(
                "$6$rounds={rounds}${}${}",
                String::from_utf8_lossy(salt),
                String::from_utf8_lossy(&hash)
            );
            let start = std::time::Instant::now();
            assert!(verify(&stored, "Hello world!"));
            let t = start.elapsed();
            println!(
                "rounds={rounds}: verify {:?} here, ~{:?} on a 20x slower router",
                t,
                t * 20
            );
        }
    }
}
