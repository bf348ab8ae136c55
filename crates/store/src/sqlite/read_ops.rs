//! Batched read paths on SQLite that save a store round trip per message.
//!
//! `message_bodies`: whole messages of a UID range for SEARCH BODY/TEXT, two queries and one
//! blocking file-reading task per batch instead of a query (and a blocking hop) per message.
//! Memory is bounded by a byte budget taken from the stored sizes before anything is read.

use sqlx::Row;

use super::{SqliteStore, int};
use crate::blob::BlobHash;
use crate::error::{Result, StoreError};
use crate::types::{AccountId, MailboxId, Uid};

impl SqliteStore {
    /// See [`Store::message_bodies`](crate::Store::message_bodies).
    pub(super) async fn read_message_bodies(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        first: Uid,
        last: Uid,
        max_bytes: u64,
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        // The range's UIDs, body hashes and sizes; cut where the byte budget runs out (always
        // at least one message, so a caller walking a range makes progress).
        let rows = sqlx::query(
            "SELECT mm.uid, m.blob_hash, m.size FROM mailbox_messages mm \
             JOIN messages m ON m.id = mm.message_id JOIN mailboxes b ON b.id = mm.mailbox_id \
             WHERE mm.mailbox_id = ? AND b.account_id = ? AND mm.uid BETWEEN ? AND ? \
             ORDER BY mm.uid",
        )
        .bind(mailbox.0)
        .bind(account.0)
        .bind(i64::from(first.0))
        .bind(i64::from(last.0))
        .fetch_all(&self.pool)
        .await?;
        let mut wanted: Vec<(u32, String)> = Vec::new();
        let mut total: u64 = 0;
        for r in &rows {
            let size: u64 = int(r.try_get(2)?)?;
            if !wanted.is_empty() && total.saturating_add(size) > max_bytes {
                break;
            }
            total = total.saturating_add(size);
            wanted.push((int(r.try_get(0)?)?, r.try_get(1)?));
        }
        let (Some(&(lo, _)), Some(&(hi, _))) = (wanted.first(), wanted.last()) else {
            return Ok(Vec::new());
        };
        // Bodies kept inline in the database, for the chosen UIDs.
        let inline = sqlx::query(
            "SELECT mm.uid, ib.data FROM mailbox_messages mm \
             JOIN messages m ON m.id = mm.message_id JOIN mailboxes b ON b.id = mm.mailbox_id \
             JOIN inline_blobs ib ON ib.hash = m.blob_hash \
             WHERE mm.mailbox_id = ? AND b.account_id = ? AND mm.uid BETWEEN ? AND ? \
             ORDER BY mm.uid",
        )
        .bind(mailbox.0)
        .bind(account.0)
        .bind(i64::from(lo))
        .bind(i64::from(hi))
        .fetch_all(&self.pool)
        .await?;
        let mut inline = inline.iter().peekable();
        let mut out: Vec<(Uid, Vec<u8>)> = Vec::with_capacity(wanted.len());
        let mut from_files: Vec<(usize, String)> = Vec::new();
        for (uid, hash) in wanted {
            while inline
                .peek()
                .and_then(|r| r.try_get::<i64, _>(0).ok())
                .is_some_and(|u| u < i64::from(uid))
            {
                inline.next();
            }
            match inline.peek() {
                Some(r) if r.try_get::<i64, _>(0)? == i64::from(uid) => {
                    out.push((Uid(uid), r.try_get(1)?));
                }
                _ => {
                    from_files.push((out.len(), hash));
                    out.push((Uid(uid), Vec::new()));
                }
            }
        }
        if !from_files.is_empty() {
            let blobs = self.blobs.clone();
            let hashes: Vec<String> = from_files.iter().map(|(_, h)| h.clone()).collect();
            let bodies = tokio::task::spawn_blocking(move || {
                hashes
                    .iter()
                    .map(|hex| {
                        let hash = BlobHash::from_hex(hex).ok_or_else(|| {
                            StoreError::Database(format!("corrupt blob hash {hex}"))
                        })?;
                        blobs.read(&hash)
                    })
                    .collect::<Result<Vec<Vec<u8>>>>()
            })
            .await
            .map_err(|e| StoreError::Database(format!("blob reader task: {e}")))??;
            for ((i, _), body) in from_files.into_iter().zip(bodies) {
                out[i].1 = body;
            }
        }
        Ok(out)
    }
}
