//! Synchronous reads through a few rusqlite connections: the SMTP hot path's point lookups
//! (is a domain hosted, who receives an address, is that account over quota) and the mailbox
//! reads IMAP and POP3 make on every command ([`read_ops`](super::read_ops)).
//!
//! Why not sqlx's pool: sqlx-sqlite sends each statement to a worker thread and waits for the
//! answer, two thread hand-offs per statement; every RCPT made three, which cost more than
//! the lookups, and an IMAP session spent a fifth of its CPU in sqlx's worker and the
//! hand-offs. Point lookups read one or two rows through a unique index (microseconds), and
//! in WAL mode a reader never waits for the writer, so they run inline on the calling task's
//! thread without stalling the runtime.
//!
//! Reads whose size the caller cannot bound (a whole mailbox, everything changed since a
//! MODSEQ) run through [`Lookups::read`]: inline with a budget of SQLite VM steps (about a
//! millisecond); a statement that runs out of budget is interrupted and the whole read is
//! done again on tokio's blocking pool, so a runtime worker is never held for tens of
//! milliseconds. [`Lookups::blocking`] goes there directly (reads of many bodies).
//!
//! Each statement runs in autocommit, so no read transaction outlives it (a lingering one
//! would hold WAL checkpoints back and would serve stale rows), and each sees the latest
//! commit, including the CLI's changes from another process. A read that must be
//! consistent across rows is one statement.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::int;
use crate::error::{Result, StoreError};
use crate::types::{AccountId, Address, Domain};
use crate::{AccountInfo, RecipientAccount};

/// How long a scan that ran out of its inline budget goes to the blocking pool directly.
const LARGE_FOR: Duration = Duration::from_secs(60);
/// Scans remembered as large at most (the memory is forgotten past that).
const LARGE_MAX: usize = 4096;

/// Reads running on the blocking pool at once (as many as sqlx's pool had connections): bounds
/// the connections, threads and page caches a burst of large reads can take.
const BLOCKING_READS: usize = 4;
/// Idle connections kept for reuse (about one per runtime worker, plus the blocking reads).
const KEEP: usize = 8;
/// Longest a lookup waits on a lock (in WAL mode only while the WAL index is rebuilt).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite VM steps a statement may take inline before its read is moved to the blocking
/// pool: about a millisecond (a mailbox scan costs ~8 steps and ~200 ns per row here).
pub(super) const INLINE_STEPS: i32 = 40_000;

/// A small set of read-only connections, taken for one lookup at a time.
#[derive(Debug)]
pub(super) struct Lookups {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Idle connections for the point lookups ([`Lookups::with_point`]): no memory map.
    idle_points: Mutex<Vec<Connection>>,
    /// [`INLINE_STEPS`], lowered by tests to force the blocking path.
    inline_steps: AtomicI32,
    /// Reads that ran out of their inline budget and were moved to the blocking pool.
    moved: AtomicU64,
    /// [`BLOCKING_READS`] permits.
    blocking_slots: tokio::sync::Semaphore,
    /// Scans (kind, mailbox) that lately ran out of the inline budget, and when: the next one
    /// goes to the blocking pool without wasting a budget first.
    large: Mutex<HashMap<(&'static str, i64), Instant>>,
}

impl Lookups {
    pub(super) fn new(db: &Path) -> Lookups {
        Lookups {
            path: db.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            idle_points: Mutex::new(Vec::new()),
            inline_steps: AtomicI32::new(INLINE_STEPS),
            moved: AtomicU64::new(0),
            blocking_slots: tokio::sync::Semaphore::new(BLOCKING_READS),
            large: Mutex::new(HashMap::new()),
        }
    }

    /// How many reads were moved to the blocking pool so far.
    #[cfg(test)]
    pub(super) fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Sets the inline budget (tests: 1 moves every read to the blocking pool).
    #[cfg(test)]
    pub(super) fn set_inline_steps(&self, steps: i32) {
        self.inline_steps.store(steps, Ordering::Relaxed);
    }

