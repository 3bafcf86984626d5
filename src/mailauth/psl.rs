//! The Public Suffix List (publicsuffix.org), for DMARC's organizational
//! domain (RFC 7489 3.2).
//!
//! Owns: the embedded list and the lookup (the PSL algorithm: the longest
//! matching rule, `*.` wildcards, `!` exceptions, the implicit `*`).
//!
//! Must not: allocate per rule or build a table at start: the list is one
//! sorted text (`public_suffix_list.txt`, one rule a line, sorted by
//! bytes) searched in place by bisection over line starts, so it costs its
//! 120 KB of read-only data and nothing else.
//!
//! The data is Debian's `publicsuffix` package (20230209), ICANN and
//! private sections, comments dropped, lower-cased, each Unicode rule also
//! in its IDNA A-label form (DNS carries A-labels). It is under the Mozilla
//! Public License 2.0 (public_suffix_list.LICENSE). To refresh it, rerun
//! that transformation on a newer `public_suffix_list.dat`.
//!
//! Why not the `psl` crate: it compiles the list into match code that
//! cost 745,944 bytes of the stripped x86_64 release build; this costs
//! 124,304 (2,831,600 against 2,707,296 with no list at all).

const LIST: &str = include_str!("public_suffix_list.txt");

/// Whether `rule` is a line of [`LIST`].
fn contains(rule: &str) -> bool {
    let text = LIST.as_bytes();
    let want = rule.as_bytes();
    let (mut lo, mut hi) = (0usize, text.len());
    // Invariant: lo is a line start; every line starting before lo sorts
    // below `rule`, every line starting at or after hi sorts above it.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // The start of the line holding mid.
        let start = text[..mid]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let start = start.max(lo);
        let end = text[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |p| start + p);
        match text[start..end].cmp(want) {
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Less => lo = end + 1,
            std::cmp::Ordering::Greater => hi = start,
        }
    }
    false
}

/// How many labels at the right of `domain` are its public suffix (at
/// least 1: the implicit `*` rule).
pub fn suffix_labels(domain: &str) -> usize {
    let labels: Vec<&str> = domain.split('.').collect();
    let n = labels.len();
    let mut best = 1;
    for k in 1..=n {
        let suffix = labels[n - k..].join(".");
        if contains(&format!("!{suffix}")) {
            // An exception: its suffix is the rule minus its first label.
            return k - 1;
        }
        if contains(&suffix) {
            best = k;
        }
        if k >= 2 && contains(&format!("*.{}", labels[n - k + 1..].join("."))) {
            best = best.max(k);
        }
    }
    best
}

/// RFC 7489 3.2: the public suffix plus one label; a name that is a
/// public suffix is its own organizational domain. Lower-case, without
/// the final dot.
pub fn organizational_domain(domain: &str) -> String {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let keep = suffix_labels(&domain) + 1;
    if labels.len() <= keep {
        return domain;
    }
    labels[labels.len() - keep..].join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_and_searchable() {
        let lines: Vec<&str> = LIST.lines().collect();
        assert!(lines.len() > 9000);
        assert!(lines.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()));
        // Every line is found, and near misses are not.
        for l in &lines {
            assert!(contains(l), "{l}");
        }
        for miss in ["", "!", "comx", "cxq", "uk.", "zzzzzz", "aaaa"] {
            assert!(!contains(miss), "{miss}");
        }
    }

    #[test]
    fn publicsuffix_org_test_vectors() {
        // From publicsuffix.org's test list (checkPublicSuffix), as
        // organizational domains: the name itself when it is a suffix.
        for (domain, org) in [
            ("com", "com"),
            ("example.com", "example.com"),
            ("b.example.com", "example.com"),
            ("a.b.example.com", "example.com"),
            ("uk.com", "uk.com"),
            ("example.uk.com", "example.uk.com"),
            ("b.example.uk.com", "example.uk.com"),
            ("test.ac", "test.ac"),
            ("jp", "jp"),
            ("test.jp", "test.jp"),
            ("www.test.jp", "test.jp"),
            ("ac.jp", "ac.jp"),
            ("test.ac.jp", "test.ac.jp"),
            ("kyoto.jp", "kyoto.jp"),
            ("test.kyoto.jp", "test.kyoto.jp"),
            ("ide.kyoto.jp", "ide.kyoto.jp"),
            ("b.ide.kyoto.jp", "b.ide.kyoto.jp"),
            ("a.b.ide.kyoto.jp", "b.ide.kyoto.jp"),
            ("c.kobe.jp", "c.kobe.jp"),
            ("b.c.kobe.jp", "b.c.kobe.jp"),
            ("a.b.c.kobe.jp", "b.c.kobe.jp"),
            ("city.kobe.jp", "city.kobe.jp"),
            ("www.city.kobe.jp", "city.kobe.jp"),
            ("ck", "ck"),
            ("test.ck", "test.ck"),
            ("b.test.ck", "b.test.ck"),
            ("a.b.test.ck", "b.test.ck"),
            ("www.ck", "www.ck"),
            ("www.www.ck", "www.ck"),
            ("us", "us"),
            ("test.us", "test.us"),
            ("www.test.us", "test.us"),
            ("ak.us", "ak.us"),
            ("test.ak.us", "test.ak.us"),
            ("www.test.ak.us", "test.ak.us"),
            ("k12.ak.us", "k12.ak.us"),
            ("test.k12.ak.us", "test.k12.ak.us"),
            ("www.test.k12.ak.us", "test.k12.ak.us"),
            ("xn--85x722f.com.cn", "xn--85x722f.com.cn"),
            ("xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
            ("www.xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
            ("shishi.xn--55qx5d.cn", "shishi.xn--55qx5d.cn"),
            ("xn--55qx5d.cn", "xn--55qx5d.cn"),
            ("mail.example.co.uk", "example.co.uk"),
            ("Mail.Example.COM.", "example.com"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(organizational_domain(domain), org, "{domain}");
        }
    }
}
