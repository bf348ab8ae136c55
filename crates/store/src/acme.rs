//! ACME state as stored (migration 0006): the CA account and one row per ordered certificate.
//! The store only keeps it; the `acme` crate decides what to order and when.

use async_trait::async_trait;

use crate::error::Result;

/// ACME state operations, a part of every [`Store`](crate::Store) (a supertrait, so each
/// backend implements them in its own module).
#[async_trait]
pub trait AcmeStore: Send + Sync {
    /// The ACME account credentials (instant-acme's JSON) for a directory URL.
    async fn acme_account(&self, directory: &str) -> Result<Option<String>>;
    /// Saves (or replaces) the ACME account credentials for a directory URL.
    async fn save_acme_account(&self, directory: &str, credentials: &str) -> Result<()>;
    /// Every ACME-ordered certificate's state, by id.
    async fn acme_certificates(&self) -> Result<Vec<AcmeCertificate>>;
    /// Saves (inserts or replaces) one certificate's state.
    async fn save_acme_certificate(&self, cert: &AcmeCertificate) -> Result<()>;
}

/// The state of one certificate Tessera orders by ACME.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeCertificate {
    /// The certificate's first name (the mail host, or a hosted domain): the row's key.
    pub id: String,
    /// The names the current certificate covers (empty before the first issuance).
    pub names: Vec<String>,
    /// The current full chain, PEM, leaf first.
    pub chain_pem: Option<String>,
    /// The current certificate's private key, PKCS#8 PEM.
    pub key_pem: Option<String>,
    /// The current certificate's issuer (distinguished name).
    pub issuer: Option<String>,
    /// Start of the current certificate's validity (Unix time).
    pub not_before: Option<i64>,
    /// End of the current certificate's validity (Unix time).
    pub not_after: Option<i64>,
    /// When the last attempt ran (Unix time).
    pub last_attempt: Option<i64>,
    /// The last attempt's outcome: `issued`, `failed` or `skipped`.
    pub last_result: Option<String>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Names left out of the last order, each with the reason.
    pub skipped: Vec<(String, String)>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// When the next attempt is due (Unix time); `None` = at once.
    pub next_attempt: Option<i64>,
}
