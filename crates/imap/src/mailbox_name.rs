//! Mailbox names: modified UTF-7 (RFC 3501 §5.1.3), decoded strictly, and the rules Tessera
//! puts on names (DESIGN §6): hierarchy delimiter `/`, no empty components, no `.` or `..`
//! components, no control characters, `INBOX` case-insensitive.

use base64::Engine as _;
use base64::alphabet::IMAP_MUTF7;
use base64::engine::general_purpose::GeneralPurposeConfig;
use base64::engine::{DecodePaddingMode, GeneralPurpose};

/// The hierarchy delimiter (CLIENTS.md §F.3).
pub const DELIMITER: char = '/';

/// Longest mailbox name accepted, in UTF-8 octets.
pub const MAX_NAME_LEN: usize = 512;

const B64: GeneralPurpose = GeneralPurpose::new(
    &IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Why a mailbox name was refused (answered with NO).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not valid modified UTF-7.
    #[error("mailbox name is not valid modified UTF-7")]
    BadEncoding,
    /// Empty, or an empty / `.` / `..` component, or a control character, or too long.
    #[error("invalid mailbox name: {0}")]
    Invalid(&'static str),
}

/// Decodes a modified UTF-7 name strictly: `&-` is `&`, `&...-` is base64 of UTF-16BE;
/// printable US-ASCII must not be encoded, shifts must be closed and minimal.
pub fn decode_mutf7(input: &[u8]) -> Result<String, NameError> {
    let mut out = String::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'&' {
            let end = input[i + 1..]
                .iter()
                .position(|&c| c == b'-')
                .ok_or(NameError::BadEncoding)?
                + i
                + 1;
            let chunk = &input[i + 1..end];
            if chunk.is_empty() {
                out.push('&');
            } else {
                let bytes = B64.decode(chunk).map_err(|_| NameError::BadEncoding)?;
                if bytes.len() % 2 != 0 {
                    return Err(NameError::BadEncoding);
                }
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                let s = String::from_utf16(&units).map_err(|_| NameError::BadEncoding)?;
                // RFC 3501 §5.1.3: printable US-ASCII characters represent themselves.
                if s.chars().any(|c| (' '..='~').contains(&c)) {
                    return Err(NameError::BadEncoding);
                }
                out.push_str(&s);
                // Two adjacent encoded runs must be one (strict, unambiguous form).
                if input.get(end + 1) == Some(&b'&') && input.get(end + 2) != Some(&b'-') {
                    return Err(NameError::BadEncoding);
                }
            }
            i = end + 1;
        } else if (0x20..0x7f).contains(&b) {
            out.push(char::from(b));
            i += 1;
        } else {
            return Err(NameError::BadEncoding);
        }
    }
    Ok(out)
}

/// Encodes a UTF-8 name in modified UTF-7.
pub fn encode_mutf7(name: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if !pending.is_empty() {
            let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&B64.encode(bytes));
            out.push('-');
            pending.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decodes and validates a name as the client sent it, returning the stored form
/// (`INBOX` in any case becomes `INBOX`, also as the first component).
pub fn parse_name(raw: &[u8], utf8: bool) -> Result<String, NameError> {
    let name = if utf8 {
        // RFC 6855 §3: with UTF8=ACCEPT names are UTF-8, but a client may still send mUTF-7.
        match std::str::from_utf8(raw) {
            Ok(s) if !s.is_ascii() => s.to_string(),
            _ => decode_mutf7(raw)?,
        }
    } else {
        decode_mutf7(raw)?
    };
    validate(&name)?;
    Ok(normalize_inbox(&name))
}

/// The rules of DESIGN §6 on a decoded name.
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Invalid("empty name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::Invalid("name too long"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(NameError::Invalid("control characters are not allowed"));
    }
    for component in name.split(DELIMITER) {
        match component {
            "" => return Err(NameError::Invalid("empty hierarchy component")),
            "." | ".." => return Err(NameError::Invalid("\".\" and \"..\" are not allowed")),
            _ => {}
        }
    }
    if name.contains('*') || name.contains('%') {
        return Err(NameError::Invalid("wildcards are not allowed in names"));
    }
    Ok(())
}

/// `inbox`, `Inbox/x` → `INBOX`, `INBOX/x`.
pub fn normalize_inbox(name: &str) -> String {
    let (first, rest) = match name.split_once(DELIMITER) {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if first.eq_ignore_ascii_case("INBOX") {
        match rest {
            Some(r) => format!("INBOX{DELIMITER}{r}"),
            None => "INBOX".into(),
        }
    } else {
        name.to_string()
    }
}

/// RFC 3501 §6.3.8 LIST pattern matching: `*` matches anything, `%` anything but the
/// delimiter. `INBOX` matched case-insensitively.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    fn rec(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| rec(&p[1..], &n[i..])),
            Some('%') => {
                for i in 0..=n.len() {
                    if rec(&p[1..], &n[i..]) {
                        return true;
                    }
                    if i < n.len() && n[i] == DELIMITER {
                        break;
                    }
                }
                false
            }
            Some(c) => n.first() == Some(c) && rec(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = normalize_inbox(pattern).chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Bound the backtracking: patterns with many wildcards against long names.
    if p.iter().filter(|c| **c == '*' || **c == '%').count() > 16 {
        return false;
    }
    rec(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutf7_round_trips() {
        let table = [
            ("INBOX", "INBOX"),
            ("&-", "&"),
            ("Entw&APw-rfe", "Entwürfe"),
            ("&ZeVnLIqe-", "日本語"),
            ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
        ];
        for (wire, text) in table {
            assert_eq!(decode_mutf7(wire.as_bytes()).as_deref(), Ok(text), "{wire}");
            assert_eq!(encode_mutf7(text), wire, "{text}");
        }
    }

    #[test]
    fn mutf7_strictness() {
        for bad in [
            "&",
            "&AGE-",      // encodes 'a', printable ASCII
            "&ZeVnLIqe",  // unterminated
            "&Jjo!-",     // bad base64
            "&AOQ-&AOQ-", // two adjacent shifts
            "caf\u{e9}",  // raw 8-bit
            "&2D0-",      // lone surrogate
        ] {
            assert!(decode_mutf7(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_traversal_and_control_characters_refused() {
        for bad in [
            "..", "a/../b", "./x", "a//b", "/a", "a/", "x\ty", "x\u{1}y", "", "a/*",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b", "a.b", "..a", "Sent Items"] {
            assert!(validate(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn list_patterns() {
        assert!(pattern_matches("*", "a/b/c"));
        assert!(pattern_matches("%", "a"));
        assert!(!pattern_matches("%", "a/b"));
        assert!(pattern_matches("a/%", "a/b"));
        assert!(pattern_matches("inbox", "INBOX"));
        assert!(!pattern_matches("a", "ab"));
        assert!(pattern_matches("a*c", "a/b/c"));
    }
}
