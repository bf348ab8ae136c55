//! The store's error type.

use std::path::PathBuf;

/// Everything a store operation can fail with. Variants that callers act on
/// (not found, already exists, invalid input, quota) are distinct from internal failures.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreError {
    /// Input that does not satisfy the grammar or a limit; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation conflicts with the current state (e.g. removing a domain that has accounts).
    #[error("{0}")]
    Conflict(String),
    /// The account's quota would be exceeded.
    #[error("quota exceeded: {used} of {quota} bytes used, message is {size} bytes")]
    QuotaExceeded {
        /// Bytes in use.
        used: u64,
        /// The account's quota.
        quota: u64,
        /// Size of the refused message.
        size: u64,
    },
    /// A blob file could not be written or read.
    #[error("blob {path}: {message}")]
    Blob {
        /// The file involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(String),
    /// The store is shutting down or its writer has stopped.
    #[error("store closed")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Short alias for results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
