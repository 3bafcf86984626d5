//! DKIM table and round-trip tests; the interoperability with dkimpy is in
//! tests/test_dkim_interop.py.

use super::*;

const MESSAGE: &str = "From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: a folded\r\n\
 \tsubject line\r\n\
Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <1@example.org>\r\n\
\r\n\
Hello  Bob, \r\n\
\r\n\
a second paragraph.\r\n\
\r\n\
\r\n";

fn body_hash(canon: Canon, body: &[u8], chunk: usize, limit: Option<u64>) -> (Vec<u8>, u64) {
    let mut h = BodyHasher::new(canon, limit);
    for c in body.chunks(chunk.max(1)) {
        h.update(c);
    }
    h.finish()
}

fn sha(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

#[test]
fn canonicalization_rfc6376_3_4_5() {
    let header = b"A: X\r\nB : Y\t\r\n\tZ  \r\n";
    let fields = split_fields(header);
    assert_eq!(fields.len(), 2);
    assert_eq!(canon_header(&fields[0].raw, Canon::Relaxed), b"a:X\r\n");
    assert_eq!(canon_header(&fields[1].raw, Canon::Relaxed), b"b:Y Z\r\n");
    assert_eq!(
        canon_header(&fields[1].raw, Canon::Simple),
        b"B : Y\t\r\n\tZ  \r\n"
    );
    let body = b" C \r\nD \t E\r\n\r\n\r\n";
    for chunk in [1, 2, 3, 1000] {
        assert_eq!(
            body_hash(Canon::Relaxed, body, chunk, None).0,
            sha(b" C\r\nD E\r\n")
        );
        assert_eq!(
            body_hash(Canon::Simple, body, chunk, None).0,
            sha(b" C \r\nD \t E\r\n")
        );
        // LF line ends as the spool may keep them.
        let lf = b" C \nD \t E\n\n\n";
        assert_eq!(
            body_hash(Canon::Relaxed, lf, chunk, None).0,
            sha(b" C\r\nD E\r\n")
        );
    }
    // Empty bodies: simple is one CRLF, relaxed is empty (errata 1384).
    assert_eq!(body_hash(Canon::Simple, b"", 1, None).0, sha(b"\r\n"));
    assert_eq!(body_hash(Canon::Relaxed, b"\r\n\r\n", 1, None).0, sha(b""));
    // No final line end: one is added.
    assert_eq!(
        body_hash(Canon::Relaxed, b"x  y", 1, None).0,
        sha(b"x y\r\n")
    );
    // l= counts canonical bytes; the full length is reported.
    let (h, len) = body_hash(Canon::Simple, b"abc\r\ndef\r\n", 2, Some(4));
    assert_eq!((h, len), (sha(b"abc\r"), 10));
}

#[test]
fn b_value_is_stripped_byte_for_byte() {
    let raw = b"DKIM-Signature: v=1; bh=abc;\r\n\tb=dGVz\r\n\t dA==; d=x\r\n";
    assert_eq!(
        strip_b_value(raw),
        b"DKIM-Signature: v=1; bh=abc;\r\n\tb=; d=x\r\n"
    );
    let tags = parse_tags("v=1; a = rsa-sha256 ;b=ab\r\n cd").unwrap();
    assert_eq!(tag(&tags, "a"), Some("rsa-sha256"));
    assert!(parse_tags("v=1; v=1").is_err());
    assert!(parse_tags("v=1; =x").is_err());
}

fn test_keys() -> Vec<SigningIdentity> {
    let ed = generate_ed25519().unwrap();
    let rsa = crate::mailauth::keys::generate_rsa(2048).unwrap();
    vec![
        SigningIdentity {
            domain: "example.org".into(),
            selector: "s-rsa".into(),
            key: SigningKey::from_pkcs8(Algorithm::RsaSha256, &rsa).unwrap(),
        },
        SigningIdentity {
            domain: "example.org".into(),
            selector: "s-ed25519".into(),
            key: SigningKey::from_pkcs8(Algorithm::Ed25519Sha256, &ed).unwrap(),
        },
    ]
}

fn sign(message: &[u8], keys: &[SigningIdentity]) -> Vec<u8> {
    let mut s = Signer::new();
    for c in message.chunks(7) {
        s.feed(c).unwrap();
    }
    let mut out: Vec<u8> = s.finish(keys, 1_800_000_000).unwrap().concat().into_bytes();
    out.extend_from_slice(message);
    out
}

/// Verifies with key records given as (name, text), in chunks of `chunk`.
fn verify(message: &[u8], records: &[(String, String)], chunk: usize) -> Vec<SignatureOutcome> {
    let mut v = Verifier::new(1_800_000_100);
    for c in message.chunks(chunk) {
        v.feed(c);
    }
    v.finish_body();
    let mut rounds = 0;
    while v.step() == VerifyStep::Query {
        rounds += 1;
        assert!(rounds < 5);
        for q in v.queries() {
            let found: Vec<Vec<u8>> = records
                .iter()
                .filter(|(n, _)| *n == q.name)
                .map(|(_, t)| t.as_bytes().to_vec())
                .collect();
            let reply = if found.is_empty() {
                Reply::nxdomain()
            } else {
                Reply::Answer(Answer::Txt(found))
            };
            v.answer(&q, reply);
        }
    }
    v.results()
}

fn records_of(keys: &[SigningIdentity]) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| {
            (
                format!("{}._domainkey.{}", k.selector, k.domain),
                dns_record(&k.key),
            )
        })
        .collect()
}

