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
    /// For a failed recipient: whether its failure DSN has been sent (or was not wanted).
    pub dsn_sent: bool,
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
    /// Whether the sender has been sent a delay notice (RFC 3464 `Action: delayed`).
    pub delay_notified: bool,
    /// Recipients in the order given.
    pub recipients: Vec<QueueRecipientStatus>,
}

/// What one delivery attempt did for one recipient, for
/// [`Store::record_attempt`](crate::Store::record_attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    /// The remote server accepted it (`250` after DATA).
    Delivered,
    /// A temporary failure (4xx, connection or DNS trouble): tried again at `next_attempt`
    /// (Unix seconds; the caller's back-off schedule decides).
    Deferred {
        /// What went wrong, for `queue show` and the DSN.
        error: String,
        /// When to try again.
        next_attempt: i64,
    },
    /// A permanent failure (5xx, null MX, expiry): a failure DSN is due to the sender.
    Failed {
        /// What went wrong, quoting the remote's reply.
        error: String,
    },
}

/// One recipient's outcome of a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    /// The recipient (every pending recipient with this address gets the outcome).
    pub address: Address,
    /// What happened.
    pub outcome: RecipientOutcome,
}

/// The default back-off between attempts (issue 8): 1m, 5m, 15m, 30m, 1h, 2h, 4h, then every
/// 4h until the message expires. Entry `n` is the wait after the `n+1`-th failed attempt.
pub const DEFAULT_RETRY_SCHEDULE_SECS: &[i64] =
    &[60, 5 * 60, 15 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600];

/// The wait after `attempts` failed attempts (1 after the first) on `schedule`; the last entry
/// repeats. An empty schedule retries after 4 hours.
pub fn retry_delay(schedule: &[i64], attempts: u32) -> i64 {
    let i = (attempts.max(1) - 1) as usize;
    schedule
        .get(i)
        .or(schedule.last())
        .copied()
        .unwrap_or(4 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_follows_the_schedule_then_repeats_its_last_step() {
        let s = DEFAULT_RETRY_SCHEDULE_SECS;
        let waits: Vec<i64> = (1..=9).map(|n| retry_delay(s, n)).collect();
        assert_eq!(waits, [60, 300, 900, 1800, 3600, 7200, 14400, 14400, 14400]);
        assert_eq!(retry_delay(&[], 3), 4 * 3600);
    }
}
