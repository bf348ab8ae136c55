//! A small SMTP client for outbound delivery (RFC 5321): reply parsing, EHLO capabilities,
//! STARTTLS (RFC 3207), and one mail transaction with per-recipient results, pipelined when the
//! server offers PIPELINING (RFC 2920).
//!
//! Reply parsing is pure (no I/O, [`parse_reply`]); [`Client`] owns the socket.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest reply we accept (all lines together); RFC 5321 §4.5.3.1.5 limits a reply line to
/// 512 octets, a multi-line EHLO reply has a few dozen.
const MAX_REPLY: usize = 64 * 1024;

/// A server reply: its code and the text of each line (without the code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Each line's text.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx (RFC 5321 §4.2.1: positive completion).
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 4xx: transient negative completion; try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx: permanent negative completion.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for Reply {
    /// `550 5.1.1 text` (lines joined with a space): how DSNs and `queue show` quote it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" "))
    }
}

/// What may be parsed from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete reply and how many bytes it took.
    Reply(Reply, usize),
    /// More input is needed.
    Incomplete,
    /// Not an SMTP reply.
    Invalid(String),
}

/// Parses one reply (RFC 5321 §4.2: `code SP text CRLF`, continuation lines `code - text`).
/// A bare LF ending a line is accepted (lenient on input).
pub fn parse_reply(buf: &[u8]) -> Parsed {
    let mut lines = Vec::new();
    let mut pos = 0;
    let mut code = None;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return Parsed::Incomplete;
        };
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Parsed::Invalid(String::from_utf8_lossy(line).into_owned());
        }
        let this: u16 =
            (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
        if *code.get_or_insert(this) != this {
            return Parsed::Invalid(format!("reply code changed from {code:?} to {this}"));
        }
        let sep = line.get(3).copied();
        lines.push(String::from_utf8_lossy(line.get(4..).unwrap_or(b"")).into_owned());
        match sep {
            Some(b'-') => continue,
            None | Some(b' ') => return Parsed::Reply(Reply { code: this, lines }, pos),
            Some(other) => {
                return Parsed::Invalid(format!("bad separator {:?}", other as char));
            }
        }
    }
}

/// What the server offered in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
}

impl Capabilities {
    /// Reads the keywords of an EHLO reply (the first line is the greeting).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
    }
}

/// Why a conversation with one host stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer in time.
    #[error("timed out waiting for the server ({0})")]
    Timeout(&'static str),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// Garbage instead of a reply.
    #[error("invalid reply: {0}")]
    Protocol(String),
}

/// A byte stream: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to a remote server.
pub struct Client {
    /// The socket (replaced by its TLS wrapper after STARTTLS).
    pub stream: Box<dyn Stream>,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
    /// Longest wait for one reply (RFC 5321 §4.5.3.2 gives 5 minutes for most, 10 for the
    /// final dot; one value keeps it simple).
    timeout: Duration,
}

impl Client {
    /// Wraps a connected stream.
    pub fn new(stream: Box<dyn Stream>, timeout: Duration) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            timeout,
        }
    }

    /// Whether unread bytes are waiting (must be none before a TLS handshake).
    pub fn has_buffered_input(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads one reply.
    pub async fn read_reply(&mut self, what: &'static str) -> Result<Reply, ClientError> {
        loop {
            match parse_reply(&self.buf) {
                Parsed::Reply(reply, used) => {
                    self.buf.drain(..used);
                    tracing::trace!(code = reply.code, text = %reply.lines.join(" | "), "S:");
                    return Ok(reply);
                }
                Parsed::Invalid(e) => return Err(ClientError::Protocol(e)),
                Parsed::Incomplete if self.buf.len() > MAX_REPLY => {
                    return Err(ClientError::Protocol("reply too long".into()));
                }
                Parsed::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Timeout(what))??;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes bytes and flushes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        tokio::time::timeout(self.timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout("write"))??;
        Ok(())
    }

    /// Sends a command line and reads its reply.
    pub async fn command(&mut self, line: &str, what: &'static str) -> Result<Reply, ClientError> {
        tracing::trace!(line, "C:");
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(what).await
    }
}

/// The message data as sent after `354`: RFC 5321 §4.5.2 dot-stuffing (a line starting with
/// `.` gets another), a final CRLF if missing, then `.` CRLF (§4.1.1.4).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_single_multi_and_incomplete() {
        let ehlo = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n";
        let Parsed::Reply(r, used) = parse_reply(ehlo) else {
            panic!("complete reply expected");
        };
        assert_eq!(used, ehlo.len());
        assert_eq!(r.code, 250);
        let caps = Capabilities::from_ehlo(&r);
        assert!(caps.pipelining && !caps.starttls);
        assert_eq!(caps.size, Some(1000));
        // Every proper prefix is incomplete.
        for cut in 0..ehlo.len() {
            assert_eq!(parse_reply(&ehlo[..cut]), Parsed::Incomplete, "cut {cut}");
        }
        let Parsed::Reply(r, _) = parse_reply(b"550 5.1.1 no such user\r\n") else {
            panic!("reply expected");
        };
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        assert!(r.is_permanent());
        assert!(matches!(parse_reply(b"hello\r\n"), Parsed::Invalid(_)));
        assert!(matches!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n..c\r\n."),
            b"..a\r\nb\r\n...c\r\n..\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuff(b"x\r\n"), b"x\r\n.\r\n".to_vec());
    }
}
