//! DKIM key generation and key records (RFC 6376 §3.6.1, RFC 8463 §4).
//!
//! Each domain gets an RSA-2048 key (every verifier knows RSA) and an Ed25519 key (RFC 8463),
//! under dated selectors: `ts<YYYY>-<MM>r` and `ts<YYYY>-<MM>e`; a second key pair in the same
//! month gets `ts<YYYY>-<MM>r2`, `…e2`, and so on.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use store::{DkimAlgorithm, DkimKey, Domain, NewDkimKey};

/// Key generation failed (the crypto library refused).
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a {0} key")]
pub struct KeyGenError(&'static str);

/// Generates a key of `algorithm` for `domain` under `selector`.
pub fn generate(
    domain: &Domain,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<NewDkimKey, KeyGenError> {
    let (private_key, public_key) = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| KeyGenError("RSA-2048"))?;
            let private = pair.as_der().map_err(|_| KeyGenError("RSA-2048"))?;
            // RFC 6376 §3.6.1: p= is the base64 of the DER SubjectPublicKeyInfo.
            let public = pair
                .public_key()
                .as_der()
                .map_err(|_| KeyGenError("RSA-2048"))?;
            (private.as_ref().to_vec(), public.as_ref().to_vec())
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let pair = Ed25519KeyPair::generate().map_err(|_| KeyGenError("Ed25519"))?;
            let private = pair.to_pkcs8v1().map_err(|_| KeyGenError("Ed25519"))?;
            // RFC 8463 §4.2: p= is the base64 of the raw 32-byte public key.
            (
                private.as_ref().to_vec(),
                pair.public_key().as_ref().to_vec(),
            )
        }
    };
    Ok(NewDkimKey {
        domain: domain.clone(),
        selector: selector.to_owned(),
        algorithm,
        private_key,
        public_key,
    })
}

/// The selector letter of an algorithm.
fn letter(algorithm: DkimAlgorithm) -> char {
    match algorithm {
        DkimAlgorithm::RsaSha256 => 'r',
        DkimAlgorithm::Ed25519Sha256 => 'e',
    }
}

/// The dated selector for a key made at `unix_time`, avoiding those in `taken`.
pub fn selector_for(algorithm: DkimAlgorithm, unix_time: i64, taken: &[String]) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(unix_time)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let base = format!(
        "ts{:04}-{:02}{}",
        date.year(),
        u8::from(date.month()),
        letter(algorithm)
    );
    let mut candidate = base.clone();
    let mut n = 2;
    while taken.iter().any(|t| t.eq_ignore_ascii_case(&candidate)) {
        candidate = format!("{base}{n}");
        n += 1;
    }
    candidate
}

/// New RSA and Ed25519 keys for `domain` with dated selectors not in `existing`.
pub fn generate_pair(
    domain: &Domain,
    unix_time: i64,
    existing: &[DkimKey],
) -> Result<[NewDkimKey; 2], KeyGenError> {
    let taken: Vec<String> = existing.iter().map(|k| k.selector.clone()).collect();
    let rsa = DkimAlgorithm::RsaSha256;
    let ed = DkimAlgorithm::Ed25519Sha256;
    Ok([
        generate(domain, &selector_for(rsa, unix_time, &taken), rsa)?,
        generate(domain, &selector_for(ed, unix_time, &taken), ed)?,
    ])
}

/// The key record's text: `v=DKIM1; k=rsa; p=<base64>` (RFC 6376 §3.6.1).
pub fn record_text(algorithm: DkimAlgorithm, public_key: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        algorithm.key_type(),
        base64::engine::general_purpose::STANDARD.encode(public_key)
    )
}

/// The tags of a published key record that the check compares, from the concatenated TXT
/// strings (RFC 6376 §3.6.2.2); whitespace inside `p=` is ignored (§3.2 FWS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    /// `k=` (default `rsa`).
    pub key_type: String,
    /// `p=` without whitespace (empty = revoked).
    pub public_key_b64: String,
}

/// Parses a DKIM key record; `None` when it is not one (`v=` other than `DKIM1`, no `p=`).
pub fn parse_record(text: &str) -> Option<PublishedKey> {
    let mut key_type = "rsa".to_owned();
    let mut p = None;
    for (i, tag) in text.split(';').enumerate() {
        let Some((name, value)) = tag.split_once('=') else {
            if tag.trim().is_empty() {
                continue;
            }
            return None;
        };
        let name = name.trim();
        let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match name {
            // RFC 6376 §3.6.1: v= is optional, but if present it is first and DKIM1.
            "v" if i != 0 || value != "DKIM1" => return None,
            "k" => key_type = value.to_ascii_lowercase(),
            "p" => p = Some(value),
            _ => {}
        }
    }
    p.map(|public_key_b64| PublishedKey {
        key_type,
        public_key_b64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_dated_and_unique() {
        // 2026-11-15
        let t = 1_794_700_800;
        assert_eq!(selector_for(DkimAlgorithm::RsaSha256, t, &[]), "ts2026-11r");
        assert_eq!(
            selector_for(DkimAlgorithm::Ed25519Sha256, t, &[]),
            "ts2026-11e"
        );
        let taken = vec!["ts2026-11r".to_owned(), "ts2026-11r2".to_owned()];
        assert_eq!(
            selector_for(DkimAlgorithm::RsaSha256, t, &taken),
            "ts2026-11r3"
        );
    }

    #[test]
    fn generated_keys_have_the_published_shapes() {
        let d = Domain::parse("example.org").expect("domain");
        let [rsa, ed] = generate_pair(&d, 0, &[]).expect("keys");
        assert_eq!(rsa.selector, "ts1970-01r");
        // RSA-2048 SubjectPublicKeyInfo is 294 bytes; Ed25519 raw keys are 32.
        assert_eq!(rsa.public_key.len(), 294);
        assert_eq!(ed.public_key.len(), 32);
        let text = record_text(rsa.algorithm, &rsa.public_key);
        assert!(text.starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"), "{text}");
        let parsed = parse_record(&text).expect("parses");
        assert_eq!(parsed.key_type, "rsa");
        assert_eq!(
            parse_record(&record_text(ed.algorithm, &ed.public_key))
                .expect("parses")
                .key_type,
            "ed25519"
        );
        // mail-auth, which verifies signatures, reads both records.
        use mail_auth::common::parse::TxtRecordParser;
        for k in [&rsa, &ed] {
            mail_auth::common::verify::DomainKey::parse(
                record_text(k.algorithm, &k.public_key).as_bytes(),
            )
            .expect("mail-auth parses the record");
        }
    }

    #[test]
    fn published_records_parse_with_folding_and_defaults() {
        assert_eq!(
            parse_record("k=ed25519; p=ab cd\t ef;"),
            Some(PublishedKey {
                key_type: "ed25519".into(),
                public_key_b64: "abcdef".into()
            })
        );
        assert_eq!(parse_record("p=xyz").expect("ok").key_type, "rsa");
        assert_eq!(parse_record("k=rsa; v=DKIM1; p=x"), None);
        assert_eq!(parse_record("v=spf1 -all"), None);
    }
}