    /// Runs `f` inline with a budget of [`INLINE_STEPS`] VM steps per statement; when a
    /// statement runs out of it, runs `f` again, whole and without a budget, on the blocking
    /// pool (`f` only reads, so the interrupted attempt left nothing behind).
    pub(super) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        match self.inline(&f) {
            Some(result) => result,
            None => self.blocking(f).await,
        }
    }

    /// [`Lookups::read`] for a scan whose size depends on the data (`scan`: what kind of
    /// read, and of which mailbox): once such a scan ran out of the inline budget it goes to
    /// the blocking pool directly for [`LARGE_FOR`] (a large mailbox or expunge log stays
    /// large; without this every read of it would first waste its budget).
    pub(super) async fn read_scan<T, F>(
        self: &Arc<Self>,
        scan: (&'static str, i64),
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T> + Send + 'static,
    {
        let known_large = self
            .large
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&scan)
            .is_some_and(|since| since.elapsed() < LARGE_FOR);
        if !known_large && let Some(result) = self.inline(&f) {
            return result;
        }
        if !known_large {
            let mut large = self.large.lock().unwrap_or_else(PoisonError::into_inner);
            if large.len() >= LARGE_MAX {
                large.clear();
            }
            large.insert(scan, Instant::now());
        }
        self.blocking(f).await
    }

    /// Runs `f` inline within the budget; `None` when a statement ran out of it.
    fn inline<T>(&self, f: &impl Fn(&Connection) -> Result<T>) -> Option<Result<T>> {
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        let result = self.with(|conn| {
            conn.progress_handler(
                self.inline_steps.load(Ordering::Relaxed),
                Some(move || {
                    flag.store(true, Ordering::Relaxed);
                    true
                }),
            )?;
            let result = f(conn);
            conn.progress_handler(0, None::<fn() -> bool>)?;
            result
        });
        if interrupted.load(Ordering::Relaxed) {
            self.moved.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(result)
    }

    /// Runs `f` on a pooled connection on tokio's blocking pool (large reads), at most
    /// [`BLOCKING_READS`] at once.
    pub(super) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .blocking_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.with(|conn| {
                // No budget here (`inline` removes its own, this is in case that failed).
                conn.progress_handler(0, None::<fn() -> bool>)?;
                f(conn)
            })
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task: {e}")))?
    }

    /// Runs `f` on an idle connection (opening one if none is idle) and keeps it for reuse.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        Self::pooled(&self.idle, || self.open(true), f)
    }

