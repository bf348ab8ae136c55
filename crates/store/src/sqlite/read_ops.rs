//! The mailbox reads IMAP and POP3 make on every command, through the rusqlite connections
//! of [`Lookups`](super::reader::Lookups) instead of sqlx (see `reader` for why).
//!
//! - Point reads (a mailbox by name, one message's body or header) go through `Lookups::read`,
//!   and reads whose size the caller cannot bound (a whole mailbox, what changed since a
//!   MODSEQ, STATUS counts) through `Lookups::read_scan`: inline, moved to the blocking pool
//!   when they run long.
//! - Reads of many bodies or header blocks (SEARCH) go to the blocking pool directly, with the
//!   body files they need read in the same task.
//!
//! Every query names the account: a mailbox or message of another account reads as absent.
//! Every read that must be consistent across its rows is one statement (one snapshot); the
//! caller's order of reads (HIGHESTMODSEQ before rows) is kept because each statement sees
//! every commit made before it started.

use rusqlite::{CachedStatement, Connection, OptionalExtension, Row, StatementStatus};

use super::{SqliteStore, int, normalize_mailbox_name};
use crate::blob::{BlobHash, BlobStore};
use crate::error::{Result, StoreError};
use crate::types::{
    AccountId, Address, Flags, MailboxId, MessageId, ModSeq, SpecialUse, Uid, UidValidity,
};
use crate::{AccountInfo, MailboxInfo, MailboxStatus, MessageFlags, MessageMeta};

/// The header prefix of an inline body (`ib.data`) for [`Store::read_message_header`], with
/// the limit as its (first) parameter: up to and including the first CRLF CRLF, at most the
/// limit.
///
/// [`Store::read_message_header`]: crate::Store::read_message_header
macro_rules! header_prefix {
    () => {
        "substr(ib.data, 1, min(?, \
         CASE WHEN instr(ib.data, X'0D0A0D0A') > 0 THEN instr(ib.data, X'0D0A0D0A') + 3 \
         ELSE length(ib.data) END))"
    };
}

const MAILBOX_BY_NAME: &str = "SELECT id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed, recent_uid \
     FROM mailboxes WHERE account_id = ? AND name = ?";
const MAILBOXES: &str = "SELECT id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed, recent_uid \
     FROM mailboxes WHERE account_id = ? ORDER BY name";
const STATUS: &str = "SELECT b.uidvalidity, b.uidnext, b.highestmodseq, \
        (SELECT COUNT(*) FROM mailbox_messages mm WHERE mm.mailbox_id = b.id), \
        (SELECT COUNT(*) FROM mailbox_messages mm WHERE mm.mailbox_id = b.id AND (mm.flags & 1) = 0), \
        (SELECT COALESCE(SUM(m.size), 0) FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id WHERE mm.mailbox_id = b.id), \
        b.recent_uid \
     FROM mailboxes b WHERE b.id = ? AND b.account_id = ?";
const MESSAGES: &str = "SELECT mm.uid, mm.message_id, m.size, m.internal_date, m.tz_offset, mm.flags, mm.keywords, mm.modseq \
     FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id JOIN mailboxes b ON b.id = mm.mailbox_id \
     WHERE mm.mailbox_id = ? AND b.account_id = ? ORDER BY mm.uid";
// CHANGED_SINCE and EXPUNGED_SINCE name their MODSEQ index (schema 9): without statistics
// SQLite prefers the primary key, which is in UID order, and steps the whole mailbox.
const CHANGED_SINCE: &str = "SELECT mm.uid, mm.message_id, m.size, m.internal_date, m.tz_offset, mm.flags, mm.keywords, mm.modseq \
     FROM mailbox_messages mm INDEXED BY mailbox_messages_modseq JOIN messages m ON m.id = mm.message_id JOIN mailboxes b ON b.id = mm.mailbox_id \
     WHERE mm.mailbox_id = ? AND b.account_id = ? AND mm.modseq > ? ORDER BY mm.uid";
