//! Tessera's ACME client: certificates for the mail host and for the names each hosted domain's
//! clients use, from Let's Encrypt or any RFC 8555 CA, installed into the SNI store while the
//! server runs.
//!
//! Standards:
//! - RFC 8555 (ACME): account, order, authorizations, finalize with a CSR, download the chain.
//! - RFC 8555 §8.3 (HTTP-01): the key authorization at `/.well-known/acme-challenge/<token>` on
//!   port 80, published through [`web::Http01Challenges`].
//! - RFC 8737 (TLS-ALPN-01): a self-signed certificate for the name with the critical
//!   `id-pe-acmeIdentifier` extension (1.3.6.1.5.5.7.1.31) holding SHA-256 of the key
//!   authorization, served on 443 to ClientHellos offering `acme-tls/1`
//!   ([`tls::CertStore::set_alpn_challenge`]).
//!
//! Implementation notes (invariants):
//! - One certificate per [`CertificateGroup`]: the mail host, and per hosted domain the domain
//!   and its `autoconfig.`, `autodiscover.`, `mta-sts.`, `mail.`, `imap.`, `smtp.` names.
//! - Before any order, every name is resolved ([`dns::Resolver`]); a name whose A/AAAA records
//!   are missing, or include an address that is not one of this server's (`[dns] addresses`),
//!   is left out of the order and reported ([`Report::skipped`], logged, stored), so a missing
//!   DNS record never costs a failed validation at the CA (rate limits).
//! - A certificate is renewed once two thirds of its lifetime (not-before to not-after) have
//!   passed ([`renewal_time`]), or earlier when a name that now resolves here is missing from it.
//! - A failed attempt keeps the certificate being served, counts a failure and waits
//!   [`AcmeConfig::retry_base`] doubled per consecutive failure, at most [`AcmeConfig::retry_max`].
//! - A name the CA fails to validate in two consecutive attempts (while others pass) is left
//!   out until the next renewal and reported like a name that does not resolve here, so one
//!   broken name cannot let the others' certificate expire.
//! - Every outcome (chain, key, dates, last result, error, skipped names, next attempt) is
//!   written to the store, so a restart serves the last certificate at once and `tessera cert
//!   status` can report without the server.
//! - With [`AcmeConfig::keep_key`] the certificate key survives renewals (TLSA records that pin
//!   the public key stay valid); otherwise each order gets a fresh ECDSA P-256 key.
//! - Challenge responses are withdrawn when the order is done, whatever the outcome.
//! - Nothing from the CA or the DNS is `unwrap`ped; CA errors become [`AcmeError`]s.

mod challenge;
mod renewer;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use challenge::tls_alpn_certificate;
pub use renewer::{Action, CertificateGroup, Renewer, Report, renewal_time, retry_delay};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The directory URL for a configured value: the presets `letsencrypt` and
/// `letsencrypt-staging`, or an `https://` URL as given. `None` for anything else.
pub fn directory_url(value: &str) -> Option<String> {
    match value {
        "letsencrypt" => Some(LETS_ENCRYPT.to_owned()),
        "letsencrypt-staging" => Some(LETS_ENCRYPT_STAGING.to_owned()),
        url if url.starts_with("https://") && url.len() > "https://".len() => Some(url.to_owned()),
        _ => None,
    }
}

/// An ACME challenge type this client can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// TLS-ALPN-01 (RFC 8737), on port 443.
    TlsAlpn01,
    /// HTTP-01 (RFC 8555 §8.3), on port 80.
    Http01,
}

impl ChallengeKind {
    /// The name used in configuration and by the CA: `tls-alpn-01`, `http-01`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        }
    }

    /// Parses [`ChallengeKind::as_str`]'s form.
    pub fn parse(s: &str) -> Option<ChallengeKind> {
        match s {
            "tls-alpn-01" => Some(ChallengeKind::TlsAlpn01),
            "http-01" => Some(ChallengeKind::Http01),
            _ => None,
        }
    }

    fn acme_type(self) -> instant_acme::ChallengeType {
        match self {
            ChallengeKind::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
            ChallengeKind::Http01 => instant_acme::ChallengeType::Http01,
        }
    }
}

/// How the client talks to the CA and when it acts.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL (see [`directory_url`]).
    pub directory_url: String,
    /// Contact addresses for the account (plain addresses; `mailto:` is added).
    pub contact: Vec<String>,
    /// A PEM file with the one root certificate to trust for the directory's HTTPS (a test CA
    /// such as pebble's); `None` trusts the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// Keep each certificate's private key across renewals.
    pub keep_key: bool,
    /// The challenge types to use, most preferred first (at least one).
    pub challenges: Vec<ChallengeKind>,
    /// This server's public addresses: a name is ordered only if it resolves to these.
    pub addresses: Vec<IpAddr>,
    /// Longest sleep between two looks at the certificates.
    pub check_interval: Duration,
    /// Wait after the first failed attempt; doubles per consecutive failure.
    pub retry_base: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// How long one order may take (validation, then issuance) before it counts as failed.
    pub order_timeout: Duration,
}

impl AcmeConfig {
    /// Production timing for `directory_url`: look every hour, retry after 10 minutes doubling
    /// up to 12 hours, 2 minutes per order; TLS-ALPN-01 first, then HTTP-01; fresh keys.
    pub fn new(directory_url: String, addresses: Vec<IpAddr>) -> AcmeConfig {
        AcmeConfig {
            directory_url,
            contact: Vec::new(),
            ca_file: None,
            keep_key: false,
            challenges: vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01],
            addresses,
            check_interval: Duration::from_secs(3600),
            retry_base: Duration::from_secs(600),
            retry_max: Duration::from_secs(12 * 3600),
            order_timeout: Duration::from_secs(120),
        }
    }
}

fn describe_failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(name, detail)| format!("{name} ({detail})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything that can go wrong in one attempt. The message is what `tessera cert status`
/// shows as the last error.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME CA {directory}: {source}")]
    Ca {
        directory: String,
        source: instant_acme::Error,
    },
    #[error("the CA refused the order: {0}")]
    Invalid(String),
    #[error("the CA could not validate {}", describe_failures(.0))]
    ValidationFailed(Vec<(String, String)>),
    #[error("the CA offers none of the configured challenge types for {name} (offered: {offered})")]
    NoChallenge { name: String, offered: String },
    #[error("cannot make {what}: {source}")]
    Key { what: String, source: rcgen::Error },
    #[error("the certificate from the CA is unusable: {0}")]
    BadCertificate(String),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("stored ACME account for {directory} is unreadable: {source}")]
    Credentials {
        directory: String,
        source: serde_json::Error,
    },
}
