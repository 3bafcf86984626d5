use super::*;
use crate::proto::imap::parser::parse_command;
use crate::proto::imap::response::{fetch_attr_name, Fetch};
use crate::proto::imap::types::{CommandBody, FetchAttr, FetchItems};

/// The corpus (stored with LF, as mailgate stores mail) and Dovecot
/// 2.3.19's answers to one FETCH per item on each message (captured by
/// `testdata/capture-dovecot.py`).
const CORPUS: &[(&str, &[u8], &[u8])] = &[
    (
        "m1",
        include_bytes!("testdata/m1.eml"),
        include_bytes!("testdata/m1.dovecot"),
    ),
    (
        "m2",
        include_bytes!("testdata/m2.eml"),
        include_bytes!("testdata/m2.dovecot"),
    ),
    (
        "m3",
        include_bytes!("testdata/m3.eml"),
        include_bytes!("testdata/m3.dovecot"),
    ),
    (
        "m4",
        include_bytes!("testdata/m4.eml"),
        include_bytes!("testdata/m4.dovecot"),
    ),
    (
        "m5",
        include_bytes!("testdata/m5.eml"),
        include_bytes!("testdata/m5.dovecot"),
    ),
    (
        "m6",
        include_bytes!("testdata/m6.eml"),
        include_bytes!("testdata/m6.dovecot"),
    ),
    (
        "m7",
        include_bytes!("testdata/m7.eml"),
        include_bytes!("testdata/m7.dovecot"),
    ),
    (
        "m8",
        include_bytes!("testdata/m8.eml"),
        include_bytes!("testdata/m8.dovecot"),
    ),
];

/// Where mailgate answers otherwise, on purpose. m6's part 3 is a
/// base64-encoded message/rfc822 cut by a delimiter: mailgate does not
/// parse an encoded message (RFC 2046 5.2.1 allows only 7bit, 8bit and
/// binary) and gives the CRLF before the delimiter to the delimiter (RFC
/// 2046 5.1.1): size 20, 0 lines; Dovecot parses the base64 as a header and
/// counts that CRLF in: 22, 1 line.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    ("m6", "BODYSTRUCTURE"),
    ("m6", "BODY"),
    ("m6", "BODY.PEEK[3]"),
];

fn attr(item: &str) -> FetchAttr {
    let c = parse_command(format!("t FETCH 1 ({item})").as_bytes()).expect("item parses");
    match c.body {
        CommandBody::Fetch {
            items: FetchItems::List(mut v),
            ..
        } => v.remove(0),
        other => panic!("{other:?}"),
    }
}

/// Reads `span` of `msg` the way a driver would: in small chunks.
fn present(msg: &[u8], span: Span, partial: Option<(u32, u32)>) -> Vec<u8> {
    let mut p = Presenter::new(partial);
    let mut out = Vec::new();
    for chunk in msg[span.raw_start as usize..span.raw_end as usize].chunks(7) {
        p.feed(&mut out, chunk);
    }
    out
}

/// mailgate's answer to `FETCH 1 (item)`.
fn answer(msg: &[u8], s: &Structure, item: &str) -> Vec<u8> {
    let a = attr(item);
    let mut out = Vec::new();
    let mut f = Fetch::start(&mut out, 1);
    let name = fetch_attr_name(&a);
    match &a {
        FetchAttr::Rfc822Size => f.number(&name, s.size()),
        FetchAttr::BodyStructure | FetchAttr::Body => {
            let mut v = Vec::new();
            s.body_structure(&mut v, a == FetchAttr::BodyStructure);
            f.raw(&name, &v);
        }
        FetchAttr::Envelope => {
            let mut v = Vec::new();
            s.envelope(&mut v, 0);
            f.raw(&name, &v);
        }
        FetchAttr::BodySection {
            section, partial, ..
        } => {
            let data = match s.section(section) {
                None => Vec::new(),
                Some(SectionRange::Bytes(span)) => {
                    let d = present(msg, span, *partial);
                    assert_eq!(
                        d.len() as u64,
                        Presenter::length(*partial, span.size),
                        "{item}: announced size"
                    );
                    d
                }
                Some(SectionRange::Fields { span, names, not }) => {
                    let header = &msg[span.raw_start as usize..span.raw_end as usize];
                    let mut filter = HeaderFilter::new(&names, not);
                    let mut v = Vec::new();
                    for chunk in header.chunks(5) {
                        filter.feed(&mut v, chunk);
                    }
                    filter.finish(&mut v);
                    let whole = filter_header(header, &names, not);
                    assert_eq!(v, whole, "{item}: chunked filter");
                    let mut p = Presenter::new(*partial);
                    let mut out = Vec::new();
                    p.feed(&mut out, &v);
                    out
                }
            };
            f.literal_head(&name, data.len() as u64);
            f.append(&data);
        }
        other => panic!("not in the corpus: {other:?}"),
    }
    f.finish();
    out
}

