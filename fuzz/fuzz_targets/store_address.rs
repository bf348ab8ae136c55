//! Addresses and domains as users, admins and remote servers give them:
//! `store::Address::parse`, `Domain::parse`, `AliasSource::parse`.
//!
//! Round trips: the stored (displayed) form of a parsed value parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::{Address, AliasSource, Domain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(domain) = Domain::parse(text) {
        assert_eq!(Domain::parse(domain.as_str()).as_ref().ok(), Some(&domain));
    }
    if let Ok(address) = Address::parse(text) {
        let shown = address.to_string();
        assert_eq!(
            Address::parse(&shown).as_ref().ok(),
            Some(&address),
            "{text:?} is stored as {shown:?}, which does not parse back"
        );
    }
    if let Ok(source) = AliasSource::parse(text) {
        let key = source.key();
        assert_eq!(
            AliasSource::parse(&key).as_ref().ok(),
            Some(&source),
            "{key:?}"
        );
    }
});
