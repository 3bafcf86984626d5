//! Replays every file under `fuzz/seeds/TARGET/` and
//! `fuzz/regressions/TARGET/` through its harness, on stable Rust:
//! `cargo test --manifest-path fuzz/Cargo.toml`. The regressions are the
//! inputs that once crashed mailgate; they must stay harmless.

use std::fs;
use std::path::Path;

type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("smtp_server", mailgate_fuzz::smtp_server),
    ("pop3_server", mailgate_fuzz::pop3_server),
    ("config", mailgate_fuzz::config),
    ("multidrop_route", mailgate_fuzz::multidrop_route),
    ("dns_response", mailgate_fuzz::dns_response),
    ("smtp_client", mailgate_fuzz::smtp_client),
    ("pop3_client", mailgate_fuzz::pop3_client),
    ("imap_parser", mailgate_fuzz::imap_parser),
    ("imap_mime", mailgate_fuzz::imap_mime),
    ("imap_session", mailgate_fuzz::imap_session),
    ("oauth_answer", mailgate_fuzz::oauth_answer),
];

fn replay(folder: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut n = 0;
    for (name, harness) in TARGETS {
        let Ok(dir) = fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in dir {
            let path = entry.expect("readable folder").path();
            let data = fs::read(&path).expect("readable file");
            eprintln!("{name}: {}", path.display());
            harness(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn seeds_run_clean() {
    assert!(replay("seeds") > 0, "no seeds found");
}

#[test]
fn regressions_stay_fixed() {
    replay("regressions");
}
