//! The SMTP wire: command lines to [`Command`]s, the DATA decoder, EHLO encoding. No I/O and
//! no store: the session feeds bytes in and writes what comes out.
//!
//! Parsing is smtp-proto's (RFC 5321 §4.1 grammar with the ESMTP parameters of RFC 1870,
//! 6152, 6531, 3461, 3030, 4954); this module adds the checks Tessera makes on top:
//! line endings (RFC 5321 §2.3.8), the first line being SMTP at all, and the forward-path
//! forms that are relay tricks (source routes, IP literals, quoted local parts).

use std::borrow::Cow;

use smtp_proto::{Error as ProtoError, Request};

use crate::reply::{self, Reply};

/// Longest command line accepted, CRLF included. RFC 5321 §4.5.3.1.4 sets 512 as the floor;
/// ESMTP parameters (RFC 1869 §4.1.2) and SMTPUTF8 addresses make longer lines legitimate, so
/// Tessera takes up to 1,000 octets and answers `500 5.5.2` beyond, without buffering the rest
/// (the connection drops bytes until the next LF).
pub const MAX_COMMAND_LINE: usize = 1000;

/// A parsed command line.
pub type Command<'a> = Request<Cow<'a, str>>;

/// Checks RFC 5321 §2.3.8: a command line ends in CRLF and has no other CR or LF. Tessera
/// refuses bare LF and bare CR everywhere (commands and message data alike), rather than
/// guessing what the client meant: that is the consistent answer to SMTP smuggling.
pub fn check_line_ending(line: &[u8]) -> Result<(), Reply> {
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(reply::BAD_LINE_ENDING);
    };
    if body.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(reply::BAD_LINE_ENDING);
    }
    Ok(())
}

/// Whether a first line is evidently another protocol (an HTTP request, a proxy's CONNECT):
/// such a client is answered `500` and disconnected (cross-protocol attacks).
pub fn is_foreign_protocol(line: &[u8]) -> bool {
    const VERBS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"CONNECT ",
        b"PATCH ",
    ];
    let upper = line.to_ascii_uppercase();
    VERBS.iter().any(|v| upper.starts_with(v))
        || upper.windows(6).any(|w| w == b" HTTP/" || w == b"\tHTTP/")
        || line.first().is_some_and(|&b| b == 0x16 || b == 0x80) // a TLS ClientHello
}

/// Parses one command line (CRLF included). Errors are the reply to give.
pub fn parse_command(line: &[u8]) -> Result<Command<'_>, Reply> {
    Request::parse(&mut line.iter()).map_err(|e| match e {
        ProtoError::UnknownCommand => reply::UNKNOWN_COMMAND,
        ProtoError::InvalidSenderAddress => reply::BAD_SENDER_SYNTAX,
        ProtoError::InvalidRecipientAddress => reply::BAD_RECIPIENT_SYNTAX,
        ProtoError::SyntaxError { syntax } => {
            reply::SYNTAX_ERROR.with_text(format!("Syntax: {syntax}"))
        }
        ProtoError::InvalidParameter { param } => {
            reply::BAD_PARAMETER.with_text(format!("Invalid value for {param}"))
        }
        ProtoError::UnsupportedParameter { param } => reply::PARAMETER_NOT_IMPLEMENTED
            .with_text(format!("Parameter {} not implemented", printable(&param))),
        _ => reply::SYNTAX_ERROR,
    })
}

/// The raw text between `<` and `>` of a MAIL or RCPT line, before smtp-proto normalises it
/// (it drops source routes and quotes, which is exactly what the relay checks must see).
pub fn raw_path(line: &[u8]) -> Option<&[u8]> {
    let start = line.iter().position(|&b| b == b'<')? + 1;
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &b) in line[start..].iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_quote => escaped = true,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => return Some(&line[start..start + i]),
            _ => {}
        }
    }
    None
}

/// Forward-path forms refused on every port, each a classic way to make a server relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathTrick {
    /// RFC 5321 §4.1.1.3 / Appendix C source route `<@a,@b:user@c>`.
    SourceRoute,
    /// RFC 5321 §4.1.3 address literal `user@[192.0.2.1]`.
    IpLiteral,
    /// A quoted local part (`"a@b"@example.test`): hosted addresses never need one.
    QuotedLocalPart,
    /// `%` or `!` routing in the local part (`user%other.org@example.test`, UUCP bang paths).
    PercentHack,
}

