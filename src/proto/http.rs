//! HTTP/1.1 for OAuth2 token endpoints (RFC 9112): one POST of a form body,
//! one bounded response.
//!
//! Owns: splitting an `https://` URL, writing the request, and parsing the
//! response from bytes as they arrive (Content-Length, chunked, or up to
//! the end of the connection), refusing anything larger than
//! [`MAX_BODY`]. Redirects are never followed (RFC 6749 3.2 gives a token
//! endpoint no reason to redirect; following them invites loops), so a 3xx
//! is an error. Must not: do IO, or hold more than the limits.

/// Token answers are a few KiB (RFC 6749 5.1).
pub const MAX_BODY: usize = 64 * 1024;
/// The status line and all header fields together.
pub const MAX_HEAD: usize = 16 * 1024;

/// An `https://host[:port]/path?query` URL; nothing else is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("bad port in {url:?}"))?;
                (h, port)
            }
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':');
        if host.is_empty() || !host.bytes().all(ok) || authority.contains('@') {
            return Err(format!("bad host in {url:?}"));
        }
        if target.bytes().any(|b| b <= 0x20 || b == 0x7f || b == b'#') {
            return Err(format!("bad path in {url:?}"));
        }
        Ok(Url {
            host: host.to_string(),
            port,
            target,
        })
    }
}

/// `POST` of an `application/x-www-form-urlencoded` body, closing after.
pub fn post_form(url: &Url, body: &str) -> Vec<u8> {
    let host = if url.port == 443 {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mailgate\r\nAccept: application/json\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.target,
        body.len()
    )
    .into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Lower-cased `Content-Type` without parameters, if any.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Feed the response as it arrives; `finish` at the end of the connection.
#[derive(Debug, Default)]
pub struct ResponseParser {
    buf: Vec<u8>,
}

impl ResponseParser {
    pub fn new() -> ResponseParser {
        ResponseParser::default()
    }

    /// More bytes. `Ok(Some)` once the response is complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<Response>, String> {
        if self.buf.len() + input.len() > MAX_HEAD + MAX_BODY + 8 * 1024 {
            return Err(format!(
                "response larger than {} KiB",
                (MAX_HEAD + MAX_BODY) / 1024
            ));
        }
        self.buf.extend_from_slice(input);
        parse(&self.buf, false)
    }

    /// The peer closed the connection.
    pub fn finish(&mut self) -> Result<Response, String> {
        parse(&self.buf, true)?.ok_or_else(|| "connection closed before the response ended".into())
    }
}

fn parse(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("response header longer than 16 KiB".into());
        }
        if eof {
            return Err(if buf.is_empty() {
                "empty response".into()
            } else {
                "not an HTTP response".into()
            });
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err("response header longer than 16 KiB".into());
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response header is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err("not an HTTP response".into());
    };
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c) && code.len() == 3);
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err("not an HTTP/1.x response".into());
    };
    let mut length = None;
    let mut chunked = false;
    let mut content_type = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err("malformed header field".into());
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| "bad Content-Length".to_string())?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length".into());
                }
                length = Some(n);
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-type" => {
                let t = value.split(';').next().unwrap_or("").trim();
                content_type = Some(t.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    if (300..400).contains(&status) {
        return Err(format!(
            "HTTP {status}: the token endpoint redirects (not followed)"
        ));
    }
    if (100..200).contains(&status) {
        return Err(format!("HTTP {status}: interim responses are not expected"));
    }
    let rest = &buf[end + 4..];
    let body = if chunked {
        match dechunk(rest)? {
            Some(b) => b,
            None if eof => return Err("connection closed inside a chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(format!(
                "response body of {n} octets is over the 64 KiB limit"
            ));
        }
        if rest.len() < n {
            if eof {
                return Err("connection closed before the body ended".into());
            }
            return Ok(None);
        }
        rest[..n].to_vec()
    } else {
        if rest.len() > MAX_BODY {
            return Err("response body over the 64 KiB limit".into());
        }
        if !eof {
            return Ok(None);
        }
        rest.to_vec()
    };
    Ok(Some(Response {
        status,
        content_type,
        body,
    }))
}

/// RFC 9112 7.1; `None` until the last chunk is in.
fn dechunk(mut s: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(lf) = s.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&s[..lf]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        if size > MAX_BODY || out.len() + size > MAX_BODY {
            return Err("response body over the 64 KiB limit".into());
        }
        s = &s[lf + 2..];
        if size == 0 {
            // Trailer fields are ignored; the body is complete.
            return Ok(Some(out));
        }
        if s.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&s[..size]);
        if &s[size..size + 2] != b"\r\n" {
            return Err("bad chunk end".into());
        }
        s = &s[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://login.microsoftonline.com/common/oauth2/v2.0/token").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            (
                "login.microsoftonline.com",
                443,
                "/common/oauth2/v2.0/token"
            )
        );
        let u = Url::parse("https://127.0.0.1:8443?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8443, "/?x=1")
        );
        for bad in [
            "http://x/",
            "https://",
            "https://a b/",
            "https://u@h/",
            "https://h:0/",
            "https://h:99999/",
            "https://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let req = post_form(&Url::parse("https://h:8443/t").unwrap(), "a=b");
        assert!(String::from_utf8(req)
            .unwrap()
            .starts_with("POST /t HTTP/1.1\r\nHost: h:8443\r\n"));
    }

    fn whole(raw: &[u8]) -> Result<Response, String> {
        // Byte by byte: the parser must not depend on how reads fall.
        let mut p = ResponseParser::new();
        for b in raw {
            if let Some(r) = p.feed(std::slice::from_ref(b))? {
                return Ok(r);
            }
        }
        p.finish()
    }

    #[test]
    fn responses() {
        let r = whole(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            (r.status, r.content_type.as_deref(), &r.body[..]),
            (200, Some("application/json"), &b"{}"[..])
        );
        let r = whole(b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, &r.body[..]), (400, &b"{\"a\":1}"[..]));
        let r = whole(b"HTTP/1.0 200 OK\r\n\r\nuntil close").unwrap();
        assert_eq!(r.body, b"until close");
    }

    #[test]
    fn refusals() {
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 10 << 20);
        let mut endless = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'x', 100_000));
        let mut chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..100 {
            chunks.extend_from_slice(b"400\r\n");
            chunks.extend(std::iter::repeat_n(b'x', 0x400));
            chunks.extend_from_slice(b"\r\n");
        }
        let head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let cases: Vec<(&[u8], &str)> = vec![
            (big.as_bytes(), "64 KiB"),
            (&endless, "64 KiB"),
            (&chunks, "64 KiB"),
            (head.as_bytes(), "16 KiB"),
            (
                b"HTTP/1.1 302 Found\r\nLocation: https://x/token\r\n\r\n",
                "redirect",
            ),
            (b"<html><body>hello</body></html>", "not an HTTP"),
            (b"", "empty"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "before the body ended",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
        ];
        for (raw, want) in cases {
            let e = whole(raw).unwrap_err();
            assert!(e.contains(want), "{e} / {want}");
        }
    }
}
