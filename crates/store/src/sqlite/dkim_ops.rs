//! DKIM key rows on SQLite (`dkim_keys`, migration 0005). Rare administrative writes: each
//! runs in its own `BEGIN IMMEDIATE` transaction from the pool.

use sqlx::Row;

use super::SqliteStore;
use crate::dkim::{DkimAlgorithm, DkimKey, NewDkimKey, valid_selector};
use crate::error::{Result, StoreError};
use crate::types::Domain;
use crate::unix_now;

impl SqliteStore {
    pub(super) async fn dkim_add(&self, key: NewDkimKey) -> Result<()> {
        if !valid_selector(&key.selector) {
            return Err(StoreError::Invalid(format!(
                "invalid DKIM selector {:?}: use 1-63 letters, digits or '-'",
                key.selector
            )));
        }
        if key.private_key.is_empty() || key.public_key.is_empty() {
            return Err(StoreError::Invalid("empty DKIM key".into()));
        }
        let selector = key.selector.to_ascii_lowercase();
        let mut tx = self.begin_immediate().await?;
        let domain_id: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = ?")
            .bind(key.domain.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("domain {} is not hosted here", key.domain))
            })?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT id FROM dkim_keys WHERE domain_id = ? AND selector = ?")
                .bind(domain_id)
                .bind(&selector)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "DKIM selector {selector} of {} exists already",
                key.domain
            )));
        }
        sqlx::query(
            "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_key, public_key, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(domain_id)
        .bind(&selector)
        .bind(key.algorithm.as_str())
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn dkim_list(&self, domain: &Domain) -> Result<Vec<DkimKey>> {
        let rows = sqlx::query(
            "SELECT k.selector, k.algorithm, k.private_key, k.public_key, k.created_at, k.retired_at \
             FROM dkim_keys k JOIN domains d ON d.id = k.domain_id WHERE d.name = ? \
             ORDER BY k.created_at, k.id",
        )
        .bind(domain.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let algorithm: String = r.try_get(1)?;
                Ok(DkimKey {
                    domain: domain.clone(),
                    selector: r.try_get(0)?,
                    algorithm: DkimAlgorithm::parse(&algorithm).ok_or_else(|| {
                        StoreError::Database(format!("unknown DKIM algorithm {algorithm:?}"))
                    })?,
                    private_key: r.try_get(2)?,
                    public_key: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    retired_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Retires (`remove == false`) or deletes one key.
    pub(super) async fn dkim_change(
        &self,
        domain: &Domain,
        selector: &str,
        remove: bool,
    ) -> Result<()> {
        let selector = selector.to_ascii_lowercase();
        let sql = if remove {
            "DELETE FROM dkim_keys WHERE selector = ? \
             AND domain_id = (SELECT id FROM domains WHERE name = ?)"
        } else {
            "UPDATE dkim_keys SET retired_at = COALESCE(retired_at, ?) WHERE selector = ? \
             AND domain_id = (SELECT id FROM domains WHERE name = ?)"
        };
        let mut tx = self.begin_immediate().await?;
        let mut query = sqlx::query(sql);
        if !remove {
            query = query.bind(unix_now());
        }
        let done = query
            .bind(&selector)
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "{domain} has no DKIM key with selector {selector}"
            )));
        }
        tx.commit().await?;
        Ok(())
    }
}
