//! Challenge responses: publishing them for the CA to see, and withdrawing them afterwards.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;

use crate::AcmeError;

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 §3): self-signed, `name` as its only
/// subjectAltName, and the critical acmeIdentifier extension (id-pe-acmeIdentifier,
/// 1.3.6.1.5.5.7.1.31) holding the DER OCTET STRING of `digest`, the SHA-256 of the key
/// authorization (32 bytes).
pub fn tls_alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key_err = |source| AcmeError::Key {
        what: format!("the TLS-ALPN-01 certificate for {name}"),
        source,
    };
    if digest.len() != 32 {
        return Err(AcmeError::BadCertificate(format!(
            "key authorization digest of {} bytes, expected 32",
            digest.len()
        )));
    }
    let key = KeyPair::generate().map_err(key_err)?;
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(key_err)?;
    params.distinguished_name = DistinguishedName::new();
    // RFC 8737 §3: the extension MUST be critical; rcgen marks it so.
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(key_err)?;
    // Built directly: rustls' key check parses the certificate with webpki, which refuses
    // the (unknown to it) critical acmeIdentifier extension. The key was made right here.
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing_key = tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| AcmeError::BadCertificate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

/// The challenge responses published for one order; withdrawn when dropped, so no path out
/// of an order (success, CA error, timeout) leaves one behind.
pub(crate) struct Published {
    http01: Arc<web::Http01Challenges>,
    certs: Arc<tls::CertStore>,
    tokens: Vec<String>,
    alpn_names: Vec<String>,
}

impl Published {
    pub(crate) fn new(http01: Arc<web::Http01Challenges>, certs: Arc<tls::CertStore>) -> Self {
        Published {
            http01,
            certs,
            tokens: Vec::new(),
            alpn_names: Vec::new(),
        }
    }

    /// RFC 8555 §8.3: serve `key_authorization` at `/.well-known/acme-challenge/<token>`.
    pub(crate) fn http01(&mut self, token: &str, key_authorization: &str) {
        self.http01.insert(token, key_authorization);
        self.tokens.push(token.to_owned());
    }

    /// RFC 8737 §3: answer `acme-tls/1` handshakes for `name` with `key`.
    pub(crate) fn tls_alpn01(&mut self, name: &str, key: Arc<CertifiedKey>) {
        self.certs.set_alpn_challenge(name, key);
        self.alpn_names.push(name.to_owned());
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.http01.remove(token);
        }
        for name in &self.alpn_names {
            self.certs.remove_alpn_challenge(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alpn_certificate_carries_the_critical_acme_identifier()
    -> Result<(), Box<dyn std::error::Error>> {
        let digest = [7u8; 32];
        let key = tls_alpn_certificate("mail.example.test", &digest)?;
        let der = key.end_entity_cert()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der)?;
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .ok_or("no acmeIdentifier extension")?;
        assert!(ext.critical);
        // DER OCTET STRING (tag 4, length 32) around the digest.
        assert_eq!(ext.value, [&[4u8, 32][..], &digest[..]].concat());
        assert!(tls_alpn_certificate("mail.example.test", &[1, 2]).is_err());
        Ok(())
    }
}