#[test]
fn sign_then_verify_and_tamper() {
    let keys = test_keys();
    let records = records_of(&keys);
    let signed = sign(MESSAGE.as_bytes(), &keys);
    let text = String::from_utf8(signed.clone()).unwrap();
    assert!(
        text.contains("h=from:to:subject:date:message-id:from") || text.contains("h=from:from"),
        "{text}"
    );
    for chunk in [1, 5, 4096] {
        let r = verify(&signed, &records, chunk);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|o| o.result == DkimResult::Pass), "{r:?}");
        assert_eq!(r[0].algorithm, "rsa-sha256");
        assert_eq!(r[1].algorithm, "ed25519-sha256");
    }
    // LF line ends verify the same.
    let lf = text.replace("\r\n", "\n");
    assert!(verify(lf.as_bytes(), &records, 100)
        .iter()
        .all(|o| o.result == DkimResult::Pass));

    let tampered_body = text.replace("second paragraph", "second Paragraph");
    let r = verify(tampered_body.as_bytes(), &records, 64);
    assert!(
        r.iter()
            .all(|o| o.result == DkimResult::Fail && o.reason.contains("body hash")),
        "{r:?}"
    );
    let tampered_header = text.replace("subject line", "subject lime");
    let r = verify(tampered_header.as_bytes(), &records, 64);
    assert!(
        r.iter()
            .all(|o| o.result == DkimResult::Fail && o.reason.contains("did not verify")),
        "{r:?}"
    );
    // From is over-signed: a second From breaks the signature.
    let extra_from = text.replace("To: bob", "From: mallory@evil.example\r\nTo: bob");
    assert!(verify(extra_from.as_bytes(), &records, 64)
        .iter()
        .all(|o| o.result == DkimResult::Fail));
    // Whitespace changes survive relaxed/relaxed.
    let rewrapped = text.replace("Hello  Bob,", "Hello Bob,   ");
    assert!(verify(rewrapped.as_bytes(), &records, 64)
        .iter()
        .all(|o| o.result == DkimResult::Pass));
    // No key published: permerror; DNS down: temperror.
    let r = verify(&signed, &[], 64);
    assert!(r.iter().all(|o| o.result == DkimResult::PermError), "{r:?}");
}

fn fake_sig(d: &str, s: &str, extra: &str) -> String {
    format!("DKIM-Signature: v=1; a=rsa-sha256; d={d}; s={s}; h=from; bh=AAAA; b=AAAA{extra}\r\n")
}

