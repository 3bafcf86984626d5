//! TLS configuration for both directions, built on rustls with the ring
//! provider (TLS 1.2 and 1.3 only).
//!
//! Owns: the server certificate (from `[tls] cert`/`key`, or a self-signed
//! pair made once in `data_dir/tls/`), the verifying client config for
//! smarthosts and SmartPop (web roots plus `ca_file`, or for the outbox
//! one pinned certificate: `[outbox] fingerprint`), the opportunistic
//! client config for direct-to-MX STARTTLS, and the one-line description of
//! a negotiated session for `Received:` lines and logs.
//! Must not: touch sockets or drive handshakes (the connection drivers own
//! the rustls sessions), or panic on a certificate or key file.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, ProtocolVersion, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};

/// TLS 1.3 (RFC 8446) preferred, TLS 1.2 (RFC 5246) for older peers; no
/// SSLv3/TLS 1.0/1.1 (RFC 8996 deprecates them, rustls never had them).
const VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
/// Sub-directory of `data_dir` for the self-signed pair.
const SELF_SIGNED_DIR: &str = "tls";
const SELF_SIGNED_CERT: &str = "cert.pem";
const SELF_SIGNED_KEY: &str = "key.pem";
/// The private key is for mailgate's user only; the directory too, so no one
/// else can swap the files.
const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// A certificate, key or CA file that cannot be used, or a TLS setup error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The file at fault, when there is one.
    pub path: Option<PathBuf>,
    pub message: String,
}

impl TlsError {
    fn file(path: &Path, message: impl Into<String>) -> TlsError {
        TlsError {
            path: Some(path.to_path_buf()),
            message: message.into(),
        }
    }

