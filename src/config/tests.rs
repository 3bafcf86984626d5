//! Whole-file tests: every key, every diagnostic with its line, hostile
//! files, recipient resolution, and the shipped `etc/mailgate.ini`.

use super::*;

type Parsed = Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>>;

const BASE: &str = "[server]\nhostname = mail.example.test\n";

fn parse(text: &str) -> Parsed {
    Config::parse(Path::new("t.ini"), text)
}

#[track_caller]
fn ok(text: &str) -> (Config, Vec<Diagnostic>) {
    match parse(text) {
        Ok(c) => c,
        Err(d) => panic!("unexpected errors: {d:#?}"),
    }
}

/// Errors only, as (line, message).
#[track_caller]
fn errors(text: &str) -> Vec<(usize, String)> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(d) => d
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.line, d.message))
            .collect(),
    }
}

fn hash() -> String {
    format!(
        "$6$saltsalt${}",
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./abcdefghijklmnopqrstuv"
    )
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn net(s: &str, prefix: u8) -> IpNet {
    IpNet {
        addr: s.parse().unwrap(),
        prefix,
    }
}

/// The spec's example file, with a real-looking hash.
fn full_example() -> String {
    let hash = hash();
    format!(
        "[server]
hostname = Mail.Example.TEST
data_dir = /srv/mail
maildrop = /srv/maildrop
user = mail
recipient_delimiter = -
postmaster = Alice@example.test

[smtp]
listen = 0.0.0.0:25, [::]:25
submission = 0.0.0.0:587
smtps =
max_message_size = 10M
max_recipients = 50
max_connections = 30
max_connections_per_ip = 5
relay_networks = 127.0.0.0/8, ::1/128, 192.168.1.0/24
allow_plaintext_auth = yes
timeout = 90s

[pop3]
listen = 0.0.0.0:110
pop3s =
timeout = 15m

[tls]
cert = /etc/mailgate/cert.pem
key = /etc/mailgate/key.pem

[domain example.test]
catch_all = bob

[domain Other.Test]

[mailbox bob@example.test]
password = {hash}
aliases = robert, Postmaster
forward = bob@elsewhere.example
quota = 1G

[mailbox alice@example.test]
password = {{SHA512-CRYPT}}{hash}

[mailbox carol@other.test]

[alias family@example.test]
to = bob@example.test, alice@example.test, gran@elsewhere.example

[outbox]
mode = smarthost
host = smtp.isp.example:2525, backup.isp.example
tls = tls
username = bob123
password = a;b#c
ca_file = /etc/ssl/isp.pem
retry = 1m, 2h
give_up_after = 3d
nameserver = 192.168.1.1

[smartpop isp-bob]
host = pop.isp.example
tls = starttls
username = bob123
password = p;w#d
ca_file = /etc/ssl/pop.pem
deliver_to = Family@Example.test
multidrop = yes
interval = 10m
keep = 7d

[smartpop isp-alice]
host = [2001:db8::1]:1995
username = alice
password = x
deliver_to = alice@example.test
keep = yes
"
    )
}

#[test]
fn every_key_happy_path() {
    let (c, warnings) = ok(&full_example());
    assert_eq!(warnings, vec![]);
    assert_eq!(c.path, PathBuf::from("t.ini"));
    assert_eq!(c.server.hostname, "mail.example.test");
    assert_eq!(c.server.data_dir, PathBuf::from("/srv/mail"));
    assert_eq!(c.server.postmaster.as_deref(), Some("alice@example.test"));
    // RFC 5321 4.5.1: every domain's postmaster (and root, abuse) reaches
    // [server] postmaster; bob's explicit alias Postmaster still wins.
    let local = |a: &str| c.resolve(a).map(|r| r.local);
    assert_eq!(
        local("postmaster@example.test"),
        Some(vec!["bob@example.test".into()])
    );
    for a in [
        "postmaster@other.test",
        "ROOT@Other.Test",
        "abuse@other.test",
        "root-cron@other.test",
        "root@example.test",
    ] {
        assert_eq!(local(a), Some(vec!["alice@example.test".into()]), "{a}");
    }
    assert_eq!(local("nobody@other.test"), None);
    assert_eq!(c.postmaster_domain().as_deref(), Some("example.test"));
    assert_eq!(c.server.maildrop, PathBuf::from("/srv/maildrop"));
    assert_eq!(c.server.user.as_deref(), Some("mail"));
    assert_eq!(c.server.recipient_delimiter, Some('-'));

    assert_eq!(c.smtp.listen, vec![sa("0.0.0.0:25"), sa("[::]:25")]);
    assert_eq!(c.smtp.submission, vec![sa("0.0.0.0:587")]);
    assert_eq!(c.smtp.smtps, vec![]);
    assert_eq!(c.smtp.max_message_size, 10 << 20);
    assert_eq!(c.smtp.max_recipients, 50);
    assert_eq!(c.smtp.max_connections, 30);
    assert_eq!(c.smtp.max_connections_per_ip, 5);
    assert_eq!(
        c.smtp.relay_networks,
        vec![net("127.0.0.0", 8), net("::1", 128), net("192.168.1.0", 24)]
    );
    assert!(c.smtp.allow_plaintext_auth);
    assert_eq!(c.smtp.timeout, secs(90));

    assert_eq!(c.pop3.listen, vec![sa("0.0.0.0:110")]);
    assert_eq!(c.pop3.pop3s, vec![]);
    assert_eq!(c.pop3.timeout, secs(900));

    assert_eq!(c.tls.cert, Some(PathBuf::from("/etc/mailgate/cert.pem")));
    assert_eq!(c.tls.key, Some(PathBuf::from("/etc/mailgate/key.pem")));

    assert_eq!(
        c.domains.keys().collect::<Vec<_>>(),
        ["example.test", "other.test"]
    );
    let d = &c.domains["example.test"];
    assert_eq!(
        (d.name.as_str(), d.catch_all.as_deref(), d.line),
        ("example.test", Some("bob"), 30)
    );
    assert_eq!(c.domains["other.test"].catch_all, None);

    let bob = &c.mailboxes["bob@example.test"];
    assert_eq!(
        (bob.local.as_str(), bob.domain.as_str(), bob.line),
        ("bob", "example.test", 35)
    );
    assert_eq!(bob.password, Some(hash()));
    assert_eq!(bob.aliases, ["robert", "postmaster"]);
    assert_eq!(bob.forward, ["bob@elsewhere.example"]);
    assert_eq!(bob.quota, Some(1 << 30));
    assert_eq!(
        c.mailboxes["alice@example.test"].password,
        Some(format!("{{SHA512-CRYPT}}{}", hash()))
    );
    let carol = &c.mailboxes["carol@other.test"];
    assert_eq!(
        (carol.password.as_ref(), carol.quota, carol.aliases.len()),
        (None, None, 0)
    );

    let fam = &c.aliases["family@example.test"];
    assert_eq!(
        fam.to,
        [
            "bob@example.test",
            "alice@example.test",
            "gran@elsewhere.example"
        ]
    );
    assert_eq!(fam.line, 46);

    let o = &c.outbox;
    assert_eq!(o.mode, OutboxMode::Smarthost);
    let hp = |h: &str, port| HostPort {
        host: h.into(),
        port,
    };
    // tls = tls comes after host, yet sets the default port (465).
    assert_eq!(
        o.hosts,
        vec![hp("smtp.isp.example", 2525), hp("backup.isp.example", 465)]
    );
    assert_eq!(o.tls, TlsMode::Tls);
    assert_eq!(o.username.as_deref(), Some("bob123"));
    assert_eq!(o.password.as_deref(), Some("a;b#c"));
    assert_eq!(o.ca_file, Some(PathBuf::from("/etc/ssl/isp.pem")));
    assert_eq!(o.retry, vec![secs(60), secs(7200)]);
    assert_eq!(o.give_up_after, secs(3 * 86_400));
    assert_eq!(o.nameserver, Some(sa("192.168.1.1:53")));

    assert_eq!(c.smartpop.len(), 2);
    let p = &c.smartpop[0];
    assert_eq!((p.name.as_str(), p.line), ("isp-bob", 60));
    assert_eq!(p.host, hp("pop.isp.example", 110));
    assert_eq!(p.tls, TlsMode::StartTls);
    assert_eq!(
        (p.username.as_str(), p.password.as_str()),
        ("bob123", "p;w#d")
    );
    assert_eq!(p.ca_file, Some(PathBuf::from("/etc/ssl/pop.pem")));
    assert_eq!(p.deliver_to, "family@example.test");
    assert!(p.multidrop);
    assert_eq!(p.interval, secs(600));
    assert_eq!(p.keep, Keep::For(secs(7 * 86_400)));
    let q = &c.smartpop[1];
    assert_eq!(q.host, hp("2001:db8::1", 1995));
    assert_eq!(q.tls, TlsMode::Tls);
    assert_eq!(
        (q.keep, q.multidrop, q.interval),
        (Keep::Yes, false, secs(300))
    );
}

#[test]
fn defaults() {
    let (c, warnings) = ok(BASE);
    assert_eq!(warnings, vec![]);
    assert_eq!(c.server.data_dir, PathBuf::from("/var/lib/mailgate"));
    assert_eq!(
        c.server.maildrop,
        PathBuf::from("/var/spool/mailgate/maildrop")
    );
    assert_eq!(c.server.user, None);
    assert_eq!(c.server.recipient_delimiter, Some('+'));
    assert_eq!(c.smtp.listen, vec![sa("0.0.0.0:25")]);
    assert_eq!(c.smtp.submission, vec![sa("0.0.0.0:587")]);
    assert_eq!(c.smtp.smtps, vec![sa("0.0.0.0:465")]);
    assert_eq!(c.smtp.max_message_size, 25 << 20);
    assert_eq!(c.smtp.max_recipients, 100);
    assert_eq!(c.smtp.max_connections, 200);
    assert_eq!(c.smtp.max_connections_per_ip, 20);
    assert_eq!(
        c.smtp.relay_networks,
        vec![net("127.0.0.0", 8), net("::1", 128)]
    );
    assert!(!c.smtp.allow_plaintext_auth);
    assert_eq!(c.smtp.timeout, secs(300));
    assert_eq!(c.pop3.listen, vec![sa("0.0.0.0:110")]);
    assert_eq!(c.pop3.pop3s, vec![sa("0.0.0.0:995")]);
    assert_eq!(c.pop3.timeout, secs(600));
    assert_eq!((c.tls.cert.as_ref(), c.tls.key.as_ref()), (None, None));
    assert!(
        c.domains.is_empty()
            && c.mailboxes.is_empty()
            && c.aliases.is_empty()
            && c.smartpop.is_empty()
    );
    let o = &c.outbox;
    assert_eq!(
        (o.mode, o.tls, o.hosts.len()),
        (OutboxMode::Smarthost, TlsMode::StartTls, 0)
    );
    assert_eq!(
        (o.username.as_ref(), o.password.as_ref(), o.ca_file.as_ref()),
        (None, None, None)
    );
    let m = |n: u64| secs(60 * n);
    assert_eq!(o.retry, vec![m(5), m(10), m(30), m(60), m(120), m(240)]);
    assert_eq!(o.give_up_after, secs(5 * 86_400));
    assert_eq!(o.nameserver, None);

    let (c, _) = ok(&format!(
        "{BASE}recipient_delimiter =\nuser =\n[outbox]\nmode = direct\nnameserver = [::1]:5353\n"
    ));
    assert_eq!(c.server.recipient_delimiter, None);
    assert_eq!(c.server.user, None);
    assert_eq!(c.outbox.mode, OutboxMode::Direct);
    assert_eq!(c.outbox.nameserver, Some(sa("[::1]:5353")));

    let (c, _) = ok(&format!("{BASE}[outbox]\nhost = relay.example\n[domain d.test]\n[mailbox b@d.test]\n[smartpop x]\nhost = pop.example\ntls = none\nusername = u\npassword = p\ndeliver_to = b@d.test\n"));
    assert_eq!(
        c.outbox.hosts,
        vec![HostPort {
            host: "relay.example".into(),
            port: 587
        }]
    );
    assert_eq!(c.smartpop[0].host.port, 110);
}

#[test]
fn values_keep_every_character() {
    let text = format!("{BASE}[domain d.test]\n[mailbox b@d.test]\npassword = {{PLAIN}}a;b#c \\ \"q\"\n[outbox]\nhost = h.example\nusername = u\npassword = a;b#c\n");
    let (c, w) = ok(&text);
    assert_eq!(
        c.mailboxes["b@d.test"].password.as_deref(),
        Some("{PLAIN}a;b#c \\ \"q\"")
    );
    assert_eq!(c.outbox.password.as_deref(), Some("a;b#c"));
    let w: Vec<_> = w
        .into_iter()
        .filter(|d| !d.message.contains("postmaster is not set"))
        .collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].severity, Severity::Warning);
    assert_eq!(w[0].line, 5);
    assert_eq!(w[0].to_string(), "t.ini:5: warning: mailbox b@d.test has a {PLAIN} password; paste a hash from `mailgate passwd` instead");
}

