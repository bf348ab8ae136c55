//! A certificate authority kept on disk, and the leaf certificates it issues.
//!
//! Layout of the directory: `ca.pem`, `ca-key.pem` (0600), and `certs/<primary>.pem` plus
//! `certs/<primary>.key.pem` (0600) for each group of names. All keys are ECDSA P-256.
//!
//! Concurrency: files are replaced by rename, so a reader never sees a partial file. The CA key
//! is linked into place only if absent, so concurrent first starts share one CA. Two processes
//! issuing the same leaf at once may leave a key and certificate from different runs; each
//! serves its own consistent pair, and the next start sees the mismatch and re-issues.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::{TlsError, pem};

/// Subject common name of the CA certificate.
const CA_NAME: &str = "Tessera local CA";
const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaves stay under the 398-day limit browsers and Apple clients apply to server certificates.
const LEAF_VALIDITY: Duration = Duration::days(365);
/// A stored leaf is re-issued when it would expire within this window (30 days).
const RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// Backdating of `notBefore`, to tolerate clients whose clocks run slightly behind.
const BACKDATE: Duration = Duration::hours(1);

/// The loaded CA: its signing identity and a verifier that trusts only it.
pub(crate) struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// Decides whether a stored leaf can be reused: it must verify, for every name, exactly as
    /// a client trusting `ca.pem` would verify it `RENEW_BEFORE` from now.
    verifier: Arc<WebPkiServerVerifier>,
}

impl LocalCa {
    /// Opens the CA in `dir`, creating the directory, key and certificate as needed.
    ///
    /// The key is created with a no-clobber link, so concurrent first starts agree on one key;
    /// a missing `ca.pem` is (re)made from the existing key, so every `ca.pem` ever written
    /// verifies every leaf. A `ca.pem` that does not match `ca-key.pem` is an error, never
    /// silently replaced: clients may already trust it.
    pub(crate) fn open(dir: &Path) -> Result<Self, TlsError> {
        create_private_dir(dir)?;
        let (key_path, cert_path) = (dir.join("ca-key.pem"), dir.join("ca.pem"));
        if !key_path.exists() {
            let key = generate_key("local CA key")?.serialize_pem();
            write_atomic(&key_path, key.as_bytes(), SECRET, Replace::No)?;
        }
        let key = fs::read_to_string(&key_path).map_err(|source| TlsError::ReadKey {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key).map_err(|e| TlsError::Pem {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let ca_der = match pem::read_chain(&cert_path) {
            Ok(chain) => chain.into_iter().next(),
            Err(TlsError::ReadCert { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let cert = ca_params()
                    .self_signed(&key)
                    .map_err(|source| TlsError::Generate {
                        what: CA_NAME.into(),
                        source,
                    })?;
                write_atomic(&cert_path, cert.pem().as_bytes(), PUBLIC, Replace::Yes)?;
                tracing::info!(path = %cert_path.display(), "created local CA certificate");
                Some(cert.der().clone())
            }
            Err(e) => return Err(e),
        };
        let ca_der = ca_der.ok_or_else(|| TlsError::NoCertificate {
            path: cert_path.clone(),
        })?;
        pem::certify(vec![ca_der.clone()], key_der(&key), &cert_path, &key_path)?;
        let bad = |e: &dyn std::fmt::Display| TlsError::bad_cert(&cert_path, e);
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| bad(&e))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).map_err(|e| bad(&e))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), crate::provider())
            .build()
            .map_err(|e| bad(&e))?;
        Ok(LocalCa {
            dir: dir.to_owned(),
            issuer,
            verifier,
        })
    }

    /// Path of the CA certificate clients should trust.
    pub(crate) fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The leaf for `names` (`names[0]` is the primary; names are already validated), reusing
    /// the stored one when it still covers every name for `RENEW_BEFORE`, else issuing and
    /// storing a new one (key file first, then certificate).
    pub(crate) fn leaf(&self, names: &[String]) -> Result<Arc<CertifiedKey>, TlsError> {
        let primary = names
            .first()
            .ok_or_else(|| TlsError::InvalidName(String::new()))?;
        let certs = self.dir.join("certs");
        let stem = primary.replace('*', "_");
        let cert_path = certs.join(format!("{stem}.pem"));
        let key_path = certs.join(format!("{stem}.key.pem"));
        match self.reusable(&cert_path, &key_path, names) {
            Ok(certified) => {
                tracing::debug!(%primary, "reusing local certificate");
                return Ok(certified);
            }
            Err(reason) => tracing::info!(%primary, %reason, "issuing local certificate"),
        }
        create_private_dir(&certs)?;
        let key = generate_key(primary)?;
        let cert = leaf_params(names)
            .and_then(|params| params.signed_by(&key, &self.issuer))
            .map_err(|source| TlsError::Generate {
                what: format!("certificate for {primary}"),
                source,
            })?;
        write_atomic(
            &key_path,
            key.serialize_pem().as_bytes(),
            SECRET,
            Replace::Yes,
        )?;
        write_atomic(&cert_path, cert.pem().as_bytes(), PUBLIC, Replace::Yes)?;
        pem::certify(
            vec![cert.der().clone()],
            key_der(&key),
            &cert_path,
            &key_path,
        )
    }

