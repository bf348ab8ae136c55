//! The outbound worker's queue operations on SQLite: claim with a lease, record attempts,
//! release, remove, retry now, and reading entries back.
//!
//! Claims are one `UPDATE ... RETURNING` statement in autocommit mode: SQLite serialises
//! writers, so two workers (or two processes on one file) never claim the same message. A
//! lease that lapses (its node crashed) makes the message claimable again.
//!
//! PostgreSQL equivalent (the same columns; `SKIP LOCKED` lets concurrent nodes take
//! disjoint sets without waiting on each other's row locks):
//!
//! ```sql
//! UPDATE queue SET claimed_by = $1, claimed_until = $2
//! WHERE id IN (
//!     SELECT id FROM queue
//!     WHERE next_attempt <= $3 AND (claimed_until IS NULL OR claimed_until < $3)
//!     ORDER BY next_attempt LIMIT $4
//!     FOR UPDATE SKIP LOCKED)
//! RETURNING id
//! ```

use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Row};

use super::{SqliteStore, db_u64, int};
use crate::blob::BlobHash;
use crate::error::{Result, StoreError};
use crate::queue::{
    DsnNotify, DsnRet, QueueEntry, QueueId, QueueRecipientStatus, RecipientOutcome,
    RecipientResult, RecipientState,
};
use crate::types::{AccountId, Address};
use crate::unix_now;

const ENTRY_COLUMNS: &str = "id, blob_hash, size, sender, account_id, dsn_envid, dsn_ret, created_at, next_attempt, attempts, expires_at, claimed_by, claimed_until, delay_notified";

fn entry_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<QueueEntry> {
    let hash: String = r.try_get(1)?;
    let sender: String = r.try_get(3)?;
    Ok(QueueEntry {
        id: QueueId(r.try_get(0)?),
        blob: BlobHash::from_hex(&hash)
            .ok_or_else(|| StoreError::Database(format!("corrupt blob hash {hash}")))?,
        size: int(r.try_get(2)?)?,
        sender: if sender.is_empty() {
            None
        } else {
            Some(Address::parse(&sender)?)
        },
        account: r.try_get::<Option<i64>, _>(4)?.map(AccountId),
        dsn_envid: r.try_get(5)?,
        dsn_ret: r
            .try_get::<Option<String>, _>(6)?
            .as_deref()
            .and_then(DsnRet::from_stored),
        created_at: r.try_get(7)?,
        next_attempt: r.try_get(8)?,
        attempts: int(r.try_get(9)?)?,
        expires_at: r.try_get(10)?,
        claimed_by: r.try_get(11)?,
        claimed_until: r.try_get(12)?,
        delay_notified: r.try_get::<i64, _>(13)? != 0,
        recipients: Vec::new(),
    })
}

/// Reads queue entries (all, or those with the given ids) with their recipients, oldest first.
pub(super) async fn entries(pool: &SqlitePool, ids: Option<&[i64]>) -> Result<Vec<QueueEntry>> {
    let filter = match ids {
        None => String::new(),
        Some([]) => return Ok(Vec::new()),
        Some(ids) => format!(
            " WHERE id IN ({})",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        ),
    };
    // Only integers are interpolated into these statements.
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM queue{filter} ORDER BY created_at, id"
    )))
    .fetch_all(pool)
    .await?;
    let mut entries = rows
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>>>()?;
    let rfilter = filter.replace("WHERE id", "WHERE queue_id");
    let rcpts = sqlx::query(AssertSqlSafe(format!(
        "SELECT queue_id, address, dsn_notify, dsn_orcpt, state, attempts, next_attempt, last_error, dsn_sent \
         FROM queue_recipients{rfilter} ORDER BY queue_id, position"
    )))
    .fetch_all(pool)
    .await?;
    let index: std::collections::HashMap<i64, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.0, i))
        .collect();
    for r in &rcpts {
        let Some(&i) = index.get(&r.try_get::<i64, _>(0)?) else {
            continue; // queued after the first query
        };
        entries[i].recipients.push(QueueRecipientStatus {
            address: Address::parse(r.try_get(1)?)?,
            notify: DsnNotify(int(r.try_get(2)?)?),
            orcpt: r.try_get(3)?,
            state: RecipientState::from_stored(r.try_get(4)?)?,
            attempts: int(r.try_get(5)?)?,
            next_attempt: r.try_get(6)?,
            last_error: r.try_get(7)?,
            dsn_sent: r.try_get::<i64, _>(8)? != 0,
        });
    }
    Ok(entries)
}

