//! POP3 wire format: command parsing and response encoding. No I/O, no store.
//!
//! Grammar (RFC 1939 §3, as amended by RFC 2449 §3–4):
//!
//! ```text
//! command  = keyword *(SP param) CRLF      ; at most 255 octets (RFC 2449 §4)
//! keyword  = 3*4VCHAR                      ; case-insensitive
//! param    = 1*VCHAR                       ; RFC 2449 lifts RFC 1939's 40-char limit
//! msg      = 1*DIGIT                       ; a message-number, 1-based
//! response = ("+OK" / "-ERR") [SP resp-code] [SP text] CRLF
//! ```
//!
//! Leniency, deliberately: a bare LF ends a line like CRLF does, runs of spaces separate
//! parameters, and trailing spaces are ignored — except on `PASS`, whose argument is the rest
//! of the line with its spaces (RFC 1939 §7, PASS: "a POP3 server may treat spaces in the
//! argument as part of the password").

use std::fmt;

use net::sasl::Secret;

/// RFC 2449 §4: a command line is at most 255 octets including CRLF.
pub const MAX_COMMAND_LEN: usize = 255;

/// The line terminator of every response line (RFC 1939 §3).
pub const CRLF: &[u8] = b"\r\n";

/// The multi-line terminator: a line holding a single dot (RFC 1939 §3).
pub const TERMINATOR: &[u8] = b".\r\n";

/// A message-number (RFC 1939 §3): 1-based index into the maildrop snapshot. Parsed from
/// `1*DIGIT`; values beyond `u32::MAX` saturate (and so name no message). Zero parses (it is
/// digits) but names no message: the maildrop answers "no such message".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MsgNum(pub u32);

impl fmt::Display for MsgNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One client command, borrowing from the line it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `USER name` (RFC 1939 §7).
    User(&'a str),
    /// `PASS string` (RFC 1939 §7): the rest of the line, spaces included.
    Pass(Secret<&'a str>),
    /// `AUTH` (RFC 5034 §4). `mechanism` is `None` for a bare `AUTH`, which lists the
    /// mechanisms (the RFC 1734 client behaviour Outlook still uses). `initial` is the
    /// initial response, still base64 (`=` means empty).
    Auth {
        /// SASL mechanism name, as sent.
        mechanism: Option<&'a str>,
        /// Initial response, base64 (masked in `Debug`).
        initial: Option<Secret<&'a [u8]>>,
    },
    /// `CAPA` (RFC 2449 §5).
    Capa,
    /// `STLS` (RFC 2595 §4).
    Stls,
    /// `STAT` (RFC 1939 §5).
    Stat,
    /// `LIST [msg]` (RFC 1939 §5).
    List(Option<MsgNum>),
    /// `UIDL [msg]` (RFC 1939 §7).
    Uidl(Option<MsgNum>),
    /// `RETR msg` (RFC 1939 §5).
    Retr(MsgNum),
    /// `TOP msg n` (RFC 1939 §7); `n` saturates at `u64::MAX` ("the whole body").
    Top(MsgNum, u64),
    /// `DELE msg` (RFC 1939 §5).
    Dele(MsgNum),
    /// `NOOP` (RFC 1939 §5).
    Noop,
    /// `RSET` (RFC 1939 §5).
    Rset,
    /// `QUIT` (RFC 1939 §4 and §6).
    Quit,
}

impl Command<'_> {
    /// The command's keyword in upper case, for logs and replies.
    pub fn name(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Auth { .. } => "AUTH",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Uidl(_) => "UIDL",
            Command::Retr(_) => "RETR",
            Command::Top(..) => "TOP",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
        }
    }
}

/// Why a line is not a valid command. Every variant is a client error answered with `-ERR`
/// and its [`Display`](fmt::Display) text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// An empty line.
    #[error("empty command line")]
    Empty,
    /// NUL, other control characters, or bytes that are not UTF-8.
    #[error("command contains control characters or invalid UTF-8")]
    NotText,
    /// A keyword this server does not know (includes `APOP`, which is not offered).
    #[error("unknown command")]
    Unknown,
    /// A known keyword with wrong parameters; the text is the usage.
    #[error("syntax error, usage: {0}")]
    Syntax(&'static str),
}

