//! The outbound queue's data model: messages waiting for delivery to other mail servers.
//!
//! A [`QueuedMessage`] is written like a delivered message: its body becomes a content-addressed
//! blob, fsynced (file, then directory) before the queue rows that refer to it commit, and the
//! rows go through the same group-commit writer as mailbox deliveries. `enqueue` returning `Ok`
//! means the message survives a crash (SMTP may answer `250` then, RFC 5321 §6.1).
//!
//! Every recipient carries its own state, attempt count, next attempt time and last error, so
//! one slow or failing domain does not hold up the others. A message is claimed for delivery
//! as a whole through `claimed_by` / `claimed_until` (a lease): the outbound worker (a later
//! issue) takes due, unclaimed or lapsed rows; on PostgreSQL with `FOR UPDATE SKIP LOCKED`.

use std::fmt;
use std::sync::Arc;

use crate::blob::BlobHash;
use crate::error::StoreError;
use crate::types::{AccountId, Address};

/// How long a message may stay queued before it is given up (RFC 5321 §4.5.4.1: "at least
/// 4-5 days").
pub const DEFAULT_QUEUE_LIFETIME_SECS: i64 = 5 * 24 * 3600;

/// Row identifier of a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub i64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// RFC 3461 §4.1 NOTIFY bits of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct DsnNotify(pub u8);

impl DsnNotify {
    /// `NOTIFY=SUCCESS`
    pub const SUCCESS: u8 = 1;
    /// `NOTIFY=FAILURE`
    pub const FAILURE: u8 = 2;
    /// `NOTIFY=DELAY`
    pub const DELAY: u8 = 4;
    /// `NOTIFY=NEVER`
    pub const NEVER: u8 = 8;
}

/// RFC 3461 §4.3 RET: how much of the message a DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DsnRet {
    /// `RET=FULL`
    Full,
    /// `RET=HDRS`
    Headers,
}

impl DsnRet {
    /// The stored form.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DsnRet::Full => "full",
            DsnRet::Headers => "hdrs",
        }
    }

    /// Parses the stored form.
    pub(crate) fn from_stored(s: &str) -> Option<DsnRet> {
        match s {
            "full" => Some(DsnRet::Full),
            "hdrs" => Some(DsnRet::Headers),
            _ => None,
        }
    }
}

/// One recipient of a message to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecipient {
    /// The forward-path.
    pub address: Address,
    /// RFC 3461 NOTIFY.
    pub notify: DsnNotify,
    /// RFC 3461 ORCPT, as the client gave it.
    pub orcpt: Option<String>,
}

impl QueuedRecipient {
    /// A recipient without DSN parameters.
    pub fn new(address: Address) -> QueuedRecipient {
        QueuedRecipient {
            address,
            notify: DsnNotify::default(),
            orcpt: None,
        }
    }
}

/// What [`Store::enqueue`](crate::Store::enqueue) takes.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The reverse-path; `None` is the null sender `<>` (RFC 5321 §4.5.5).
    pub sender: Option<Address>,
    /// At least one recipient.
    pub recipients: Vec<QueuedRecipient>,
    /// The raw message, CRLF line endings, with the trace headers already added.
    pub bytes: Arc<Vec<u8>>,
    /// The account that submitted it, if any.
    pub account: Option<AccountId>,
    /// RFC 3461 ENVID.
    pub dsn_envid: Option<String>,
    /// RFC 3461 RET.
    pub dsn_ret: Option<DsnRet>,
    /// Unix seconds after which delivery is given up.
    pub expires_at: i64,
}

impl QueuedMessage {
    /// Checks what the schema cannot: at least one recipient, a non-empty body.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.recipients.is_empty() {
            return Err(StoreError::Invalid(
                "a queued message needs a recipient".into(),
            ));
        }
        if self.bytes.is_empty() {
            return Err(StoreError::Invalid("a queued message needs a body".into()));
        }
        Ok(())
    }
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecipientState {
    /// Not yet delivered; retried at `next_attempt`.
    Pending,
    /// Accepted by the remote server.
    Delivered,
    /// Given up (permanent error or expiry); a DSN is due to the sender.
    Failed,
}

impl RecipientState {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Pending => "pending",
            RecipientState::Delivered => "delivered",
            RecipientState::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub(crate) fn from_stored(s: &str) -> Result<RecipientState, StoreError> {
        match s {
            "pending" => Ok(RecipientState::Pending),
            "delivered" => Ok(RecipientState::Delivered),
            "failed" => Ok(RecipientState::Failed),
            other => Err(StoreError::Database(format!(
                "unknown queue recipient state {other:?}"
            ))),
        }
    }
}

/// One recipient of a queued message and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecipientStatus {
    /// The forward-path.
    pub address: Address,
    /// RFC 3461 NOTIFY.
    pub notify: DsnNotify,
    /// RFC 3461 ORCPT.
    pub orcpt: Option<String>,
    /// Delivery state.
    pub state: RecipientState,
    /// Attempts made for this recipient.
    pub attempts: u32,
    /// Unix seconds of the next attempt.
    pub next_attempt: i64,
    /// The last error, as the remote server or the resolver gave it.
    pub last_error: Option<String>,
}

/// A queued message as [`Store::list_queue`](crate::Store::list_queue) shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// Row id.
    pub id: QueueId,
    /// The reverse-path; `None` is `<>`.
    pub sender: Option<Address>,
    /// The submitting account.
    pub account: Option<AccountId>,
    /// The body's blob.
    pub blob: BlobHash,
    /// Size in bytes.
    pub size: u64,
    /// RFC 3461 ENVID.
    pub dsn_envid: Option<String>,
    /// RFC 3461 RET.
    pub dsn_ret: Option<DsnRet>,
    /// Unix seconds when queued.
    pub created_at: i64,
    /// Unix seconds of the earliest pending recipient's next attempt.
    pub next_attempt: i64,
    /// Delivery attempts of the message (any recipient).
    pub attempts: u32,
    /// Unix seconds after which delivery is given up.
    pub expires_at: i64,
    /// The node holding the delivery lease, if any.
    pub claimed_by: Option<String>,
    /// When that lease lapses (Unix seconds).
    pub claimed_until: Option<i64>,
    /// Recipients in the order given.
    pub recipients: Vec<QueueRecipientStatus>,
}