const FLAGS: &str = "SELECT mm.uid, mm.message_id, mm.flags, mm.keywords, mm.modseq \
     FROM mailbox_messages mm JOIN mailboxes b ON b.id = mm.mailbox_id \
     WHERE mm.mailbox_id = ? AND b.account_id = ? ORDER BY mm.uid";
const EXPUNGED_SINCE: &str = "SELECT e.uid FROM expunged e INDEXED BY expunged_modseq JOIN mailboxes b ON b.id = e.mailbox_id \
     WHERE e.mailbox_id = ? AND b.account_id = ? AND e.modseq > ? ORDER BY e.uid";
const EXPUNGE_FLOOR: &str = "SELECT expunge_floor FROM mailboxes WHERE id = ? AND account_id = ?";
const BODY: &str = "SELECT m.blob_hash, ib.data FROM messages m \
     LEFT JOIN inline_blobs ib ON ib.hash = m.blob_hash WHERE m.id = ? AND m.account_id = ?";
const HEADER: &str = concat!(
    "SELECT m.blob_hash, ",
    header_prefix!(),
    " FROM messages m LEFT JOIN inline_blobs ib ON ib.hash = m.blob_hash \
     WHERE m.id = ? AND m.account_id = ?"
);
const HEADERS: &str = concat!(
    "SELECT mm.uid, m.blob_hash, ",
    header_prefix!(),
    " FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id \
     JOIN mailboxes b ON b.id = mm.mailbox_id \
     LEFT JOIN inline_blobs ib ON ib.hash = m.blob_hash \
     WHERE mm.mailbox_id = ? AND b.account_id = ? AND mm.uid BETWEEN ? AND ? ORDER BY mm.uid"
);
const BODIES: &str = "SELECT mm.uid, m.blob_hash, m.size, ib.data FROM mailbox_messages mm \
     JOIN messages m ON m.id = mm.message_id JOIN mailboxes b ON b.id = mm.mailbox_id \
     LEFT JOIN inline_blobs ib ON ib.hash = m.blob_hash \
     WHERE mm.mailbox_id = ? AND b.account_id = ? AND mm.uid BETWEEN ? AND ? ORDER BY mm.uid";
const LOGIN_BY_ADDRESS: &str = "SELECT id, address, display_name, quota_bytes, used_bytes, password_hash \
     FROM accounts WHERE address = ?";
const LOGIN_BY_LOCAL_PART: &str = "SELECT id, address, display_name, quota_bytes, used_bytes, password_hash \
     FROM accounts WHERE local_part = ? LIMIT 2";

/// A cached statement with its VM step counter at zero: SQLite checks the inline budget of
/// [`Lookups::read`](super::reader::Lookups::read) against that counter, which otherwise
/// adds up over every run of a cached statement.
fn prepare<'c>(conn: &'c Connection, sql: &str) -> Result<CachedStatement<'c>> {
    let stmt = conn.prepare_cached(sql)?;
    stmt.reset_status(StatementStatus::VmStep);
    Ok(stmt)
}

/// A text column read without copying it.
fn text<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r str> {
    r.get_ref(i)?
        .as_str()
        .map_err(|e| StoreError::Database(format!("column {i}: {e}")))
}

fn mailbox_row(r: &Row<'_>) -> Result<MailboxInfo> {
    let special: Option<String> = r.get(2)?;
    Ok(MailboxInfo {
        id: MailboxId(r.get(0)?),
        name: r.get(1)?,
        special_use: special.as_deref().and_then(SpecialUse::from_attribute),
        uid_validity: UidValidity(int(r.get(3)?)?),
        uid_next: Uid(int(r.get(4)?)?),
        highest_modseq: ModSeq(int(r.get(5)?)?),
        subscribed: r.get(6)?,
        recent_uid: Uid(int(r.get(7)?)?),
    })
}

