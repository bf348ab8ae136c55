//! SMTP replies: the reply code (RFC 5321 §4.2) and the enhanced status code (RFC 3463,
//! RFC 2034, registry of RFC 5248) of every answer the server gives, as named constants.
//!
//! RFC 2034 §3: every 2xx, 4xx and 5xx reply carries an enhanced code, except the greeting
//! and the answer to EHLO/HELO; 3xx intermediate replies (354, 334) carry none.

use std::borrow::Cow;

/// One reply: code, enhanced status code and text. Encoded as `code SP status SP text CRLF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// RFC 5321 §4.2 reply code.
    pub code: u16,
    /// RFC 3463 enhanced status code (`class.subject.detail`), empty for 3xx replies.
    pub status: &'static str,
    /// Human-readable text; never contains CR or LF.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with fixed text.
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            status,
            text: Cow::Borrowed(text),
        }
    }

    /// The same code with other text (CR and LF are replaced, so text from elsewhere cannot
    /// inject reply lines).
    pub fn with_text(&self, text: impl Into<String>) -> Reply {
        let text: String = text
            .into()
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        Reply {
            code: self.code,
            status: self.status,
            text: Cow::Owned(text),
        }
    }

    /// Whether this is a 4xx or 5xx reply (counted towards the session's error limit).
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the encoded reply to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.code.to_string().as_bytes());
        out.push(b' ');
        if !self.status.is_empty() {
            out.extend_from_slice(self.status.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

// ---- 2xx: positive completion ----

/// RFC 5321 §4.1.1.4 / §4.1.1.9: generic success (NOOP, RSET, end of data).
pub const OK: Reply = Reply::new(250, "2.0.0", "OK");
/// RFC 5321 §4.1.1.2, RFC 3463 X.1.0: MAIL accepted.
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender OK");
/// RFC 5321 §4.1.1.3, RFC 3463 X.1.5: RCPT accepted.
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient OK");
/// RFC 5321 §4.1.1.4: the message is durable (blob fsynced, rows committed).
pub const MESSAGE_ACCEPTED: Reply = Reply::new(250, "2.0.0", "Message accepted");
/// RFC 3030 §2: one non-final BDAT chunk received.
pub const CHUNK_OK: Reply = Reply::new(250, "2.0.0", "Chunk received");
/// RFC 5321 §4.1.1.10: QUIT.
pub const BYE: Reply = Reply::new(221, "2.0.0", "Bye");
/// RFC 3207 §4: go ahead with the TLS handshake.
pub const READY_FOR_TLS: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
/// RFC 4954 §6: authentication succeeded.
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");
/// RFC 5321 §3.5.3 / §7.3: VRFY answered without revealing whether the user exists.
pub const CANNOT_VRFY: Reply = Reply::new(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
/// RFC 5321 §4.1.1.8: HELP.
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS AUTH",
);

// ---- 3xx: intermediate (no enhanced code, RFC 2034 §3) ----

/// RFC 5321 §4.1.1.4: send the message.
pub const START_DATA: Reply = Reply::new(354, "", "Start mail input; end with <CRLF>.<CRLF>");

// ---- 4xx: transient ----

/// RFC 5321 §3.8 / §4.5.3.2, RFC 3463 X.4.2: the client was silent too long.
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Timeout waiting for input; closing");
/// RFC 5321 §3.8, RFC 3463 X.3.2: the server is shutting down.
pub const SHUTTING_DOWN: Reply = Reply::new(421, "4.3.2", "Server shutting down; try again later");
/// RFC 5321 §4.2.5, RFC 3463 X.7.0: too many errors in this session.
pub const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0", "Too many errors; closing");
/// RFC 5321 §4.5.3.1.10, RFC 3463 X.5.3: more recipients than one transaction takes.
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3", "Too many recipients");
/// RFC 3463 X.3.0: an internal failure (the text carries a correlation id for the log).
pub const INTERNAL_ERROR: Reply = Reply::new(451, "4.3.0", "Internal error");
/// RFC 4954 §6: authentication failed for a temporary reason.
pub const AUTH_TEMPORARY: Reply = Reply::new(454, "4.7.0", "Temporary authentication failure");
/// RFC 5321 §3.8 / RFC 3463 X.7.0: refused because this address has too many sessions.
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "Too many connections from your address");

// ---- 5xx: permanent ----

/// RFC 5321 §4.2.4, RFC 3463 X.5.1: unknown command.
pub const UNKNOWN_COMMAND: Reply = Reply::new(500, "5.5.1", "Command not recognized");
/// RFC 5321 §4.2.2 / §4.5.3.1.4, RFC 3463 X.5.2: command line too long.
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "Line too long");
/// RFC 5321 §2.3.8, RFC 3463 X.5.2: a command line not ended by CRLF, or with a bare CR.
pub const BAD_LINE_ENDING: Reply = Reply::new(
    500,
    "5.5.2",
    "Command lines must end with CRLF and contain no bare CR or LF",
);
/// RFC 3463 X.5.1: the first line was not SMTP (an HTTP request, say).
pub const NOT_SMTP: Reply = Reply::new(500, "5.5.1", "This is an SMTP server; closing");
/// RFC 5321 §4.2.2, RFC 3463 X.5.2: syntax error in a command's arguments.
pub const SYNTAX_ERROR: Reply = Reply::new(501, "5.5.2", "Syntax error");
/// RFC 3463 X.5.4: a parameter's value is invalid.
pub const BAD_PARAMETER: Reply = Reply::new(501, "5.5.4", "Invalid parameter");
/// RFC 3463 X.1.7: the sender address is malformed.
pub const BAD_SENDER_SYNTAX: Reply = Reply::new(501, "5.1.7", "Bad sender address syntax");
/// RFC 3463 X.1.3: the recipient address is malformed.
pub const BAD_RECIPIENT_SYNTAX: Reply = Reply::new(501, "5.1.3", "Bad recipient address syntax");
/// RFC 5321 §4.2.4, RFC 3463 X.5.1: command not implemented (EXPN, ETRN, ...).
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "Command not implemented");
/// RFC 5321 §4.2.4, RFC 3463 X.5.1: commands out of order.
pub const BAD_SEQUENCE: Reply = Reply::new(503, "5.5.1", "Bad sequence of commands");
/// RFC 5321 §4.2.4, RFC 3463 X.5.4: parameter not implemented.
pub const PARAMETER_NOT_IMPLEMENTED: Reply = Reply::new(504, "5.5.4", "Parameter not implemented");
/// RFC 4954 §4, RFC 3463 X.5.4: unsupported SASL mechanism.
pub const UNKNOWN_MECHANISM: Reply =
    Reply::new(504, "5.5.4", "Unrecognized authentication mechanism");