/// (file after BASE, line of the error, part of its message). BASE is lines 1-2.
const ERRORS: &[(&str, usize, &str)] = &[
    ("[bogus]\nx = 1\n", 3, "unknown section [bogus]"),
    ("[server2]\n", 3, "unknown section [server2]"),
    ("[smtp]\nlisten = 127.0.0.1:25\nlistne = 1\n", 5, "unknown key \"listne\" in [smtp]"),
    ("[smtp]\ntimeout = 5m\ntimeout = 6m\n", 5, "duplicate key \"timeout\" (first set on line 4)"),
    ("[server]\n", 3, "duplicate section [server] (first on line 1)"),
    ("[smtp]\n[pop3]\n[smtp]\n", 5, "duplicate section [smtp] (first on line 3)"),
    ("[domain d.test]\n[domain D.TEST]\n", 4, "duplicate section [domain d.test] (first on line 3)"),
    ("[smtp x]\n", 3, "section [smtp] takes no name"),
    ("[mailbox]\n", 3, "section [mailbox] needs a name"),
    ("[smtp]\ntimeout = 5\n", 4, "invalid timeout \"5\": expected a duration such as 90s, 5m, 4h or 5d"),
    ("[pop3]\ntimeout = 0s\n", 4, "invalid timeout \"0s\": duration must be more than zero"),
    ("[smtp]\nmax_message_size = 25MB\n", 4, "invalid max_message_size \"25MB\": expected a size such as 512K, 25M or 1G"),
    ("[smtp]\nmax_recipients = 0\n", 4, "invalid max_recipients \"0\": must be more than zero"),
    ("[smtp]\nmax_connections = lots\n", 4, "invalid max_connections"),
    ("[smtp]\nmax_connections_per_ip = -1\n", 4, "invalid max_connections_per_ip"),
    ("[smtp]\nlisten = 0.0.0.0\n", 4, "invalid listen \"0.0.0.0\": \"0.0.0.0\" is not IP:PORT"),
    ("[smtp]\nsubmission = 1.2.3.4:587,\n", 4, "empty item in comma-separated list"),
    ("[smtp]\nsmtps = [::1]\n", 4, "invalid smtps"),
    ("[pop3]\nlisten = x:110\n", 4, "invalid listen"),
    ("[pop3]\npop3s = 1.2.3.4:995 1.2.3.5:995\n", 4, "invalid pop3s"),
    ("[smtp]\nrelay_networks = 10.0.0.0/33\n", 4, "prefix must be 0 to 32"),
    ("[smtp]\nallow_plaintext_auth = maybe\n", 4, "expected yes or no"),
    ("[outbox]\ntls = ssl\n", 4, "invalid tls \"ssl\": expected tls, starttls or none"),
    ("[outbox]\nmode = mx\n", 4, "invalid mode \"mx\": expected smarthost or direct"),
    ("[outbox]\nhost = h:0\n", 4, "port must be 1 to 65535"),
    ("[outbox]\nretry =\n", 4, "invalid retry \"\": expected at least one duration"),
    ("[outbox]\ngive_up_after = 5 days\n", 4, "invalid give_up_after"),
    ("[outbox]\nnameserver = dns.example\n", 4, "invalid nameserver"),
    ("[outbox]\nhost = h.example\nusername = u\n", 3, "[outbox] username and password go together"),
    ("[tls]\ncert = /c.pem\n", 3, "[tls] needs both cert and key"),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername = u\npassword = p\ndeliver_to = b@d.test\nkeep = forever\n", 10, "invalid keep \"forever\""),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername = u\npassword = p\ndeliver_to = b@d.test\nmultidrop = 2\n", 10, "invalid multidrop"),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername = u\npassword = p\ndeliver_to = b@d.test\ninterval = soon\n", 10, "invalid interval"),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername = u\npassword = p\ndeliver_to = b@d.test\ntls = yes\n", 10, "invalid tls"),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h:99999\nusername = u\npassword = p\ndeliver_to = b@d.test\n", 6, "invalid host"),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nusername = u\npassword = p\ndeliver_to = b@d.test\n", 5, "missing required key \"host\" in [smartpop p]"),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\npassword = p\ndeliver_to = b@d.test\n", 5, "missing required key \"username\""),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername = u\ndeliver_to = b@d.test\n", 5, "missing required key \"password\""),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername = u\npassword = p\n", 5, "missing required key \"deliver_to\""),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername =\npassword = p\ndeliver_to = b@d.test\n", 7, "invalid username \"\": must not be empty"),
    ("[domain d.test]\n[smartpop p]\nhost = h\nusername = u\npassword = p\ndeliver_to = x@d.test\n", 8, "deliver_to x@d.test: no such mailbox or alias"),
    ("[smartpop p]\nhost = h\nusername = u\npassword = p\ndeliver_to = x@far.example\n", 7, "deliver_to x@far.example is not in a local domain"),
    ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\nusername = u\npassword = p\ndeliver_to = b@d.test\n[smartpop P]\n", 10, "duplicate section [smartpop P] (first on line 5)"),
    ("[smartpop ../x]\n", 3, "invalid smartpop name \"../x\""),
    ("[mailbox b@nowhere.test]\n", 3, "mailbox b@nowhere.test: no [domain nowhere.test] section declares nowhere.test"),
    ("[domain d.test]\n[alias a@x.test]\nto = b@far.example\n", 4, "alias a@x.test: no [domain x.test] section declares x.test"),
    ("[domain d.test]\n[mailbox b@d.test]\n[mailbox B@D.test]\n", 5, "address b@d.test is already defined on line 4 (mailbox)"),
    ("[domain d.test]\n[mailbox b@d.test]\naliases = x\n[mailbox x@d.test]\n", 6, "address x@d.test is already defined on line 5 (alias of mailbox b@d.test)"),
    ("[domain d.test]\n[alias x@d.test]\nto = a@far.example\n[mailbox b@d.test]\naliases = x\n", 7, "address x@d.test is already defined on line 4 ([alias])"),
    ("[domain d.test]\n[mailbox b@d.test]\naliases = x, x\n", 5, "address x@d.test is already defined on line 5"),
    ("[domain d.test]\n[mailbox b@d.test]\n[alias b@d.test]\nto = a@far.example\n", 5, "address b@d.test is already defined on line 4 (mailbox)"),
    ("[domain d.test]\n[alias a@d.test]\nto = nobody@d.test\n", 5, "alias member nobody@d.test: no such mailbox or alias"),
    ("[domain d.test]\n[alias a@d.test]\nto = b@d.test\n[alias b@d.test]\nto = a@d.test\n", 4, "alias a@d.test leads to no mailbox or address (a loop?)"),
    ("[domain d.test]\n[alias a@d.test]\nto = b@d.test\n[alias b@d.test]\nto = a@d.test\n", 6, "alias b@d.test leads to no mailbox or address"),
    ("[domain d.test]\n[alias a@d.test]\n", 4, "missing required key \"to\" in [alias a@d.test]"),
    ("[domain d.test]\n[alias a@d.test]\nto =\n", 5, "invalid to \"\": expected at least one address"),
    ("[domain d.test]\n[alias a@d.test]\nto = not-an-address\n", 5, "invalid to"),
    ("[domain d.test]\ncatch_all = nobody\n", 4, "catch_all \"nobody\" names no mailbox or alias of d.test"),
    ("[domain d.test]\ncatch_all = b@other.test\n", 4, "invalid catch_all"),
    ("[domain d.test]\n[mailbox b@d.test]\nforward = x@d.test\n", 5, "forward x@d.test: no such mailbox or alias"),
    ("[domain d.test]\n[mailbox b@d.test]\nforward = bob\n", 5, "invalid forward \"bob\""),
    ("[domain d.test]\n[mailbox b@d.test]\nquota = lots\n", 5, "invalid quota"),
    ("[domain d.test]\n[mailbox b@d.test]\naliases = a/b\n", 5, "may not contain / or \\"),
    ("[domain d.test]\n[mailbox b@d.test]\naliases = x@other.test\n", 5, "is not in d.test"),
    ("[domain d.test]\n[mailbox b@d.test]\npassword = secret\n", 5, "invalid password for b@d.test: unknown password scheme"),
    ("[domain d.test]\n[mailbox b@d.test]\npassword = $6$...\n", 5, "invalid password for b@d.test: malformed $6$ hash"),
    ("[domain d.test]\n[mailbox a/b@d.test]\n", 4, "invalid mailbox address: \"a/b@d.test\": local part may not contain / or \\"),
    ("[domain d.test]\n[mailbox ..@d.test]\n", 4, "local part \"..\" is not allowed"),
    ("[domain d.test]\n[mailbox @d.test]\n", 4, "empty local part"),
    ("[domain d.test]\n[mailbox b\\x@d.test]\n", 4, "may not contain / or \\"),
    ("[domain d.test]\n[mailbox b@d.test/..]\n", 4, "invalid mailbox address"),
    ("[domain d.test]\n[mailbox b c@d.test]\n", 4, "not allowed in a local part"),
    ("[domain ../etc]\n", 3, "invalid domain \"../etc\""),
    ("[alias nobody]\nto = a@b.example\n", 3, "invalid alias address"),
    ("[smtp]\nlisten = 127.0.0.1:2525\nsubmission = 127.0.0.1:2525\n", 5, "127.0.0.1:2525 is used by both smtp listen and submission"),
    ("[pop3]\nlisten = 0.0.0.0:25\n", 4, "0.0.0.0:25 is used by both smtp listen and pop3 listen"),
    ("hostname = again\n", 3, "duplicate key \"hostname\" (first set on line 2)"),
    ("data_dir =\n", 3, "invalid data_dir \"\": expected a path"),
    ("user = root;rm\n", 3, "invalid user"),
    ("recipient_delimiter = ++\n", 3, "invalid recipient_delimiter \"++\": expected one character"),
    ("recipient_delimiter = @\n", 3, "invalid recipient_delimiter"),
    ("junk\n", 3, "expected `key = value`, a [section] or a comment"),
    ("[smtp] ; comment\n", 3, "a section header is [NAME] alone on its line"),
    ("= 5\n", 3, "missing key name before ="),
    ("bad\0 = 1\n", 3, "control character '\\0' in line"),
];