/// Result of [`decode`]: what the start of a byte buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// No complete line yet: read more.
    Incomplete,
    /// One complete line of `consumed` bytes (terminator included) and what it says.
    Line {
        /// Bytes to drop from the buffer.
        consumed: usize,
        /// The command, or why the line is not one.
        command: Result<Command<'a>, CommandError>,
    },
}

/// Decodes the first line in `buf`. Incomplete input is normal, not an error. Length limits are
/// the caller's (the session reads through `net::Connection::read_line`, which enforces them).
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    match buf.iter().position(|&b| b == b'\n') {
        None => Decoded::Incomplete,
        Some(lf) => Decoded::Line {
            consumed: lf + 1,
            command: parse_line(&buf[..=lf]),
        },
    }
}

/// Strips one line terminator: CRLF or (leniently) a bare LF.
pub fn strip_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses one command line, with or without its terminator.
pub fn parse_line(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let line = strip_terminator(line);
    // RFC 1939 §3: keywords and arguments are printable ASCII. Passwords and SASL are allowed
    // UTF-8 (RFC 4616 §2), so only controls and invalid UTF-8 are refused here.
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(CommandError::NotText);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotText)?;
    let (keyword, rest) = match line.split_once(' ') {
        Some((keyword, rest)) => (keyword, rest),
        None => (line, ""),
    };
    if keyword.is_empty() {
        return Err(if line.trim().is_empty() {
            CommandError::Empty
        } else {
            CommandError::Unknown
        });
    }
    let keyword = keyword.to_ascii_uppercase();
    // PASS takes the raw rest of the line (RFC 1939 §7); everything else splits on spaces.
    if keyword == "PASS" {
        if rest.is_empty() {
            return Err(CommandError::Syntax("PASS password"));
        }
        return Ok(Command::Pass(Secret::new(rest)));
    }
    let params: Vec<&str> = rest.split(' ').filter(|p| !p.is_empty()).collect();
    let none = |command: Command<'static>, usage| {
        if params.is_empty() {
            Ok(command)
        } else {
            Err(CommandError::Syntax(usage))
        }
    };
    match keyword.as_str() {
        "USER" => match params.as_slice() {
            [name] => Ok(Command::User(name)),
            _ => Err(CommandError::Syntax("USER name")),
        },
        "AUTH" => match params.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [mechanism] => Ok(Command::Auth {
                mechanism: Some(mechanism),
                initial: None,
            }),
            [mechanism, initial] => Ok(Command::Auth {
                mechanism: Some(mechanism),
                initial: Some(Secret::new(initial.as_bytes())),
            }),
            _ => Err(CommandError::Syntax("AUTH mechanism [initial-response]")),
        },
        "CAPA" => none(Command::Capa, "CAPA"),
        "STLS" => none(Command::Stls, "STLS"),
        "STAT" => none(Command::Stat, "STAT"),
        "NOOP" => none(Command::Noop, "NOOP"),
        "RSET" => none(Command::Rset, "RSET"),
        "QUIT" => none(Command::Quit, "QUIT"),
        "LIST" => match params.as_slice() {
            [] => Ok(Command::List(None)),
            [msg] => Ok(Command::List(Some(msg_num(msg, "LIST [msg]")?))),
            _ => Err(CommandError::Syntax("LIST [msg]")),
        },
        "UIDL" => match params.as_slice() {
            [] => Ok(Command::Uidl(None)),
            [msg] => Ok(Command::Uidl(Some(msg_num(msg, "UIDL [msg]")?))),
            _ => Err(CommandError::Syntax("UIDL [msg]")),
        },
        "RETR" => match params.as_slice() {
            [msg] => Ok(Command::Retr(msg_num(msg, "RETR msg")?)),
            _ => Err(CommandError::Syntax("RETR msg")),
        },
        "DELE" => match params.as_slice() {
            [msg] => Ok(Command::Dele(msg_num(msg, "DELE msg")?)),
            _ => Err(CommandError::Syntax("DELE msg")),
        },
        "TOP" => match params.as_slice() {
            // RFC 1939 §7: "n" is a non-negative number of lines.
            [msg, lines] => Ok(Command::Top(
                msg_num(msg, TOP_USAGE)?,
                digits(lines).ok_or(CommandError::Syntax(TOP_USAGE))?,
            )),
            _ => Err(CommandError::Syntax(TOP_USAGE)),
        },
        _ => Err(CommandError::Unknown),
    }
}

