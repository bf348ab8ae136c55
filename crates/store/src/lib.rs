//! Tessera's store: domains, accounts, aliases, mailboxes and messages.
//!
//! The only crate that speaks SQL. Callers hold an `Arc<dyn Store>` and never know
//! which backend is behind it: SQLite (embedded default, [`SqliteStore`]) today,
//! PostgreSQL later, both implementing [`Store`].
//!
//! Standards: RFC 3501 / RFC 9051 (UIDs, UIDVALIDITY, system flags), RFC 6154 (special-use
//! mailboxes), RFC 7162 (MODSEQ; the expunge log is kept for QRESYNC), RFC 9106 (Argon2id).
//!
//! Invariants:
//! - Message bodies are content-addressed (SHA-256). Bodies up to [`INLINE_BODY_MAX`]
//!   are stored in the database in the same transaction as the rows that refer to them;
//!   larger ones are files, written and made durable before those rows commit. After a
//!   crash there may be a body without a row (collected by [`Store::collect_garbage`]),
//!   never a row without its body.
//! - A write is acknowledged only after its transaction committed with `synchronous=FULL`.
//! - Concurrent mailbox writes are batched by one writer thread: a batch shares one
//!   commit (one WAL fsync) and, for large bodies, one filesystem sync (group commit).
//! - UIDs in a mailbox are strictly ascending and never reused while UIDVALIDITY holds;
//!   every change raises the mailbox's MODSEQ.
//! - Every message and mailbox operation is scoped to an account: a mailbox or message
//!   of another account is "not found".
//! - Addresses and domains compare case-insensitively (stored lower-case).
//! - A queued message ([`Store::enqueue`]) follows the same blob-before-row rule and the same
//!   group commit as a delivery; garbage collection keeps blobs the queue refers to.

mod acme;
mod auth_cache;
mod blob;
mod dkim;
mod error;
mod feed;
pub mod password;
mod queue;
mod sqlite;
mod types;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use acme::{AcmeCertificate, AcmeStore};
pub use blob::{BlobHash, BlobStore};
pub use dkim::{DkimAlgorithm, DkimKey, NewDkimKey};
pub use error::{Result, StoreError};
pub use feed::{Change, ChangeFeed};
pub use queue::{
    DEFAULT_QUEUE_LIFETIME_SECS, DsnNotify, DsnRet, QueueEntry, QueueId, QueueRecipientStatus,
    QueuedMessage, QueuedRecipient, RecipientState,
};
pub use queue::{DEFAULT_RETRY_SCHEDULE_SECS, RecipientOutcome, RecipientResult, retry_delay};
pub use sqlite::{INLINE_BODY_MAX, NEW_DATABASE_PAGE_SIZE, SqliteStore, WriterStats};
pub use types::{
    AccountId, Address, AliasSource, DEFAULT_MAILBOXES, Domain, DomainId, FlagOp, Flags, MailboxId,
    MessageId, ModSeq, SpecialUse, SystemFlags, Uid, UidValidity,
};

/// A hosted domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Row id.
    pub id: DomainId,
    /// The name.
    pub name: Domain,
    /// How many accounts it has.
    pub accounts: u64,
}

/// An account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// Row id.
    pub id: AccountId,
    /// The login and primary address.
    pub address: Address,
    /// Display name (may be empty).
    pub display_name: String,
    /// Quota in bytes; 0 means unlimited.
    pub quota_bytes: u64,
    /// Bytes used by the messages of all its mailboxes.
    pub used_bytes: u64,
}

/// One account a recipient address resolves to ([`Store::route_recipient`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientAccount {
    /// The account.
    pub id: AccountId,
    /// It has a quota and has used all of it, so not even an empty message fits.
    pub full: bool,
}

/// What `add_account` needs.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// The address, whose domain must be hosted.
    pub address: Address,
    /// An Argon2id PHC string from [`password::hash_password`].
    pub password_hash: String,
    /// Display name.
    pub display_name: String,
    /// Quota in bytes; 0 means unlimited.
    pub quota_bytes: u64,
}

/// An alias and the accounts it delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasInfo {
    /// The aliased address or catch-all.
    pub source: AliasSource,
    /// The accounts' addresses, sorted.
    pub targets: Vec<Address>,
}