impl PathTrick {
    /// Classifies a raw forward-path (see [`raw_path`]).
    pub fn of(path: &[u8]) -> Option<PathTrick> {
        let path = path.trim_ascii();
        if path.first() == Some(&b'@') {
            return Some(PathTrick::SourceRoute);
        }
        if path.contains(&b'"') {
            return Some(PathTrick::QuotedLocalPart);
        }
        let at = path.iter().rposition(|&b| b == b'@');
        if let Some(at) = at {
            if path.get(at + 1) == Some(&b'[') {
                return Some(PathTrick::IpLiteral);
            }
            if path[..at]
                .iter()
                .any(|&b| b == b'%' || b == b'!' || b == b'@')
            {
                return Some(PathTrick::PercentHack);
            }
        }
        None
    }
}

/// What the session advertises in its EHLO reply.
#[derive(Debug, Clone)]
pub struct Capabilities<'a> {
    /// Our host name.
    pub hostname: &'a str,
    /// RFC 1870 SIZE limit.
    pub size: usize,
    /// RFC 3207: offer STARTTLS (plaintext connection on a listener that has TLS).
    pub starttls: bool,
    /// RFC 4954: offer AUTH PLAIN LOGIN (submission, TLS up, not yet authenticated).
    pub auth: bool,
}

/// Encodes the multi-line EHLO reply (RFC 5321 §4.1.1.1).
pub fn ehlo_reply(caps: &Capabilities<'_>, client: &str, out: &mut Vec<u8>) {
    let mut lines: Vec<String> = vec![
        format!("{} greets {}", caps.hostname, printable(client)),
        "PIPELINING".into(),
        format!("SIZE {}", caps.size),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "ENHANCEDSTATUSCODES".into(),
        "CHUNKING".into(),
        "DSN".into(),
    ];
    if caps.starttls {
        lines.push("STARTTLS".into());
    }
    if caps.auth {
        lines.push("AUTH PLAIN LOGIN".into());
    }
    lines.push("HELP".into());
    let last = lines.len() - 1;
    for (i, line) in lines.iter().enumerate() {
        out.extend_from_slice(if i == last { b"250 " } else { b"250-" });
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Text from the client made safe to echo: printable ASCII only, at most 64 characters.
pub fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

/// Room a [`DataDecoder`] starts with: most mail fits, so the body is not copied over and
/// over as it grows (each growth a `realloc`, which on a thread other than the one that
/// allocated waits for that thread's malloc arena).
const DATA_INITIAL_CAPACITY: usize = 16 * 1024;

/// RFC 5321 §4.1.1.4 / §4.5.2 DATA decoder: removes dot-stuffing, ends only at
/// `CRLF . CRLF` (never at `LF . LF`, `LF . CRLF`, `CR . CRLF` or `CRLF . CR CR LF`: SMTP
/// smuggling), and keeps at most `limit` bytes while still finding the end of an oversized
/// message. Its own state machine, not smtp-proto's receiver, which ends the data at
/// `CRLF . CR+ LF` (found by the `smtp_data` fuzz target).
pub struct DataDecoder {
    /// Where in a line the last byte left us.
    state: DataState,
    /// The message so far; emptied once it is too big.
    body: Vec<u8>,
    /// Set once the message went over `limit`: its bytes are dropped, its end still found.
    too_big: bool,
    limit: usize,
}

/// Position of a [`DataDecoder`] in the line structure of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// At the start of a line (after CRLF, or after the DATA command's own CRLF).
    LineStart,
    /// After a line-initial `.`, which is not part of the message (RFC 5321 §4.5.2).
    Dot,
    /// After a line-initial `.` and a CR, held back: an LF now ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, right after a CR.
    TextCr,
}

/// What [`DataDecoder::finish`] returns.
#[derive(Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// The message, unstuffed, CRLF line endings as received.
    Message(Vec<u8>),
    /// It was longer than the limit; its bytes were dropped.
    TooBig,
}

impl DataDecoder {
    /// A decoder keeping at most `limit` message bytes.
    pub fn new(limit: usize) -> DataDecoder {
        DataDecoder {
            // The DATA command's own CRLF precedes the first line, so a first line of "."
            // ends an empty message and ".." is unstuffed.
            state: DataState::LineStart,
            body: Vec::with_capacity(DATA_INITIAL_CAPACITY.min(limit)),
            too_big: false,
            limit,
        }
    }