const TOP_USAGE: &str = "TOP msg n (n: a non-negative number of lines)";

/// `1*DIGIT`, saturating at `u64::MAX`. No sign, no spaces, no hex.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn msg_num(text: &str, usage: &'static str) -> Result<MsgNum, CommandError> {
    let n = digits(text).ok_or(CommandError::Syntax(usage))?;
    Ok(MsgNum(u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Extended response codes (RFC 2449 §8, RFC 3206), written in brackets after `-ERR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// `[IN-USE]` (RFC 2449 §8.1.1): authenticated, but the maildrop is locked by another
    /// POP3 session.
    InUse,
    /// `[SYS/TEMP]` (RFC 3206 §4): a temporary system problem; the client may retry later.
    SysTemp,
    /// `[SYS/PERM]` (RFC 3206 §4): a permanent problem the user must act on, not a bad
    /// password (so clients do not prompt for one).
    SysPerm,
    /// `[AUTH]` (RFC 3206 §5): the credentials were wrong.
    Auth,
}

impl RespCode {
    /// The code as written inside the brackets.
    pub fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
            RespCode::Auth => "AUTH",
        }
    }
}

/// A single-line response (RFC 1939 §3): status indicator, optional code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `+OK` or `-ERR`.
    pub ok: bool,
    /// Extended code (only with `-ERR` here).
    pub code: Option<RespCode>,
    /// Human-readable text; control characters are replaced when encoded.
    pub text: String,
}

impl Reply {
    /// `+OK text`.
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply {
            ok: true,
            code: None,
            text: text.into(),
        }
    }

    /// `-ERR text`.
    pub fn err(text: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            code: None,
            text: text.into(),
        }
    }

    /// `-ERR [code] text`.
    pub fn err_code(code: RespCode, text: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            code: Some(code),
            text: text.into(),
        }
    }

    /// Appends the encoded line, CRLF included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if self.ok { b"+OK" } else { b"-ERR" });
        if let Some(code) = self.code {
            out.extend_from_slice(b" [");
            out.extend_from_slice(code.as_str().as_bytes());
            out.push(b']');
        }
        if !self.text.is_empty() {
            out.push(b' ');
            // A response is one line: a CR or LF in the text would end it early and let the
            // rest be read as another response.
            out.extend(
                self.text
                    .bytes()
                    .map(|b| if b < 0x20 || b == 0x7f { b' ' } else { b }),
            );
        }
        out.extend_from_slice(CRLF);
    }

    /// The encoded line, CRLF included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.encode(&mut out);
        out
    }
}

/// Byte-stuffs message content for a multi-line response (RFC 1939 §3): every line that
/// begins with `.` gets another `.` in front. Works incrementally, so a message can be sent
/// in chunks; the result does not depend on where the chunks are split.
///
/// A "line" starts at the beginning of the content and after every LF, bare or not: clients
/// (Python's poplib among them) split on LF, so a `.` after a bare LF must be stuffed too or
/// `.\n` would end the response early. Content is otherwise passed through byte for byte.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The next byte starts a line.
    at_line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of the content.
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
        }
    }

    /// Appends `input`, stuffed, to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 8);
        let mut rest = input;
        while !rest.is_empty() {
            if self.at_line_start && rest[0] == b'.' {
                out.push(b'.');
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    out.extend_from_slice(&rest[..=lf]);
                    rest = &rest[lf + 1..];
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(rest);
                    self.at_line_start = false;
                    return;
                }
            }
        }
    }

    /// Ends the response: a CRLF if the content did not end with a line break (RFC 1939 §3:
    /// the terminator must be on a line of its own), then `.` CRLF.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(CRLF);
        }
        out.extend_from_slice(TERMINATOR);
    }
}

/// Appends one line of a multi-line listing (CAPA, LIST, UIDL) with its CRLF, stuffed.
pub fn listing_line(out: &mut Vec<u8>, line: &str) {
    if line.starts_with('.') {
        out.push(b'.');
    }
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(CRLF);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command<'_>, CommandError> {
        parse_line(line.as_bytes())
    }

    #[test]
    fn commands_table() {
        use Command as C;
        let cases: &[(&str, Result<Command<'_>, CommandError>)] = &[
            (
                "USER alice@example.test\r\n",
                Ok(C::User("alice@example.test")),
            ),
            ("user alice\r\n", Ok(C::User("alice"))),
            ("USER  alice  \r\n", Ok(C::User("alice"))),
            ("USER\r\n", Err(CommandError::Syntax("USER name"))),
            ("USER a b\r\n", Err(CommandError::Syntax("USER name"))),
            ("PASS secret\r\n", Ok(C::Pass(Secret::new("secret")))),
            (
                "PASS  two words \r\n",
                Ok(C::Pass(Secret::new(" two words "))),
            ),
            ("pass p\u{e4}ss\n", Ok(C::Pass(Secret::new("p\u{e4}ss")))),
            ("PASS\r\n", Err(CommandError::Syntax("PASS password"))),
            (
                "AUTH\r\n",
                Ok(C::Auth {
                    mechanism: None,
                    initial: None,
                }),
            ),
            (
                "AUTH PLAIN\r\n",
                Ok(C::Auth {
                    mechanism: Some("PLAIN"),
                    initial: None,
                }),
            ),
            (
                "auth plain AGEAYg==\r\n",
                Ok(C::Auth {
                    mechanism: Some("plain"),
                    initial: Some(Secret::new(b"AGEAYg==")),
                }),
            ),
            (
                "AUTH PLAIN a b\r\n",
                Err(CommandError::Syntax("AUTH mechanism [initial-response]")),
            ),
            ("CAPA\r\n", Ok(C::Capa)),
            ("capa\n", Ok(C::Capa)),
            ("CAPA x\r\n", Err(CommandError::Syntax("CAPA"))),
            ("STLS\r\n", Ok(C::Stls)),
            ("STAT\r\n", Ok(C::Stat)),
            ("STAT \r\n", Ok(C::Stat)),
            ("NOOP\r\n", Ok(C::Noop)),
            ("RSET\r\n", Ok(C::Rset)),
            ("QUIT\r\n", Ok(C::Quit)),
            ("QuIt\r\n", Ok(C::Quit)),
            ("LIST\r\n", Ok(C::List(None))),
            ("LIST 1\r\n", Ok(C::List(Some(MsgNum(1))))),
            ("LIST 0\r\n", Ok(C::List(Some(MsgNum(0))))),
            ("LIST x\r\n", Err(CommandError::Syntax("LIST [msg]"))),
            ("LIST 1 2\r\n", Err(CommandError::Syntax("LIST [msg]"))),
            ("UIDL\r\n", Ok(C::Uidl(None))),
            ("UIDL 7\r\n", Ok(C::Uidl(Some(MsgNum(7))))),
            ("RETR 2\r\n", Ok(C::Retr(MsgNum(2)))),
            ("RETR\r\n", Err(CommandError::Syntax("RETR msg"))),
            ("RETR -1\r\n", Err(CommandError::Syntax("RETR msg"))),
            ("RETR +1\r\n", Err(CommandError::Syntax("RETR msg"))),
            ("RETR 0x1\r\n", Err(CommandError::Syntax("RETR msg"))),
            (
                "RETR 99999999999999999999999\r\n",
                Ok(C::Retr(MsgNum(u32::MAX))),
            ),
            ("RETR 4294967296\r\n", Ok(C::Retr(MsgNum(u32::MAX)))),
            ("DELE 3\r\n", Ok(C::Dele(MsgNum(3)))),
            ("DELE\r\n", Err(CommandError::Syntax("DELE msg"))),
            ("TOP 1 0\r\n", Ok(C::Top(MsgNum(1), 0))),
            ("TOP 1 10\r\n", Ok(C::Top(MsgNum(1), 10))),
            (
                "TOP 1 99999999999999999999999999\r\n",
                Ok(C::Top(MsgNum(1), u64::MAX)),
            ),
            ("TOP 1 -1\r\n", Err(CommandError::Syntax(TOP_USAGE))),
            ("TOP 1\r\n", Err(CommandError::Syntax(TOP_USAGE))),
            ("TOP -1 1\r\n", Err(CommandError::Syntax(TOP_USAGE))),
            ("TOP 1 2 3\r\n", Err(CommandError::Syntax(TOP_USAGE))),
            (
                "APOP alice 0123456789abcdef\r\n",
                Err(CommandError::Unknown),
            ),
            ("XYZZY\r\n", Err(CommandError::Unknown)),
            ("RETRX 1\r\n", Err(CommandError::Unknown)),
            ("\r\n", Err(CommandError::Empty)),
            ("   \r\n", Err(CommandError::Empty)),
            (" RETR 1\r\n", Err(CommandError::Unknown)),
            ("RETR\t1\r\n", Err(CommandError::NotText)),
            ("USER a\0b\r\n", Err(CommandError::NotText)),
            ("RETR 1\r\r\n", Err(CommandError::NotText)),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(line), want, "line {line:?}");
        }
        assert_eq!(parse_line(b"USER \xff\xfe\r\n"), Err(CommandError::NotText));
    }

    #[test]
    fn command_names_match_keywords() {
        for line in [
            "USER a", "PASS b", "AUTH", "CAPA", "STLS", "STAT", "LIST", "UIDL", "RETR 1",
            "TOP 1 1", "DELE 1", "NOOP", "RSET", "QUIT",
        ] {
            let command = parse(line).expect("valid");
            assert!(line.starts_with(command.name()), "{line}");
        }
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let pass = parse("PASS hunter2-secret\r\n").expect("valid");
        let auth = parse("AUTH PLAIN AGFsaWNlAGh1bnRlcjI=\r\n").expect("valid");
        for shown in [format!("{pass:?}"), format!("{auth:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("AGFsaWNlAGh1bnRlcjI"), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
        }
    }

    /// A stream of valid commands and what it decodes to.
    const STREAM: &[u8] =
        b"CAPA\r\nUSER alice@example.test\r\nPASS s p a c e\r\nSTAT\r\nLIST 1\nTOP 2 5\r\nQUIT\r\n";

    fn decode_all(buf: &[u8]) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let mut at = 0;
        while let Decoded::Line { consumed, command } = decode(&buf[at..]) {
            out.push(format!("{command:?}"));
            at += consumed;
        }
        (out, at)
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        for line in [
            &b"USER alice@example.test\r\n"[..],
            b"PASS s p a c e\r\n",
            b"TOP 2 5\r\n",
            b"STAT\n",
        ] {
            for end in 0..line.len() {
                assert_eq!(
                    decode(&line[..end]),
                    Decoded::Incomplete,
                    "{:?}",
                    &line[..end]
                );
            }
            let Decoded::Line { consumed, command } = decode(line) else {
                panic!("complete line not decoded");
            };
            assert_eq!(consumed, line.len());
            assert!(command.is_ok(), "{command:?}");
        }
    }

    #[test]
    fn splitting_the_stream_anywhere_gives_the_same_commands() {
        let (whole, used) = decode_all(STREAM);
        assert_eq!(used, STREAM.len());
        assert_eq!(whole.len(), 7);
        assert!(whole.iter().all(|c| c.starts_with("Ok(")), "{whole:?}");
        for split in 0..=STREAM.len() {
            // Feed the first part, decode what is complete, then append the rest: the way a
            // session's buffer grows between socket reads.
            let mut buf = STREAM[..split].to_vec();
            let (mut got, used) = decode_all(&buf);
            buf.drain(..used);
            buf.extend_from_slice(&STREAM[split..]);
            let (rest, used) = decode_all(&buf);
            got.extend(rest);
            assert_eq!(used, buf.len(), "split {split}");
            assert_eq!(got, whole, "split {split}");
        }
    }

    #[test]
    fn replies_encode() {
        let cases: &[(Reply, &[u8])] = &[
            (Reply::ok("ready"), b"+OK ready\r\n"),
            (Reply::ok(""), b"+OK\r\n"),
            (Reply::err("no such message"), b"-ERR no such message\r\n"),
            (
                Reply::err_code(RespCode::InUse, "locked"),
                b"-ERR [IN-USE] locked\r\n",
            ),
            (
                Reply::err_code(RespCode::SysTemp, "shutting down"),
                b"-ERR [SYS/TEMP] shutting down\r\n",
            ),
            (
                Reply::err_code(RespCode::SysPerm, "x"),
                b"-ERR [SYS/PERM] x\r\n",
            ),
            (
                Reply::err_code(RespCode::Auth, "bad"),
                b"-ERR [AUTH] bad\r\n",
            ),
            // Injection through reply text is impossible: CR/LF become spaces.
            (Reply::err("a\r\n+OK b"), b"-ERR a  +OK b\r\n"),
        ];
        for (reply, want) in cases {
            assert_eq!(reply.to_bytes(), *want, "{reply:?}");
        }
    }

    fn stuff(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = DotStuffer::new();
        s.push(input, &mut out);
        s.finish(&mut out);
        out
    }

    #[test]
    fn dot_stuffing_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"..x\r\n", b"...x\r\n.\r\n"),
            (b"a.b\r\n.c\r\n", b"a.b\r\n..c\r\n.\r\n"),
            // A bare LF starts a line too; a bare CR does not.
            (b"a\n.\n", b"a\n..\n.\r\n"),
            (b"a\r.b\r\n", b"a\r.b\r\n.\r\n"),
            (b"\r\n.", b"\r\n..\r\n.\r\n"),
            // 8-bit and NUL bytes pass through untouched.
            (b"\x00\xff.\x80\r\n", b"\x00\xff.\x80\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                stuff(input),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn dot_stuffing_is_independent_of_chunking() {
        let input: &[u8] =
            b".start\r\nline\r\n..two\r\n.\r\nbare\n.lf\n\xff\x00.\r\n.\r\n.end-no-crlf";
        let whole = stuff(input);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut out = Vec::new();
                let mut s = DotStuffer::new();
                s.push(&input[..a], &mut out);
                s.push(&input[a..b], &mut out);
                s.push(&input[b..], &mut out);
                s.finish(&mut out);
                assert_eq!(out, whole, "split at {a}, {b}");
            }
        }
    }

    /// Undoing the stuffing as a client does (RFC 1939 §3) gives the content back.
    #[test]
    fn dot_stuffing_round_trips() {
        let input: &[u8] = b"From: a\r\n\r\n.\r\n..\r\n.x\r\nend\r\n";
        let out = stuff(input);
        let mut lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(lines.pop(), Some(&b".\r\n"[..]));
        let restored: Vec<u8> = lines
            .into_iter()
            .flat_map(|l| l.strip_prefix(b".").unwrap_or(l).iter().copied())
            .collect();
        assert_eq!(restored, input);
    }

    #[test]
    fn listing_lines_are_stuffed() {
        let mut out = Vec::new();
        listing_line(&mut out, "TOP");
        listing_line(&mut out, ".odd");
        assert_eq!(out, b"TOP\r\n..odd\r\n");
    }
}
