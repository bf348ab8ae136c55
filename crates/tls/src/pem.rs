//! Reading PEM certificate chains and private keys, and the facts we need from a certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::{Error as RustlsError, InconsistentKeys};
use rustls_pki_types::pem::{Error as PemError, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::TlsError;

/// Every certificate in the PEM file at `path`, in file order (leaf first, then intermediates).
/// Errors if the file holds none.
pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: PemError| match e {
        PemError::Io(source) => TlsError::ReadCert {
            path: path.to_owned(),
            source,
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        PemError::Io(source) => TlsError::ReadKey {
            path: path.to_owned(),
            source,
        },
        PemError::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// Loads a certificate chain and its key, and checks that the key belongs to the leaf.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    certify(read_chain(cert)?, read_key(key)?, cert, key)
}

/// Pairs `chain` with `key_der` after checking that the key belongs to the leaf (`chain[0]`);
/// `cert` and `key` are the paths named in errors.
pub(crate) fn certify(
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing_key = crate::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// What the store records about a leaf certificate.
pub(crate) struct CertFacts {
    /// subjectAltName dNSName entries, lowercased, in certificate order.
    pub dns_names: Vec<String>,
    /// The issuer's distinguished name, RFC 4514 style.
    pub issuer: String,
    pub not_after: OffsetDateTime,
}

/// Parses the facts out of a DER certificate; the error is a human-readable reason.
pub(crate) fn cert_facts(der: &CertificateDer<'_>) -> Result<CertFacts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    let dns_names = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(s) => Some(s.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertFacts {
        dns_names,
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}