fn status_row(r: &Row<'_>) -> Result<MailboxStatus> {
    Ok(MailboxStatus {
        uid_validity: UidValidity(int(r.get(0)?)?),
        uid_next: Uid(int(r.get(1)?)?),
        highest_modseq: ModSeq(int(r.get(2)?)?),
        messages: int(r.get(3)?)?,
        unseen: int(r.get(4)?)?,
        size: int(r.get(5)?)?,
        recent_uid: Uid(int(r.get(6)?)?),
    })
}

fn meta_row(r: &Row<'_>) -> Result<MessageMeta> {
    Ok(MessageMeta {
        uid: Uid(int(r.get(0)?)?),
        message: MessageId(r.get(1)?),
        size: int(r.get(2)?)?,
        internal_date: r.get(3)?,
        tz_offset_minutes: r.get(4)?,
        flags: Flags::from_stored(r.get(5)?, text(r, 6)?),
        modseq: ModSeq(int(r.get(7)?)?),
    })
}

/// Collects the rows of a cached statement through `decode`.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = prepare(conn, sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(decode(r)?);
    }
    Ok(out)
}

fn i64_of(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("value {v} too large")))
}

fn hash_of(hex: &str) -> Result<BlobHash> {
    BlobHash::from_hex(hex).ok_or_else(|| StoreError::Database(format!("corrupt blob hash {hex}")))
}

/// The header prefix of a body stored as a file (on a blocking thread).
fn header_from_file(blobs: &BlobStore, hex: &str, max: usize) -> Result<Vec<u8>> {
    let mut bytes = blobs.read_prefix(&hash_of(hex)?, max)?;
    bytes.truncate(crate::header_prefix_len(&bytes, max));
    Ok(bytes)
}

impl SqliteStore {
    /// See [`Store::mailbox`](crate::Store::mailbox).
    pub(super) async fn read_mailbox(
        &self,
        account: AccountId,
        name: &str,
    ) -> Result<Option<MailboxInfo>> {
        let Ok(name) = normalize_mailbox_name(name) else {
            return Ok(None);
        };
        self.lookups
            .read(move |c| {
                prepare(c, MAILBOX_BY_NAME)?
                    .query_row((account.0, &name), |r| Ok(mailbox_row(r)))
                    .optional()?
                    .transpose()
            })
            .await
    }

    /// See [`Store::list_mailboxes`](crate::Store::list_mailboxes).
    pub(super) async fn read_mailboxes(&self, account: AccountId) -> Result<Vec<MailboxInfo>> {
        self.lookups
            .read(move |c| collect(c, MAILBOXES, [account.0], mailbox_row))
            .await
    }

