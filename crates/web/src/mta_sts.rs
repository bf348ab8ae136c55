//! The MTA-STS policy file (RFC 8461 §3.2).

use std::fmt::Write;

use sha2::{Digest, Sha256};

/// The policy mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtaStsMode {
    /// Senders report failures but deliver anyway. The default until the certificates are
    /// publicly trusted.
    #[default]
    Testing,
    /// Senders refuse to deliver without a valid TLS connection to a listed MX.
    Enforce,
    /// The domain withdraws its policy.
    None,
}

impl MtaStsMode {
    /// The policy's `mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            MtaStsMode::Testing => "testing",
            MtaStsMode::Enforce => "enforce",
            MtaStsMode::None => "none",
        }
    }
}

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The policy text: `key: value` lines ending in CRLF (RFC 8461 §3.2), one `mx` line per MX.
pub fn policy(mode: MtaStsMode, mx_hosts: &[&str], max_age: u64) -> String {
    let mut out = format!("version: STSv1\r\nmode: {}\r\n", mode.as_str());
    for mx in mx_hosts {
        let _ = write!(out, "mx: {mx}\r\n");
    }
    let _ = write!(out, "max_age: {}\r\n", max_age.min(MAX_AGE_LIMIT));
    out
}

/// An `id` for the `_mta-sts` TXT record (RFC 8461 §3.1: 1–32 alphanumerics) that changes
/// whenever the policy text does: the first 20 hex digits of its SHA-256.
pub fn policy_id(policy_text: &str) -> String {
    let digest = Sha256::digest(policy_text.as_bytes());
    digest.iter().take(10).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_lines_end_in_crlf_and_max_age_is_capped() {
        assert_eq!(
            policy(MtaStsMode::Enforce, &["mail.example.org"], u64::MAX),
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmax_age: 31557600\r\n"
        );
        let id = policy_id("x");
        assert!(id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(policy_id("x"), policy_id("y"));
    }
}
