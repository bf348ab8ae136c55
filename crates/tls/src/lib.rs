//! The TLS certificate store shared by every Tessera listener.
//!
//! One [`CertStore`] holds every certificate the server presents and picks one per connection
//! from the client's Server Name Indication. Certificates come from PEM files named in the
//! configuration ([`CertSource::Files`], re-read when their mtime or size changes) or from a local
//! certificate authority kept on disk ([`CertSource::LocalCa`], for the demo and first start).
//! ACME (the `acme` crate) feeds the same store through [`CertStore::insert`], and answers
//! TLS-ALPN-01 challenges (RFC 8737) through [`CertStore::set_alpn_challenge`].
//!
//! Standards:
//! - RFC 8446 (TLS 1.3) and RFC 5246 (TLS 1.2): the only protocol versions offered.
//! - RFC 6066 §3 (Server Name Indication): certificate selection.
//! - RFC 5280 (X.509 profile): local CA and leaf certificates.
//! - RFC 6125 §6.4.3: a `*.` wildcard covers exactly one leftmost label.
//! - RFC 8737 §3 (TLS-ALPN-01): a ClientHello offering `acme-tls/1` gets the challenge
//!   certificate for its SNI name, or no certificate at all (the handshake fails).
//!
//! Implementation notes (invariants):
//! - Every rustls configuration is built with the aws-lc-rs provider passed explicitly
//!   ([`provider`]); nothing relies on a process-wide default provider.
//! - Only TLS 1.3 and TLS 1.2 are ever enabled; a TLS 1.1 or older ClientHello is refused.
//! - A certificate from a file or the local CA is only installed after its private key was
//!   checked to match it (callers of [`CertStore::insert`] vouch for theirs); a file that fails
//!   to load never replaces a certificate already being served.
//! - Certificate selection never fails while any certificate is loaded: exact name, then
//!   one-label wildcard, then the default certificate (the mail host, or the first loaded).
//! - Files this crate writes are written to a temporary file and renamed into place; private keys
//!   are created with mode 0600. The local CA key is created with a no-clobber link so two
//!   processes starting at once agree on one CA.
//! - Nothing read from a file or the network is `unwrap`ped; errors name the path involved.

mod local_ca;
mod pem;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
pub use store::{CertInfo, CertSource, CertStore, PemPair};
pub use tokio_rustls;

/// Everything that can go wrong loading, issuing or storing certificates. Each variant names the
/// file or host name involved so an operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {source}")]
    ReadCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read private key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed PEM in {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("no private key in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("invalid certificate {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("certificate {path} names no DNS host (no subjectAltName dNSName entry)")]
    NoNames { path: PathBuf },
    #[error("unsupported private key in {path}: {source}")]
    UnsupportedKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate {cert} does not match its key {key}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("invalid host name {0:?}")]
    InvalidName(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}

impl TlsError {
    /// A [`TlsError::BadCertificate`] for `path` with `reason`.
    pub(crate) fn bad_cert(path: &Path, reason: impl std::fmt::Display) -> TlsError {
        TlsError::BadCertificate {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737 §6.2). A listener that should
/// answer those challenges (HTTPS on 443) lists it in its ALPN protocols; a connection that
/// negotiated it must be closed right after the handshake (RFC 8737 §3).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certified key from PEM text: the chain (leaf first) and its private key, checked to
/// match. For certificates that do not live in files (ACME keeps them in the store).
pub fn certified_key_from_pem(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let here = Path::new("(in memory)");
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: here.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: here.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        path: here.to_owned(),
        reason: e.to_string(),
    })?;
    pem::certify(chain, key, here, here)
}

/// The names, issuer and not-after of the leaf (first) certificate in the PEM file at `path`.
pub fn read_cert_info(path: &Path) -> Result<CertInfo, TlsError> {
    let chain = pem::read_chain(path)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: path.to_owned(),
    })?;
    let facts = pem::cert_facts(leaf).map_err(|e| TlsError::bad_cert(path, e))?;
    Ok(CertInfo {
        names: facts.dns_names,
        issuer: facts.issuer,
        not_after: facts.not_after,
    })
}

/// The crypto provider used for every configuration this crate builds: aws-lc-rs.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The protocol versions Tessera speaks: TLS 1.3 (RFC 8446) and TLS 1.2 (RFC 5246), nothing older.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client configuration (TLS 1.2/1.3, aws-lc-rs) that trusts only the certificates in the PEM
/// file `ca_pem_path` — typically [`CertStore::ca_path`]. For tests and for clients of a local
/// CA deployment.
pub fn client_config_trusting(ca_pem_path: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem::read_chain(ca_pem_path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::bad_cert(ca_pem_path, e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::bad_cert(ca_pem_path, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