    /// See [`Store::mailbox_status`](crate::Store::mailbox_status).
    pub(super) async fn read_mailbox_status(
        &self,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<MailboxStatus> {
        self.lookups
            .read_scan(("status", mailbox.0), move |c| {
                prepare(c, STATUS)?
                    .query_row((mailbox.0, account.0), |r| Ok(status_row(r)))
                    .optional()?
                    .ok_or_else(|| StoreError::NotFound("no such mailbox".into()))?
            })
            .await
    }

    /// See [`Store::messages`](crate::Store::messages).
    pub(super) async fn read_messages(
        &self,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<Vec<MessageMeta>> {
        self.lookups
            .read_scan(("messages", mailbox.0), move |c| {
                collect(c, MESSAGES, (mailbox.0, account.0), meta_row)
            })
            .await
    }

    /// See [`Store::message_flags`](crate::Store::message_flags): the first SELECT of a
    /// mailbox, so the tightest loop here (no copy of the keyword text when it is empty, the
    /// usual case).
    pub(super) async fn read_message_flags(
        &self,
        account: AccountId,
        mailbox: MailboxId,
    ) -> Result<Vec<MessageFlags>> {
        self.lookups
            .read_scan(("flags", mailbox.0), move |c| {
                collect(c, FLAGS, (mailbox.0, account.0), |r| {
                    Ok(MessageFlags {
                        uid: Uid(int(r.get(0)?)?),
                        message: MessageId(r.get(1)?),
                        flags: Flags::from_stored(r.get(2)?, text(r, 3)?),
                        modseq: ModSeq(int(r.get(4)?)?),
                    })
                })
            })
            .await
    }

    /// See [`Store::messages_changed_since`](crate::Store::messages_changed_since).
    pub(super) async fn read_changed_since(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        modseq: ModSeq,
    ) -> Result<Vec<MessageMeta>> {
        let since = i64_of(modseq.0)?;
        self.lookups
            .read_scan(("changed", mailbox.0), move |c| {
                collect(c, CHANGED_SINCE, (mailbox.0, account.0, since), meta_row)
            })
            .await
    }

    /// See [`Store::expunged_since`](crate::Store::expunged_since). The log is read before
    /// the mailbox's floor: a pruning in between raises the floor, so the answer errs
    /// towards `None`, never towards a list missing pruned UIDs.
    pub(super) async fn read_expunged_since(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        modseq: ModSeq,
    ) -> Result<Option<Vec<Uid>>> {
        let since = i64_of(modseq.0)?;
        self.lookups
            .read_scan(("expunged", mailbox.0), move |c| {
                let uids = collect(c, EXPUNGED_SINCE, (mailbox.0, account.0, since), |r| {
                    Ok(Uid(int(r.get(0)?)?))
                })?;
                let floor: Option<i64> = prepare(c, EXPUNGE_FLOOR)?
                    .query_row((mailbox.0, account.0), |r| r.get(0))
                    .optional()?;
                Ok(match floor {
                    Some(floor) if since < floor => None,
                    _ => Some(uids),
                })
            })
            .await
    }

    /// See [`Store::read_message`](crate::Store::read_message): the body from the database
    /// inline, or from its file on the blocking pool.
    pub(super) async fn read_message_body(
        &self,
        account: AccountId,
        message: MessageId,
    ) -> Result<Vec<u8>> {
        let (hex, inline) = self
            .lookups
            .read(move |c| {
                Ok(prepare(c, BODY)?
                    .query_row((message.0, account.0), |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                    })
                    .optional()?)
            })
            .await?
            .ok_or_else(|| StoreError::NotFound("no such message".into()))?;
        if let Some(data) = inline {
            return Ok(data);
        }
        let hash = hash_of(&hex)?;
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.read(&hash))
            .await
            .map_err(|e| StoreError::Database(format!("blob reader task: {e}")))?
    }