    /// Feeds bytes; returns how many were consumed and whether the end was found. Bytes after
    /// the end are not consumed (they are the next pipelined command).
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut done = None;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (DataState::LineStart, b'.') => DataState::Dot,
                (DataState::Dot, b'\r') => DataState::DotCr,
                (DataState::DotCr, b'\n') => {
                    done = Some(i);
                    break;
                }
                (DataState::DotCr, _) => {
                    // The held CR was text after all; `b` follows a CR.
                    self.body.push(b'\r');
                    self.body.push(b);
                    after_cr(b)
                }
                (DataState::TextCr, _) => {
                    self.body.push(b);
                    after_cr(b)
                }
                (_, b'\r') => {
                    self.body.push(b);
                    DataState::TextCr
                }
                (_, _) => {
                    // Inside a line: copy up to the next CR in one go.
                    let run = memchr::memchr(b'\r', &input[i..]).unwrap_or(input.len() - i);
                    self.body.push(b);
                    self.body.extend_from_slice(&input[i..i + run]);
                    i += run;
                    DataState::Text
                }
            };
            if self.too_big {
                self.body.clear();
            } else if self.body.len() > self.limit {
                self.too_big = true;
                self.body = Vec::new();
            }
        }
        match done {
            Some(used) => (used, true),
            None => (input.len(), false),
        }
    }

    /// The decoded message.
    pub fn finish(self) -> DataOutcome {
        if self.too_big {
            DataOutcome::TooBig
        } else {
            DataOutcome::Message(self.body)
        }
    }
}

/// The state after byte `b` that followed a CR inside a line: CRLF starts a new line.
fn after_cr(b: u8) -> DataState {
    match b {
        b'\n' => DataState::LineStart,
        b'\r' => DataState::TextCr,
        _ => DataState::Text,
    }
}

