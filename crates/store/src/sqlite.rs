//! The SQLite backend (embedded default): WAL, `synchronous=FULL`, one writer thread doing
//! group commit for mailbox writes, a small sqlx pool for administrative reads, and a few
//! rusqlite connections for the reads the protocols make on every command ([`reader`]: the
//! SMTP hot path's point lookups; [`read_ops`]: IMAP's and POP3's mailbox reads).
//!
//! Group commit ([`writer`]): every mailbox write becomes a job. When the writer is idle the
//! caller commits it at once on its own thread; otherwise it goes on a channel, and the
//! writer thread takes all jobs waiting, writes and syncs the large bodies they carry once,
//! runs each job inside its own SAVEPOINT (so one failing job does not fail the others) and
//! commits the batch with one transaction, i.e. one WAL fsync. Only then are the callers
//! answered and the change feed published.
//!
//! Administrative writes (domains, accounts, aliases) are rare and run in their own
//! `BEGIN IMMEDIATE` transactions from the pool; SQLite's busy timeout serialises them
//! with the writer and with other processes (the CLI while the server runs).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::broadcast;

use crate::blob::{BlobHash, BlobStore, PendingBlob};
use crate::error::{Result, StoreError};
use crate::feed::{Change, ChangeFeed};
use crate::queue::{QueueEntry, QueueId, QueuedMessage, RecipientResult};
use crate::types::*;
use crate::{
    AccountInfo, AliasInfo, Appended, Copied, DomainInfo, FlagUpdate, GarbageReport, MailboxInfo,
    MailboxStatus, MessageMeta, NewAccount, NewMessage, Store, password, unix_now,
};

/// Password verifications running at once (each Argon2id run takes ~19 MiB and a core).
const VERIFY_CONCURRENCY: usize = 2;
static VERIFY_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(VERIFY_CONCURRENCY);

/// Bodies up to this size are stored in the database (`inline_blobs`), larger ones as files.
pub const INLINE_BODY_MAX: usize = 64 * 1024;
/// The page size of a database created here (SQLite's default is 4096).
pub const NEW_DATABASE_PAGE_SIZE: u32 = 8192;
/// Jobs waiting for the writer before callers wait for room (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// Longest mailbox name, in bytes.
const MAX_MAILBOX_NAME: usize = 512;
/// Most mailboxes per account.
const MAX_MAILBOXES: i64 = 10_000;

mod acme_ops;
mod dkim_ops;
mod queue_ops;
mod read_ops;
mod reader;
mod writer;

use writer::{Op, Output};

const SCHEMA: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_queue.sql"),
    include_str!("../migrations/sqlite/0003_inline_bodies.sql"),
    include_str!("../migrations/sqlite/0004_outbound.sql"),
    include_str!("../migrations/sqlite/0005_dkim.sql"),
    include_str!("../migrations/sqlite/0006_acme.sql"),
    include_str!("../migrations/sqlite/0007_no_blob_hash_index.sql"),
    include_str!("../migrations/sqlite/0008_uidvalidity.sql"),
    include_str!("../migrations/sqlite/0009_expunged_modseq.sql"),
    include_str!("../migrations/sqlite/0010_recent.sql"),
    include_str!("../migrations/sqlite/0011_expunge_floor.sql"),
];

/// The SQLite store of one data directory (`tessera.db` and `blobs/`).
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: writer::Writer,
    /// Reads through rusqlite: the SMTP hot path ([`reader`]) and IMAP/POP3 ([`read_ops`]).
    lookups: Arc<reader::Lookups>,
    blobs: Arc<BlobStore>,
    feed: Arc<ChangeFeed>,
    stats: Arc<WriterStats>,
}

/// Counters of the group-commit writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed by the writer.
    pub commits: AtomicU64,
    /// Jobs those transactions carried.
    pub jobs: AtomicU64,
}

impl SqliteStore {
    /// The writer's counters: `jobs / commits` is the average batch size.
    pub fn writer_stats(&self) -> (u64, u64) {
        (
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.jobs.load(Ordering::Relaxed),
        )
    }