impl SqliteStore {
    pub(super) async fn queue_claim(
        &self,
        node: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>> {
        let now = unix_now();
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE queue SET claimed_by = ?1, claimed_until = ?2 \
             WHERE id IN (SELECT id FROM queue \
                 WHERE next_attempt <= ?3 AND (claimed_until IS NULL OR claimed_until < ?3) \
                 ORDER BY next_attempt LIMIT ?4) \
             RETURNING id",
        )
        .bind(node)
        .bind(now.saturating_add(db_u64(lease_secs)?))
        .bind(now)
        .bind(db_u64(limit as u64)?)
        .fetch_all(&self.pool)
        .await?;
        entries(&self.pool, Some(&ids)).await
    }

    pub(super) async fn queue_record(
        &self,
        id: QueueId,
        results: &[RecipientResult],
    ) -> Result<()> {
        let now = unix_now();
        let mut tx = self.begin_immediate().await?;
        for r in results {
            let (state, error, next) = match &r.outcome {
                RecipientOutcome::Delivered => (RecipientState::Delivered, None, now),
                RecipientOutcome::Deferred {
                    error,
                    next_attempt,
                } => (RecipientState::Pending, Some(error.as_str()), *next_attempt),
                RecipientOutcome::Failed { error } => {
                    (RecipientState::Failed, Some(error.as_str()), now)
                }
            };
            sqlx::query(
                "UPDATE queue_recipients SET state = ?, last_error = COALESCE(?, last_error), \
                 next_attempt = ?, attempts = attempts + 1 \
                 WHERE queue_id = ? AND address = ? AND state = 'pending'",
            )
            .bind(state.as_str())
            .bind(error)
            .bind(next)
            .bind(id.0)
            .bind(r.address.to_string())
            .execute(&mut *tx)
            .await?;
        }
        // The message's next attempt is its earliest pending recipient's (now when none is
        // pending: only DSN work or removal is left).
        sqlx::query(
            "UPDATE queue SET attempts = attempts + 1, next_attempt = COALESCE( \
               (SELECT MIN(next_attempt) FROM queue_recipients WHERE queue_id = ?1 AND state = 'pending'), ?2) \
             WHERE id = ?1",
        )
        .bind(id.0)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn queue_release(&self, id: QueueId, node: &str) -> Result<()> {
        sqlx::query(
            "UPDATE queue SET claimed_by = NULL, claimed_until = NULL WHERE id = ? AND claimed_by = ?",
        )
        .bind(id.0)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn queue_mark_dsn_sent(
        &self,
        id: QueueId,
        addresses: &[Address],
    ) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        for a in addresses {
            sqlx::query(
                "UPDATE queue_recipients SET dsn_sent = 1 WHERE queue_id = ? AND address = ? AND state = 'failed'",
            )
            .bind(id.0)
            .bind(a.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn queue_mark_delay_notified(&self, id: QueueId) -> Result<()> {
        sqlx::query("UPDATE queue SET delay_notified = 1 WHERE id = ?")
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn queue_remove(&self, id: QueueId) -> Result<bool> {
        let n = sqlx::query("DELETE FROM queue WHERE id = ?")
            .bind(id.0)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    pub(super) async fn queue_retry_now(&self, id: Option<QueueId>) -> Result<u64> {
        let now = unix_now();
        let mut tx = self.begin_immediate().await?;
        let n = sqlx::query(
            "UPDATE queue SET next_attempt = ?1 WHERE (?2 IS NULL OR id = ?2) \
             AND EXISTS (SELECT 1 FROM queue_recipients r WHERE r.queue_id = queue.id AND r.state = 'pending')",
        )
        .bind(now)
        .bind(id.map(|i| i.0))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE queue_recipients SET next_attempt = ?1 WHERE (?2 IS NULL OR queue_id = ?2) AND state = 'pending'",
        )
        .bind(now)
        .bind(id.map(|i| i.0))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    pub(super) async fn queue_entry_by_id(&self, id: QueueId) -> Result<Option<QueueEntry>> {
        Ok(entries(&self.pool, Some(&[id.0])).await?.into_iter().next())
    }
}