#[test]
fn every_error_names_its_line() {
    for &(tail, line, want) in ERRORS {
        let text = format!("{BASE}{tail}");
        let errs = errors(&text);
        assert!(
            errs.iter().any(|(l, m)| *l == line && m.contains(want)),
            "want line {line}: {want:?}\nfile:\n{text}\ngot: {errs:#?}"
        );
    }
}

#[test]
fn server_and_hostname_required() {
    assert_eq!(
        errors(""),
        vec![(
            0,
            "missing [server] section (hostname is required)".to_string()
        )]
    );
    assert_eq!(
        errors("[server]\ndata_dir = /x\n"),
        vec![(
            1,
            "missing required key \"hostname\" in [server]".to_string()
        )]
    );
    assert_eq!(
        errors("[server]\nhostname = h\ndata_dir = /x\nmaildrop = /x/drop\n"),
        vec![(
            4,
            "maildrop /x/drop is inside data_dir /x: other users could not reach it; put it beside"
                .to_string()
        )]
    );
    let errs = errors("[server]\nhostname =\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, 2);
    assert!(errs[0].1.starts_with("invalid hostname \"\""), "{errs:?}");
    assert_eq!(errors("[server]\nhostname = a b\n")[0].0, 2);
    let outside = (
        1,
        "key \"x\" is outside any section: put it under a [section] header".to_string(),
    );
    assert!(errors("x = 1\n").contains(&outside));
}

#[test]
fn all_problems_are_collected_in_line_order() {
    let text = "x = 1\n[server]\nhostname = h.example\nbogus = 1\n[nope]\n[smtp]\ntimeout = 1y\n";
    let d = parse(text).unwrap_err();
    let lines: Vec<usize> = d.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![1, 4, 5, 7]);
    assert_eq!(
        d[1].to_string(),
        "t.ini:4: unknown key \"bogus\" in [server]"
    );
}