    fn other(message: impl Into<String>) -> TlsError {
        TlsError {
            path: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}: {}", p.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side for SMTP (STARTTLS, SMTPS) and POP3 (STLS, POP3S).
///
/// With `cert` and `key` both set, loads the PEM chain (leaf first) and the
/// key (PKCS#8, PKCS#1 RSA or SEC1 EC). With neither, makes a self-signed
/// ECDSA P-256 certificate for `hostname` in `data_dir/tls/` on first start
/// and reuses it afterwards; its SHA-256 fingerprint is logged either way so
/// users can check what their mail client shows.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    hostname: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let certified = match (cert, key) {
        (Some(cert), Some(key)) => load_pair(&provider, cert, key)?,
        (None, None) => self_signed(&provider, data_dir, hostname)?.0,
        (Some(_), None) => return Err(TlsError::other("[tls] cert is set but key is not")),
        (None, Some(_)) => return Err(TlsError::other("[tls] key is set but cert is not")),
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::other(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok(Arc::new(config))
}

/// SHA-256 of a DER certificate as upper-case hex pairs joined by colons,
/// as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(cert_der: &[u8]) -> String {
    // ring is not a direct dependency; its SHA-256 is reachable through the
    // hash of a SHA-256 cipher suite of the ring provider.
    let hash = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .map(|s| s.common.hash_provider.hash(cert_der));
    match hash {
        Some(h) => h
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        None => String::from("?"),
    }
}

/// The client side for smarthosts and SmartPop servers: the server's
/// certificate must chain to a web root (webpki-roots; routers often have
/// no CA bundle) or to a certificate in `ca_file`, and name the host.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::file(path, format!("unusable CA certificate: {e}")))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::other(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The outbox's verifying client config: with `[outbox] fingerprint`,
/// exactly the certificate of that SHA-256 is accepted (self-signed, any
/// name, any dates: the pin is the trust; the handshake signature must
/// still be made with its key), else [`client_config`] with `ca_file`.
pub fn outbox_client_config(
    outbox: &crate::config::OutboxConfig,
) -> Result<Arc<ClientConfig>, TlsError> {
    let Some(pin) = &outbox.fingerprint else {
        return client_config(outbox.ca_file.as_deref());
    };
    let provider = provider();
    let verifier = Arc::new(UnchainedCert {
        pin: Some(pin.clone()),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::other(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client side for direct-to-MX STARTTLS: RFC 7435 opportunistic
/// security. MX hosts commonly present self-signed or mismatched
/// certificates, and the alternative is plaintext, so any certificate is
/// accepted; the handshake signatures are still checked, so the session is
/// bound to the key in that certificate.
pub fn opportunistic_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(UnchainedCert {
        pin: None,
        algorithms: provider.signature_verification_algorithms,
    });
    // Only fails when the provider lacks cipher suites for the versions: a
    // property of this build (ring has them for both; the tests run this),
    // never of input or config.
    #[allow(clippy::expect_used)]
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .expect("ring provider supports TLS 1.2 and 1.3");
    Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`, once a session is
/// negotiated; `None` before (or without) a handshake.
pub fn describe(conn: &CommonState) -> Option<String> {
    let version = match conn.protocol_version()? {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    };
    let suite = conn.negotiated_cipher_suite()?.suite();
    let suite = suite
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{suite:?}"));
    Some(format!("{version} with cipher {suite}"))
}

/// The verifier for servers the web roots cannot vouch for: no chain or
/// name check, signatures checked with the provider's algorithms. With no
/// `pin`, any certificate is accepted (direct-to-MX STARTTLS, RFC 7435
/// section 3: "encryption without authentication"); with one, exactly the
/// certificate whose SHA-256 of its DER (as [`fingerprint`] writes it) it
/// is (`[outbox] fingerprint`).
#[derive(Debug)]
struct UnchainedCert {
    pin: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for UnchainedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = fingerprint(end_entity.as_ref());
        if &got == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate SHA256:{got} is not the pinned [outbox] fingerprint"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Loads a PEM chain and key and checks that they belong together, naming
/// the file at fault in every error.
fn load_pair(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::file(key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // The key type cannot report its public key: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::file(
            key,
            format!(
                "private key does not match the certificate in {}",
                cert.display()
            ),
        )),
        Err(e) => Err(TlsError::file(cert, format!("unusable certificate: {e}"))),
    }
}

/// All `CERTIFICATE` blocks of a PEM file, in order; none is an error.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|e| TlsError::file(path, format!("cannot read: {e}")))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::file(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::file(path, "no CERTIFICATE found in PEM file"));
    }
    Ok(certs)
}

/// The first private key of a PEM file: `PRIVATE KEY` (PKCS#8),
/// `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(|e| TlsError::file(path, format!("cannot read: {e}")))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsError::file(
            path,
            "no private key found (PKCS#8, RSA or EC PEM; encrypted keys are not supported)",
        )),
        Err(e) => Err(TlsError::file(path, format!("bad PEM: {e}"))),
    }
}

/// The self-signed pair in `data_dir/tls/`: reused when both files exist,
/// made when neither does (or only one survived an interrupted first start).
/// A damaged pair is an error, not silently replaced: a user may have
/// pinned its fingerprint in their mail client. Returns true if just made.
fn self_signed(
    provider: &CryptoProvider,
    data_dir: &Path,
    hostname: &str,
) -> Result<(CertifiedKey, bool), TlsError> {
    let dir = data_dir.join(SELF_SIGNED_DIR);
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        let certified = load_pair(provider, &cert_path, &key_path)?;
        if let Some(leaf) = certified.cert.first() {
            log::info!(
                "using self-signed certificate {} (SHA-256 fingerprint {})",
                cert_path.display(),
                fingerprint(leaf)
            );
        }
        return Ok((certified, false));
    }

    let (cert_pem, key_pem, der) = generate(hostname)?;
    fs::create_dir_all(&dir).map_err(|e| TlsError::file(&dir, format!("cannot create: {e}")))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| TlsError::file(&dir, format!("cannot set permissions: {e}")))?;
    // Key first: a crash in between leaves a lone key, which the next start
    // replaces; cert.pem appearing means the pair is complete.
    write_durably(&key_path, key_pem.as_bytes(), KEY_FILE_MODE)?;
    write_durably(&cert_path, cert_pem.as_bytes(), CERT_FILE_MODE)?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TlsError::file(&dir, format!("cannot sync: {e}")))?;
    log::info!(
        "made a self-signed certificate for {hostname} in {} (SHA-256 fingerprint {})",
        cert_path.display(),
        fingerprint(&der)
    );
    let certified = load_pair(provider, &cert_path, &key_path)?;
    Ok((certified, true))
}