/// A mailbox's stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Row id.
    pub id: MailboxId,
    /// Full hierarchical name with `/` as separator; `INBOX` is always spelled so.
    pub name: String,
    /// RFC 6154 attribute.
    pub special_use: Option<SpecialUse>,
    /// UIDVALIDITY.
    pub uid_validity: UidValidity,
    /// The UID the next message will get.
    pub uid_next: Uid,
    /// HIGHESTMODSEQ.
    pub highest_modseq: ModSeq,
    /// Whether the mailbox is subscribed.
    pub subscribed: bool,
    /// The highest UID a read-write session has been told about as `\Recent` (RFC 3501
    /// §2.3.2): messages above it are `\Recent` for the next such session.
    pub recent_uid: Uid,
}

/// Counts for IMAP STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxStatus {
    /// Number of messages.
    pub messages: u32,
    /// Messages without `\Seen`.
    pub unseen: u32,
    /// Sum of message sizes in bytes (RFC 8438 STATUS SIZE).
    pub size: u64,
    /// UIDNEXT.
    pub uid_next: Uid,
    /// UIDVALIDITY.
    pub uid_validity: UidValidity,
    /// HIGHESTMODSEQ.
    pub highest_modseq: ModSeq,
    /// As [`MailboxInfo::recent_uid`].
    pub recent_uid: Uid,
}

/// One message as listed in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// UID in this mailbox.
    pub uid: Uid,
    /// The stored body (shared by copies).
    pub message: MessageId,
    /// Size in bytes (RFC822.SIZE).
    pub size: u64,
    /// INTERNALDATE as Unix seconds.
    pub internal_date: i64,
    /// INTERNALDATE's zone offset in minutes east of UTC.
    pub tz_offset_minutes: i32,
    /// Flags.
    pub flags: Flags,
    /// The message's MODSEQ.
    pub modseq: ModSeq,
}

/// One message of a mailbox without its size and dates (a lean listing for IMAP SELECT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFlags {
    /// UID in this mailbox.
    pub uid: Uid,
    /// The stored body.
    pub message: MessageId,
    /// Flags.
    pub flags: Flags,
    /// The message's MODSEQ.
    pub modseq: ModSeq,
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The raw RFC 5322 bytes, CRLF line endings.
    pub bytes: Arc<Vec<u8>>,
    /// Initial flags.
    pub flags: Flags,
    /// INTERNALDATE as Unix seconds.
    pub internal_date: i64,
    /// INTERNALDATE's zone offset in minutes east of UTC.
    pub tz_offset_minutes: i32,
}

impl NewMessage {
    /// A message with no flags, received now (UTC).
    pub fn now(bytes: Vec<u8>) -> NewMessage {
        NewMessage {
            bytes: Arc::new(bytes),
            flags: Flags::default(),
            internal_date: unix_now(),
            tz_offset_minutes: 0,
        }
    }
}

/// Where an appended message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The account.
    pub account: AccountId,
    /// The mailbox.
    pub mailbox: MailboxId,
    /// The mailbox's UIDVALIDITY (for APPENDUID, RFC 4315).
    pub uid_validity: UidValidity,
    /// The new UID.
    pub uid: Uid,
    /// The stored body.
    pub message: MessageId,
    /// The mailbox's MODSEQ after the append (the new message's).
    pub modseq: ModSeq,
}

/// A flag change's effect on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUpdate {
    /// The message.
    pub uid: Uid,
    /// Its flags afterwards.
    pub flags: Flags,
    /// Its MODSEQ afterwards.
    pub modseq: ModSeq,
}

/// The result of COPY or MOVE (for COPYUID, RFC 4315).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// UIDVALIDITY of the destination.
    pub uid_validity: UidValidity,
    /// (source UID, destination UID) pairs in source UID order.
    pub uids: Vec<(Uid, Uid)>,
}

/// What garbage collection removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GarbageReport {
    /// Message rows no mailbox referred to.
    pub messages: u64,
    /// Bodies (inline rows and files) nothing referred to any more.
    pub blobs: u64,
    /// Entries removed from the expunge log (each mailbox keeps its newest
    /// [`EXPUNGE_LOG_KEEP`]).
    pub expunge_log: u64,
}

/// Entries of each mailbox's expunge log that garbage collection keeps (the newest).
pub const EXPUNGE_LOG_KEEP: usize = 10_000;