#[test]
fn warnings() {
    let cases: &[(&str, usize, &str)] = &[
        ("[outbox]\nmode = smarthost\n", 4, "[outbox] mode = smarthost but no host: mail for other domains (from relay_networks, logged-in users, forwards) is accepted and stays queued"),
        ("[smtp]\nrelay_networks = 192.168.1.0/24\n", 0, "mode = smarthost but no host"),
        ("[domain d.test]\n[mailbox b@d.test]\npassword = {PLAIN}x\n", 0, "mode = smarthost but no host"),
        ("[smtp]\nlisten = 127.0.0.1:25, 127.0.0.1:25\n", 4, "127.0.0.1:25 is given twice in smtp listen; listening once"),
        ("[outbox]\n[domain d.test]\n[alias a@d.test]\nto = x@far.example\n", 3, "mode = smarthost but no host"),
        ("[domain d.test]\n[mailbox b@d.test]\nforward = x@far.example\n", 0, "mode = smarthost but no host"),
        ("[outbox]\nmode = direct\nhost = h.example\n", 5, "[outbox] host is ignored in direct mode"),
        ("[outbox]\nhost = h\ntls = none\nusername = u\npassword = p\n", 3, "[outbox] sends its password without TLS"),
        ("[smtp]\nrelay_networks = 0.0.0.0/0\n", 4, "relay_networks includes 0.0.0.0/0: anyone there may relay (open relay)"),
        ("[domain d.test]\n[mailbox b@d.test]\npassword = {PLAIN}\n", 5, "has a {PLAIN} password"),
        ("[domain d.test]\n[mailbox b@d.test]\n[smartpop p]\nhost = h\ntls = none\nusername = u\npassword = p\ndeliver_to = b@d.test\n", 5, "[smartpop p] sends its password without TLS"),
    ];
    for &(tail, line, want) in cases {
        let (_, w) = ok(&format!("{BASE}{tail}"));
        assert!(
            w.iter().any(|d| d.line == line
                && d.severity == Severity::Warning
                && d.message.contains(want)),
            "want line {line}: {want:?}\ngot {w:#?}"
        );
    }
    // An invalid mode is one error, without a smarthost warning after it.
    let d = parse(&format!("{BASE}[outbox]\nmode = smarthots\n")).unwrap_err();
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].message.starts_with("invalid mode"), "{d:#?}");
    // No login on a submission listener, no relay_networks written: none.
    let (_, w) = ok(&format!(
        "{BASE}[smtp]\nsubmission =\nsmtps =\n[domain d.test]\n[mailbox b@d.test]\naliases = postmaster\npassword = {}\n",
        hash()
    ));
    assert_eq!(w, vec![]);
    // A pure local install needs no outbox: no warning.
    let (_, w) = ok(&format!(
        "{BASE}[domain d.test]\n[mailbox b@d.test]\naliases = postmaster\n[outbox]\n"
    ));
    assert_eq!(w, vec![]);
    // RFC 5321 4.5.1: a domain that would refuse postmaster@ is named.
    let (_, w) = ok(&format!(
        "{BASE}[domain d.test]\n[mailbox b@d.test]\n[domain e.test]\ncatch_all = c\n[mailbox c@e.test]\n"
    ));
    assert!(
        w.iter()
            .any(|d| d.message.contains("[server] postmaster is not set")
                && d.message.contains("d.test")
                && !d.message.contains("e.test")),
        "{w:#?}"
    );
    let (_, w) = ok(&format!(
        "{BASE}postmaster = b@d.test\n[domain d.test]\n[mailbox b@d.test]\n"
    ));
    assert_eq!(w, vec![]);
    assert!(parse(&format!(
        "{BASE}postmaster = b@far.test\n[domain d.test]\n[mailbox b@d.test]\n"
    ))
    .is_err());
    assert!(parse(&format!(
        "{BASE}postmaster = x@d.test\n[domain d.test]\n[mailbox b@d.test]\n"
    ))
    .is_err());
    let (c, _) = ok(&format!(
        "{BASE}[outbox]\nmode = direct\nhost = h.example\n"
    ));
    assert!(c.outbox.hosts.is_empty());
}