    /// [`Lookups::with`] for the point lookups of SMTP (a few rows through unique indexes),
    /// on connections that read with `pread`, not through a memory map: SQLite drops its
    /// whole map at the first read after any commit (and maps the file again), which for
    /// a lookup of a handful of pages cost several times the reads themselves under a
    /// steady stream of deliveries (the unmap interrupts every other CPU to flush its TLB).
    fn with_point<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        Self::pooled(&self.idle_points, || self.open(false), f)
    }

    fn pooled<T>(
        pool: &Mutex<Vec<Connection>>,
        open: impl FnOnce() -> Result<Connection>,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        let idle = pool.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => open()?,
        };
        let result = f(&conn);
        if let Ok(mut v) = pool.lock()
            && v.len() < KEEP
        {
            v.push(conn);
        }
        result
    }

    /// A read-only connection; `mapped`: pages of the database file are read through a memory
    /// map (up to 1 GiB of it), not a pread each.
    fn open(&self, mapped: bool) -> Result<Connection> {
        // Opened read-write (a read-only connection cannot recreate the WAL's shared memory
        // file should it be missing) but restricted to queries.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Mapped for the mailbox reads: every commit empties a reader's page cache, so the
        // first read after a write used to re-read each page it needed with a system call.
        conn.execute_batch("PRAGMA query_only = ON;")?;
        if mapped {
            conn.execute_batch("PRAGMA mmap_size = 1073741824;")?;
        }
        Ok(conn)
    }

    /// Whether `name` is a hosted domain.
    pub(super) fn is_hosted_domain(&self, name: &Domain) -> Result<bool> {
        self.with_point(|conn| hosted(conn, name))
    }

    /// [`Store::route_recipient`](crate::Store::route_recipient) on one connection taken
    /// once. The usual recipient, an account's own address, is one statement: an account
    /// exists only in a hosted domain (a domain with accounts cannot be removed), so its row
    /// answers all three questions (hosted? whose? full?). Anything else (aliases,
    /// `+tag`s, catch-alls, unknown addresses) takes the three lookups.
    pub(super) fn route_recipient(
        &self,
        address: &Address,
    ) -> Result<Option<Vec<RecipientAccount>>> {
        self.with_point(|conn| {
            let own: Option<(i64, bool)> = conn
                .prepare_cached(
                    "SELECT id, quota_bytes > 0 AND used_bytes >= quota_bytes \
                     FROM accounts WHERE address = ?",
                )?
                .query_row([address.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((id, full)) = own {
                return Ok(Some(vec![RecipientAccount {
                    id: AccountId(id),
                    full,
                }]));
            }
            if !hosted(conn, address.domain())? {
                return Ok(None);
            }
            let mut usage = conn.prepare_cached(
                "SELECT quota_bytes > 0 AND used_bytes >= quota_bytes FROM accounts WHERE id = ?",
            )?;
            let mut out = Vec::new();
            // The exact address was just looked up as an account: `resolve` skips that step.
            for id in resolve(conn, address, true)? {
                let full: Option<bool> = usage.query_row([id.0], |r| r.get(0)).optional()?;
                out.push(RecipientAccount {
                    id,
                    full: full.unwrap_or(false),
                });
            }
            Ok(Some(out))
        })
    }

    /// The account with this id.
    pub(super) fn account_by_id(&self, id: AccountId) -> Result<Option<AccountInfo>> {
        let row: Option<(String, String, i64, i64)> = self.with_point(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT address, display_name, quota_bytes, used_bytes FROM accounts WHERE id = ?",
                )?
                .query_row([id.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?)
        })?;
        row.map(|(address, display_name, quota, used)| {
            Ok(AccountInfo {
                id,
                address: Address::parse(&address)?,
                display_name,
                quota_bytes: int(quota)?,
                used_bytes: int(used)?,
            })
        })
        .transpose()
    }

    /// The accounts mail to `address` goes to: the account of that address, else the
    /// targets of an alias of that address, each tried for the address itself and then
    /// without its `+tag` (RFC 5233 subaddressing); else the domain's catch-all. Empty:
    /// no such recipient.
    pub(super) fn resolve_recipient(&self, address: &Address) -> Result<Vec<AccountId>> {
        self.with_point(|conn| resolve(conn, address, false))
    }
}

/// Whether `name` is a hosted domain.
fn hosted(conn: &Connection, name: &Domain) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM domains WHERE name = ?")?
        .query_row([name.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// [`Lookups::resolve_recipient`] on `conn`. With `known_not_account`, the caller has just
/// found that `address` itself is no account's address, and that lookup is not repeated.
fn resolve(
    conn: &Connection,
    address: &Address,
    known_not_account: bool,
) -> Result<Vec<AccountId>> {
    let mut candidates = vec![address.to_string()];
    if let Some((base, _tag)) = address.local().split_once('+')
        && !base.is_empty()
    {
        candidates.push(format!("{base}@{}", address.domain()));
    }
    let mut account = conn.prepare_cached("SELECT id FROM accounts WHERE address = ?")?;
    let mut alias =
        conn.prepare_cached("SELECT account_id FROM aliases WHERE source = ? ORDER BY account_id")?;
    let targets = |source: &str, alias: &mut rusqlite::CachedStatement<'_>| {
        alias
            .query_map([source], |r| r.get(0).map(AccountId))?
            .collect::<rusqlite::Result<Vec<AccountId>>>()
            .map_err(StoreError::from)
    };
    for (i, candidate) in candidates.iter().enumerate() {
        if !(i == 0 && known_not_account) {
            let id: Option<i64> = account.query_row([candidate], |r| r.get(0)).optional()?;
            if let Some(id) = id {
                return Ok(vec![AccountId(id)]);
            }
        }
        let found = targets(candidate, &mut alias)?;
        if !found.is_empty() {
            return Ok(found);
        }
    }
    targets(&format!("@{}", address.domain()), &mut alias)
}