/// How much of `bytes` [`Store::read_message_header`] returns: up to and including the first
/// CRLF CRLF, at most `max`.
pub fn header_prefix_len(bytes: &[u8], max: usize) -> usize {
    let limit = bytes.len().min(max);
    bytes
        .windows(4)
        .take(limit.saturating_sub(3))
        .position(|w| w == b"\r\n\r\n")
        .map_or(limit, |p| p + 4)
}

/// The current time as Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The data model's operations. Implemented by every backend; callers use `Arc<dyn Store>`.
/// ACME state is its [`AcmeStore`] part.
#[async_trait]
pub trait Store: AcmeStore + Send + Sync + std::fmt::Debug {
    // ---- domains ----

    /// Adds a hosted domain. Error if it exists.
    async fn add_domain(&self, name: &Domain) -> Result<DomainId>;
    /// Every hosted domain, sorted by name.
    async fn list_domains(&self) -> Result<Vec<DomainInfo>>;
    /// Removes a domain; refused while it still has accounts or aliases.
    async fn remove_domain(&self, name: &Domain) -> Result<()>;
    /// Whether mail for `name` is accepted here.
    async fn is_hosted_domain(&self, name: &Domain) -> Result<bool>;

    // ---- DKIM keys (generated elsewhere; the store only keeps them) ----

    /// Adds a DKIM key to a hosted domain. Error if the domain is not hosted or the selector
    /// is taken.
    async fn add_dkim_key(&self, key: NewDkimKey) -> Result<()>;
    /// The domain's keys, active and retired-but-still-published, oldest first.
    async fn dkim_keys(&self, domain: &Domain) -> Result<Vec<DkimKey>>;
    /// Stops signing with a key; it stays published until [`Store::remove_dkim_key`].
    async fn retire_dkim_key(&self, domain: &Domain, selector: &str) -> Result<()>;
    /// Deletes a key (its DNS record can then go).
    async fn remove_dkim_key(&self, domain: &Domain, selector: &str) -> Result<()>;

    // ---- accounts ----

    /// Creates an account with the default mailboxes (INBOX, Drafts, Sent, Trash, Junk, Archive).
    async fn add_account(&self, account: NewAccount) -> Result<AccountId>;
    /// Accounts, optionally of one domain, sorted by address.
    async fn list_accounts(&self, domain: Option<&Domain>) -> Result<Vec<AccountInfo>>;
    /// The account with this address.
    async fn account(&self, address: &Address) -> Result<Option<AccountInfo>>;
    /// The account with this id.
    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountInfo>>;
    /// Replaces the password hash.
    async fn set_password_hash(&self, address: &Address, hash: &str) -> Result<()>;
    /// Deletes an account, its mailboxes and its alias targets.
    async fn remove_account(&self, address: &Address) -> Result<()>;
    /// Checks a login: `login` is a full address, or a local part that exactly one
    /// hosted domain has. Returns the account when the password matches.
    async fn authenticate(&self, login: &str, password: &str) -> Result<Option<AccountInfo>>;

    // ---- aliases ----

    /// Adds `target` to the accounts that `source` delivers to.
    async fn add_alias(&self, source: &AliasSource, target: &Address) -> Result<()>;
    /// Aliases, optionally of one domain.
    async fn list_aliases(&self, domain: Option<&Domain>) -> Result<Vec<AliasInfo>>;
    /// Removes one target of an alias, or the whole alias when `target` is None.
    async fn remove_alias(&self, source: &AliasSource, target: Option<&Address>) -> Result<()>;
    /// The accounts mail to `address` goes to: the account itself, else its alias
    /// targets, else the domain's catch-all; empty when none. Each account once.
    async fn resolve_recipient(&self, address: &Address) -> Result<Vec<AccountId>>;
    /// Where mail to `address` goes, as RCPT needs it: `None` when its domain is not hosted;
    /// else what [`Store::resolve_recipient`] gives (empty: no such recipient), each account
    /// with whether it has used all of its quota. One read where the backend can: this runs
    /// for every recipient of every message received.
    async fn route_recipient(&self, address: &Address) -> Result<Option<Vec<RecipientAccount>>> {
        if !self.is_hosted_domain(address.domain()).await? {
            return Ok(None);
        }
        let mut out = Vec::new();
        for id in self.resolve_recipient(address).await? {
            let full = self
                .account_by_id(id)
                .await?
                .is_some_and(|a| a.quota_bytes > 0 && a.used_bytes >= a.quota_bytes);
            out.push(RecipientAccount { id, full });
        }
        Ok(Some(out))
    }
    /// Addresses the account may send as: its own and every alias that delivers to it.
    async fn sender_addresses(&self, account: AccountId) -> Result<Vec<AliasSource>>;

