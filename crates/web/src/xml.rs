//! Escaping for XML and HTML text and attribute values (XML 1.0 §2.4, HTML §13.1.2.6).

use std::fmt::Write;

/// `s` with `&`, `<`, `>`, `"` and `'` replaced by entities; control characters other than
/// tab and newline (not allowed in XML 1.0) are dropped.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes `s` for a URL path segment or query value (RFC 3986 §2.1), keeping only
/// unreserved characters and `@` as they are.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_controls() {
        assert_eq!(escape("a<b>&\"'\u{0}c"), "a&lt;b&gt;&amp;&quot;&#39;c");
        assert_eq!(percent_encode("a b@c/d"), "a%20b@c%2Fd");
    }
}