#[test]
fn bounded_work() {
    // 500 signatures: at most MAX_SIGNATURES keys asked for.
    let mut msg = String::new();
    for i in 0..500 {
        msg.push_str(&fake_sig(&format!("d{i}.example"), "s", ""));
    }
    msg.push_str("From: a@b.example\r\n\r\nbody\r\n");
    let mut v = Verifier::new(0);
    v.feed(msg.as_bytes());
    v.finish_body();
    // All ten have a wrong body hash, so none needs a key.
    assert!(v.queries().len() <= MAX_SIGNATURES);
    let r = v.results();
    assert_eq!(r.len(), 500);
    assert_eq!(
        r.iter().filter(|o| o.result == DkimResult::Policy).count(),
        500 - MAX_SIGNATURES
    );

    // A 16384-bit RSA key is refused before any RSA arithmetic.
    let mut n = vec![0u8; 2049];
    n[1] = 0x80;
    let mut int = vec![0x02, 0x82, 0x08, 0x01];
    int.extend(&n);
    int.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
    let mut seq = vec![0x30, 0x82];
    seq.extend(((int.len()) as u16).to_be_bytes());
    seq.extend(int);
    assert_eq!(rsa_modulus_bits(&seq), Some(16384));
    let record = format!("v=DKIM1; p={}", BASE64.encode(&seq));
    match parse_key(record.as_bytes(), Algorithm::RsaSha256) {
        Err((result, why)) => {
            // Over MAX_KEY_RECORD first (a 16384-bit key is ~2.8 KB of base64).
            assert!(
                matches!(result, DkimResult::Policy | DkimResult::PermError),
                "{why}"
            );
        }
        Ok(_) => panic!("16384-bit key accepted"),
    }
    // 8200 bits: just over MAX_RSA_BITS, and a record short enough to read.
    let mut big = vec![0u8; 1027];
    big[1] = 0x80;
    let mut int = vec![0x02, 0x82, 0x04, 0x03];
    int.extend(&big);
    int.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
    let mut seq = vec![0x30, 0x82];
    seq.extend(((int.len()) as u16).to_be_bytes());
    seq.extend(int);
    let record = format!("v=DKIM1; p={}", BASE64.encode(&seq));
    let err = parse_key(record.as_bytes(), Algorithm::RsaSha256).unwrap_err();
    assert_eq!(err.0, DkimResult::Policy, "{}", err.1);
    // A 64 KB TXT answer is refused by size.
    let huge = vec![b'a'; 65_000];
    assert_eq!(
        parse_key(&huge, Algorithm::RsaSha256).unwrap_err().0,
        DkimResult::PermError
    );
    // A header block past MAX_HEADER_BYTES: permerror, memory bounded.
    let mut v = Verifier::new(0);
    v.feed(fake_sig("x.example", "s", "").as_bytes());
    let filler = format!("X-Filler: {}\r\n", "y".repeat(1000));
    for _ in 0..300 {
        v.feed(filler.as_bytes());
    }
    assert!(v.header.len() <= MAX_HEADER_BYTES);
    v.finish_body();
    assert!(v
        .results()
        .iter()
        .all(|o| o.result == DkimResult::PermError));
}

#[test]
fn signature_and_key_tags() {
    let keys = test_keys();
    let ed = &keys[1..];
    let signed = sign(MESSAGE.as_bytes(), ed);
    let name = "s-ed25519._domainkey.example.org".to_string();
    let p = dns_record(&ed[0].key);
    let with = |extra: &str| vec![(name.clone(), format!("{p}; {extra}"))];
    let r = verify(&signed, &with("t=y"), 64);
    assert_eq!(r[0].result, DkimResult::Pass);
    assert!(r[0].testing);
    assert_eq!(
        verify(&signed, &with("s=email"), 64)[0].result,
        DkimResult::Pass
    );
    assert_eq!(
        verify(&signed, &with("s=other"), 64)[0].result,
        DkimResult::PermError
    );
    assert_eq!(
        verify(&signed, &with("h=sha1"), 64)[0].result,
        DkimResult::PermError
    );
    let revoked = vec![(name.clone(), "v=DKIM1; k=ed25519; p=".to_string())];
    assert_eq!(verify(&signed, &revoked, 64)[0].result, DkimResult::Fail);
    let wrong_k = vec![(name.clone(), p.replace("k=ed25519", "k=rsa"))];
    assert_eq!(
        verify(&signed, &wrong_k, 64)[0].result,
        DkimResult::PermError
    );

    // x= in the past fails; unknown algorithms are neutral; no From in h=.
    let now = 1_800_000_100;
    let expired = parse_signature(
        "v=1; a=rsa-sha256; d=a.example; s=s; h=from; bh=AA==; b=AA==; t=1; x=2",
        0,
        now,
    );
    assert_eq!(expired.unwrap_err().0, DkimResult::Fail);
    let sha1 = parse_signature(
        "v=1; a=rsa-sha1; d=a.example; s=s; h=from; bh=AA==; b=AA==",
        0,
        now,
    );
    assert_eq!(sha1.unwrap_err().0, DkimResult::Neutral);
    let no_from = parse_signature(
        "v=1; a=rsa-sha256; d=a.example; s=s; h=to; bh=AA==; b=AA==",
        0,
        now,
    );
    assert_eq!(no_from.unwrap_err().0, DkimResult::Neutral);
    let bad_i = parse_signature(
        "v=1; a=rsa-sha256; d=a.example; i=u@b.example; s=s; h=from; bh=AA==; b=AA==",
        0,
        now,
    );
    assert_eq!(bad_i.unwrap_err().0, DkimResult::Neutral);
    let ok = parse_signature("v=1; a=rsa-sha256; c=relaxed; d=A.example; i=u@sub.a.example; s=S; h=From : To; l=10; bh=AA==; b=AA==", 3, now).unwrap();
    assert_eq!(
        (ok.header_canon, ok.body_canon),
        (Canon::Relaxed, Canon::Simple)
    );
    assert_eq!(ok.headers, ["from", "to"]);
    assert_eq!(ok.length, Some(10));
    assert_eq!(ok.auid_domain, "sub.a.example");
}