    /// The stored leaf if it can be reused, else why not.
    fn reusable(
        &self,
        cert: &Path,
        key: &Path,
        names: &[String],
    ) -> Result<Arc<CertifiedKey>, String> {
        if !cert.exists() {
            return Err("none stored".into());
        }
        let certified = pem::load_pair(cert, key).map_err(|e| e.to_string())?;
        let leaf = certified.end_entity_cert().map_err(|e| e.to_string())?;
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        let later = UnixTime::since_unix_epoch(now.map_err(|e| e.to_string())? + RENEW_BEFORE);
        for name in names {
            // A wildcard is checked with a name only it can cover.
            let probe = match name.strip_prefix("*.") {
                Some(parent) => format!("tessera-wildcard-probe.{parent}"),
                None => name.clone(),
            };
            let server_name = ServerName::try_from(probe).map_err(|e| e.to_string())?;
            self.verifier
                .verify_server_cert(leaf, &[], &server_name, &[], later)
                .map_err(|e| format!("not valid for {name} in 30 days: {e}"))?;
        }
        Ok(certified)
    }
}

fn ca_params() -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tessera");
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    // RFC 5280 §4.2.1.9: a CA that signs only end-entity certificates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params
}

/// Parameters OpenSSL, Python's strict verification and webpki all accept for a TLS server:
/// SAN dNSNames, serverAuth EKU, digitalSignature, explicitly not a CA, and an authority key id.
fn leaf_params(names: &[String]) -> Result<CertificateParams, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    if let Some(primary) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, primary.as_str());
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    Ok(params)
}

fn generate_key(what: &str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate {
        what: format!("key for {what}"),
        source,
    })
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(key.serialize_der().into())
}

/// Creates `dir` (and parents) with mode 0700 where it does not exist yet.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// File modes: private keys are readable by the owner only.
const SECRET: u32 = 0o600;
const PUBLIC: u32 = 0o644;

#[derive(Clone, Copy, PartialEq)]
enum Replace {
    Yes,
    No,
}

/// Writes `contents` to a temporary file beside `path`, syncs it, then renames it over `path`
/// (`Replace::Yes`) or links it to `path` only if nothing is there (`Replace::No`; losing that
/// race is not an error). Secrets are created with mode 0600, so they are never readable by
/// others, not even briefly.
fn write_atomic(path: &Path, contents: &[u8], mode: u32, replace: Replace) -> Result<(), TlsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(io::ErrorKind::InvalidInput.into()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()?;
        match replace {
            Replace::Yes => fs::rename(&tmp, path),
            Replace::No => match fs::hard_link(&tmp, path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            },
        }
    });
    if replace == Replace::No || result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn ca_files_are_created_once_with_private_key_mode() -> TestResult {
        let dir = tempfile::tempdir()?;
        let before = fs::read(LocalCa::open(dir.path())?.cert_path())?;
        let after = fs::read(LocalCa::open(dir.path())?.cert_path())?;
        assert_eq!(before, after, "reopening must not replace the CA");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("ca-key.pem"))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, SECRET);
        }
        Ok(())
    }

    #[test]
    fn missing_ca_certificate_is_remade_from_the_existing_key() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ca = LocalCa::open(dir.path())?;
        let names = ["a.example.test".to_string()];
        let leaf = ca.leaf(&names)?;
        fs::remove_file(ca.cert_path())?;
        // The old leaf still verifies under the new CA certificate: same key, same subject.
        let reused = LocalCa::open(dir.path())?.leaf(&names)?;
        assert_eq!(reused.cert, leaf.cert);
        Ok(())
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_ca() -> TestResult {
        let dir = tempfile::tempdir()?;
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.path().to_owned();
                std::thread::spawn(move || {
                    LocalCa::open(&dir)?.leaf(&[format!("h{i}.example.test")])
                })
            })
            .collect();
        let mut leaves = Vec::new();
        for thread in threads {
            leaves.push(thread.join().map_err(|_| "thread panicked")??);
        }
        // Every leaf, whichever process issued it, verifies under the CA left on disk.
        let ca = LocalCa::open(dir.path())?;
        for (i, leaf) in leaves.iter().enumerate() {
            let reused = ca.leaf(&[format!("h{i}.example.test")])?;
            assert_eq!(
                reused.cert, leaf.cert,
                "leaf {i} not reusable under the final CA"
            );
        }
        Ok(())
    }
}
