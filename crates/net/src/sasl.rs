//! SASL mechanisms shared by SMTP AUTH (RFC 4954), IMAP AUTHENTICATE (RFC 3501 §6.2.2) and
//! POP3 AUTH (RFC 5034): PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login).
//!
//! Only decoding lives here; the exchange (challenges, `334`/`+` continuation lines) is the
//! protocol's. Input is one client line *without* its line terminator (trailing CR/LF and
//! surrounding spaces are tolerated). Two special lines come first (RFC 4954 §4):
//! `*` cancels the exchange ([`SaslError::Cancelled`]) and `=` is an empty response
//! ([`SaslError::Empty`], as is an empty line) — neither PLAIN nor LOGIN accepts an empty
//! response, so a session answers `Empty` like any other malformed response. A missing initial
//! response (`AUTH PLAIN` alone) is the session's case, not this module's: it sends an empty
//! challenge and decodes the next line.
//!
//! Not done: SASLprep (RFC 4013) normalisation; passwords are compared as sent.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Most decoded bytes accepted in one response.
pub const MAX_DECODED_LEN: usize = 4096;
/// Most base64 characters accepted in one response (`MAX_DECODED_LEN` encoded, padded).
pub const MAX_ENCODED_LEN: usize = MAX_DECODED_LEN.div_ceil(3) * 4;

/// LOGIN's first challenge, base64 of `Username:`.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// LOGIN's second challenge, base64 of `Password:`.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// RFC 4648 §4 alphabet; padding accepted but not required (some clients omit it).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A value that must never reach a log: `Debug` and `Display` print `REDACTED`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret itself, for the one place that needs it (password verification).
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Secret<T> {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

/// What a client presented to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Identity to act as (RFC 4616 authzid); `None` when the client sent none. The session
    /// refuses it unless it equals `authcid` (or the server supports proxy authorisation).
    pub authzid: Option<String>,
    /// Identity whose password this is (the login name).
    pub authcid: String,
    /// The password.
    pub password: Secret<String>,
}

/// Why a SASL response was rejected. Every variant is a client error (SMTP `501 5.5.2`,
/// IMAP `BAD`, POP3 `-ERR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The response was empty (`=` or an empty line).
    #[error("empty SASL response")]
    Empty,
    /// The client sent `*` (RFC 4954 §4, RFC 3501 §6.2.2).
    #[error("authentication cancelled by client")]
    Cancelled,
    /// Longer than [`MAX_ENCODED_LEN`] / [`MAX_DECODED_LEN`].
    #[error("SASL response too long")]
    TooLong,
    /// Not base64.
    #[error("SASL response is not valid base64")]
    Base64,
    /// Not UTF-8 (RFC 4616 §2: the message is UTF-8).
    #[error("SASL response is not UTF-8")]
    NotUtf8,
    /// A PLAIN message without its two NUL separators.
    #[error("PLAIN message needs authzid NUL authcid NUL passwd")]
    MissingNul,
    /// A PLAIN message with an empty authcid (RFC 4616 §2: `authcid = 1*SAFE`).
    #[error("empty authentication identity")]
    EmptyAuthcid,
    /// An empty password (RFC 4616 §2: `passwd = 1*SAFE`).
    #[error("empty password")]
    EmptyPassword,
    /// A NUL where none may be: in a PLAIN password, or in a LOGIN response.
    #[error("unexpected NUL in SASL response")]
    EmbeddedNul,
}

/// Decodes one base64 response line into bytes, applying the common rules.
fn decode(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    match line {
        b"" | b"=" => return Err(SaslError::Empty),
        b"*" => return Err(SaslError::Cancelled),
        _ => {}
    }
    if line.len() > MAX_ENCODED_LEN {
        return Err(SaslError::TooLong);
    }
    let bytes = BASE64.decode(line).map_err(|_| SaslError::Base64)?;
    if bytes.is_empty() {
        return Err(SaslError::Empty);
    }
    if bytes.len() > MAX_DECODED_LEN {
        return Err(SaslError::TooLong);
    }
    Ok(bytes)
}

fn utf8(bytes: &[u8]) -> Result<String, SaslError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| SaslError::NotUtf8)
}

/// Decodes a PLAIN response (RFC 4616 §2): base64 of
/// `[authzid] NUL authcid NUL passwd`.
pub fn decode_plain(b64: &[u8]) -> Result<Credentials, SaslError> {
    let message = decode(b64)?;
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MissingNul);
    };
    if password.contains(&0) {
        return Err(SaslError::EmbeddedNul);
    }
    if authcid.is_empty() {
        return Err(SaslError::EmptyAuthcid);
    }
    if password.is_empty() {
        return Err(SaslError::EmptyPassword);
    }
    Ok(Credentials {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(utf8(authzid)?)
        },
        authcid: utf8(authcid)?,
        password: Secret(utf8(password)?),
    })
}