#[test]
fn hostile_files() {
    // Binary-ish junk (valid UTF-8, since parse takes &str): errors, no panic.
    let junk: String = (0u32..0x800)
        .filter_map(char::from_u32)
        .cycle()
        .take(20_000)
        .collect();
    let d = parse(&junk).unwrap_err();
    assert!(d.len() <= MAX_DIAGNOSTICS + 1);
    // NUL and control characters in keys, values and headers.
    for text in [
        "[server\0]\n",
        "[server]\nhostname = h\0\n",
        "[server]\nhost\u{1b}name = h\n",
        "\0\0\0",
        "[\u{7f}]",
    ] {
        assert!(parse(text).is_err(), "{text:?}");
    }
    // A very long line, and a file over 1 MB: one problem each, quickly, and
    // the message shows a short excerpt only.
    let long = format!("{BASE}[smtp]\ntimeout = {}\n", "9".repeat(1 << 20));
    let d = parse(&long).unwrap_err();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 4);
    assert!(d[0].message.len() < 200, "{}", d[0].message);
    let big = format!(
        "{BASE}{}",
        ";comment line that is fairly long, padding padding padding\n".repeat(20_000)
    );
    assert!(big.len() > 1 << 20);
    ok(&big);
    let many = format!("{BASE}{}", "bogus line\n".repeat(100_000));
    let d = parse(&many).unwrap_err();
    assert_eq!(d.len(), MAX_DIAGNOSTICS + 1);
    let last = &d[MAX_DIAGNOSTICS];
    assert_eq!((last.line, last.severity), (0, Severity::Error));
    assert_eq!(
        last.message,
        format!("{} more problems not shown", 100_000 - MAX_DIAGNOSTICS)
    );
    // CRLF, BOM, blank and indented lines, keys and headers in any case.
    let crlf = "\u{feff}[Server]\r\n  HostName = h.example \r\n\r\n\t; indented comment\r\n[SMTP]\r\nsmtps =\r\n";
    let (c, _) = ok(crlf);
    assert_eq!(c.server.hostname, "h.example");
    assert!(c.smtp.smtps.is_empty());
    // A bare CR is no line ending.
    assert!(errors("[server]\nhostname = h\rdata_dir = /x\n")
        .iter()
        .any(|e| e.0 == 2));
    // Empty values where a value is needed, and where empty means "none".
    let empty = "[server]\nhostname = h\nuser =\n[smtp]\nlisten =\nsubmission =\nsmtps =\n[pop3]\nlisten =\npop3s =\n[tls]\ncert =\nkey =\n";
    let (c, _) = ok(empty);
    assert!(
        c.smtp.listen.is_empty()
            && c.smtp.submission.is_empty()
            && c.pop3.listen.is_empty()
            && c.pop3.pop3s.is_empty()
    );
    for key in [
        "max_message_size",
        "max_recipients",
        "timeout",
        "allow_plaintext_auth",
    ] {
        let text = format!("{BASE}[smtp]\n{key} =\n");
        let errs = errors(&text);
        assert!(errs.iter().any(|(l, _)| *l == 4), "{key}: {errs:?}");
    }
    // Every prefix of the full example parses or fails, without panicking.
    let full = full_example();
    for i in (0..full.len()).step_by(7) {
        if let Some(prefix) = full.get(..i) {
            let _ = parse(prefix);
        }
    }
}

#[test]
fn empty_relay_networks_is_allowed() {
    let (c, _) = ok(&format!("{BASE}[smtp]\nrelay_networks =\n"));
    assert!(c.smtp.relay_networks.is_empty());
    assert!(!c.relay_allowed("127.0.0.1".parse().unwrap()));
}