#[test]
fn pem_round_trip_and_spki() {
    let der = generate_ed25519().unwrap();
    let pem = pkcs8_pem(&der);
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(pem_pkcs8(&pem).unwrap(), der);
    let keys = test_keys();
    let SigningKey::Rsa(k) = &keys[0].key else {
        panic!()
    };
    let spki = spki_rsa(k.public().as_ref());
    assert_eq!(rsa_public_key(&spki).unwrap(), k.public().as_ref());
    assert_eq!(rsa_modulus_bits(k.public().as_ref()), Some(2048));
}

/// Messages signed by dkimpy 1.1.8 (tests/data/dkim/, keys in keys.txt):
/// RSA-1024 and Ed25519, the four canonicalisations, l=, folded headers,
/// and two signatures on one message.
#[test]
fn dkimpy_fixtures_verify_and_tampered_copies_fail() {
    let keys = include_str!("../../../tests/data/dkim/keys.txt");
    let records: Vec<(String, String)> = keys
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let fixtures: [(&str, &[u8], usize); 5] = [
        (
            "rsa-simple-simple",
            include_bytes!("../../../tests/data/dkim/rsa-simple-simple.eml"),
            1,
        ),
        (
            "rsa-relaxed-relaxed-l",
            include_bytes!("../../../tests/data/dkim/rsa-relaxed-relaxed-l.eml"),
            1,
        ),
        (
            "ed-relaxed-simple",
            include_bytes!("../../../tests/data/dkim/ed-relaxed-simple.eml"),
            1,
        ),
        (
            "ed-simple-relaxed-l",
            include_bytes!("../../../tests/data/dkim/ed-simple-relaxed-l.eml"),
            1,
        ),
        (
            "both",
            include_bytes!("../../../tests/data/dkim/both.eml"),
            2,
        ),
    ];
    // dkimpy signed these at t=1796183897 (no x=): any later time is fine.
    for (name, message, count) in fixtures {
        for chunk in [1, 13, 100_000] {
            let r = verify(message, &records, chunk);
            assert_eq!(r.len(), count, "{name}");
            assert!(
                r.iter().all(|o| o.result == DkimResult::Pass),
                "{name} in chunks of {chunk}: {r:?}"
            );
        }
        let text = String::from_utf8_lossy(message);
        let body = text.replace("indented line", "indented lime");
        assert!(
            verify(body.as_bytes(), &records, 64)
                .iter()
                .all(|o| o.result == DkimResult::Fail),
            "{name}"
        );
        let header = text.replace("Dee Kimpy", "Dee Kimpi");
        assert!(
            verify(header.as_bytes(), &records, 64)
                .iter()
                .all(|o| o.result == DkimResult::Fail),
            "{name}"
        );
        if name.ends_with("-l") {
            let appended = format!("{text}appended after l=\r\n");
            assert!(
                verify(appended.as_bytes(), &records, 64)
                    .iter()
                    .all(|o| o.result == DkimResult::Pass),
                "{name}"
            );
        }
    }
}

/// Byte flips, cuts and insertions anywhere in signed messages never
/// panic and never pass where the signed part changed.
#[test]
fn mangled_messages_never_panic() {
    let keys = include_str!("../../../tests/data/dkim/keys.txt");
    let records: Vec<(String, String)> = keys
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let message: &[u8] = include_bytes!("../../../tests/data/dkim/both.eml");
    let mut seed: u64 = 0x1234_5678;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specials = [
        b'\r', b'\n', b';', b'=', b':', b' ', b'\t', 0x80, 0xff, b'%',
    ];
    for _ in 0..300 {
        let mut m = message.to_vec();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % m.len();
            match next() % 3 {
                0 => m[at] = specials[(next() as usize) % specials.len()],
                1 => {
                    m.truncate(at.max(1));
                }
                _ => m.insert(at, specials[(next() as usize) % specials.len()]),
            }
        }
        let r = verify(&m, &records, 1 + (next() as usize) % 200);
        assert!(r.len() <= 2);
    }
}