/// RFC 5321 §2.3.8: whether `message` has a CR not followed by LF or an LF not preceded by CR.
///
/// Jumps from one CR or LF to the next (`memchr2`, vectorised) rather than looking at every
/// byte: it runs over each whole message received, and most bytes are neither.
pub fn has_bare_line_ending(message: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', message).any(|i| {
        if message.get(i) == Some(&b'\n') {
            i == 0 || message.get(i - 1) != Some(&b'\r')
        } else {
            message.get(i + 1) != Some(&b'\n')
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Option<DataOutcome>, usize) {
        let mut d = DataDecoder::new(1 << 20);
        let (used, done) = d.feed(input);
        (done.then(|| d.finish()), used)
    }

    fn decode_split(input: &[u8], at: usize) -> Option<(DataOutcome, usize)> {
        let mut d = DataDecoder::new(1 << 20);
        let (a, done) = d.feed(&input[..at]);
        if done {
            return Some((d.finish(), a));
        }
        let (b, done) = d.feed(&input[at..]);
        done.then(|| (d.finish(), a + b))
    }

    #[test]
    fn data_ends_only_at_crlf_dot_crlf() {
        let (out, used) = decode_all(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n");
        assert_eq!(
            out,
            Some(DataOutcome::Message(b"Subject: x\r\n\r\nhi\r\n".to_vec()))
        );
        assert_eq!(used, b"Subject: x\r\n\r\nhi\r\n.\r\n".len());
    }

    #[test]
    fn smuggling_sequences_do_not_end_data() {
        for smuggle in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\r\n"] {
            let mut input = b"a".to_vec();
            input.extend_from_slice(smuggle);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\n");
            let (out, used) = decode_all(&input);
            assert_eq!(out, None, "{smuggle:?} ended DATA");
            assert_eq!(used, input.len());
        }
    }

    /// Found by the `smtp_data` fuzz target: smtp-proto's receiver ended the data at
    /// `CRLF . CR CR LF` (any number of CRs), so what a relaying MTA sends as message text
    /// after it would have been read as commands.
    #[test]
    fn smuggling_crlf_dot_cr_cr_lf_does_not_end_data() {
        for smuggle in [&b"\r\n.\r\r\n"[..], b"\r\n.\r\r\r\n"] {
            let mut input = b"a".to_vec();
            input.extend_from_slice(smuggle);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\n");
            let (out, used) = decode_all(&input);
            assert_eq!(out, None, "{smuggle:?} ended DATA");
            assert_eq!(used, input.len());
            input.extend_from_slice(b".\r\n");
            let mut message = input[..input.len() - 3].to_vec();
            message.remove(3); // the stuffing dot
            assert_eq!(decode_all(&input).0, Some(DataOutcome::Message(message)));
        }
    }

    /// Seen while fixing the above (the `smtp_data` target now checks it): a message of exactly
    /// the limit was refused as too big when a read ended between `CRLF . CR` and `LF`
    /// (smtp-proto had already stored the CR it later removes).
    #[test]
    fn message_of_exactly_the_limit_is_kept_however_split() {
        let input = b"0123456789\r\n.\r\n";
        for at in 0..=input.len() {
            let mut d = DataDecoder::new(12);
            let (a, done) = d.feed(&input[..at]);
            let done = done || d.feed(&input[a..]).1;
            assert!(done, "split at {at}");
            assert_eq!(
                d.finish(),
                DataOutcome::Message(b"0123456789\r\n".to_vec()),
                "split at {at}"
            );
        }
    }

    #[test]
    fn dot_stuffing_is_removed_and_empty_message_ends() {
        assert_eq!(
            decode_all(b".\r\n").0,
            Some(DataOutcome::Message(Vec::new()))
        );
        assert_eq!(
            decode_all(b"..a\r\nb\r\n..\r\n.\r\n").0,
            Some(DataOutcome::Message(b".a\r\nb\r\n.\r\n".to_vec()))
        );
    }

    #[test]
    fn split_at_every_byte_boundary_gives_the_same_result() {
        let input = b"Subject: s\r\n\r\n..x\r\ny\n.\nz\r\n.\r\nNOOP\r\n";
        let whole = decode_all(input);
        for at in 0..=input.len() {
            let (out, used) = decode_split(input, at).expect("ends");
            assert_eq!((Some(out), used), whole, "split at {at}");
        }
    }

    #[test]
    fn oversized_message_is_dropped_but_its_end_found() {
        let mut d = DataDecoder::new(10);
        let (_, done) = d.feed(b"0123456789abcdef\r\n");
        assert!(!done);
        let (used, done) = d.feed(b"more\r\n.\r\nRSET\r\n");
        assert!(done);
        assert_eq!(used, b"more\r\n.\r\n".len());
        assert_eq!(d.finish(), DataOutcome::TooBig);
    }

    #[test]
    fn bare_line_endings_are_detected() {
        assert!(!has_bare_line_ending(b"a\r\nb\r\n"));
        assert!(has_bare_line_ending(b"a\nb\r\n"));
        assert!(has_bare_line_ending(b"a\rb\r\n"));
        assert!(has_bare_line_ending(b"a\r\nb\r"));
        assert!(has_bare_line_ending(b"\na"));
        assert!(has_bare_line_ending(b"\r"));
        assert!(!has_bare_line_ending(b""));
    }

    /// The scan that skips from CR/LF to CR/LF agrees with the rule read byte by byte, on
    /// every string of 1 to 8 bytes over `a`, CR and LF (9,840 inputs).
    #[test]
    fn bare_line_ending_scan_agrees_with_the_byte_rule() {
        fn by_bytes(m: &[u8]) -> bool {
            (0..m.len()).any(|i| match m[i] {
                b'\n' => i == 0 || m[i - 1] != b'\r',
                b'\r' => m.get(i + 1) != Some(&b'\n'),
                _ => false,
            })
        }
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut checked = 0;
        for _ in 0..8 {
            let mut longer = Vec::new();
            for base in &inputs {
                for b in [b'a', b'\r', b'\n'] {
                    let mut m = base.clone();
                    m.push(b);
                    assert_eq!(has_bare_line_ending(&m), by_bytes(&m), "{m:?}");
                    checked += 1;
                    longer.push(m);
                }
            }
            inputs = longer;
        }
        assert_eq!(checked, 9840);
    }

    #[test]
    fn command_line_endings() {
        assert!(check_line_ending(b"NOOP\r\n").is_ok());
        assert!(check_line_ending(b"NOOP\n").is_err());
        assert!(check_line_ending(b"NO\rOP\r\n").is_err());
    }

    #[test]
    fn relay_tricks_are_classified() {
        let table: &[(&[u8], Option<PathTrick>)] = &[
            (b"RCPT TO:<user@example.test>\r\n", None),
            (
                b"RCPT TO:<@a.test,@b.test:user@c.test>\r\n",
                Some(PathTrick::SourceRoute),
            ),
            (
                b"RCPT TO:<user@[127.0.0.1]>\r\n",
                Some(PathTrick::IpLiteral),
            ),
            (
                b"RCPT TO:<\"a@b\"@example.test>\r\n",
                Some(PathTrick::QuotedLocalPart),
            ),
            (
                b"RCPT TO:<\"a>b\"@example.test>\r\n",
                Some(PathTrick::QuotedLocalPart),
            ),
            (
                b"RCPT TO:<user%other.org@example.test>\r\n",
                Some(PathTrick::PercentHack),
            ),
            (
                b"RCPT TO:<other.org!user@example.test>\r\n",
                Some(PathTrick::PercentHack),
            ),
        ];
        for (line, want) in table {
            let path = raw_path(line).expect("has a path");
            assert_eq!(
                PathTrick::of(path),
                *want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn foreign_protocols_are_recognised() {
        assert!(is_foreign_protocol(b"GET / HTTP/1.1\r\n"));
        assert!(is_foreign_protocol(b"post /x HTTP/1.0\r\n"));
        assert!(!is_foreign_protocol(b"EHLO client.test\r\n"));
    }

    #[test]
    fn commands_parse_through_smtp_proto() {
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME\r\n"),
            Ok(Request::Mail { .. })
        ));
        assert_eq!(
            parse_command(b"FOO\r\n").map(|_| ()),
            Err(reply::UNKNOWN_COMMAND)
        );
    }
}
