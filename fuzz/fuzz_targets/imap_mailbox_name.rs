//! Mailbox names as clients send them: `imap::decode_mutf7` (strict modified UTF-7, RFC 3501
//! §5.1.3) and `imap::parse_name` (decoding plus Tessera's name rules).
//!
//! Round trips: what decodes re-encodes to the same bytes (the strict form is unique), and
//! any name encodes to something that decodes back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = imap::decode_mutf7(data) {
        let encoded = imap::encode_mutf7(&name);
        assert_eq!(
            encoded.as_bytes(),
            data,
            "{:?} decodes to {name:?}, which encodes differently",
            String::from_utf8_lossy(data)
        );
    }
    for utf8 in [false, true] {
        if let Ok(name) = imap::parse_name(data, utf8) {
            // The stored form is itself a valid name.
            let again = imap::parse_name(imap::encode_mutf7(&name).as_bytes(), false);
            assert_eq!(again.as_deref(), Ok(name.as_str()));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let encoded = imap::encode_mutf7(text);
        assert_eq!(imap::decode_mutf7(encoded.as_bytes()).as_deref(), Ok(text));
    }
});
