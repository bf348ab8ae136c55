//! Synchronous point lookups for the SMTP hot path (is a domain hosted, who receives an
//! address, is that account over quota), run on the calling task's thread through a few
//! rusqlite connections.
//!
//! Why not sqlx's pool: sqlx-sqlite sends each statement to a worker thread and waits for the
//! answer, two thread hand-offs per statement; every RCPT made three, which cost more than
//! the lookups. These lookups read one or two rows through a unique index (microseconds),
//! and in WAL mode a reader never waits for the writer, so running them inline does not
//! stall the runtime. Each statement runs in autocommit, so no read transaction outlives it
//! (a lingering one would hold WAL checkpoints back), and each sees the latest commit,
//! including the CLI's changes from another process.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::int;
use crate::AccountInfo;
use crate::error::{Result, StoreError};
use crate::types::{AccountId, Address, Domain};

/// Idle connections kept for reuse (about one per runtime worker).
const KEEP: usize = 4;
/// Longest a lookup waits on a lock (in WAL mode only while the WAL index is rebuilt).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A small set of read-only connections, taken for one lookup at a time.
#[derive(Debug)]
pub(super) struct Lookups {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Lookups {
    pub(super) fn new(db: &Path) -> Lookups {
        Lookups {
            path: db.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle connection (opening one if none is idle) and keeps it for reuse.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let result = f(&conn);
        if let Ok(mut v) = self.idle.lock()
            && v.len() < KEEP
        {
            v.push(conn);
        }
        result
    }

    fn open(&self) -> Result<Connection> {
        // Opened read-write (a read-only connection cannot recreate the WAL's shared memory
        // file should it be missing) but restricted to queries.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch("PRAGMA query_only = ON;")?;
        Ok(conn)
    }

    /// Whether `name` is a hosted domain.
    pub(super) fn is_hosted_domain(&self, name: &Domain) -> Result<bool> {
        self.with(|conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM domains WHERE name = ?")?
                .query_row([name.as_str()], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// The account with this id.
    pub(super) fn account_by_id(&self, id: AccountId) -> Result<Option<AccountInfo>> {
        let row: Option<(String, String, i64, i64)> = self.with(|conn| {
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
        let mut candidates = vec![address.to_string()];
        if let Some((base, _tag)) = address.local().split_once('+')
            && !base.is_empty()
        {
            candidates.push(format!("{base}@{}", address.domain()));
        }
        self.with(|conn| {
            let mut account = conn.prepare_cached("SELECT id FROM accounts WHERE address = ?")?;
            let mut alias = conn.prepare_cached(
                "SELECT account_id FROM aliases WHERE source = ? ORDER BY account_id",
            )?;
            let targets = |source: &str, alias: &mut rusqlite::CachedStatement<'_>| {
                alias
                    .query_map([source], |r| r.get(0).map(AccountId))?
                    .collect::<rusqlite::Result<Vec<AccountId>>>()
                    .map_err(StoreError::from)
            };
            for candidate in &candidates {
                let id: Option<i64> = account.query_row([candidate], |r| r.get(0)).optional()?;
                if let Some(id) = id {
                    return Ok(vec![AccountId(id)]);
                }
                let found = targets(candidate, &mut alias)?;
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            targets(&format!("@{}", address.domain()), &mut alias)
        })
    }
}