    /// See [`Store::read_message_header`](crate::Store::read_message_header).
    pub(super) async fn read_header(
        &self,
        account: AccountId,
        message: MessageId,
        max: usize,
    ) -> Result<Vec<u8>> {
        let limit = i64_of(max as u64)?;
        let (hex, inline) = self
            .lookups
            .read(move |c| {
                Ok(prepare(c, HEADER)?
                    .query_row((limit, message.0, account.0), |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                    })
                    .optional()?)
            })
            .await?
            .ok_or_else(|| StoreError::NotFound("no such message".into()))?;
        if let Some(data) = inline {
            return Ok(data);
        }
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || header_from_file(&blobs, &hex, max))
            .await
            .map_err(|e| StoreError::Database(format!("blob reader task: {e}")))?
    }

    /// See [`Store::message_headers`](crate::Store::message_headers): one statement and the
    /// file reads it needs, on the blocking pool.
    pub(super) async fn read_headers(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        first: Uid,
        last: Uid,
        max: usize,
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        let limit = i64_of(max as u64)?;
        let blobs = self.blobs.clone();
        self.lookups
            .blocking(move |c| {
                let rows = collect(
                    c,
                    HEADERS,
                    (
                        limit,
                        mailbox.0,
                        account.0,
                        i64::from(first.0),
                        i64::from(last.0),
                    ),
                    |r| {
                        Ok((
                            Uid(int(r.get(0)?)?),
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                        ))
                    },
                )?;
                rows.into_iter()
                    .map(|(uid, hex, inline)| match inline {
                        Some(data) => Ok((uid, data)),
                        None => Ok((uid, header_from_file(&blobs, &hex, max)?)),
                    })
                    .collect()
            })
            .await
    }

    /// See [`Store::message_bodies`](crate::Store::message_bodies): SEARCH BODY/TEXT reads
    /// a chunk of whole messages with one statement (UIDs, sizes and inline bodies in one
    /// snapshot) and the body files it needs, on the blocking pool. Memory is bounded by the
    /// byte budget, checked against the stored size before a body is kept.
    pub(super) async fn read_message_bodies(
        &self,
        account: AccountId,
        mailbox: MailboxId,
        first: Uid,
        last: Uid,
        max_bytes: u64,
    ) -> Result<Vec<(Uid, Vec<u8>)>> {
        let blobs = self.blobs.clone();
        self.lookups
            .blocking(move |c| {
                let mut out: Vec<(Uid, Vec<u8>)> = Vec::new();
                let mut from_files: Vec<(usize, String)> = Vec::new();
                let mut total: u64 = 0;
                // The statement ends (and its read snapshot with it) before the files are read.
                let mut stmt = prepare(c, BODIES)?;
                let mut rows =
                    stmt.query((mailbox.0, account.0, i64::from(first.0), i64::from(last.0)))?;
                while let Some(r) = rows.next()? {
                    // Cut where the budget runs out (always at least one message, so a
                    // caller walking a range makes progress).
                    let size: u64 = int(r.get(2)?)?;
                    if !out.is_empty() && total.saturating_add(size) > max_bytes {
                        break;
                    }
                    total = total.saturating_add(size);
                    let uid = Uid(int(r.get(0)?)?);
                    match r.get::<_, Option<Vec<u8>>>(3)? {
                        Some(data) => out.push((uid, data)),
                        None => {
                            from_files.push((out.len(), r.get(1)?));
                            out.push((uid, Vec::new()));
                        }
                    }
                }
                drop(rows);
                drop(stmt);
                for (i, hex) in from_files {
                    out[i].1 = blobs.read(&hash_of(&hex)?)?;
                }
                Ok(out)
            })
            .await
    }

    /// The account a login names and its stored password hash ([`Store::authenticate`]):
    /// `login` is a full address, or a local part that exactly one hosted domain has.
    ///
    /// [`Store::authenticate`]: crate::Store::authenticate
    pub(super) async fn read_login(&self, login: &str) -> Result<Option<(AccountInfo, String)>> {
        let (sql, key) = if login.contains('@') {
            match Address::parse(login) {
                Ok(address) => (LOGIN_BY_ADDRESS, address.to_string()),
                Err(_) => return Ok(None),
            }
        } else {
            (LOGIN_BY_LOCAL_PART, login.to_lowercase())
        };
        let mut rows = self
            .lookups
            .read(move |c| {
                collect(c, sql, [&key], |r| {
                    Ok((
                        AccountInfo {
                            id: AccountId(r.get(0)?),
                            address: Address::parse(text(r, 1)?)?,
                            display_name: r.get(2)?,
                            quota_bytes: int(r.get(3)?)?,
                            used_bytes: int(r.get(4)?)?,
                        },
                        r.get::<_, String>(5)?,
                    ))
                })
            })
            .await?;
        // A bare local part is only unambiguous when exactly one domain has it.
        Ok(if rows.len() == 1 { rows.pop() } else { None })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::types::{Address, Domain, FlagOp, Flags, ModSeq, Uid};
    use crate::{NewAccount, NewMessage, SqliteStore, Store};

    /// With an inline budget of one VM step every read runs out of it, is moved to the
    /// blocking pool and still returns what an unbudgeted read returns; afterwards the
    /// pooled connections (one interrupted mid-statement) see the next commit.
    #[tokio::test]
    async fn reads_moved_to_the_blocking_pool_return_the_same_and_stay_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<SqliteStore> = SqliteStore::open(dir.path()).await.expect("open");
        let domain = Domain::parse("example.org").expect("domain");
        store.add_domain(&domain).await.expect("domain");
        let account = store
            .add_account(NewAccount {
                address: Address::parse("a@example.org").expect("address"),
                password_hash: "x".into(),
                display_name: String::new(),
                quota_bytes: 0,
            })
            .await
            .expect("account");
        let inbox = store
            .mailbox(account, "INBOX")
            .await
            .expect("q")
            .expect("box");
        let mut last = None;
        for i in 0..20 {
            let bytes = format!("Subject: {i}\r\n\r\nbody\r\n").into_bytes();
            last = Some(
                store
                    .append(account, inbox.id, NewMessage::now(bytes))
                    .await
                    .expect("append"),
            );
        }
        let last = last.expect("appended");
        let seen = Flags::from_names(["\\Seen"]).expect("flags");
        store
            .store_flags(account, inbox.id, &[Uid(3)], FlagOp::Add, &seen)
            .await
            .expect("store");
        store
            .expunge(account, inbox.id, Some(&[Uid(5)]), true)
            .await
            .expect("expunge");

        let everything = |s: Arc<SqliteStore>| async move {
            (
                s.mailbox(account, "INBOX").await.expect("mailbox"),
                s.list_mailboxes(account).await.expect("list"),
                s.mailbox_status(account, inbox.id).await.expect("status"),
                s.messages(account, inbox.id).await.expect("messages"),
                s.message_flags(account, inbox.id).await.expect("flags"),
                s.messages_changed_since(account, inbox.id, ModSeq(5))
                    .await
                    .expect("changed"),
                s.expunged_since(account, inbox.id, ModSeq(0))
                    .await
                    .expect("expunged"),
                s.read_message(account, last.message).await.expect("body"),
                s.read_message_header(account, last.message, 100)
                    .await
                    .expect("header"),
            )
        };
        let inline = everything(store.clone()).await;
        assert_eq!(store.lookups.moved(), 0, "small reads run inline");
        // The budget is per run of a statement, not per cached statement's lifetime: a
        // point read run 3,000 times (over 40,000 steps in all) always stays inline.
        for _ in 0..3000 {
            store.mailbox(account, "INBOX").await.expect("mailbox");
        }
        assert_eq!(store.lookups.moved(), 0, "point reads stay inline");
        assert_eq!(inline.3.len(), 19);
        store.lookups.set_inline_steps(1);
        let moved = everything(store.clone()).await;
        assert!(store.lookups.moved() >= 9, "every read was moved");
        assert_eq!(moved, inline);
        // A scan that ran out of its budget goes to the pool directly the next time.
        let before = store.lookups.moved();
        let flags = store.message_flags(account, inbox.id).await.expect("flags");
        assert_eq!(flags, inline.4);
        assert_eq!(store.lookups.moved(), before, "not attempted inline again");

        // The interrupted connections are back in the pool; none holds an old snapshot.
        let bytes = b"Subject: new\r\n\r\nx\r\n".to_vec();
        let new = store
            .append(account, inbox.id, NewMessage::now(bytes))
            .await
            .expect("append");
        let flags = store.message_flags(account, inbox.id).await.expect("flags");
        assert_eq!(flags.last().map(|m| m.uid), Some(new.uid));
        store
            .lookups
            .set_inline_steps(super::super::reader::INLINE_STEPS);
        let flags = store.message_flags(account, inbox.id).await.expect("flags");
        assert_eq!(flags.last().map(|m| m.uid), Some(new.uid));
    }
}
