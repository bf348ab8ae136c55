//! DNS texts and policies fetched from other domains: SPF (`dns::spf::parse`), DKIM key
//! records (`dns::dkim::parse_record`), the MTA-STS TXT record and policy
//! (`smtp::outbound::mta_sts::parse_txt`, `Policy::parse`), and the HTTP response that carries
//! the policy (`dns::https::parse_response`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp::outbound::mta_sts::{Policy, parse_txt};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = dns::https::parse_response(data) {
        assert!(body.len() <= data.len());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let texts = vec![text.to_owned()];
    let _ = dns::spf::spf_records(&texts);
    if let Ok(spf) = dns::spf::parse(text) {
        let _ = dns::spf::authorizes_mx(&spf);
    }
    let _ = dns::dkim::parse_record(text);
    if let Some(id) = parse_txt(text) {
        assert!(!id.is_empty() && id.len() <= 32);
    }
    if let Ok(policy) = Policy::parse(text) {
        for host in [
            "mx.example.org",
            "a.b.example.org",
            "",
            ".",
            "*.example.org",
        ] {
            let _ = policy.matches(host);
        }
        if let Some(mx) = policy.mx.first() {
            let _ = policy.matches(mx);
        }
    }
});