/// A new ECDSA P-256 key and a self-signed certificate naming `hostname`
/// (subject CN and the subjectAltName clients check, RFC 6125).
fn generate(hostname: &str) -> Result<(String, String, Vec<u8>), TlsError> {
    let fail = |e: rcgen::Error| {
        TlsError::other(format!("cannot make a certificate for {hostname:?}: {e}"))
    };
    // rcgen takes any string (even an empty one) as a DNS name; a client
    // would never match such a certificate, so refuse it here.
    if ServerName::try_from(hostname).is_err() {
        return Err(TlsError::other(format!(
            "cannot make a certificate for {hostname:?}: not a valid host name"
        )));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
}

/// Write to a temporary name, fsync, rename over `path`: a reader sees the
/// old file or the whole new one, never a torn one. The caller fsyncs the
/// directory.
fn write_durably(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let fail = |e: std::io::Error| TlsError::file(path, format!("cannot write: {e}"));
    // A stale temporary file could carry other permissions: start afresh.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(data).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};
    use std::sync::atomic::{AtomicUsize, Ordering};

    // Made once with `openssl ecparam -genkey` / `openssl genrsa -traditional`
    // and `openssl req -x509 -days 36500`: key formats rcgen does not write.
    const SEC1_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBrTCCAVOgAwIBAgIUCiO6Gg0ihHeZaRBxHQjbKKon/FswCgYIKoZIzj0EAwIw\n\
HDEaMBgGA1UEAwwRc2VjMS5leGFtcGxlLnRlc3QwIBcNMjYxMTI1MDE0NDE3WhgP\n\
MjEyNjExMDEwMTQ0MTdaMBwxGjAYBgNVBAMMEXNlYzEuZXhhbXBsZS50ZXN0MFkw\n\
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHWiDG+HNkzn/g89k0dc+QggwTJ9jrWlB\n\
tnTCSkzLQ34cOYmZywD35rhJy4dJj/EVekyiBFkC5NJ+522R0TV75qNxMG8wHQYD\n\
VR0OBBYEFJq6gZ030AScLHFQxghiWHnUuvvGMB8GA1UdIwQYMBaAFJq6gZ030ASc\n\
LHFQxghiWHnUuvvGMA8GA1UdEwEB/wQFMAMBAf8wHAYDVR0RBBUwE4IRc2VjMS5l\n\
eGFtcGxlLnRlc3QwCgYIKoZIzj0EAwIDSAAwRQIgOVoNWaLLjMj1fK3CGbeUR8Pu\n\
9Lap6T0gGIJBaxemii4CIQCR0q43aYmixbfO5yGg2OARYCO/gDOBtRq9O2C3ofG7\n\
jA==\n\
-----END CERTIFICATE-----\n\
";
    const SEC1_KEY: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIPjvo3fJBXh6aLvR2jLU34yUwx1V4HIoxiGKsNWVGyKXoAoGCCqGSM49\n\
AwEHoUQDQgAEHWiDG+HNkzn/g89k0dc+QggwTJ9jrWlBtnTCSkzLQ34cOYmZywD3\n\
5rhJy4dJj/EVekyiBFkC5NJ+522R0TV75g==\n\
-----END EC PRIVATE KEY-----\n\
";
    const RSA_CERT: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDNjCCAh6gAwIBAgIUO+I/c8mKXdNn5y7Dr5NdRzybjHYwDQYJKoZIhvcNAQEL\n\
BQAwGzEZMBcGA1UEAwwQcnNhLmV4YW1wbGUudGVzdDAgFw0yNjExMjUwMTQ0MTda\n\
GA8yMTI2MTEwMTAxNDQxN1owGzEZMBcGA1UEAwwQcnNhLmV4YW1wbGUudGVzdDCC\n\
ASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAL3F60EWMX9i8qdaSOpbZk9J\n\
ofLp2IozIS7rWu3EC+ykkI25XEOEVp9aYZPY8BtaqjgBhmCfcLL5fgmuKl4GPigF\n\
KqwQBgFDhFe93TAQqdTYXFeBC4BLwqDbgIgWnx4ozx3Y0gu7g8T/quc8ZRWOQnql\n\
9Qtu89eCWVXLFZmilO4SMZFr4ttIwiVVnAwB3Z6KLb/inAVz4+q12rW3P/Rw4NZX\n\
vOgIWh+7R4/FWLzRxFiOIc2eHq1w/mZH/4j644/9XuD909QAaISXaOCi0lUyIzpp\n\
HtvkrljJ2uvFlIJZQs63C2Mav5hwEqnLyZKjaRxy7Yo8M8bIDRB4LSecQgieZNEC\n\
AwEAAaNwMG4wHQYDVR0OBBYEFCrzKY6VUYaCgNhnDD4tCjSK5k5/MB8GA1UdIwQY\n\
MBaAFCrzKY6VUYaCgNhnDD4tCjSK5k5/MA8GA1UdEwEB/wQFMAMBAf8wGwYDVR0R\n\
BBQwEoIQcnNhLmV4YW1wbGUudGVzdDANBgkqhkiG9w0BAQsFAAOCAQEAQMi3BzDQ\n\
UWIsiDraH6LKeeDqno8sY3xFlPbeebXU9v60QPW2PFyNhw/5EJTrP5nmzcb+1o6w\n\
gb9J6H1Iuz+xgnauruFzajmCWa29vRS0nNiSpKnvhLOMxsE+mjgMOcSW9cwpuiSx\n\
8BqAqmYvmJ5lzD31ZUIPYmKwXlQmUGRE5K1lkBty8pg9V4mfeqzLxAh40508G2+x\n\
J7ISu2U0kkhaNWbhOmxf+mof4Sw/vvIi6+5LVn3Zd0E/SiTXIauQV2/EjHk8mYkw\n\
QiivU4azxmZ4ldRX6dSVAVjnuDIk6EkokxaIQ8+ISMFUBTz8bmNPbYIaEvP1YXhY\n\
ofDDqL2OdxGfuw==\n\
-----END CERTIFICATE-----\n\
";
    const RSA_KEY: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEowIBAAKCAQEAvcXrQRYxf2Lyp1pI6ltmT0mh8unYijMhLuta7cQL7KSQjblc\n\
Q4RWn1phk9jwG1qqOAGGYJ9wsvl+Ca4qXgY+KAUqrBAGAUOEV73dMBCp1NhcV4EL\n\
gEvCoNuAiBafHijPHdjSC7uDxP+q5zxlFY5CeqX1C27z14JZVcsVmaKU7hIxkWvi\n\
20jCJVWcDAHdnootv+KcBXPj6rXatbc/9HDg1le86AhaH7tHj8VYvNHEWI4hzZ4e\n\
rXD+Zkf/iPrjj/1e4P3T1ABohJdo4KLSVTIjOmke2+SuWMna68WUgllCzrcLYxq/\n\
mHASqcvJkqNpHHLtijwzxsgNEHgtJ5xCCJ5k0QIDAQABAoIBAAzzH2yqryHL5qNA\n\
RQwZxMXLUGd+YpeuCbXyB7UeDoxAf8BUC9vSZ4QEC5DAGhGO/C39mKX2ROv8z23c\n\
rY899zbaGpsKlHmFZtecuqYhgcOzwe75fNRT4/BmTVAibwtq6hTVnoiAOR7G+lDa\n\
+hdG9/op+5DWRBukJvF0sSdYBOt1dak+Og5jB5dck11XDROT8LPGCYniIWG1rc5l\n\
A82XqAvkitCpJvXQrhIvn6S5z7MlFgPB0GFtftzpzRFOoKE6kooA+a+tTKUowTZv\n\
Jt+e2slEw4ysied/q+gSOejM6FD7EoRZsG2DY/8Wi/3/7Tre8nKg0Dmu56SQZPaB\n\
6laKLvMCgYEA5bJm+xwULFOQuPnQno6VjCZhxM2VhZHburOT8AZHPRiRX8aYh3Nr\n\
1DeuNoAdgwEBVZhE4AUbPB/wSzH+R0GpBBd1s8vblaQLNoV7Od9sQfQPFAZB/xhF\n\
DZomPMHi8AQ86g04Wx/MTlvDixryKD9kqXLnfzK/2CGtK/rJL6mx7DMCgYEA04El\n\
T57nTq7bpUf9O9IXXLkcbbvhXUkodlbYmn1t1PlQlY+2kEoQ9VLmDpOngW3OpE6X\n\
a7qbzBX6t/3RgP3iecTZLtOLGCCZBVt7pWvv1txfmAwNV6wvLSvPn5F/mI9yqm7e\n\
9A+70fJ9vPB4Up1swdtwXM54dGOqX8O/v9bZJusCgYA4hONuGoSkO5O60E2TFkaa\n\
C7+261dFXJSSpilawFC7KdZrmLRjb/UybNkDNBcO6ypm42bfMKJ48urvtcd5xSBP\n\
j2445YqMkaborYOaw+0hdWpYZQnMOS6UoD+UZ6jtoj1S4hnh4jsldNLy4ZiAasjc\n\
IRfxZo1qIy83SShEAB91nQKBgQC3DzlO75b+KCPdqzBH3W/xBhrP82R8jDxkKIiz\n\
NkqgoeUYfdmiiyigXM7X4P6C7JqE5azzRgFgo8lsBFiXT6b8g98CQ4BJMrWeyG59\n\
X62nhveKLyxBLLtsWlYKozEPx2CUmP+JuDB052/i3zMVNkISi6519RKWkki9ODy3\n\
eupaXwKBgGrb+WFSrfly49BM5tvBzG2/Tbj/HyK3FASaGbgTz17p3hgYLZ49CFgL\n\
wRHkZn1VT/DmgzZD5LGcYyT/H6DZo8GBAFPSYyyAu6i0rN2+NTaR8hwlPWcOFwY9\n\
aKTe6GLpuoY8tbu1FsXOQwwQxB1TBc4VFreHOAEo0fE9nXFxOxhN\n\
-----END RSA PRIVATE KEY-----\n\
";

    /// A fresh, empty directory under the system temp dir.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "mailgate-tls-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn write(&self, name: &str, data: &str) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, data).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A CA and a leaf for `mail.example.test` signed by it, as PEM:
    /// (ca cert, leaf chain, leaf key).
    fn ca_and_leaf() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mailgate test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["mail.example.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    /// Moves TLS records between the two ends in memory until both finish
    /// the handshake; the first error from either side ends it.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        fn pump(
            from: &mut dyn FnMut(&mut Vec<u8>) -> bool,
            to: &mut dyn FnMut(&mut &[u8]) -> Result<(), rustls::Error>,
        ) -> Result<bool, rustls::Error> {
            let mut buf = Vec::new();
            while from(&mut buf) {}
            let moved = !buf.is_empty();
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                to(&mut rd)?;
            }
            Ok(moved)
        }
        for _ in 0..10 {
            let c = pump(
                &mut |buf| client.wants_write() && client.write_tls(buf).unwrap() > 0,
                &mut |rd| {
                    server.read_tls(rd).unwrap();
                    server.process_new_packets().map(|_| ())
                },
            )?;
            let s = pump(
                &mut |buf| server.wants_write() && server.write_tls(buf).unwrap() > 0,
                &mut |rd| {
                    client.read_tls(rd).unwrap();
                    client.process_new_packets().map(|_| ())
                },
            )?;
            if !c && !s && !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake made no progress".into()))
    }

    fn connect(
        client_config: Arc<ClientConfig>,
        server_config: Arc<ServerConfig>,
        name: &str,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = ClientConnection::new(client_config, name)?;
        let mut server = ServerConnection::new(server_config)?;
        handshake(&mut client, &mut server)?;
        Ok((client, server))
    }

    fn leaf_of(config: &ServerConfig) -> Vec<u8> {
        // Drive one handshake and read the certificate the client was shown.
        let (client, _) = connect(
            opportunistic_client_config(),
            Arc::new(config.clone()),
            "any.example",
        )
        .unwrap();
        client.peer_certificates().unwrap()[0].to_vec()
    }

    #[test]
    fn self_signed_made_once_and_reused() {
        let dir = TempDir::new();
        let data = dir.0.join("data");
        let p = provider();
        let (first, made) = self_signed(&p, &data, "mail.example.test").unwrap();
        assert!(made);
        let tls_dir = data.join("tls");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tls_dir), 0o700);
        assert_eq!(mode(&tls_dir.join("key.pem")), 0o600);
        assert!(!tls_dir.join("key.pem.tmp").exists());
        assert!(!tls_dir.join("cert.pem.tmp").exists());

        let (second, made) = self_signed(&p, &data, "mail.example.test").unwrap();
        assert!(!made);
        assert_eq!(fingerprint(&first.cert[0]), fingerprint(&second.cert[0]));

        // Through the public entry point: the same certificate is served.
        let config = server_config(None, None, &data, "mail.example.test").unwrap();
        assert_eq!(fingerprint(&leaf_of(&config)), fingerprint(&first.cert[0]));

        // A lone key (crash between the two renames) is replaced.
        fs::remove_file(tls_dir.join("cert.pem")).unwrap();
        let (third, made) = self_signed(&p, &data, "mail.example.test").unwrap();
        assert!(made);
        assert_ne!(fingerprint(&third.cert[0]), fingerprint(&first.cert[0]));

        // A damaged pair is reported, not replaced.
        fs::write(tls_dir.join("cert.pem"), "junk").unwrap();
        let err = server_config(None, None, &data, "mail.example.test").unwrap_err();
        assert_eq!(
            err.path.as_deref(),
            Some(tls_dir.join("cert.pem").as_path())
        );
        assert_eq!(
            fs::read_to_string(tls_dir.join("cert.pem")).unwrap(),
            "junk"
        );
    }

    #[test]
    fn self_signed_needs_a_valid_hostname() {
        let dir = TempDir::new();
        for bad in ["", "m\u{e4}il.example", "a b", "a..b", "-", "x\0y"] {
            let r = server_config(None, None, &dir.0, bad);
            assert!(r.is_err(), "{bad:?}");
        }
        assert!(!dir.0.join("tls/cert.pem").exists());
    }

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"");
        // SHA-256 of the empty string.
        assert_eq!(
            fp,
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
    }

    #[test]
    fn configured_pairs_load_in_every_key_format() {
        let dir = TempDir::new();
        let (_, leaf, key) = ca_and_leaf();
        let table = [
            ("pkcs8", leaf.as_str(), key.as_str()),
            ("sec1", SEC1_CERT, SEC1_KEY),
            ("rsa", RSA_CERT, RSA_KEY),
        ];
        for (name, cert, key) in table {
            let c = dir.write(&format!("{name}.crt"), cert);
            let k = dir.write(&format!("{name}.key"), key);
            let config = server_config(Some(&c), Some(&k), &dir.0, "unused")
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // Served, and the opportunistic client accepts it (TLS 1.3).
            let (client, server) =
                connect(opportunistic_client_config(), config.clone(), "x.example").unwrap();
            assert_eq!(
                client.peer_certificates().unwrap()[0].to_vec(),
                rustls_pemfile::certs(&mut cert.as_bytes())
                    .next()
                    .unwrap()
                    .unwrap()
                    .to_vec()
            );
            assert!(describe(&server)
                .unwrap()
                .starts_with("TLSv1.3 with cipher TLS13_"));
            // And over TLS 1.2, whose signatures are checked differently.
            let tls12 = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UnchainedCert {
                    pin: None,
                    algorithms: provider().signature_verification_algorithms,
                }))
                .with_no_client_auth();
            let (client, _) = connect(Arc::new(tls12), config, "x.example").unwrap();
            let d = describe(&client).unwrap();
            assert!(
                d.starts_with("TLSv1.2 with cipher TLS_ECDHE_"),
                "{name}: {d}"
            );
        }
        assert!(
            !dir.0.join("tls").exists(),
            "configured pair must not make one"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = TempDir::new();
        let (_, leaf, key) = ca_and_leaf();
        let cert = dir.write("cert.pem", &leaf);
        let key = dir.write("key.pem", &key);
        let other_key = dir.write("other.key", SEC1_KEY);
        let junk = dir.write("junk.pem", "not a pem file\n\0\u{ff}");
        let bad_b64 = dir.write(
            "badb64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let not_der = dir.write(
            "notder.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let bad_key = dir.write(
            "badkey.pem",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
        );
        let encrypted = dir.write(
            "enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let truncated = dir.write("trunc.pem", &leaf[..leaf.len() / 2]);
        let missing = dir.0.join("missing.pem");

        // (cert, key, file named in the error, words in the message)
        let table: &[(&Path, &Path, &Path, &str)] = &[
            (&cert, &other_key, &other_key, "does not match"),
            (&key, &cert, &key, "no CERTIFICATE"),
            (&cert, &cert, &cert, "no private key"),
            (&junk, &key, &junk, "no CERTIFICATE"),
            (&cert, &junk, &junk, "no private key"),
            (&bad_b64, &key, &bad_b64, "bad PEM"),
            (&not_der, &key, &not_der, "unusable certificate"),
            (&cert, &bad_key, &bad_key, "unusable private key"),
            (&cert, &encrypted, &encrypted, "encrypted"),
            (&truncated, &key, &truncated, ""),
            (&missing, &key, &missing, "cannot read"),
            (&cert, &missing, &missing, "cannot read"),
        ];
        for (c, k, at, words) in table {
            let err = server_config(Some(c), Some(k), &dir.0, "unused").unwrap_err();
            assert_eq!(err.path.as_deref(), Some(*at), "{err}");
            assert!(err.message.contains(words), "{err}");
            assert!(err.to_string().starts_with(&at.display().to_string()));
        }

        for (c, k) in [(Some(cert.as_path()), None), (None, Some(key.as_path()))] {
            let err = server_config(c, k, &dir.0, "unused").unwrap_err();
            assert!(err.message.contains("is set but"), "{err}");
        }
        assert!(client_config(Some(&junk)).is_err());
        assert!(client_config(Some(&missing)).is_err());
    }

    #[test]
    fn verified_handshake_with_own_ca() {
        let dir = TempDir::new();
        let (ca, leaf, key) = ca_and_leaf();
        let c = dir.write("cert.pem", &leaf);
        let k = dir.write("key.pem", &key);
        let ca_file = dir.write("ca.pem", &ca);
        let server = server_config(Some(&c), Some(&k), &dir.0, "unused").unwrap();
        let client = client_config(Some(&ca_file)).unwrap();

        let (mut client_conn, mut server_conn) =
            connect(client.clone(), server.clone(), "mail.example.test").unwrap();
        let d = describe(&client_conn).unwrap();
        assert!(d.starts_with("TLSv1.3 with cipher TLS13_"), "{d}");
        assert_eq!(describe(&server_conn), Some(d));

        // Application data flows both ways.
        client_conn.writer().write_all(b"EHLO x\r\n").unwrap();
        let mut buf = Vec::new();
        client_conn.write_tls(&mut buf).unwrap();
        server_conn.read_tls(&mut buf.as_slice()).unwrap();
        server_conn.process_new_packets().unwrap();
        let mut got = [0u8; 8];
        std::io::Read::read_exact(&mut server_conn.reader(), &mut got).unwrap();
        assert_eq!(&got, b"EHLO x\r\n");

        // The wrong name, or no CA file, is refused.
        assert!(connect(client, server.clone(), "other.example.test").is_err());
        assert!(connect(
            client_config(None).unwrap(),
            server.clone(),
            "mail.example.test"
        )
        .is_err());
        // Opportunistic accepts it regardless of name.
        assert!(connect(opportunistic_client_config(), server, "other.example").is_ok());
    }

    #[test]
    fn opportunistic_accepts_self_signed() {
        let dir = TempDir::new();
        let server = server_config(None, None, &dir.0, "mx.example.test").unwrap();
        let (client, _) = connect(
            opportunistic_client_config(),
            server.clone(),
            "mx.example.test",
        )
        .unwrap();
        assert!(describe(&client).is_some());
        // The verifying client refuses the same certificate.
        assert!(connect(client_config(None).unwrap(), server, "mx.example.test").is_err());
    }

    #[test]
    fn describe_before_handshake_is_none() {
        let dir = TempDir::new();
        let server = server_config(None, None, &dir.0, "mx.example.test").unwrap();
        let conn = ServerConnection::new(server).unwrap();
        assert_eq!(describe(&conn), None);
    }
}
