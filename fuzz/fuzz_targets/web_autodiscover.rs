//! Microsoft Autodiscover POX request bodies (CLIENTS.md B.1), as anyone on the internet can
//! POST them: `web::fuzz_autodiscover_request` (the crate's `autodiscover::parse_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(email)) = web::fuzz_autodiscover_request(data) {
        assert!(!email.is_empty());
        assert_eq!(email.trim(), email);
    }
});