/// RFC 4954 §4: the client cancelled AUTH with `*`.
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.0.0", "Authentication cancelled");
/// RFC 4954 §6: AUTH required before MAIL on submission (RFC 6409 §4.3).
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0", "Authentication required");
/// RFC 4954 §6: wrong credentials.
pub const AUTH_FAILED: Reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
/// RFC 4954 §6, RFC 5248 X.7.11: AUTH before TLS.
pub const ENCRYPTION_REQUIRED: Reply = Reply::new(
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism",
);
/// RFC 3463 X.1.1: no such mailbox here.
pub const NO_SUCH_USER: Reply = Reply::new(550, "5.1.1", "No such user here");
/// RFC 5321 §3.6.2 / §7.1, RFC 3463 X.7.1: relaying denied.
pub const RELAY_DENIED: Reply = Reply::new(550, "5.7.1", "Relaying denied");
/// RFC 7489 §6.6.3 / §7.2.1, RFC 3463 X.7.1: DMARC policy says reject.
pub const DMARC_REJECT: Reply = Reply::new(550, "5.7.1", "Rejected by the sender's DMARC policy");
/// RFC 5321 §2.3.8 (smuggling defence), RFC 5248 X.6.11: bare CR or LF in the message.
pub const BARE_LINE_ENDING_IN_DATA: Reply = Reply::new(
    550,
    "5.6.11",
    "Message contains a bare CR or LF; lines must end with CRLF",
);
/// RFC 5321 §4.5.3.1.10 / RFC 3463 X.2.2 (a transient condition): at RCPT, the recipient's
/// mailbox is full; the sending server keeps the message and tries again later.
pub const MAILBOX_FULL_TRY_LATER: Reply = Reply::new(452, "4.2.2", "Mailbox full, try again later");
/// RFC 3463 X.2.2: a recipient's mailbox is over quota.
pub const MAILBOX_FULL: Reply = Reply::new(552, "5.2.2", "Mailbox full");
/// RFC 1870 §6, RFC 3463 X.3.4: message larger than the SIZE limit.
pub const MESSAGE_TOO_BIG: Reply = Reply::new(552, "5.3.4", "Message size exceeds fixed limit");
/// RFC 6409 §6.1 / RFC 3463 X.7.1: the sender address is not the account's.
pub const SENDER_NOT_OWNED: Reply = Reply::new(
    553,
    "5.7.1",
    "Sender address not owned by the authenticated user",
);
/// RFC 6531 §3.5, RFC 3463 X.6.7: a non-ASCII address without SMTPUTF8.
pub const NEEDS_SMTPUTF8: Reply = Reply::new(
    553,
    "5.6.7",
    "Non-ASCII address requires the SMTPUTF8 parameter",
);
/// RFC 5321 §3.3, RFC 3463 X.5.1: DATA without a valid recipient.
pub const NO_VALID_RECIPIENTS: Reply = Reply::new(554, "5.5.1", "No valid recipients");
/// RFC 3463 X.6.0: the message is unusable (no From: on submission).
pub const BAD_MESSAGE: Reply = Reply::new(550, "5.6.0", "Message has no From: header");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_carries_the_enhanced_code() {
        let mut out = Vec::new();
        NO_SUCH_USER.encode(&mut out);
        START_DATA.encode(&mut out);
        assert_eq!(
            out,
            b"550 5.1.1 No such user here\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
        );
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = INTERNAL_ERROR.with_text("a\r\n250 OK");
        assert_eq!(r.to_string(), "451 4.3.0 a  250 OK");
    }
}
