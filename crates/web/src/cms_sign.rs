//! CMS SignedData (RFC 5652 §5) over an attached content, signed with a served certificate.
//!
//! The private key stays in rustls: the signature comes from the certificate's
//! [`SigningKey`](tls::rustls::sign::SigningKey), which produces exactly the encodings CMS
//! wants (RFC 5758 §3.2: ECDSA as a DER `Ecdsa-Sig-Value`; RFC 8017: RSASSA-PKCS1-v1_5; RFC 8419:
//! Ed25519 over the signed attributes themselves).

use std::time::SystemTime;

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec, UtcTime};
use der::{Any, Decode, Encode};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tls::rustls::SignatureScheme;
use tls::rustls::sign::CertifiedKey;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::spki::AlgorithmIdentifierOwned;

/// RFC 5652 §4: id-data.
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// RFC 5652 §5.1: id-signedData.
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// RFC 5652 §11.1: id-contentType.
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// RFC 5652 §11.2: id-messageDigest.
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// RFC 5652 §11.3: id-signingTime.
const ID_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
/// RFC 5758 §3.2: ecdsa-with-SHA256 / SHA384.
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// RFC 4055 §5: sha256WithRSAEncryption.
const RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// RFC 8410 §3: id-Ed25519.
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Schemes we can express in CMS, in preference order.
const SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::ED25519,
];

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key supports none of ECDSA P-256/P-384, RSA PKCS#1 SHA-256, Ed25519.
    #[error("the certificate's key offers no signature scheme usable in CMS")]
    UnsupportedKey,
    /// The certificate chain is empty.
    #[error("the certificate chain is empty")]
    NoCertificate,
    /// DER encoding or decoding failed (a malformed certificate).
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    /// The key refused to sign.
    #[error("signing failed: {0}")]
    Sign(#[from] tls::rustls::Error),
}

/// (digest algorithm, signature algorithm, signature algorithm has NULL parameters).
fn algorithms(scheme: SignatureScheme) -> Option<(ObjectIdentifier, ObjectIdentifier, bool)> {
    match scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => Some((SHA256, ECDSA_SHA256, false)),
        SignatureScheme::ECDSA_NISTP384_SHA384 => Some((SHA384, ECDSA_SHA384, false)),
        SignatureScheme::RSA_PKCS1_SHA256 => Some((SHA256, RSA_SHA256, true)),
        // RFC 8419 §2.3: SHA-512 as the message digest with Ed25519.
        SignatureScheme::ED25519 => Some((SHA512, ED25519, false)),
        _ => None,
    }
}

fn digest(alg: ObjectIdentifier, data: &[u8]) -> Vec<u8> {
    match alg {
        SHA384 => Sha384::digest(data).to_vec(),
        SHA512 => Sha512::digest(data).to_vec(),
        _ => Sha256::digest(data).to_vec(),
    }
}

fn algorithm_id(
    oid: ObjectIdentifier,
    null_params: bool,
) -> Result<AlgorithmIdentifierOwned, der::Error> {
    Ok(AlgorithmIdentifierOwned {
        oid,
        parameters: if null_params {
            Some(Any::encode_from(&der::asn1::Null)?)
        } else {
            None
        },
    })
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, der::Error> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// `content` wrapped in a DER `ContentInfo` holding a `SignedData` (RFC 5652 §5.1) with the
/// content attached, the whole certificate chain, and one `SignerInfo` identified by issuer
/// and serial number, with the signed attributes contentType, signingTime and messageDigest.
pub fn sign(content: &[u8], key: &CertifiedKey) -> Result<Vec<u8>, SignError> {
    let chain = key
        .cert
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = chain.first().ok_or(SignError::NoCertificate)?;
    let signer = key
        .key
        .choose_scheme(&SCHEMES)
        .ok_or(SignError::UnsupportedKey)?;
    let (digest_oid, signature_oid, null_params) =
        algorithms(signer.scheme()).ok_or(SignError::UnsupportedKey)?;

    let signing_time = UtcTime::from_system_time(SystemTime::now())?;
    let signed_attrs = SetOfVec::try_from(vec![
        attribute(ID_CONTENT_TYPE, Any::encode_from(&ID_DATA)?)?,
        attribute(ID_SIGNING_TIME, Any::encode_from(&signing_time)?)?,
        attribute(
            ID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(digest(digest_oid, content))?)?,
        )?,
    ])?;
    // RFC 5652 §5.4: the signature covers the DER of the attributes with the SET OF tag, not
    // the [0] IMPLICIT tag they carry inside SignerInfo.
    let signature = signer.sign(&signed_attrs.to_der()?)?;

    let digest_alg = algorithm_id(digest_oid, false)?;
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: leaf.tbs_certificate.issuer.clone(),
            serial_number: leaf.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: digest_alg.clone(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: algorithm_id(signature_oid, null_params)?,
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let certificates = chain
        .iter()
        .cloned()
        .map(CertificateChoices::Certificate)
        .collect::<Vec<_>>();
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![digest_alg])?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: Some(Any::encode_from(&OctetString::new(content)?)?),
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(certificates)?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
    };
    let info = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed_data)?,
    };
    Ok(info.to_der()?)
}
