//! DKIM key files: generating a domain's keys (`mailgate dkim keygen`),
//! storing them and reading them back for the signer.
//!
//! Owns: the layout `data_dir/dkim/DOMAIN/SELECTOR-rsa.pem` and
//! `SELECTOR-ed25519.pem` (PKCS#8 PEM, mode 0600, written through
//! `store::durable`), the selectors in DNS (`SELECTOR-rsa._domainkey` and
//! `SELECTOR-ed25519._domainkey`: RFC 8463 4 signs with both, and one DNS
//! name should hold one key), and RSA key generation.
//!
//! Must not: run on the event loop (RSA generation takes a second or
//! more on a small ARM board; it is a CLI command).
//!
//! RSA generation uses the `rsa` crate (RustCrypto): `ring` can sign with
//! RSA but cannot make RSA keys. Only `RsaPrivateKey::new` and its PKCS#8
//! encoding are used; signing is `ring`'s (so RUSTSEC-2023-0071, a timing
//! side channel of that crate's private-key operations, does not apply).
//! Cost, measured on the stripped x86_64 release build with every
//! mailauth module reachable: 100,632 bytes (3,453,240 with it, 3,352,608
//! with generation stubbed out).

use std::io;
use std::path::{Path, PathBuf};

use super::dkim::{self, Algorithm, SigningIdentity, SigningKey};
use crate::store::durable;

/// RFC 8301 3.2: signers must use at least 1024 bits and should use 2048.
pub const RSA_BITS: usize = 2048;

/// The DNS selector of one of a domain's two keys.
pub fn selector_for(selector: &str, algorithm: Algorithm) -> String {
    match algorithm {
        Algorithm::RsaSha256 => format!("{selector}-rsa"),
        Algorithm::Ed25519Sha256 => format!("{selector}-ed25519"),
    }
}

/// Where a key lives.
pub fn key_path(data_dir: &Path, domain: &str, selector: &str, algorithm: Algorithm) -> PathBuf {
    data_dir
        .join("dkim")
        .join(domain.to_ascii_lowercase())
        .join(format!("{}.pem", selector_for(selector, algorithm)))
}

/// A new RSA key as PKCS#8 DER.
pub fn generate_rsa(bits: usize) -> Result<Vec<u8>, String> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| format!("RSA key generation failed: {e}"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| format!("RSA key encoding failed: {e}"))?;
    Ok(der.as_bytes().to_vec())
}

/// A selector or domain usable as a file and DNS name.
fn check_label(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with(['.', '-'])
        && !s.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!("bad {what} {s:?} (letters, digits, '-' and '.')"))
    }
}

/// `mailgate dkim keygen`: makes both keys of `domain` under `data_dir`
/// (refusing to replace existing ones, whose public halves may be in DNS)
/// and returns the TXT records to publish, one per line.
pub fn keygen(data_dir: &Path, domain: &str, selector: &str) -> Result<String, String> {
    check_label("domain", domain)?;
    if selector.contains('.') {
        return Err(format!("bad selector {selector:?}"));
    }
    check_label("selector", selector)?;
    let dir = data_dir.join("dkim").join(domain.to_ascii_lowercase());
    let algorithms = [Algorithm::RsaSha256, Algorithm::Ed25519Sha256];
    for alg in algorithms {
        let path = key_path(data_dir, domain, selector, alg);
        if path.exists() {
            return Err(format!(
                "{} exists; keys already published in DNS would stop verifying (remove it first)",
                path.display()
            ));
        }
    }
    durable::create_dir_all_durable(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut records = String::new();
    for alg in algorithms {
        let der = match alg {
            Algorithm::RsaSha256 => generate_rsa(RSA_BITS)?,
            Algorithm::Ed25519Sha256 => dkim::generate_ed25519()?,
        };
        let key = SigningKey::from_pkcs8(alg, &der)?;
        let path = key_path(data_dir, domain, selector, alg);
        let tmp = dir.join(format!(".{}.tmp", selector_for(selector, alg)));
        let _ = std::fs::remove_file(&tmp);
        durable::write_durable(&tmp, &path, &[dkim::pkcs8_pem(&der).as_bytes()])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        records.push_str(&format!(
            "{}._domainkey.{} IN TXT \"{}\"\n",
            selector_for(selector, alg),
            domain.to_ascii_lowercase(),
            dkim::dns_record(&key)
        ));
    }
    Ok(records)
}

/// Reads the keys of `domain` for signing (both when both exist).
/// `Ok(empty)` when there are none.
pub fn load(data_dir: &Path, domain: &str, selector: &str) -> Result<Vec<SigningIdentity>, String> {
    let mut out = Vec::new();
    for alg in [Algorithm::RsaSha256, Algorithm::Ed25519Sha256] {
        let path = key_path(data_dir, domain, selector, alg);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let der = dkim::pem_pkcs8(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let key =
            SigningKey::from_pkcs8(alg, &der).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(SigningIdentity {
            domain: domain.to_ascii_lowercase(),
            selector: selector_for(selector, alg),
            key,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_writes_both_keys_once() {
        let dir = std::env::temp_dir().join(format!("mailgate-keygen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let records = keygen(&dir, "Example.TEST", "mg").unwrap();
        assert!(records.contains("mg-rsa._domainkey.example.test IN TXT \"v=DKIM1; k=rsa; p=MII"));
        assert!(
            records.contains("mg-ed25519._domainkey.example.test IN TXT \"v=DKIM1; k=ed25519; p=")
        );
        for alg in [Algorithm::RsaSha256, Algorithm::Ed25519Sha256] {
            let path = key_path(&dir, "example.test", "mg", alg);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let ids = load(&dir, "example.test", "mg").unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0].selector, "mg-rsa");
        // The printed record is the loaded key's.
        assert!(records.contains(&dkim::dns_record(&ids[1].key)));
        assert!(keygen(&dir, "example.test", "mg")
            .unwrap_err()
            .contains("exists"));
        assert!(keygen(&dir, "../x", "mg").is_err());
        assert!(keygen(&dir, "example.test", "a.b").is_err());
        assert!(load(&dir, "other.test", "mg").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
