//! SPF against the public RFC 7208 test suite (tests/data/rfc7208-tests.yml,
//! the openspf.org suite as shipped in pyspf's source distribution; BSD
//! licence beside it), plus table tests of our own.

use super::*;
use yaml_rust2::{Yaml, YamlLoader};

const SUITE: &str = include_str!("../../../tests/data/rfc7208-tests.yml");
/// What pyspf 2.0.14 (the reference implementation) answers for each case
/// (`name result` lines), made with its own test driver over the same zones.
const PYSPF: &str = include_str!("../../../tests/data/rfc7208-pyspf-results.txt");

/// One zone entry of the suite: `TIMEOUT`, or a record type and its value.
#[derive(Debug, Clone)]
enum Entry {
    Timeout,
    Rec(String, Yaml),
}

/// The zone of one scenario, as pyspf's test driver builds it
/// (testspf.py `getrdata`): SPF (type 99) records are copied to TXT when
/// the name has no TXT entry at all; a value `NONE` means "no record" (but
/// a `TXT: NONE` still stops the copy).
fn load_zone(data: &Yaml) -> HashMap<String, Vec<Entry>> {
    let mut zone = HashMap::new();
    let Some(map) = data["zonedata"].as_hash() else {
        return zone;
    };
    for (name, records) in map {
        let name = name.as_str().unwrap_or("").to_ascii_lowercase();
        let mut entries = Vec::new();
        let mut generated = Vec::new();
        let mut has_txt = false;
        for r in records.as_vec().into_iter().flatten() {
            if r.as_str() == Some("TIMEOUT") {
                entries.push(Entry::Timeout);
                continue;
            }
            let Some(h) = r.as_hash() else { continue };
            for (t, v) in h {
                let t = t.as_str().unwrap_or("").to_string();
                let is_none = v.as_str() == Some("NONE");
                if t == "TXT" {
                    has_txt = true;
                } else if t == "SPF" {
                    generated.push(Entry::Rec("TXT".into(), v.clone()));
                }
                if !is_none {
                    entries.push(Entry::Rec(t, v.clone()));
                }
            }
        }
        if !has_txt {
            entries.extend(generated.into_iter().filter(|e| match e {
                Entry::Rec(_, v) => v.as_str() != Some("NONE"),
                Entry::Timeout => true,
            }));
        }
        zone.insert(name, entries);
    }
    zone
}