#[test]
fn same_answers_as_dovecot() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, msg, reference) in CORPUS {
        let s = structure(msg);
        let fields: Vec<&[u8]> = reference.split(|&c| c == 0).collect();
        for pair in fields.chunks(2) {
            let [item, want] = pair else { continue };
            let item = std::str::from_utf8(item).unwrap();
            let got = answer(msg, &s, item);
            if got != *want && !KNOWN_DIFFERENCES.contains(&(*name, item)) {
                failures.push(format!(
                    "{name} {item}\n  dovecot:  {:?}\n  mailgate: {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&got)
                ));
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "corpus not loaded");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn any_chunking_gives_the_same_structure() {
    for (name, msg, _) in CORPUS {
        let whole = structure(msg);
        for size in [1, 2, 3, 5, 64] {
            let mut b = StructureBuilder::new();
            for chunk in msg.chunks(size) {
                b.feed(chunk);
            }
            assert_eq!(b.finish(), whole, "{name} in chunks of {size}");
        }
    }
}

#[test]
fn crlf_and_lf_storage_present_the_same() {
    for (name, msg, _) in CORPUS {
        let lf: Vec<u8> = String::from_utf8_lossy(msg)
            .replace("\r\n", "\n")
            .into_bytes();
        let crlf: Vec<u8> = String::from_utf8_lossy(&lf)
            .replace('\n', "\r\n")
            .into_bytes();
        let a = structure(&lf);
        let b = structure(&crlf);
        assert_eq!(a.size(), b.size(), "{name}");
        assert_eq!(
            a.size(),
            crlf.len() as u64,
            "{name}: RFC822.SIZE counts CRLF"
        );
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.body_structure(&mut x, true);
        b.body_structure(&mut y, true);
        assert_eq!(x, y, "{name}");
        assert_eq!(present(&lf, a.parts[0].whole(), None), crlf, "{name}");
    }
}

#[test]
fn a_large_message_costs_little_memory() {
    // 50 MB of base64 in a multipart, fed in 64 KiB reads: what the
    // structure keeps stays a few KiB.
    let mut b = StructureBuilder::new();
    b.feed(b"From: a@b\nSubject: big\nContent-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nhi\n--B\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n");
    let line = [b'Q'; 76];
    let mut chunk = Vec::new();
    while chunk.len() < 64 * 1024 {
        chunk.extend_from_slice(&line);
        chunk.push(b'\n');
    }
    let mut fed = 0;
    while fed < 50_000_000 {
        b.feed(&chunk);
        fed += chunk.len();
    }
    b.feed(b"--B--\n");
    let s = b.finish();
    let kept: usize = s
        .parts
        .iter()
        .map(|p| {
            p.fields
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
        })
        .sum();
    assert!(kept < 4096, "{kept}");
    assert_eq!(s.parts.len(), 3);
    let att = &s.parts[2];
    assert_eq!(att.body_lines, (fed / 77) as u64 - 1);
    let mut v = Vec::new();
    s.body_structure(&mut v, false);
    let v = String::from_utf8(v).unwrap();
    assert!(v.contains("\"base64\" "), "{v}");
}

#[test]
fn hostile_structures_are_bounded() {
    // Deep nesting: parts beyond MAX_MIME_DEPTH are bodies, not parts.
    let mut m = Vec::new();
    for i in 0..200 {
        m.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n").as_bytes(),
        );
    }
    m.extend_from_slice(b"\nleaf\n");
    let s = structure(&m);
    assert!(s.parts.len() <= MAX_MIME_DEPTH + 2, "{}", s.parts.len());
    let mut v = Vec::new();
    s.body_structure(&mut v, true);
    assert_eq!(
        v.iter().filter(|&&c| c == b'(').count(),
        v.iter().filter(|&&c| c == b')').count()
    );
    // Many parts: capped.
    let mut m = b"Content-Type: multipart/mixed; boundary=x\n\n".to_vec();
    for _ in 0..(MAX_PARTS * 2) {
        m.extend_from_slice(b"--x\n\nx\n");
    }
    let s = structure(&m);
    assert!(s.parts.len() <= MAX_PARTS);
    // A header that never ends: one field kept, bounded.
    let mut m = b"Subject: ".to_vec();
    m.extend(std::iter::repeat_n(b'a', 1_000_000));
    let s = structure(&m);
    assert!(s.parts[0].field("subject").unwrap().len() <= MAX_FIELD);
    assert_eq!(s.size(), m.len() as u64);
}

#[test]
fn addresses() {
    let a = |s: &str| -> String {
        let mut out = Vec::new();
        address_list(&mut out, Some(s.as_bytes()));
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        a("bob@example.test"),
        "((NIL NIL \"bob\" \"example.test\"))"
    );
    assert_eq!(
        a("\"Bob B.\" <bob@example.test>"),
        "((\"Bob B.\" NIL \"bob\" \"example.test\"))"
    );
    assert_eq!(
        a("Bob Smith <bob@x>, <c@y>"),
        "((\"Bob Smith\" NIL \"bob\" \"x\")(NIL NIL \"c\" \"y\"))"
    );
    assert_eq!(a("group: ;"), "((NIL NIL \"group\" NIL)(NIL NIL NIL NIL))");
    assert_eq!(a(""), "NIL");
    assert_eq!(
        a("<>"),
        "((NIL NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\"))"
    );
    assert_eq!(a("a.b.c@d.e"), "((NIL NIL \"a.b.c\" \"d.e\"))");
    // Fuzz find: a stray `)` once looped for ever.
    assert_eq!(
        a("\"Smith, Bob\" <bob@ex) with"),
        "((\"Smith, Bob\" NIL \"bob\" \"exwith\"))"
    );
    assert_eq!(a(")"), "NIL");
    assert_eq!(a("x@[192.0.2.1]"), "((NIL NIL \"x\" \"[192.0.2.1]\"))");
    // Checked against Dovecot 2.3.19: comments inside a phrase dropped, a
    // comment after a bare address is its name.
    assert_eq!(
        a("Mary (comment) Smith <m@x>"),
        "((\"Mary Smith\" NIL \"m\" \"x\"))"
    );
    assert_eq!(
        a("bob@x (Bob), c@y"),
        "((\"Bob\" NIL \"bob\" \"x\")(NIL NIL \"c\" \"y\"))"
    );
    // imaptest fetch-envelope (imap-findings F8): a comment alone in a
    // group is no address.
    assert_eq!(
        a("group:;, group2: (foo) ;"),
        "((NIL NIL \"group\" NIL)(NIL NIL NIL NIL)(NIL NIL \"group2\" NIL)(NIL NIL NIL NIL))"
    );
    assert_eq!(a("(just a comment)"), "NIL");
}

/// Found by the fuzzer: a comment in Content-Type that ends in a lone
/// backslash made the parameter scanner step past the end of the value.
#[test]
fn a_content_type_comment_ending_in_a_backslash_is_not_a_panic() {
    let msg = b"From: a\nContent-Type:(meltxed; bo\0R\n\t(m\x01\\";
    let s = structure(msg);
    let mut v = Vec::new();
    s.body_structure(&mut v, true);
    assert!(v.starts_with(b"("), "{:?}", String::from_utf8_lossy(&v));
}

/// RFC 3501 7.4.2 (imaptest fetch-envelope message 5): Sender and
/// Reply-To that are present but empty are From, like absent ones.
#[test]
fn empty_sender_and_reply_to_are_from() {
    let msg = b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\nFrom: user@domain (Real Name)\r\n\
Sender: \r\nReply-To:  \r\n\r\nbody\r\n";
    let s = structure(msg);
    let mut v = Vec::new();
    s.envelope(&mut v, 0);
    let from = "((\"Real Name\" NIL \"user\" \"domain\"))";
    assert_eq!(
        String::from_utf8_lossy(&v),
        format!(
            "(\"Thu, 15 Feb 2007 01:02:03 +0200\" NIL {from} {from} {from} NIL NIL NIL NIL NIL)"
        )
    );
}
