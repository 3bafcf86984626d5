//! mailgate: a small, durable mail server for home routers and NAS boxes.
//!
//! The binary (`main.rs`) is a thin CLI over this library; integration
//! tests drive the binary, unit tests drive the modules directly.

pub mod auth;
pub mod config;
pub mod conn;
pub mod control;
pub mod delivery;
pub mod dropfile;
pub mod event_loop;
pub mod mailauth;
pub mod net;
pub mod oauth;
pub mod outbox;
pub mod penalty;
pub mod pickup;
pub mod privileges;
pub mod proto;
pub mod sendmail;
pub mod server;
pub mod signing;
pub mod smartpop;
pub mod store;
pub mod tls;
pub mod workers;

#[cfg(test)]
mod house_rules {
    /// No process-wide mutable state outside tests: what threads share is
    /// owned by the server and lent (`conn::driver::Services`). Atomic
    /// counters stay allowed: they only make names unique (like the PID in
    /// a Maildir name) and nobody reads them back as state.
    #[test]
    fn no_static_locks_or_cells() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // Built at run time so that this test's own text does not match.
        let kinds = [
            "Mutex", "RwLock", "Condvar", "OnceLock", "LazyLock", "Cell<",
        ];
        let mut offenders = Vec::new();
        let mut stack = vec![src];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("src is readable") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("lib.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                let lines: Vec<&str> = text.lines().collect();
                for (n, line) in lines.iter().enumerate() {
                    if line.trim_start().starts_with("mod tests") {
                        break;
                    }
                    let t = line.trim_start();
                    let is_static = t.starts_with("static ") || t.starts_with("pub static ");
                    if !is_static || !kinds.iter().any(|k| t.contains(k)) {
                        continue;
                    }
                    let test_only = lines[n.saturating_sub(8)..n]
                        .iter()
                        .any(|l| l.contains(&["#[cfg(", "test)]"].concat()));
                    if !test_only {
                        offenders.push(format!("{}:{}: {line}", path.display(), n + 1));
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "static mutable state:\n{}",
            offenders.join("\n")
        );
    }
}
