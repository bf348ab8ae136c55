//! ACME rows on SQLite (`acme_accounts`, `acme_certificates`, migration 0006). Rare writes
//! (an order every few weeks per certificate): each is one statement on the pool.

use async_trait::async_trait;
use sqlx::Row;

use super::SqliteStore;
use crate::acme::{AcmeCertificate, AcmeStore};
use crate::error::{Result, StoreError};
use crate::unix_now;

#[async_trait]
impl AcmeStore for SqliteStore {
    async fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT credentials FROM acme_accounts WHERE directory = ?")
                .bind(directory)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn save_acme_account(&self, directory: &str, credentials: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory, credentials, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (directory) DO UPDATE SET credentials = excluded.credentials",
        )
        .bind(directory)
        .bind(credentials)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn acme_certificates(&self) -> Result<Vec<AcmeCertificate>> {
        let rows = sqlx::query(
            "SELECT id, names, chain_pem, key_pem, issuer, not_before, not_after, last_attempt, \
             last_result, last_error, skipped, failures, next_attempt \
             FROM acme_certificates ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let names: String = r.try_get(1)?;
                let skipped: String = r.try_get(10)?;
                let failures: i64 = r.try_get(11)?;
                Ok(AcmeCertificate {
                    id: r.try_get(0)?,
                    names: names.split_whitespace().map(str::to_owned).collect(),
                    chain_pem: r.try_get(2)?,
                    key_pem: r.try_get(3)?,
                    issuer: r.try_get(4)?,
                    not_before: r.try_get(5)?,
                    not_after: r.try_get(6)?,
                    last_attempt: r.try_get(7)?,
                    last_result: r.try_get(8)?,
                    last_error: r.try_get(9)?,
                    skipped: skipped
                        .lines()
                        .filter_map(|l| {
                            let (name, reason) = l.split_once(' ').unwrap_or((l, ""));
                            (!name.is_empty()).then(|| (name.to_owned(), reason.to_owned()))
                        })
                        .collect(),
                    failures: u32::try_from(failures).unwrap_or(u32::MAX),
                    next_attempt: r.try_get(12)?,
                })
            })
            .collect()
    }

    async fn save_acme_certificate(&self, cert: &AcmeCertificate) -> Result<()> {
        if cert.id.is_empty() || cert.id.contains(char::is_whitespace) {
            return Err(StoreError::Invalid(format!(
                "invalid ACME certificate id {:?}",
                cert.id
            )));
        }
        let skipped: Vec<String> = cert
            .skipped
            .iter()
            .map(|(name, reason)| format!("{name} {}", reason.replace('\n', " ")))
            .collect();
        sqlx::query(
            "INSERT INTO acme_certificates (id, names, chain_pem, key_pem, issuer, not_before, \
             not_after, last_attempt, last_result, last_error, skipped, failures, next_attempt) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET names = excluded.names, \
             chain_pem = excluded.chain_pem, key_pem = excluded.key_pem, \
             issuer = excluded.issuer, not_before = excluded.not_before, \
             not_after = excluded.not_after, last_attempt = excluded.last_attempt, \
             last_result = excluded.last_result, last_error = excluded.last_error, \
             skipped = excluded.skipped, failures = excluded.failures, \
             next_attempt = excluded.next_attempt",
        )
        .bind(&cert.id)
        .bind(cert.names.join(" "))
        .bind(&cert.chain_pem)
        .bind(&cert.key_pem)
        .bind(&cert.issuer)
        .bind(cert.not_before)
        .bind(cert.not_after)
        .bind(cert.last_attempt)
        .bind(&cert.last_result)
        .bind(&cert.last_error)
        .bind(skipped.join("\n"))
        .bind(i64::from(cert.failures))
        .bind(cert.next_attempt)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
