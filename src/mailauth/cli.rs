//! `mailgate dkim ...`: the command-line face of the DKIM code.
//!
//! Owns: `dkim keygen DOMAIN [--selector S]` (make the keys, print the TXT
//! records), and two internal commands for tests and debugging, not part
//! of the stable interface: `dkim sign DOMAIN [--selector S]` (stdin to
//! stdout, the DKIM-Signature fields on top) and `dkim verify --keys FILE`
//! (stdin; FILE has one `NAME TXT-TEXT` line per key record, standing in
//! for DNS; prints one verdict a line).
//!
//! Must not: be used by the server (it reads stdin and the clock).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::dkim::{Signer, Verifier, VerifyStep};
use super::{keys, Answer, Reply};

/// The selector when neither `--selector` nor `[domain X] dkim_selector`
/// names one.
pub const DEFAULT_SELECTOR: &str = "mailgate";

/// Bytes read from stdin at a time (the body is streamed).
const CHUNK: usize = 64 * 1024;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `(DOMAIN, selector)` from `DOMAIN [--selector S]`.
fn domain_and_selector(args: &[String], default: Option<&str>) -> Result<(String, String), String> {
    let mut domain = None;
    let mut selector = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--selector" || a == "-s" {
            selector = Some(it.next().ok_or("--selector needs a value")?.clone());
        } else if let Some(s) = a.strip_prefix("--selector=") {
            selector = Some(s.to_string());
        } else if a.starts_with('-') {
            return Err(format!("unknown option {a:?}"));
        } else if domain.is_none() {
            domain = Some(a.clone());
        } else {
            return Err(format!("unexpected argument {a:?}"));
        }
    }
    let domain = domain.ok_or("a DOMAIN is needed")?;
    let selector = selector
        .or_else(|| default.map(String::from))
        .unwrap_or_else(|| DEFAULT_SELECTOR.to_string());
    Ok((domain, selector))
}

/// `dkim keygen DOMAIN [--selector S]`.
pub fn keygen(
    data_dir: &Path,
    args: &[String],
    default_selector: Option<&str>,
) -> Result<String, String> {
    let (domain, selector) = domain_and_selector(args, default_selector)?;
    let records = keys::keygen(data_dir, &domain, &selector)?;
    Ok(format!(
        "keys written to {}\npublish these DNS records:\n{records}",
        data_dir
            .join("dkim")
            .join(domain.to_ascii_lowercase())
            .display()
    ))
}

/// `dkim sign DOMAIN [--selector S]` (internal).
pub fn sign(
    data_dir: &Path,
    args: &[String],
    default_selector: Option<&str>,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<(), String> {
    let (domain, selector) = domain_and_selector(args, default_selector)?;
    let ids = keys::load(data_dir, &domain, &selector)?;
    if ids.is_empty() {
        return Err(format!("no DKIM keys for {domain} (selector {selector})"));
    }
    // The message is needed twice (hash, then copy out): keep it here; this
    // is a test tool, the server streams from the spool file.
    let mut message = Vec::new();
    input
        .read_to_end(&mut message)
        .map_err(|e| format!("stdin: {e}"))?;
    let mut signer = Signer::new();
    for chunk in message.chunks(CHUNK) {
        signer.feed(chunk)?;
    }
    let headers = signer.finish(&ids, now())?;
    for h in headers {
        output.write_all(h.as_bytes()).map_err(|e| e.to_string())?;
    }
    output.write_all(&message).map_err(|e| e.to_string())
}

/// `dkim verify --keys FILE` (internal): returns the verdict lines.
pub fn verify(args: &[String], input: &mut dyn Read) -> Result<String, String> {
    let keys_file = match args {
        [flag, file] if flag == "--keys" => file,
        _ => return Err("usage: mailgate dkim verify --keys FILE < MESSAGE".into()),
    };
    let text = std::fs::read_to_string(keys_file).map_err(|e| format!("{keys_file}: {e}"))?;
    let records: Vec<(String, Vec<u8>)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, v)| {
            (
                n.trim_end_matches('.').to_ascii_lowercase(),
                v.as_bytes().to_vec(),
            )
        })
        .collect();
    let mut verifier = Verifier::new(now());
    let mut buf = vec![0; CHUNK];
    loop {
        let n = input.read(&mut buf).map_err(|e| format!("stdin: {e}"))?;
        if n == 0 {
            break;
        }
        verifier.feed(&buf[..n]);
    }
    verifier.finish_body();
    while verifier.step() == VerifyStep::Query {
        for q in verifier.queries() {
            let found: Vec<Vec<u8>> = records
                .iter()
                .filter(|(n, _)| *n == q.name)
                .map(|(_, v)| v.clone())
                .collect();
            let reply = if found.is_empty() {
                Reply::nxdomain()
            } else {
                Reply::Answer(Answer::Txt(found))
            };
            verifier.answer(&q, reply);
        }
    }
    let mut out = String::new();
    let results = verifier.results();
    if results.is_empty() {
        out.push_str("none\n");
    }
    for r in results {
        out.push_str(&format!(
            "{} d={} s={} a={}{} ({})\n",
            r.result,
            r.domain,
            r.selector,
            r.algorithm,
            if r.testing { " testing" } else { "" },
            r.reason
        ));
    }
    Ok(out)
}
