//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy fetched over HTTPS, its cache,
//! and matching MX host names against it.
//!
//! Notes:
//! - The policy is fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt` with a
//!   validated certificate (§3.3), no redirects (§3.3), at most [`MAX_POLICY`] bytes.
//! - A cached policy is used while its `max_age` holds; the TXT record's `id` changing makes us
//!   fetch again (§5.1). When fetching fails, the cached policy stays in force (§5.1, §10.2).
//! - DANE (RFC 7672) is not implemented yet: it needs a DNSSEC-validating resolver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tls::rustls;
use tls::rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest policy body accepted (RFC 8461 §3.3: senders may limit it; 64 KiB is generous).
pub const MAX_POLICY: usize = 64 * 1024;
/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds.
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// RFC 8461 §5 policy modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse MX hosts that do not match or fail certificate validation.
    Enforce,
    /// Deliver anyway (report only).
    Testing,
    /// No policy.
    None,
}

/// A parsed policy (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `mx` patterns, lower-case; `*.example.com` matches one leftmost label.
    pub mx: Vec<String>,
    /// `max_age` in seconds.
    pub max_age: u64,
}

impl Policy {
    /// Parses the policy text: `key: value` lines (CRLF or LF), `version: STSv1` required,
    /// unknown keys ignored (§3.2).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut version = false;
        let mut mode = None;
        let mut mx = Vec::new();
        let mut max_age = None;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = value == "STSv1",
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "mx" => mx.push(value.to_ascii_lowercase()),
                "max_age" => {
                    max_age = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| format!("bad max_age {value:?}"))?
                            .min(MAX_AGE_LIMIT),
                    )
                }
                _ => {}
            }
        }
        if !version {
            return Err("missing version: STSv1".into());
        }
        let mode = mode.ok_or("missing mode")?;
        let max_age = max_age.ok_or("missing max_age")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("no mx line".into());
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// RFC 8461 §4.1: whether `host` matches one of the `mx` patterns (a wildcard matches
    /// exactly one leftmost label).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => *pattern == host,
            })
    }
}

/// Parses the `_mta-sts` TXT record (RFC 8461 §3.1): `v=STSv1; id=...;` and returns the id.
pub fn parse_txt(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim);
    if fields.next()? != "v=STSv1" {
        return None;
    }
    fields
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim() == "id")
        .map(|(_, v)| v.trim().to_string())
        .filter(|id| {
            !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// A cached policy.
#[derive(Debug, Clone)]
struct Cached {
    id: String,
    policy: Policy,
    until: Instant,
}

/// The per-domain policy cache shared by all deliveries.
#[derive(Debug, Default)]
pub struct PolicyCache {
    entries: Mutex<HashMap<String, Cached>>,
}

impl PolicyCache {
    /// The unexpired cached policy of `domain` and its id.
    pub fn get(&self, domain: &str) -> Option<(String, Policy)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(domain)
            .filter(|c| c.until > Instant::now())
            .map(|c| (c.id.clone(), c.policy.clone()))
    }

    /// Stores a policy for its `max_age`.
    pub fn put(&self, domain: &str, id: String, policy: Policy) {
        let until = Instant::now() + Duration::from_secs(policy.max_age);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(domain.to_string(), Cached { id, policy, until });
    }
}

/// Fetches the policy text of `domain` from `addr` (the address of `mta-sts.<domain>`) over
/// HTTPS with certificate validation against `tls`. HTTP/1.1, `Connection: close`; only a
/// `200` is a policy (§3.3: no redirects).
pub async fn fetch(
    domain: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let mut stream = tls::tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tessera\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        (&mut stream)
            .take((MAX_POLICY + 8192) as u64)
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("fetching the MTA-STS policy of {domain} timed out"))??;
    parse_http(&response)
}

/// Splits an HTTP/1.1 response into status and body (Content-Length, chunked or until close).
fn parse_http(response: &[u8]) -> Result<String, String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("policy fetch answered {status:?}"));
    }
    let mut body = &response[end + 4..];
    let mut chunked = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                let n: usize = v.trim().parse().map_err(|_| "bad Content-Length")?;
                body = body.get(..n).ok_or("truncated body")?;
            } else if k == "transfer-encoding" && v.trim().eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    if body.len() > MAX_POLICY {
        return Err("policy too large".into());
    }
    String::from_utf8(body).map_err(|_| "policy is not UTF-8".into())
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&data[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parse_and_mx_matching() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n",
        )
        .expect("valid policy");
        assert_eq!(p.mode, Mode::Enforce);
        assert!(p.matches("mail.example.com."));
        assert!(p.matches("MX1.example.net"));
        assert!(!p.matches("a.b.example.net"));
        assert!(!p.matches("example.net"));
        assert!(!p.matches("evil.com"));
        assert!(Policy::parse("mode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(Policy::parse("version: STSv1\nmode: bogus\nmx: a\nmax_age: 1\n").is_err());
    }

    #[test]
    fn txt_record_and_http_response() {
        assert_eq!(
            parse_txt("v=STSv1; id=20240101T0000;").as_deref(),
            Some("20240101T0000")
        );
        assert_eq!(parse_txt("v=spf1 -all"), None);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloXX";
        assert_eq!(parse_http(ok).as_deref(), Ok("hello"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked).as_deref(), Ok("abcde"));
        assert!(parse_http(b"HTTP/1.1 301 Moved\r\nLocation: x\r\n\r\n").is_err());
    }
}