    // ---- mailboxes ----

    /// The account's mailboxes sorted by name.
    async fn list_mailboxes(&self, account: AccountId) -> Result<Vec<MailboxInfo>>;
    /// One mailbox by name (`INBOX` case-insensitively).
    async fn mailbox(&self, account: AccountId, name: &str) -> Result<Option<MailboxInfo>>;
    /// STATUS counts of a mailbox.
    async fn mailbox_status(&self, account: AccountId, mailbox: MailboxId)
    -> Result<MailboxStatus>;
    /// Creates a mailbox.
    async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxId>;
    /// Deletes a mailbox and its messages (INBOX cannot be deleted).
    async fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<()>;
    /// Renames a mailbox and its children (not INBOX; the IMAP layer handles RENAME INBOX).
    async fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<()>;
    /// Sets the subscription flag of a mailbox name.
    async fn set_subscribed(&self, account: AccountId, name: &str, subscribed: bool) -> Result<()>;
    /// Raises the mailbox's [`MailboxInfo::recent_uid`] to `uid` (never lowers it). A mailbox
    /// that is gone is not an error.
    async fn set_recent_uid(&self, account: AccountId, mailbox: MailboxId, uid: Uid) -> Result<()>;

    // ---- messages ----

    /// Stores a message into one mailbox durably.
    async fn append(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        message: NewMessage,
    ) -> Result<Appended>;
    /// Delivers one message into the INBOX of each account (one blob, one commit);
    /// one result per account, in order (an account may be over quota).
    async fn deliver(
        &self,
        accounts: &[AccountId],
        message: NewMessage,
    ) -> Result<Vec<Result<Appended>>>;
    /// The messages of a mailbox in UID order.
    async fn messages(&self, account: AccountId, mailbox: MailboxId) -> Result<Vec<MessageMeta>>;
    /// The messages of a mailbox in UID order with only UID, body id, flags and MODSEQ
    /// (what SELECT needs; sizes and dates come from [`Store::messages`] when wanted).
    async fn message_flags(
        &self,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<Vec<MessageFlags>> {
        Ok(self
            .messages(account, mailbox)
            .await?
            .into_iter()
            .map(|m| MessageFlags {
                uid: m.uid,
                message: m.message,
                flags: m.flags,
                modseq: m.modseq,
            })
            .collect())
    }
    /// The raw bytes of a stored message of this account.
    async fn read_message(&self, account: AccountId, message: MessageId) -> Result<Vec<u8>>;
    /// The start of a stored message of this account, for its header block: the bytes up to
    /// and including the first empty line (CRLF CRLF), at most `max` bytes, or the whole
    /// message when it is shorter. Callers check that they got a whole header (an empty line,
    /// or every byte of the message) and fall back to [`Store::read_message`] otherwise.
    async fn read_message_header(
        &self,
        account: AccountId,
        message: MessageId,
        max: usize,
    ) -> Result<Vec<u8>> {
        let mut bytes = self.read_message(account, message).await?;
        bytes.truncate(header_prefix_len(&bytes, max));
        Ok(bytes)
    }
    /// [`Store::read_message_header`] of each message of a mailbox with a UID in
    /// `first..=last`, in UID order (SEARCH on header fields without reading bodies).
    async fn message_headers(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        first: Uid,
        last: Uid,
        max: usize,
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        let mut out = Vec::new();
        for m in self.messages(account, mailbox).await? {
            if m.uid < first || m.uid > last {
                continue;
            }
            match self.read_message_header(account, m.message, max).await {
                Ok(h) => out.push((m.uid, h)),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    /// Whole messages of a mailbox with a UID in `first..=last`, in UID order, stopping
    /// before the message that would take the total past `max_bytes` (at least one message
    /// is returned when the range holds any): SEARCH BODY/TEXT without a round trip per
    /// message.
    async fn message_bodies(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        first: Uid,
        last: Uid,
        max_bytes: u64,
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut total = 0u64;
        for m in self.messages(account, mailbox).await? {
            if m.uid < first || m.uid > last {
                continue;
            }
            if !out.is_empty() && total.saturating_add(m.size) > max_bytes {
                break;
            }
            match self.read_message(account, m.message).await {
                Ok(body) => {
                    total = total.saturating_add(m.size);
                    out.push((m.uid, body));
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    /// Changes flags of the given UIDs (missing UIDs are skipped); returns the new state
    /// of each changed message.
    async fn store_flags(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> Result<Vec<FlagUpdate>>;
    /// Copies messages to another mailbox of the same account.
    async fn copy(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
    ) -> Result<Copied>;
    /// Moves messages (copy and expunge in one transaction, RFC 6851).
    async fn move_messages(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
    ) -> Result<Copied>;
    /// Expunges the messages flagged `\Deleted` (only those in `uids` when given), or
    /// with `force` every message in `uids` regardless of flags (POP3 DELE). Returns the
    /// expunged UIDs ascending.
    async fn expunge(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uids: Option<&[Uid]>,
        force: bool,
    ) -> Result<Vec<Uid>>;

    // ---- outbound queue ----

    /// Queues a message for delivery to other servers durably (blob fsynced, rows
    /// committed through the group-commit writer) and returns its id.
    async fn enqueue(&self, message: QueuedMessage) -> Result<QueueId>;
    /// Every queued message with its recipients, oldest first.
    async fn list_queue(&self) -> Result<Vec<QueueEntry>>;
    /// A body by its content address (the outbound queue's bodies). Not scoped to an
    /// account: for server-side workers only; sessions use [`Store::read_message`].
    async fn read_blob(&self, hash: &BlobHash) -> Result<Vec<u8>>;
    /// One queued message with its recipients, or `None` when it is not (or no longer) queued.
    async fn queue_entry(&self, id: QueueId) -> Result<Option<QueueEntry>>;
    /// Claims up to `limit` due messages for node `node` with a lease of `lease_secs`: due
    /// (`next_attempt <= now`) and unclaimed or with a lapsed lease. Atomic: no two callers
    /// get the same message while its lease holds (SQLite: one `UPDATE ... RETURNING`;
    /// PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    async fn claim_queue(
        &self,
        node: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>>;
    /// Records one attempt's outcome per recipient (only pending recipients change) and sets
    /// the message's next attempt to its earliest pending recipient's.
    async fn record_attempt(&self, id: QueueId, results: &[RecipientResult]) -> Result<()>;
    /// Gives up `node`'s lease on a message (no-op when another node holds it).
    async fn release_claim(&self, id: QueueId, node: &str) -> Result<()>;
    /// Marks the failure DSN of these failed recipients as sent.
    async fn mark_dsn_sent(&self, id: QueueId, recipients: &[Address]) -> Result<()>;
    /// Marks the message's delay notice as sent.
    async fn mark_delay_notified(&self, id: QueueId) -> Result<()>;
    /// Removes a queued message (its body is collected later); `false` when it was not queued.
    async fn remove_queued(&self, id: QueueId) -> Result<bool>;
    /// Makes the pending recipients of one message (`None`: of every message) due now;
    /// returns how many messages changed.
    async fn retry_queued_now(&self, id: Option<QueueId>) -> Result<u64>;

    // ---- feed and maintenance ----

    /// Subscribes to the account's committed changes.
    fn subscribe(&self, account: AccountId) -> broadcast::Receiver<Change>;
    /// Removes message rows no mailbox refers to and blob files older than
    /// `min_blob_age` that no message row refers to.
    async fn collect_garbage(&self, min_blob_age: std::time::Duration) -> Result<GarbageReport>;
    /// Message rows whose blob file is missing (must always be empty).
    async fn missing_blobs(&self) -> Result<Vec<BlobHash>>;

    // ---- RFC 7162 resynchronisation (CONDSTORE / QRESYNC) ----

    /// UIDs expunged from the mailbox with a MODSEQ above `modseq`, ascending (QRESYNC
    /// VANISHED); `None` when the expunge log, which garbage collection bounds, no longer
    /// reaches back to `modseq`. Empty for a mailbox of another account.
    async fn expunged_since(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        modseq: ModSeq,
    ) -> Result<Option<Vec<Uid>>>;
    /// The messages whose MODSEQ is above `modseq` (new or changed), in UID order
    /// (CHANGEDSINCE without reading the whole mailbox).
    async fn messages_changed_since(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        modseq: ModSeq,
    ) -> Result<Vec<MessageMeta>>;
}
