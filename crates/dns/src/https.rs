//! Fetching the MTA-STS policy over HTTPS (RFC 8461 §3.3): `GET
//! https://mta-sts.<domain>/.well-known/mta-sts.txt`, a valid certificate for that name, status
//! 200, no redirects, `text/plain`. The host name is resolved through the check's [`Resolver`],
//! so tests and the live check see the same zone.
//!
//! A deliberately small HTTP/1.1 client: one request with `Connection: close`, the response
//! read to its end (at most [`MAX_RESPONSE`] bytes), `Content-Length` or chunked bodies.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resolver::{Lookup, Resolver};

/// RFC 8461 §3.3: senders may limit the policy to 64 KiB; headers get a little more.
pub const MAX_RESPONSE: usize = 80 * 1024;

/// The path of the policy (RFC 8461 §3.2).
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Why the policy could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The host name has no address (or its look-up failed); the text says which.
    #[error("{0}")]
    Resolve(String),
    /// No TCP connection to any address.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// The TLS handshake failed (e.g. an untrusted certificate).
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// Where.
        addr: String,
        /// rustls's reason.
        reason: String,
    },
    /// Not a 200 `text/plain` response, or malformed.
    #[error("{0}")]
    Http(String),
    /// No complete answer in time.
    #[error("timeout fetching https://{0}{POLICY_PATH}")]
    Timeout(String),
}

/// A client configuration that trusts the system's roots (and nothing else).
pub fn system_tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    tls_config_with(roots)
}

/// A client configuration trusting exactly `roots` (TLS 1.2/1.3, aws-lc-rs).
pub fn tls_config_with(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let config = match builder {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The aws-lc-rs provider supports both versions; this branch is unreachable in
        // practice but must not panic.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    Arc::new(config)
}

/// Fetches `https://<host>:<port>/.well-known/mta-sts.txt` and returns the body. With
/// `connect`, the TCP connection goes there instead of to the addresses `host` resolves to
/// (TLS still verifies the certificate for `host`).
pub async fn fetch_policy(
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
    connect: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<String, FetchError> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if let Some(addr) = connect {
        let what = addr.to_string();
        return match tokio::time::timeout(
            timeout,
            fetch_from(&[addr.ip()], &host, addr.port(), tls),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(what)),
        };
    }
    let addrs: Vec<IpAddr> = match resolver.addresses(&host).await {
        Lookup::Found(a) => a,
        Lookup::NxDomain | Lookup::NoData => {
            return Err(FetchError::Resolve(format!("{host} has no address")));
        }
        Lookup::Timeout => return Err(FetchError::Timeout(host)),
        Lookup::ServFail(c) => {
            return Err(FetchError::Resolve(format!("resolving {host}: {c}")));
        }
        Lookup::Unreachable(e) => {
            return Err(FetchError::Resolve(format!("resolving {host}: {e}")));
        }
    };
    let what = if port == 443 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    match tokio::time::timeout(timeout, fetch_from(&addrs, &host, port, tls)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(what)),
    }
}

async fn fetch_from(
    addrs: &[IpAddr],
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<String, FetchError> {
    let mut last = None;
    let mut stream = None;
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some((s, addr));
                break;
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    let Some((tcp, addr)) = stream else {
        return Err(FetchError::Connect(
            last.unwrap_or_else(|| format!("{host}: no address")),
        ));
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| FetchError::Resolve(format!("invalid host name {host}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let host_header = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let request = format!(
        "GET {POLICY_PATH} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: tessera-dns-check\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| FetchError::Http(format!("sending the request to {addr}: {e}")))?;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if response.len() > MAX_RESPONSE {
                    return Err(FetchError::Http(format!(
                        "the response from {addr} is larger than {MAX_RESPONSE} bytes"
                    )));
                }
            }
            // A server closing without close_notify after a complete response is common.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                return Err(FetchError::Http(format!("reading from {addr}: {e}")));
            }
        }
    }
    parse_response(&response)
}

/// Parses an HTTP/1.1 response carrying a policy.
pub fn parse_response(bytes: &[u8]) -> Result<String, FetchError> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| FetchError::Http("incomplete HTTP response".into()))?;
    let head = String::from_utf8_lossy(&bytes[..split]);
    let body = &bytes[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        // RFC 8461 §3.3: redirects are not followed.
        return Err(FetchError::Http(format!(
            "HTTP status {status} (expected 200): {status_line}"
        )));
    }
    let mut content_type = String::new();
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_ascii_lowercase(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => length = value.parse::<usize>().ok(),
            _ => {}
        }
    }
    // RFC 8461 §3.2: the media type is text/plain (parameters such as charset allowed).
    if content_type.split(';').next().map(str::trim) != Some("text/plain") {
        return Err(FetchError::Http(format!(
            "Content-Type {content_type:?} (expected text/plain)"
        )));
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| FetchError::Http("body shorter than Content-Length".into()))?
            .to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| FetchError::Http("the policy is not UTF-8".into()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, FetchError> {
    let bad = || FetchError::Http("malformed chunked body".into());
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or_else(bad)?);
        body = body.get(size + 2..).ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_strictly() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok).expect("ok"), "hello");
        let chunked = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("ok"), "hello");
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\n\r\n";
        assert!(matches!(parse_response(redirect), Err(FetchError::Http(m)) if m.contains("301")));
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nx";
        assert!(
            matches!(parse_response(html), Err(FetchError::Http(m)) if m.contains("text/html"))
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
