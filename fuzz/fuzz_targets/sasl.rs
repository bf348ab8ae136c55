//! SASL responses from clients (IMAP AUTHENTICATE, SMTP AUTH, POP3 AUTH):
//! `net::sasl::decode_plain` (RFC 4616) and `decode_base64_line` (LOGIN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::sasl::{decode_base64_line, decode_plain};

fuzz_target!(|data: &[u8]| {
    if let Ok(creds) = decode_plain(data) {
        assert!(!creds.authcid.is_empty());
        assert!(!creds.password.expose().is_empty());
        assert!(!creds.password.expose().contains('\0'));
        // The password never shows in a Debug rendering.
        assert!(format!("{creds:?}").contains("REDACTED"));
    }
    if let Ok(line) = decode_base64_line(data) {
        assert!(!line.contains('\0'));
    }
});