    /// Bounds the expunge log: each mailbox keeps its newest `keep` entries; the highest
    /// MODSEQ removed becomes its `expunge_floor` (schema 11), below which
    /// [`Store::expunged_since`] answers `None`. Returns the entries removed. Part of
    /// [`Store::collect_garbage`] (with [`crate::EXPUNGE_LOG_KEEP`]).
    pub async fn prune_expunge_log(&self, keep: usize) -> Result<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let mut tx = self.begin_immediate().await?;
        let long: Vec<i64> = sqlx::query_scalar(
            "SELECT mailbox_id FROM expunged GROUP BY mailbox_id HAVING COUNT(*) > ?",
        )
        .bind(keep)
        .fetch_all(&mut *tx)
        .await?;
        let mut removed = 0;
        for mailbox in long {
            // The newest entry to go: entries of one expunge share a MODSEQ, so all of them
            // at or below it go (a few more than `keep` may).
            let cut: Option<i64> = sqlx::query_scalar(
                "SELECT modseq FROM expunged INDEXED BY expunged_modseq WHERE mailbox_id = ? ORDER BY modseq DESC LIMIT 1 OFFSET ?",
            )
            .bind(mailbox)
            .bind(keep)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(cut) = cut else { continue };
            removed += sqlx::query("DELETE FROM expunged WHERE mailbox_id = ? AND modseq <= ?")
                .bind(mailbox)
                .bind(cut)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("UPDATE mailboxes SET expunge_floor = MAX(expunge_floor, ?) WHERE id = ?")
                .bind(cut)
                .bind(mailbox)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Opens (creating and migrating if needed) the store in `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Arc<SqliteStore>> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Blob {
            path: data_dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let blobs = Arc::new(BlobStore::open(&data_dir.join("blobs"))?);
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("tessera.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            // A new database gets 8 KiB pages (a database that exists keeps its own): a
            // 10 KB message is two pages in the WAL instead of three, and a batch of
            // deliveries writes fewer frames (two system calls each). At 20 SMTP sessions:
            // +5 % msg/s, -3 % CPU per message over seven alternating runs.
            .page_size(NEW_DATABASE_PAGE_SIZE);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        migrate(&mut conn).await?;
        conn.close().await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;
        let feed = Arc::new(ChangeFeed::default());
        let stats = Arc::new(WriterStats::default());
        let writer = writer::start(
            &data_dir.join("tessera.db"),
            QUEUE_DEPTH,
            blobs.clone(),
            feed.clone(),
            stats.clone(),
        )?;
        Ok(Arc::new(SqliteStore {
            pool,
            writer,
            lookups: Arc::new(reader::Lookups::new(&data_dir.join("tessera.db"))),
            blobs,
            feed,
            stats,
        }))
    }

    /// Hands a job to the writer and waits for its committed result.
    async fn submit(&self, op: Op) -> Result<Output> {
        self.writer.submit(op).await
    }

    /// COPY, or MOVE when `remove_source` (RFC 6851: one transaction).
    async fn copy_or_move(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
        remove_source: bool,
    ) -> Result<Copied> {
        match self
            .submit(Op::Copy {
                account,
                from,
                to,
                uids: uids.to_vec(),
                remove_source,
            })
            .await?
        {
            Output::Copied(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    /// Hashes a body for the writer; large bodies are hashed on a blocking thread.
    async fn pending_blob(&self, bytes: Arc<Vec<u8>>) -> Result<PendingBlob> {
        if bytes.len() <= INLINE_BODY_MAX {
            return Ok(PendingBlob::unique(bytes));
        }
        if bytes.len() < 256 * 1024 {
            return Ok(PendingBlob::new(bytes));
        }
        tokio::task::spawn_blocking(move || PendingBlob::new(bytes))
            .await
            .map_err(|e| StoreError::Database(format!("hashing task: {e}")))
    }

    /// Reads a body by its hash: from `inline_blobs`, else from its file.
    async fn read_body(&self, hex: &str) -> Result<Vec<u8>> {
        let inline: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM inline_blobs WHERE hash = ?")
                .bind(hex)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(data) = inline {
            return Ok(data);
        }
        let hash = BlobHash::from_hex(hex)
            .ok_or_else(|| StoreError::Database(format!("corrupt blob hash {hex}")))?;
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.read(&hash))
            .await
            .map_err(|e| StoreError::Database(format!("blob reader task: {e}")))?
    }

    async fn begin_immediate(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn domain_id(&self, name: &Domain) -> Result<DomainId> {
        let row = sqlx::query("SELECT id FROM domains WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(DomainId(r.try_get(0)?)),
            None => Err(StoreError::NotFound(format!(
                "domain {name} is not hosted here"
            ))),
        }
    }
}

/// Applies the schema migrations that `PRAGMA user_version` says are missing.
async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result: Result<()> = async {
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *conn)
            .await?;
        let current = usize::try_from(version).unwrap_or(0);
        if current > SCHEMA.len() {
            return Err(StoreError::Database(format!(
                "database schema version {current} is newer than this Tessera ({})",
                SCHEMA.len()
            )));
        }
        for (i, sql) in SCHEMA.iter().enumerate().skip(current) {
            sqlx::raw_sql(*sql).execute(&mut *conn).await?;
            let set = format!("PRAGMA user_version = {}", i + 1);
            sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(())
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// Validates a mailbox name and spells INBOX canonically.
///
/// Names use `/` as hierarchy separator; refused: empty names or levels, leading or
/// trailing `/`, `.` and `..` levels, control characters, and names over 512 bytes.
pub(crate) fn normalize_mailbox_name(name: &str) -> Result<String> {
    let bad = |why: &str| StoreError::Invalid(format!("invalid mailbox name {name:?}: {why}"));
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_MAILBOX_NAME {
        return Err(bad("too long"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("control characters"));
    }
    if name
        .split('/')
        .any(|level| level.is_empty() || level == "." || level == "..")
    {
        return Err(bad("empty, '.' or '..' hierarchy level"));
    }
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".into());
    }
    if name.len() > 6 && name[..6].eq_ignore_ascii_case("INBOX/") {
        return Ok(format!("INBOX/{}", &name[6..]));
    }
    Ok(name.to_string())
}

/// A UIDVALIDITY never given before in this database (RFC 3501 §2.3.1.1: a recreated
/// mailbox must get a new one): the current time, or one more than the last one given if
/// that is later. The last one given is kept in `counters`, as deleted mailboxes take
/// theirs with them.
async fn next_uid_validity(conn: &mut SqliteConnection) -> Result<u32> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(v) FROM (SELECT MAX(uidvalidity) AS v FROM mailboxes \
         UNION ALL SELECT value FROM counters WHERE name = 'uidvalidity')",
    )
    .fetch_one(&mut *conn)
    .await?;
    let next = uid_validity_after(last);
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES ('uidvalidity', ?) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(i64::from(next))
    .execute(&mut *conn)
    .await?;
    Ok(next)
}

/// The UIDVALIDITY to give after `last`: now, or `last + 1` when that is later.
fn uid_validity_after(last: Option<i64>) -> u32 {
    let now = u32::try_from(unix_now()).unwrap_or(u32::MAX);
    let after = last
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0)
        .saturating_add(1);
    now.max(after)
}

/// Creates a mailbox inside an administrative transaction ([`Store::add_account`]'s default
/// mailboxes); the writer has its own for CREATE.
async fn create_mailbox(
    conn: &mut SqliteConnection,
    account: AccountId,
    name: &str,
    special_use: Option<SpecialUse>,
) -> Result<MailboxId> {
    let name = normalize_mailbox_name(name)?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailboxes WHERE account_id = ?")
        .bind(account.0)
        .fetch_one(&mut *conn)
        .await?;
    if count >= MAX_MAILBOXES {
        return Err(StoreError::Invalid(format!(
            "more than {MAX_MAILBOXES} mailboxes"
        )));
    }
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT id FROM mailboxes WHERE account_id = ? AND name = ?")
            .bind(account.0)
            .bind(&name)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_some() {
        return Err(StoreError::AlreadyExists(format!("mailbox {name} exists")));
    }
    let uid_validity = next_uid_validity(conn).await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed) VALUES (?, ?, ?, ?, 1, 1, 1) RETURNING id",
    )
    .bind(account.0)
    .bind(&name)
    .bind(special_use.map(SpecialUse::attribute))
    .bind(i64::from(uid_validity))
    .fetch_one(&mut *conn)
    .await?;
    Ok(MailboxId(id))
}

// ---------------------------------------------------------------------------
// Row decoding helpers.
// ---------------------------------------------------------------------------

/// Converts a stored integer into the width the model uses; out-of-range means a corrupt row.
fn int<T: TryFrom<i64>>(v: i64) -> Result<T> {
    T::try_from(v).map_err(|_| StoreError::Database(format!("stored value {v} out of range")))
}

fn db_u64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("value {v} too large")))
}

fn account_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AccountInfo> {
    Ok(AccountInfo {
        id: AccountId(row.try_get("id")?),
        address: Address::parse(row.try_get("address")?)?,
        display_name: row.try_get("display_name")?,
        quota_bytes: int(row.try_get("quota_bytes")?)?,
        used_bytes: int(row.try_get("used_bytes")?)?,
    })
}

/// A real Argon2id hash of a random password, verified against when the login names no
/// account, so unknown logins cost the same time as wrong passwords.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| password::hash_password(&password::generate_password()).unwrap_or_default())
}

#[async_trait]
impl Store for SqliteStore {
    async fn add_domain(&self, name: &Domain) -> Result<DomainId> {
        let mut tx = self.begin_immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM domains WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "domain {name} exists already"
            )));
        }
        let id: i64 =
            sqlx::query_scalar("INSERT INTO domains (name, created_at) VALUES (?, ?) RETURNING id")
                .bind(name.as_str())
                .bind(unix_now())
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(DomainId(id))
    }

    async fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        let rows = sqlx::query(
            "SELECT d.id, d.name, (SELECT COUNT(*) FROM accounts a WHERE a.domain_id = d.id) FROM domains d ORDER BY d.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DomainInfo {
                    id: DomainId(r.try_get(0)?),
                    name: Domain::parse(r.try_get(1)?)?,
                    accounts: int(r.try_get(2)?)?,
                })
            })
            .collect()
    }

    async fn remove_domain(&self, name: &Domain) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("domain {name} is not hosted here")))?;
        let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE domain_id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let aliases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM aliases WHERE domain_id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if accounts > 0 || aliases > 0 {
            return Err(StoreError::Conflict(format!(
                "domain {name} still has {accounts} account(s) and {aliases} alias target(s); remove them first"
            )));
        }
        sqlx::query("DELETE FROM domains WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn is_hosted_domain(&self, name: &Domain) -> Result<bool> {
        self.lookups.is_hosted_domain(name)
    }

    async fn add_dkim_key(&self, key: crate::NewDkimKey) -> Result<()> {
        self.dkim_add(key).await
    }

    async fn dkim_keys(&self, domain: &Domain) -> Result<Vec<crate::DkimKey>> {
        self.dkim_list(domain).await
    }

    async fn retire_dkim_key(&self, domain: &Domain, selector: &str) -> Result<()> {
        self.dkim_change(domain, selector, false).await
    }

    async fn remove_dkim_key(&self, domain: &Domain, selector: &str) -> Result<()> {
        self.dkim_change(domain, selector, true).await
    }

    async fn add_account(&self, account: NewAccount) -> Result<AccountId> {
        let mut tx = self.begin_immediate().await?;
        let domain = account.address.domain();
        let domain_id: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = ?")
            .bind(domain.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "domain {domain} is not hosted here (add it with `tessera domain add {domain}`)"
                ))
            })?;
        let address = account.address.to_string();
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM accounts WHERE address = ?")
            .bind(&address)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "user {address} exists already"
            )));
        }
        let alias: Option<String> =
            sqlx::query_scalar("SELECT source FROM aliases WHERE source = ? LIMIT 1")
                .bind(&address)
                .fetch_optional(&mut *tx)
                .await?;
        if alias.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "{address} is an alias already"
            )));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO accounts (domain_id, local_part, address, password_hash, display_name, quota_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(domain_id)
        .bind(account.address.local())
        .bind(&address)
        .bind(&account.password_hash)
        .bind(&account.display_name)
        .bind(db_u64(account.quota_bytes)?)
        .bind(unix_now())
        .fetch_one(&mut *tx)
        .await?;
        for (name, special_use) in DEFAULT_MAILBOXES {
            create_mailbox(&mut tx, AccountId(id), name, *special_use).await?;
        }
        tx.commit().await?;
        Ok(AccountId(id))
    }

    async fn list_accounts(&self, domain: Option<&Domain>) -> Result<Vec<AccountInfo>> {
        let rows = match domain {
            Some(d) => {
                let id = self.domain_id(d).await?;
                sqlx::query(
                    "SELECT id, address, display_name, quota_bytes, used_bytes FROM accounts WHERE domain_id = ? ORDER BY address",
                )
                .bind(id.0)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, address, display_name, quota_bytes, used_bytes FROM accounts ORDER BY address",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(account_from_row).collect()
    }

    async fn account(&self, address: &Address) -> Result<Option<AccountInfo>> {
        let row = sqlx::query(
            "SELECT id, address, display_name, quota_bytes, used_bytes FROM accounts WHERE address = ?",
        )
        .bind(address.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountInfo>> {
        self.lookups.account_by_id(id)
    }

    async fn set_password_hash(&self, address: &Address, hash: &str) -> Result<()> {
        let changed = sqlx::query("UPDATE accounts SET password_hash = ? WHERE address = ?")
            .bind(hash)
            .bind(address.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound(format!("no user {address}")));
        }
        Ok(())
    }

    async fn remove_account(&self, address: &Address) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM accounts WHERE address = ?")
            .bind(address.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no user {address}")))?;
        for sql in [
            "DELETE FROM mailbox_messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?)",
            "DELETE FROM expunged WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?)",
            "DELETE FROM mailboxes WHERE account_id = ?",
            "DELETE FROM messages WHERE account_id = ?",
            "DELETE FROM aliases WHERE account_id = ?",
            "DELETE FROM accounts WHERE id = ?",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn authenticate(&self, login: &str, password: &str) -> Result<Option<AccountInfo>> {
        let login = login.trim();
        let (account, hash) = match self.read_login(login).await? {
            Some((account, hash)) => (Some(account), hash),
            None => (None, dummy_hash().to_string()),
        };
        // A recent success with this very password and stored hash: skip Argon2id
        // (`auth_cache`). Failures are never remembered and always pay the full cost.
        let cache = &crate::auth_cache::AUTH_CACHE;
        let _one_at_a_time = match &account {
            Some(a) => {
                if cache.verified(a.id.0, &hash, password) {
                    return Ok(account);
                }
                let guard = cache.serialise(a.id.0).await;
                // Another login may have verified this password while we waited.
                if cache.verified(a.id.0, &hash, password) {
                    return Ok(account);
                }
                Some(guard)
            }
            None => None,
        };
        let password = password.to_string();
        // Argon2id needs ~19 MiB per verification; a burst of logins must not turn into a
        // burst of memory (the allocator keeps what it once grew to), so verifications run
        // at most VERIFY_CONCURRENCY at a time.
        let _permit = VERIFY_SLOTS
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let (ok, password, hash) = tokio::task::spawn_blocking(move || {
            (password::verify_password(&password, &hash), password, hash)
        })
        .await
        .unwrap_or_default();
        if ok && let Some(a) = &account {
            cache.remember(a.id.0, &hash, &password);
        }
        Ok(if ok { account } else { None })
    }

    async fn add_alias(&self, source: &AliasSource, target: &Address) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        let domain = source.domain();
        let domain_id: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = ?")
            .bind(domain.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("domain {domain} is not hosted here")))?;
        let key = source.key();
        if let AliasSource::Address(a) = source {
            let is_account: Option<i64> =
                sqlx::query_scalar("SELECT id FROM accounts WHERE address = ?")
                    .bind(a.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            if is_account.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "{a} is an account already"
                )));
            }
        }
        let target_id: i64 = sqlx::query_scalar("SELECT id FROM accounts WHERE address = ?")
            .bind(target.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("no user {target} (alias targets are accounts)"))
            })?;
        let done = sqlx::query(
            "INSERT OR IGNORE INTO aliases (source, domain_id, account_id) VALUES (?, ?, ?)",
        )
        .bind(&key)
        .bind(domain_id)
        .bind(target_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "alias {key} -> {target} exists already"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_aliases(&self, domain: Option<&Domain>) -> Result<Vec<AliasInfo>> {
        let rows = match domain {
            Some(d) => {
                let id = self.domain_id(d).await?;
                sqlx::query(
                    "SELECT al.source, a.address FROM aliases al JOIN accounts a ON a.id = al.account_id WHERE al.domain_id = ? ORDER BY al.source, a.address",
                )
                .bind(id.0)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT al.source, a.address FROM aliases al JOIN accounts a ON a.id = al.account_id ORDER BY al.source, a.address",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut out: Vec<AliasInfo> = Vec::new();
        for row in rows {
            let source = AliasSource::parse(row.try_get(0)?)?;
            let target = Address::parse(row.try_get(1)?)?;
            match out.last_mut() {
                Some(last) if last.source == source => last.targets.push(target),
                _ => out.push(AliasInfo {
                    source,
                    targets: vec![target],
                }),
            }
        }
        Ok(out)
    }

    async fn remove_alias(&self, source: &AliasSource, target: Option<&Address>) -> Result<()> {
        let key = source.key();
        let removed = match target {
            Some(t) => sqlx::query(
                "DELETE FROM aliases WHERE source = ? AND account_id = (SELECT id FROM accounts WHERE address = ?)",
            )
            .bind(&key)
            .bind(t.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected(),
            None => sqlx::query("DELETE FROM aliases WHERE source = ?")
                .bind(&key)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        };
        if removed == 0 {
            return Err(StoreError::NotFound(match target {
                Some(t) => format!("no alias {key} -> {t}"),
                None => format!("no alias {key}"),
            }));
        }
        Ok(())
    }

    async fn resolve_recipient(&self, address: &Address) -> Result<Vec<AccountId>> {
        self.lookups.resolve_recipient(address)
    }

    async fn route_recipient(
        &self,
        address: &Address,
    ) -> Result<Option<Vec<crate::RecipientAccount>>> {
        self.lookups.route_recipient(address)
    }

    async fn sender_addresses(&self, account: AccountId) -> Result<Vec<AliasSource>> {
        let own: Option<String> = sqlx::query_scalar("SELECT address FROM accounts WHERE id = ?")
            .bind(account.0)
            .fetch_optional(&self.pool)
            .await?;
        let Some(own) = own else {
            return Ok(Vec::new());
        };
        let mut out = vec![AliasSource::parse(&own)?];
        let aliases: Vec<String> =
            sqlx::query_scalar("SELECT source FROM aliases WHERE account_id = ? ORDER BY source")
                .bind(account.0)
                .fetch_all(&self.pool)
                .await?;
        for a in aliases {
            out.push(AliasSource::parse(&a)?);
        }
        Ok(out)
    }

    async fn list_mailboxes(&self, account: AccountId) -> Result<Vec<MailboxInfo>> {
        self.read_mailboxes(account).await
    }

    async fn mailbox(&self, account: AccountId, name: &str) -> Result<Option<MailboxInfo>> {
        self.read_mailbox(account, name).await
    }

    async fn mailbox_status(
        &self,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<MailboxStatus> {
        self.read_mailbox_status(account, mailbox).await
    }

    async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxId> {
        match self
            .submit(Op::CreateMailbox {
                account,
                name: name.to_string(),
                special_use,
            })
            .await?
        {
            Output::Mailbox(id) => Ok(id),
            _ => Err(unexpected()),
        }
    }

    async fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<()> {
        self.submit(Op::DeleteMailbox {
            account,
            name: name.to_string(),
        })
        .await
        .map(|_| ())
    }

    async fn rename_mailbox(&self, account: AccountId, from: &str, to: &str) -> Result<()> {
        self.submit(Op::RenameMailbox {
            account,
            from: from.to_string(),
            to: to.to_string(),
        })
        .await
        .map(|_| ())
    }

    async fn set_subscribed(&self, account: AccountId, name: &str, subscribed: bool) -> Result<()> {
        self.submit(Op::Subscribe {
            account,
            name: name.to_string(),
            subscribed,
        })
        .await
        .map(|_| ())
    }

    async fn set_recent_uid(&self, account: AccountId, mailbox: MailboxId, uid: Uid) -> Result<()> {
        self.submit(Op::SetRecent {
            account,
            mailbox,
            uid,
        })
        .await
        .map(|_| ())
    }

    async fn append(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        message: NewMessage,
    ) -> Result<Appended> {
        let blob = self.pending_blob(message.bytes.clone()).await?;
        match self
            .submit(Op::Append {
                account,
                mailbox,
                blob,
                message,
            })
            .await?
        {
            Output::Appended(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    async fn deliver(
        &self,
        accounts: &[AccountId],
        message: NewMessage,
    ) -> Result<Vec<Result<Appended>>> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let blob = self.pending_blob(message.bytes.clone()).await?;
        let result = self
            .submit(Op::Deliver {
                accounts: accounts.to_vec(),
                blob,
                message,
            })
            .await;
        match result {
            Ok(Output::Delivered(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            // A single recipient's refusal is its per-account result, as with several.
            Err(e @ (StoreError::QuotaExceeded { .. } | StoreError::NotFound(_)))
                if accounts.len() == 1 =>
            {
                Ok(vec![Err(e)])
            }
            Err(e) => Err(e),
        }
    }

    async fn messages(&self, account: AccountId, mailbox: MailboxId) -> Result<Vec<MessageMeta>> {
        self.read_messages(account, mailbox).await
    }

    async fn message_flags(
        &self,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<Vec<crate::MessageFlags>> {
        self.read_message_flags(account, mailbox).await
    }

    async fn read_message(&self, account: AccountId, message: MessageId) -> Result<Vec<u8>> {
        self.read_message_body(account, message).await
    }

    async fn read_message_header(
        &self,
        account: AccountId,
        message: MessageId,
        max: usize,
    ) -> Result<Vec<u8>> {
        self.read_header(account, message, max).await
    }

    async fn message_headers(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        first: Uid,
        last: Uid,
        max: usize,
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        self.read_headers(account, mailbox, first, last, max).await
    }

    async fn message_bodies(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        first: Uid,
        last: Uid,
        max_bytes: u64,
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        self.read_message_bodies(account, mailbox, first, last, max_bytes)
            .await
    }

    async fn store_flags(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
    ) -> Result<Vec<FlagUpdate>> {
        match self
            .submit(Op::StoreFlags {
                account,
                mailbox,
                uids: uids.to_vec(),
                op,
                flags: flags.clone(),
            })
            .await?
        {
            Output::Flags(f) => Ok(f),
            _ => Err(unexpected()),
        }
    }

    async fn copy(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
    ) -> Result<Copied> {
        self.copy_or_move(account, from, uids, to, false).await
    }

    async fn move_messages(
        &self,
        account: AccountId,
        from: MailboxId,
        uids: &[Uid],
        to: MailboxId,
    ) -> Result<Copied> {
        self.copy_or_move(account, from, uids, to, true).await
    }

    async fn expunge(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        uids: Option<&[Uid]>,
        force: bool,
    ) -> Result<Vec<Uid>> {
        match self
            .submit(Op::Expunge {
                account,
                mailbox,
                uids: uids.map(<[Uid]>::to_vec),
                force,
            })
            .await?
        {
            Output::Expunged(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }

    async fn enqueue(&self, message: QueuedMessage) -> Result<QueueId> {
        message.validate()?;
        let blob = self.pending_blob(message.bytes.clone()).await?;
        match self.submit(Op::Enqueue { blob, message }).await? {
            Output::Queued(id) => Ok(id),
            _ => Err(unexpected()),
        }
    }

    async fn list_queue(&self) -> Result<Vec<QueueEntry>> {
        queue_ops::entries(&self.pool, None).await
    }

    async fn queue_entry(&self, id: QueueId) -> Result<Option<QueueEntry>> {
        self.queue_entry_by_id(id).await
    }

    async fn claim_queue(
        &self,
        node: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>> {
        self.queue_claim(node, lease_secs, limit).await
    }

    async fn record_attempt(&self, id: QueueId, results: &[RecipientResult]) -> Result<()> {
        self.queue_record(id, results).await
    }

    async fn release_claim(&self, id: QueueId, node: &str) -> Result<()> {
        self.queue_release(id, node).await
    }

    async fn mark_dsn_sent(&self, id: QueueId, recipients: &[Address]) -> Result<()> {
        self.queue_mark_dsn_sent(id, recipients).await
    }

    async fn mark_delay_notified(&self, id: QueueId) -> Result<()> {
        self.queue_mark_delay_notified(id).await
    }

    async fn remove_queued(&self, id: QueueId) -> Result<bool> {
        self.queue_remove(id).await
    }

    async fn retry_queued_now(&self, id: Option<QueueId>) -> Result<u64> {
        self.queue_retry_now(id).await
    }

    fn subscribe(&self, account: AccountId) -> broadcast::Receiver<Change> {
        self.feed.subscribe(account)
    }

    async fn collect_garbage(&self, min_blob_age: Duration) -> Result<GarbageReport> {
        let mut tx = self.begin_immediate().await?;
        let removed = sqlx::query(
            "DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM mailbox_messages mm WHERE mm.message_id = messages.id)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let inline_removed = sqlx::query(
            "DELETE FROM inline_blobs WHERE hash NOT IN (SELECT blob_hash FROM messages UNION SELECT blob_hash FROM queue)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let referenced: Vec<String> =
            sqlx::query_scalar("SELECT blob_hash FROM messages UNION SELECT blob_hash FROM queue")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let referenced: HashSet<String> = referenced.into_iter().collect();
        let blobs = self.blobs.clone();
        let removed_blobs = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut n = 0;
            for hash in blobs.list()? {
                if !referenced.contains(&hash.to_hex())
                    && blobs.remove_if_older(&hash, min_blob_age)?
                {
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
        .map_err(|e| StoreError::Database(format!("garbage collector task: {e}")))??;
        let expunge_log = self.prune_expunge_log(crate::EXPUNGE_LOG_KEEP).await?;
        Ok(GarbageReport {
            messages: removed,
            blobs: removed_blobs + inline_removed,
            expunge_log,
        })
    }

    async fn read_blob(&self, hash: &BlobHash) -> Result<Vec<u8>> {
        self.read_body(&hash.to_hex()).await
    }

    async fn missing_blobs(&self) -> Result<Vec<BlobHash>> {
        let hashes: Vec<String> = sqlx::query_scalar(
            "SELECT blob_hash FROM messages WHERE blob_hash NOT IN (SELECT hash FROM inline_blobs) \
             UNION SELECT blob_hash FROM queue WHERE blob_hash NOT IN (SELECT hash FROM inline_blobs)",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut missing = Vec::new();
        for h in hashes {
            let hash = BlobHash::from_hex(&h)
                .ok_or_else(|| StoreError::Database(format!("corrupt blob hash {h}")))?;
            if !self.blobs.path(&hash).exists() {
                missing.push(hash);
            }
        }
        Ok(missing)
    }

    async fn expunged_since(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        modseq: ModSeq,
    ) -> Result<Option<Vec<Uid>>> {
        self.read_expunged_since(account, mailbox, modseq).await
    }

    async fn messages_changed_since(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        modseq: ModSeq,
    ) -> Result<Vec<MessageMeta>> {
        self.read_changed_since(account, mailbox, modseq).await
    }
}

fn unexpected() -> StoreError {
    StoreError::Database("writer returned an unexpected result".into())
}