/// Decodes one LOGIN response (the user name, then the password): base64 of UTF-8 text
/// without NUL.
pub fn decode_base64_line(b64: &[u8]) -> Result<String, SaslError> {
    let bytes = decode(b64)?;
    if bytes.contains(&0) {
        return Err(SaslError::EmbeddedNul);
    }
    utf8(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> Vec<u8> {
        BASE64.encode(bytes).into_bytes()
    }

    /// (authzid, authcid, password) or the error.
    type Decoded = Result<(Option<String>, String, String), SaslError>;

    #[test]
    fn plain_table() {
        let ok = |authzid: Option<&str>, authcid: &str, password: &str| {
            Ok::<_, SaslError>((
                authzid.map(str::to_owned),
                authcid.to_owned(),
                password.to_owned(),
            ))
        };
        let cases: &[(&[u8], Decoded)] = &[
            (b"\0alice\0secret", ok(None, "alice", "secret")),
            (
                b"admin\0alice\0secret",
                ok(Some("admin"), "alice", "secret"),
            ),
            (
                "\0j\u{f6}rg\0p\u{e4}ss w\u{f6}rd".as_bytes(),
                ok(None, "j\u{f6}rg", "p\u{e4}ss w\u{f6}rd"),
            ),
            (b"alice\0secret", Err(SaslError::MissingNul)),
            (b"alicesecret", Err(SaslError::MissingNul)),
            (b"\0\0secret", Err(SaslError::EmptyAuthcid)),
            (b"\0alice\0", Err(SaslError::EmptyPassword)),
            (b"\0alice\0sec\0ret", Err(SaslError::EmbeddedNul)),
            (b"\0al\xffice\0secret", Err(SaslError::NotUtf8)),
            (b"\0alice\0se\xc3cret", Err(SaslError::NotUtf8)),
            (b"\xff\0alice\0secret", Err(SaslError::NotUtf8)),
        ];
        for (message, want) in cases {
            let got = decode_plain(&b64(message))
                .map(|c| (c.authzid, c.authcid, c.password.into_inner()));
            assert_eq!(&got, want, "message {:?}", String::from_utf8_lossy(message));
        }
    }

    #[test]
    fn special_and_malformed_lines() {
        let cases: &[(&[u8], SaslError)] = &[
            (b"", SaslError::Empty),
            (b"=", SaslError::Empty),
            (b"=\r\n", SaslError::Empty),
            (b"*", SaslError::Cancelled),
            (b"*\r\n", SaslError::Cancelled),
            (b"AGFsaWNlAHNlY3JldA=!", SaslError::Base64),
            (b"AGFsa WNlAHNlY3JldA==", SaslError::Base64),
            (b"====", SaslError::Base64),
        ];
        for (line, want) in cases {
            assert_eq!(decode_plain(line).err(), Some(*want), "{line:?}");
            assert_eq!(decode_base64_line(line).err(), Some(*want), "{line:?}");
        }
    }

    #[test]
    fn padding_and_line_ending_are_tolerated() {
        // "\0alice\0secret" with and without padding, with a CRLF left on.
        for line in [
            &b"AGFsaWNlAHNlY3JldA=="[..],
            b"AGFsaWNlAHNlY3JldA",
            b"AGFsaWNlAHNlY3JldA==\r\n",
        ] {
            let creds = decode_plain(line).expect("valid PLAIN");
            assert_eq!(creds.authcid, "alice");
            assert_eq!(creds.password.expose(), "secret");
        }
    }

    #[test]
    fn overlong_input_rejected() {
        let long_password = "x".repeat(MAX_DECODED_LEN);
        let message = format!("\0alice\0{long_password}");
        assert_eq!(
            decode_plain(&b64(message.as_bytes())),
            Err(SaslError::TooLong)
        );
        let just_fits = format!("\0alice\0{}", "x".repeat(MAX_DECODED_LEN - 7));
        assert!(decode_plain(&b64(just_fits.as_bytes())).is_ok());
        assert_eq!(
            decode_base64_line(&vec![b'A'; MAX_ENCODED_LEN + 4]),
            Err(SaslError::TooLong)
        );
    }

    #[test]
    fn login_steps() {
        assert_eq!(
            BASE64.decode(LOGIN_USERNAME_CHALLENGE).ok(),
            Some(b"Username:".to_vec())
        );
        assert_eq!(
            BASE64.decode(LOGIN_PASSWORD_CHALLENGE).ok(),
            Some(b"Password:".to_vec())
        );
        assert_eq!(
            decode_base64_line(&b64(b"alice@example.org")).as_deref(),
            Ok("alice@example.org")
        );
        assert_eq!(decode_base64_line(&b64(b"pa ss")).as_deref(), Ok("pa ss"));
        assert_eq!(
            decode_base64_line(&b64(b"pa\0ss")),
            Err(SaslError::EmbeddedNul)
        );
        assert_eq!(decode_base64_line(&b64(b"\xfe")), Err(SaslError::NotUtf8));
    }

    #[test]
    fn credentials_debug_never_shows_password() {
        let creds = decode_plain(&b64(b"admin\0alice\0hunter2-very-secret")).expect("valid");
        for shown in [
            format!("{creds:?}"),
            format!("{creds:#?}"),
            format!("{}", creds.password),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(format!("{creds:?}").contains("REDACTED"));
        assert!(format!("{creds:?}").contains("alice"));
        assert_eq!(creds.password.expose(), "hunter2-very-secret");
    }
}