fn txt_bytes(v: &Yaml) -> Vec<u8> {
    match v {
        Yaml::String(s) => s.as_bytes().to_vec(),
        Yaml::Array(parts) => parts
            .iter()
            .flat_map(|p| p.as_str().unwrap_or("").as_bytes().to_vec())
            .collect(),
        Yaml::Integer(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        Yaml::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// A recursive resolver over the zone: what the DNS would answer.
fn resolve(zone: &HashMap<String, Vec<Entry>>, q: &Query, depth: usize) -> Reply {
    let name = q.name.as_str();
    let Some(entries) = zone.get(name) else {
        // testspf.py: names under `error.` time out.
        if name.starts_with("error.") {
            return Reply::Failed("timeout".into());
        }
        return Reply::nxdomain();
    };
    let want = match q.qtype {
        QType::A => "A",
        QType::Aaaa => "AAAA",
        QType::Mx => "MX",
        QType::Txt => "TXT",
        QType::Ptr => "PTR",
    };
    let mut seen = false;
    let mut addrs = Vec::new();
    let mut txt = Vec::new();
    let mut mx = Vec::new();
    let mut names = Vec::new();
    for e in entries {
        let (t, v) = match e {
            Entry::Timeout if !seen => return Reply::Failed("timeout".into()),
            Entry::Timeout => break,
            Entry::Rec(t, v) => (t.as_str(), v),
        };
        if t == "CNAME" {
            let target = v.as_str().unwrap_or("");
            if depth >= 10 {
                return Reply::Answer(Answer::NoData);
            }
            return resolve(zone, &Query::new(target, q.qtype), depth + 1);
        }
        if t != want {
            continue;
        }
        seen = true;
        if v.as_str() == Some("TIMEOUT") {
            return Reply::Failed("timeout".into());
        }
        match t {
            "A" | "AAAA" => {
                for s in strings(v) {
                    if let Ok(ip) = s.parse::<IpAddr>() {
                        addrs.push(ip);
                    }
                }
            }
            "TXT" => txt.push(txt_bytes(v)),
            "MX" => {
                if let Some([pref, host]) = v.as_vec().map(|x| x.as_slice()) {
                    let host = host.as_str().unwrap_or("").trim_end_matches('.');
                    if !host.is_empty() {
                        mx.push((pref.as_i64().unwrap_or(0) as u16, host.to_ascii_lowercase()));
                    }
                }
            }
            "PTR" => {
                if let Some(s) = v.as_str() {
                    names.push(s.trim_end_matches('.').to_ascii_lowercase());
                }
            }
            _ => {}
        }
    }
    let answer = match q.qtype {
        QType::A | QType::Aaaa if !addrs.is_empty() => Answer::Addrs(addrs),
        QType::Txt if !txt.is_empty() => Answer::Txt(txt),
        QType::Mx if !mx.is_empty() => Answer::Mx(mx),
        QType::Ptr if !names.is_empty() => Answer::Names(names),
        _ => Answer::NoData,
    };
    Reply::Answer(answer)
}

fn run(zone: &HashMap<String, Vec<Entry>>, ip: IpAddr, mail_from: &str, helo: &str) -> SpfOutcome {
    let mut check = SpfCheck::new(ip, mail_from, helo);
    loop {
        match check.step() {
            SpfStep::Query(q) => {
                let reply = resolve(zone, &q, 0);
                check.answer(&q, reply);
            }
            SpfStep::Done(outcome) => return outcome,
        }
    }
}

/// Cases where we knowingly give another result than the suite: none.
const KNOWN_DIFFERENCES: &[&str] = &[];

#[test]
fn rfc7208_test_suite() {
    let docs = YamlLoader::load_from_str(SUITE).expect("suite parses");
    let pyspf: HashMap<&str, &str> = PYSPF
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let mut total = 0;
    let mut agree = 0;
    let mut agree_pyspf = 0;
    let mut failures = Vec::new();
    for doc in &docs {
        let zone = load_zone(doc);
        let Some(tests) = doc["tests"].as_hash() else {
            continue;
        };
        for (name, t) in tests {
            let name = name.as_str().unwrap_or("?");
            let ip: IpAddr = t["host"].as_str().unwrap_or("").parse().expect("host ip");
            let mail_from = t["mailfrom"].as_str().unwrap_or("");
            let helo = t["helo"].as_str().unwrap_or("");
            let expected = strings(&t["result"]);
            total += 1;
            let got = run(&zone, ip, mail_from, helo);
            if pyspf.get(name) == Some(&got.result.as_str()) {
                agree_pyspf += 1;
            } else if !KNOWN_DIFFERENCES.contains(&name) {
                failures.push(format!(
                    "{name}: pyspf says {:?}, we say {}",
                    pyspf.get(name),
                    got.result
                ));
            }
            if expected.iter().any(|e| e == got.result.as_str()) {
                agree += 1;
            } else if !KNOWN_DIFFERENCES.contains(&name) {
                failures.push(format!(
                    "{name}: expected {expected:?}, got {} ({})",
                    got.result, got.reason
                ));
            }
        }
    }
    println!("RFC 7208 test suite: {agree} of {total} cases agree; {agree_pyspf} of {total} give pyspf's result");
    assert_eq!(pyspf.len(), total, "one pyspf result per case");
    assert!(total > 200, "the suite has {total} cases");
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn zone_of(records: &[(&str, &str, &str)]) -> HashMap<String, Vec<Entry>> {
    let mut zone: HashMap<String, Vec<Entry>> = HashMap::new();
    for (name, t, v) in records {
        zone.entry(name.to_string())
            .or_default()
            .push(Entry::Rec(t.to_string(), Yaml::String(v.to_string())));
    }
    zone
}

#[test]
fn macro_expansion_rfc7208_7_4() {
    // The examples of RFC 7208 7.4.
    let check = SpfCheck::new(
        "192.0.2.3".parse().unwrap(),
        "strong-bad@email.example.com",
        "mx.example.org",
    );
    let mut eval = Eval {
        check: &check,
        lookups: 0,
        voids: 0,
        p_macro: None,
    };
    let d = "email.example.com";
    let cases = [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        (
            "%{ir}.%{v}._spf.%{d2}",
            "3.2.0.192.in-addr._spf.example.com",
        ),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        (
            "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
            "3.2.0.192.in-addr.strong.lp._spf.example.com",
        ),
        (
            "%{d2}.trusted-domains.example.net",
            "example.com.trusted-domains.example.net",
        ),
        ("%{S}", "strong-bad%40email.example.com"),
    ];
    for (spec, want) in cases {
        let got = eval.expand(spec, d).unwrap_or_else(|_| panic!("{spec}"));
        assert_eq!(got, want, "{spec}");
    }
    let v6 = SpfCheck::new(
        "2001:db8::cb01".parse().unwrap(),
        "a@email.example.com",
        "h",
    );
    let eval = Eval {
        check: &v6,
        lookups: 0,
        voids: 0,
        p_macro: None,
    };
    assert_eq!(
        eval.i_value(),
        "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1"
    );
    for bad in ["%{x}", "%{d0}", "%", "%{c}", "%a", "%{d"] {
        assert!(check_macro_string(bad, false).is_err(), "{bad}");
    }
}

#[test]
fn limits_bound_a_self_including_policy() {
    let zone = zone_of(&[
        ("loop.example", "TXT", "v=spf1 include:loop.example -all"),
        (
            "a.example",
            "TXT",
            "v=spf1 a:x1.example a:x2.example a:x3.example -all",
        ),
    ]);
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let out = run(&zone, ip, "u@loop.example", "h.example");
    assert_eq!(out.result, SpfResult::PermError, "{}", out.reason);
    assert!(out.reason.contains("DNS lookups"), "{}", out.reason);
    // Three names without addresses: the third void lookup is permerror.
    let out = run(&zone, ip, "u@a.example", "h.example");
    assert_eq!(out.result, SpfResult::PermError, "{}", out.reason);
    assert!(out.reason.contains("void"), "{}", out.reason);
}

#[test]
fn helo_identity_when_mail_from_is_null() {
    let zone = zone_of(&[
        ("mta.example", "TXT", "v=spf1 ip6:2001:db8::/32 -all"),
        ("mta.example", "A", "192.0.2.9"),
    ]);
    let out = run(&zone, "2001:db8::25".parse().unwrap(), "", "mta.example");
    assert_eq!(out.result, SpfResult::Pass);
    assert_eq!(out.identity, Identity::Helo);
    assert_eq!(out.domain, "mta.example");
    let out = run(
        &zone,
        "::ffff:192.0.2.9".parse().unwrap(),
        "",
        "mta.example",
    );
    assert_eq!(out.result, SpfResult::Fail);
}

#[test]
fn dns_failure_is_temperror() {
    let zone = zone_of(&[("t.example", "TXT", "v=spf1 a:error.t.example -all")]);
    let out = run(&zone, "192.0.2.1".parse().unwrap(), "u@t.example", "h");
    assert_eq!(out.result, SpfResult::TempError);
}

/// Random records (from the pieces SPF is made of) never panic, and
/// always end within the query bound.
#[test]
fn hostile_records_never_panic() {
    let pieces = [
        "v=spf1",
        " ",
        "  ",
        "a",
        "mx",
        "ptr",
        "exists:",
        "include:",
        "redirect=",
        "exp=",
        "ip4:",
        "ip6:",
        "all",
        "-",
        "~",
        "?",
        "+",
        "/",
        "//",
        "24",
        "0",
        "129",
        "%{",
        "}",
        "%{ir}",
        "%{p}",
        "%{d2r-}",
        "%%",
        "%_",
        "%-",
        "%",
        ".",
        "x.example",
        "self.example",
        ":",
        "=",
        "1.2.3.4",
        "::1",
        "\t",
        "é",
        "%{l0}",
        "%{s}.%{d}",
    ];
    let mut seed: u64 = 99;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    for _ in 0..500 {
        let mut rec = String::from("v=spf1 ");
        for _ in 0..(next() % 12) {
            rec.push_str(pieces[next() % pieces.len()]);
        }
        let zone = zone_of(&[
            ("self.example", "TXT", rec.as_str()),
            ("x.example", "TXT", "v=spf1 include:self.example ?all"),
            ("x.example", "A", "192.0.2.1"),
            ("x.example", "MX", "x.example"),
        ]);
        let out = run(
            &zone,
            "192.0.2.1".parse().unwrap(),
            "u@self.example",
            "h.example",
        );
        let _ = out.result;
    }
}

/// A 64 KB policy (the most a DNS answer over TCP carries) of ip4 terms
/// and a few DNS terms is evaluated in bounded work.
#[test]
fn a_64k_policy_costs_bounded_work() {
    let mut rec = String::from("v=spf1");
    let mut i = 0u32;
    while rec.len() < 65_000 {
        rec.push_str(&format!(" ip4:10.{}.{}.0/24", (i >> 8) & 0xff, i & 0xff));
        if i.is_multiple_of(500) {
            rec.push_str(&format!(" a:h{i}.big.example"));
        }
        i += 1;
    }
    rec.push_str(" -all");
    let zone = zone_of(&[("big.example", "TXT", rec.as_str())]);
    let started = std::time::Instant::now();
    let out = run(&zone, "192.0.2.1".parse().unwrap(), "u@big.example", "h");
    // More than 2 void lookups (the a: names have no addresses).
    assert_eq!(out.result, SpfResult::PermError, "{}", out.reason);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