#[test]
fn load_reports_bad_files() {
    let dir = std::env::temp_dir().join(format!("mailgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.ini");
    std::fs::write(&bad, b"[server]\nhostname = h\n\xff\xfe\n").unwrap();
    let d = Config::load(&bad).unwrap_err();
    assert_eq!(
        (d[0].line, d[0].message.as_str()),
        (3, "not valid UTF-8 text")
    );
    let good = dir.join("good.ini");
    std::fs::write(&good, BASE).unwrap();
    assert!(Config::load(&good).is_ok());
    let d = Config::load(&dir.join("missing.ini")).unwrap_err();
    assert_eq!(d[0].line, 0);
    assert!(d[0].to_string().starts_with(&format!(
        "{}:0: cannot read config:",
        dir.join("missing.ini").display()
    )));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_config_parses_without_warnings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/mailgate.ini");
    let (c, warnings) = match Config::load(&path) {
        Ok(c) => c,
        Err(d) => panic!("etc/mailgate.ini: {d:#?}"),
    };
    // The development config has logins on submission and no smarthost:
    // only that is pointed out.
    assert!(
        warnings.iter().all(|w| w
            .message
            .starts_with("[outbox] mode = smarthost but no host")),
        "{warnings:#?}"
    );
    assert_eq!(c.server.data_dir, PathBuf::from("./data"));
    assert_eq!(c.smtp.listen, vec![sa("127.0.0.1:2525")]);
    assert_eq!(c.smtp.submission, vec![sa("127.0.0.1:2587")]);
    assert_eq!(c.smtp.smtps, vec![sa("127.0.0.1:2465")]);
    assert_eq!(c.pop3.listen, vec![sa("127.0.0.1:2110")]);
    assert_eq!(c.pop3.pop3s, vec![sa("127.0.0.1:2995")]);
    assert!(c.is_local_domain("EXAMPLE.test"));
    let stored = c.find_login("bob").and_then(|m| m.password.clone());
    assert!(stored.is_some_and(|h| crate::auth::verify(&h, "secret")));
}

/// Every commented-out `;key = value` line of the shipped file is a real
/// key with its real default: uncommented, the file means the same.
#[test]
fn shipped_config_comments_are_live_keys() {
    let text = include_str!("../../etc/mailgate.ini");
    let mut out = String::new();
    for line in text.lines() {
        let bare = line.strip_prefix(';').unwrap_or(line);
        let is_key = bare
            .split_once('=')
            .is_some_and(|(k, _)| !k.trim().is_empty() && !k.contains(' ') && !k.contains('`'));
        let is_header = bare.starts_with('[') && bare.ends_with(']');
        let example = bare.starts_with("[alias")
            || bare.starts_with("[smartpop")
            || bare.starts_with("aliases")
            || bare.starts_with("to =");
        if line.starts_with(';') && (is_key || is_header) && !example {
            out.push_str(bare);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let (plain, _) = ok(text);
    let (live, _) = ok(&out);
    assert_eq!(format!("{:?}", plain.server), format!("{:?}", live.server));
    assert_eq!(format!("{:?}", plain.smtp), format!("{:?}", live.smtp));
    assert_eq!(format!("{:?}", plain.pop3), format!("{:?}", live.pop3));
    assert_eq!(format!("{:?}", plain.outbox), format!("{:?}", live.outbox));
    assert_eq!(
        format!("{:?}", plain.domains),
        format!("{:?}", live.domains)
    );
    // And with the examples too, the whole file still checks out.
    let all: String = text
        .lines()
        .map(|l| {
            l.strip_prefix(';')
                .filter(|b| !b.starts_with(' ') && !b.is_empty())
                .unwrap_or(l)
                .to_string()
                + "\n"
        })
        .collect();
    let (c, _) = ok(&all);
    assert_eq!(c.smartpop.len(), 1);
    assert_eq!(c.aliases.len(), 1);
}

fn resolution_config() -> Config {
    let text = format!(
        "{BASE}
[domain example.test]
catch_all = catchall
[domain other.test]
[mailbox bob@example.test]
aliases = robert, postmaster
forward = bob@elsewhere.example, alice@example.test
[mailbox alice@example.test]
[mailbox catchall@example.test]
[mailbox bob+literal@example.test]
[mailbox carol@other.test]
forward = carol@other.test
[alias family@example.test]
to = bob@example.test, alice@example.test, gran@elsewhere.example, BOB@example.test
[alias all@example.test]
to = family@example.test, carol@other.test, robert@example.test
[alias loop1@example.test]
to = loop2@example.test, alice@example.test
[alias loop2@example.test]
to = loop1@example.test, far@remote.example
[alias self@other.test]
to = self@other.test, carol@other.test
"
    );
    ok(&text).0
}

#[test]
fn resolution_table() {
    let c = resolution_config();
    let r = |local: &[&str], remote: &[&str]| {
        Some(Resolution {
            local: local.iter().map(|s| s.to_string()).collect(),
            remote: remote.iter().map(|s| s.to_string()).collect(),
        })
    };
    let bob = r(
        &["bob@example.test", "alice@example.test"],
        &["bob@elsewhere.example"],
    );
    let table: &[(&str, Option<Resolution>)] = &[
        ("bob@example.test", bob.clone()),
        ("BOB@Example.TEST", bob.clone()),
        ("robert@example.test", bob.clone()),
        ("Postmaster@example.test", bob.clone()),
        ("alice@example.test", r(&["alice@example.test"], &[])),
        // Delimiter: exact match first, then the base, then catch-all.
        ("bob+news@example.test", bob.clone()),
        (
            "bob+literal@example.test",
            r(&["bob+literal@example.test"], &[]),
        ),
        ("alice+a+b@example.test", r(&["alice@example.test"], &[])),
        ("+tag@example.test", r(&["catchall@example.test"], &[])),
        ("nobody+x@example.test", r(&["catchall@example.test"], &[])),
        ("nobody@example.test", r(&["catchall@example.test"], &[])),
        // No catch-all in other.test.
        ("nobody@other.test", None),
        ("carol+x@other.test", r(&["carol@other.test"], &[])),
        // Fan-out, in order, deduplicated; forward of each mailbox reached.
        (
            "family@example.test",
            r(
                &["bob@example.test", "alice@example.test"],
                &["bob@elsewhere.example", "gran@elsewhere.example"],
            ),
        ),
        (
            "all@example.test",
            r(
                &["bob@example.test", "alice@example.test", "carol@other.test"],
                &["bob@elsewhere.example", "gran@elsewhere.example"],
            ),
        ),
        // Loops are cut.
        (
            "loop1@example.test",
            r(&["alice@example.test"], &["far@remote.example"]),
        ),
        (
            "loop2@example.test",
            r(&["alice@example.test"], &["far@remote.example"]),
        ),
        ("self@other.test", r(&["carol@other.test"], &[])),
        // Not ours: the address itself, domain lower-cased.
        ("Someone@Far.EXAMPLE", r(&[], &["Someone@far.example"])),
        // Hostile or malformed local parts never resolve, catch-all or not.
        ("../etc@example.test", None),
        ("..@example.test", None),
        (".@example.test", None),
        ("a/b@example.test", None),
        ("a\\b@example.test", None),
        ("a\0b@example.test", None),
        ("a\r\nb@example.test", None),
        ("@example.test", None),
        ("bob@", None),
        ("bob", None),
        ("", None),
    ];
    for (addr, want) in table {
        assert_eq!(&c.resolve(addr), want, "{addr:?}");
    }
}

#[test]
fn resolution_without_delimiter() {
    let mut c = resolution_config();
    c.server.recipient_delimiter = None;
    let catchall = Some(Resolution {
        local: vec!["catchall@example.test".into()],
        remote: vec![],
    });
    assert_eq!(c.resolve("bob+news@example.test"), catchall);
    assert_eq!(c.resolve("carol+x@other.test"), None);
}

#[test]
fn long_alias_chain_does_not_overflow() {
    let mut text = format!("{BASE}[domain d.test]\n[mailbox end@d.test]\n");
    let n = 20_000;
    for i in 0..n {
        text.push_str(&format!("[alias a{i}@d.test]\nto = a{}@d.test\n", i + 1));
    }
    text.push_str(&format!("[alias a{n}@d.test]\nto = end@d.test\n"));
    // Quadratic checks are fine at home-config sizes; this only proves no
    // stack overflow, on a chain long enough to have caused one.
    let c = ok(&text).0;
    assert_eq!(
        c.resolve("a0@d.test").map(|r| r.local),
        Some(vec!["end@d.test".to_string()])
    );
}

#[test]
fn find_login() {
    let text = format!("{BASE}[domain a.test]\n[domain b.test]\n[mailbox bob@a.test]\n[mailbox bob@b.test]\n[mailbox Alice@b.test]\naliases = al\n");
    let c = ok(&text).0;
    let addr = |u: &str| c.find_login(u).map(|m| m.address.as_str());
    assert_eq!(addr("bob@a.test"), Some("bob@a.test"));
    assert_eq!(addr("BOB@B.TEST"), Some("bob@b.test"));
    assert_eq!(addr("alice"), Some("alice@b.test"));
    assert_eq!(addr("ALICE"), Some("alice@b.test"));
    assert_eq!(addr("bob"), None, "ambiguous bare name");
    assert_eq!(addr("al"), None, "aliases are not logins");
    assert_eq!(addr("nobody@a.test"), None);
    assert_eq!(addr(""), None);
}

#[test]
fn ip_nets() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let table: &[(&str, u8, &str, bool)] = &[
        ("127.0.0.0", 8, "127.1.2.3", true),
        ("127.0.0.0", 8, "128.0.0.1", false),
        ("127.0.0.0", 8, "::ffff:127.0.0.1", true),
        ("127.0.0.0", 8, "::1", false),
        ("192.168.1.0", 24, "192.168.1.255", true),
        ("192.168.1.0", 24, "192.168.2.1", false),
        ("192.168.1.7", 24, "192.168.1.1", true),
        ("10.0.0.1", 32, "10.0.0.1", true),
        ("10.0.0.1", 32, "10.0.0.2", false),
        ("0.0.0.0", 0, "203.0.113.9", true),
        ("0.0.0.0", 0, "::ffff:203.0.113.9", true),
        ("0.0.0.0", 0, "2001:db8::1", false),
        ("10.0.0.0", 99, "10.0.0.0", true),
        ("10.0.0.0", 99, "10.0.0.1", false),
        ("::1", 128, "::1", true),
        ("::1", 128, "::2", false),
        ("::1", 128, "127.0.0.1", false),
        ("2001:db8::", 32, "2001:db8:ffff::1", true),
        ("2001:db8::", 32, "2001:db9::1", false),
        ("::", 0, "fe80::1", true),
        ("::ffff:0:0", 96, "198.51.100.1", true),
        ("::ffff:10.0.0.0", 104, "10.9.9.9", true),
        ("::ffff:10.0.0.0", 104, "11.0.0.0", false),
        ("::", 200, "::", true),
    ];
    for &(addr, prefix, probe, want) in table {
        assert_eq!(
            net(addr, prefix).contains(ip(probe)),
            want,
            "{addr}/{prefix} vs {probe}"
        );
    }
    let (c, _) = ok(&format!(
        "{BASE}[smtp]\nrelay_networks = 192.168.1.0/24, fd00::/8\n"
    ));
    assert!(c.relay_allowed(ip("192.168.1.20")));
    assert!(c.relay_allowed(ip("::ffff:192.168.1.20")));
    assert!(c.relay_allowed(ip("fd12::1")));
    assert!(!c.relay_allowed(ip("127.0.0.1")));
    assert!(!c.relay_allowed(ip("8.8.8.8")));
    assert_eq!(net("192.168.1.0", 24).to_string(), "192.168.1.0/24");
    assert_eq!(
        HostPort {
            host: "::1".into(),
            port: 25
        }
        .to_string(),
        "[::1]:25"
    );
    assert_eq!(
        HostPort {
            host: "h.example".into(),
            port: 25
        }
        .to_string(),
        "h.example:25"
    );
}

#[test]
fn mail_authentication_keys() {
    let (c, _) = ok(BASE);
    assert_eq!(c.smtp.dnsbl, DEFAULT_DNSBL);
    assert_eq!(c.smtp.greylist, DEFAULT_GREYLIST);
    assert_eq!(c.smtp.greylist_delay, DEFAULT_GREYLIST_DELAY);
    assert_eq!(c.smtp.dmarc, DmarcAction::Quarantine);
    let (c, _) = ok(&format!(
        "{BASE}[smtp]\ndnsbl = Zen.Spamhaus.org.=127.0.0.2-127.0.0.11|127.0.0.20, bl.example.net\n\
         greylist = yes\ngreylist_delay = 10m\ndmarc = reject\n\
         [domain example.test]\ndkim_selector = MG2026\n"
    ));
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(
        c.smtp.dnsbl,
        vec![
            DnsblList {
                zone: "zen.spamhaus.org".into(),
                codes: vec![
                    (ip("127.0.0.2"), ip("127.0.0.11")),
                    (ip("127.0.0.20"), ip("127.0.0.20"))
                ],
            },
            DnsblList {
                zone: "bl.example.net".into(),
                codes: vec![],
            },
        ]
    );
    assert!(c.smtp.greylist);
    assert_eq!(c.smtp.greylist_delay, secs(600));
    assert_eq!(c.smtp.dmarc, DmarcAction::Reject);
    assert_eq!(
        c.domains["example.test"].dkim_selector.as_deref(),
        Some("mg2026")
    );
    for (line, text) in [
        ("dnsbl = zen.spamhaus.org=10.0.0.2", "not in 127.0.0.0/8"),
        ("dnsbl = zen.spamhaus.org=127.0.0.9-127.0.0.2", "backwards"),
        ("dnsbl = zen.spamhaus.org=x", "not an IPv4 address"),
        ("dnsbl = localhost", "not a DNS zone name"),
        ("dnsbl = a.example,,b.example", "empty item"),
        ("greylist = maybe", ""),
        ("greylist_delay = soon", ""),
        ("dmarc = bounce", "reject, quarantine or tag"),
    ] {
        let errs = errors(&format!("{BASE}[smtp]\n{line}\n"));
        assert_eq!(errs.len(), 1, "{line}: {errs:?}");
        assert_eq!(errs[0].0, 4, "{line}: {errs:?}");
        assert!(errs[0].1.contains(text), "{line}: {errs:?}");
    }
    for bad in ["-x", "a.b", "a_b", &"s".repeat(51)] {
        let errs = errors(&format!(
            "{BASE}[domain example.test]\ndkim_selector = {bad}\n"
        ));
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert_eq!(errs[0].0, 4, "{bad}: {errs:?}");
    }
}

#[test]
fn sender_login_match() {
    let text = format!(
        "{BASE}[domain d.test]\n[domain e.test]\n[mailbox bob@d.test]\naliases = robert\n\
         send_as = Family@d.test, bob@far.example\n[mailbox alice@d.test]\n[mailbox carol@e.test]\n"
    );
    let (c, _) = ok(&text);
    let table: &[(&str, &str, bool)] = &[
        ("bob@d.test", "bob@d.test", true),
        ("bob@d.test", "BOB@D.Test", true),
        ("bob", "bob@d.test", true),
        ("bob@d.test", "bob+lists@d.test", true),
        ("bob@d.test", "robert@d.test", true),
        ("bob@d.test", "robert+x@d.test", true),
        ("bob@d.test", "family@d.test", true),
        ("bob@d.test", "bob@far.example", true),
        ("bob@d.test", "", true),
        ("bob@d.test", "alice@d.test", false),
        ("bob@d.test", "robert@e.test", false),
        ("bob@d.test", "bob@e.test", false),
        ("bob@d.test", "+bob@d.test", false),
        ("bob@d.test", "evil@far.example", false),
        ("alice@d.test", "bob@d.test", false),
        ("nobody@d.test", "nobody@d.test", false),
    ];
    for (login, from, want) in table {
        assert_eq!(c.may_send_as(login, from), *want, "{login} as {from:?}");
    }
    let (c, _) = ok(&format!(
        "{BASE}[smtp]\nsender_login_match = no\n{}",
        &text[BASE.len()..]
    ));
    assert!(c.may_send_as("bob@d.test", "alice@d.test"));
}

#[test]
fn oauth2_accounts_and_smarthost() {
    let base = format!("{BASE}[domain d.test]\n[mailbox b@d.test]\n");
    let (c, _) = ok(&format!(
        "{base}[outbox]\nhost = smtp.office365.com\nusername = me@x.com\nauth = oauth2\nprovider = microsoft\nclient_id = app1\n\
         [smartpop ms]\nhost = outlook.office365.com\nusername = me@x.com\nauth = oauth2\nprovider = microsoft\nclient_id = app1\ndeliver_to = b@d.test\n\
         [smartpop own]\nhost = pop.example\nusername = u\nauth = oauth2\nprovider = custom\nclient_id = c\nclient_secret = s3cret\n\
         token_url = https://auth.example/token\ndevice_url = https://auth.example/device\nscope = mail\ndeliver_to = b@d.test\n"
    ));
    let o = c.outbox.oauth.as_ref().unwrap();
    assert_eq!(
        (o.provider, o.client_id.as_str()),
        (OAuthProvider::Microsoft, "app1")
    );
    assert_eq!(
        c.smartpop[0].oauth.as_ref().map(|o| o.provider),
        Some(OAuthProvider::Microsoft)
    );
    let own = c.smartpop[1].oauth.as_ref().unwrap();
    assert_eq!(own.token_url.as_deref(), Some("https://auth.example/token"));
    assert_eq!(own.client_secret.as_deref(), Some("s3cret"));
    assert!(!format!("{own:?}").contains("s3cret"));
    assert!(c.smartpop[0].password.is_empty());
    let sp = |extra: &str| {
        format!(
            "{base}[smartpop x]\nhost = pop.example\nusername = u\ndeliver_to = b@d.test\n{extra}"
        )
    };
    for (extra, want) in [
        ("auth = oauth2\nclient_id = c\n", "needs provider"),
        ("auth = oauth2\nprovider = google\n", "needs client_id"),
        (
            "auth = oauth2\nprovider = yahoo\nclient_id = c\n",
            "provider must be",
        ),
        ("auth = kerberos\npassword = p\n", "auth must be"),
        (
            "auth = oauth2\nprovider = custom\nclient_id = c\n",
            "provider = custom needs",
        ),
        (
            "auth = oauth2\nprovider = custom\nclient_id = c\ntoken_url = http://x/t\n",
            "https://",
        ),
    ] {
        let errs = errors(&sp(extra));
        assert!(
            errs.iter().any(|(line, m)| *line > 0 && m.contains(want)),
            "{extra}: {errs:?}"
        );
    }
    let text = sp("auth = oauth2\nprovider = google\nclient_id = c\n")
        .replace("[smartpop x]", "[smartpop outbox]");
    let errs = errors(&text);
    assert!(
        errs.iter().any(|(_, m)| m.contains("the smarthost's")),
        "{errs:?}"
    );
}

#[test]
fn smartpop_imap_keys() {
    let hp = |h: &str, port| HostPort {
        host: h.to_string(),
        port,
    };
    let base = format!(
        "{BASE}[domain example.test]\n[mailbox bob@example.test]\npassword = {}\n",
        hash()
    );
    let acct = "[smartpop isp]\nhost = imap.isp.example\nusername = u\npassword = p\ndeliver_to = bob@example.test\n";
    let (c, _) = ok(&format!(
        "{base}{acct}protocol = imap\nfolders = INBOX, Sent Items\nkeep = move:Archive\nidle = no\n"
    ));
    let p = &c.smartpop[0];
    assert!(p.imap && !p.idle);
    assert_eq!(p.host, hp("imap.isp.example", 993));
    assert_eq!(
        p.folders,
        vec!["INBOX".to_string(), "Sent Items".to_string()]
    );
    assert_eq!(p.move_to.as_deref(), Some("Archive"));
    let (c, _) = ok(&format!("{base}{acct}"));
    let p = &c.smartpop[0];
    assert!(!p.imap && p.idle && p.move_to.is_none());
    assert_eq!(p.folders, vec!["INBOX".to_string()]);
    assert_eq!(p.host, hp("imap.isp.example", 995));
    let e = errors(&format!("{base}{acct}protocol = smtp\nkeep = move:\n"));
    let lines: Vec<usize> = e.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![11, 12], "{e:?}");
    // move: is IMAP's.
    let e = errors(&format!("{base}{acct}keep = move:Archive\n"));
    assert!(e[0].1.contains("protocol = imap"), "{e:?}");
}
