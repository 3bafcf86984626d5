//! Sans-IO protocol cores: plain structs fed with bytes and completions,
//! giving back reply bytes and events. No sockets, files, threads, clock
//! or TLS in here; the drivers in `conn/` own all IO.

pub mod address;
pub mod dns;
pub mod dotstuff;
pub mod envelope;
pub mod http;
pub mod imap;
pub mod imap_client;
pub mod json;
pub mod line;
pub mod msgid;
pub mod oauth;
pub mod pop3_client;
pub mod pop3_server;
pub mod sasl;
pub mod smtp_client;
pub mod smtp_server;

/// How a client connection to a remote server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte.
    Tls,
    /// Upgrade with STARTTLS / STLS.
    StartTls,
    None,
}

#[cfg(test)]
mod tests {
    /// The cores are the house's foundation: they may use std and small
    /// codec crates, never another module of mailgate (config, store,
    /// smartpop, ...), so they stay testable and fuzzable on their own.
    #[test]
    fn proto_imports_nothing_else_of_the_crate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto");
        // Built at run time so that this test's own text does not match.
        let needle = ["crate", "::"].concat();
        let mut offenders = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("src/proto is readable") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                for (n, line) in text.lines().enumerate() {
                    let mut rest = line;
                    while let Some(i) = rest.find(&needle) {
                        let after = &rest[i + needle.len()..];
                        if !after.starts_with("proto") {
                            offenders.push(format!("{}:{}: {line}", path.display(), n + 1));
                        }
                        rest = after;
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "proto/ imports other modules:\n{}",
            offenders.join("\n")
        );
    }
}
