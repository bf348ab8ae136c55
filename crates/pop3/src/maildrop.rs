//! POP3 semantics between the session and the store: the maildrop snapshot, deletion marks,
//! unique-ids, TOP's cut, the update on QUIT, and the one-session-per-account lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use store::{
    AccountId, FlagOp, Flags, MailboxId, MessageId, Store, StoreError, SystemFlags, Uid,
    UidValidity,
};

use crate::wire::MsgNum;

/// One message of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its UID in INBOX.
    pub uid: Uid,
    /// The stored body.
    pub message: MessageId,
    /// Size in octets as stored (CRLF line endings), which is what RETR sends before
    /// byte-stuffing: RFC 1939 §5 (LIST) asks for the exact size.
    pub size: u64,
    /// Marked by DELE in this session (RFC 1939 §5).
    pub deleted: bool,
    /// Sent whole by RETR in this session: gets `\Seen` in the UPDATE state, as Dovecot does,
    /// so a message downloaded over POP3 shows as read in IMAP clients. TOP does not count.
    pub retrieved: bool,
}

/// Why a message-number does not name a usable message (RFC 1939 §5: "-ERR no such message").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// Out of range (0, or beyond the snapshot).
    #[error("no such message")]
    NoSuchMessage,
    /// Marked as deleted in this session: RFC 1939 §5 says commands "may not refer to a message
    /// marked as deleted".
    #[error("message already deleted")]
    Deleted,
}

/// The maildrop as fixed at login (RFC 1939 §4: message-numbers are assigned when the
/// TRANSACTION state begins and do not change during the session). Messages delivered later
/// are seen by the next session; messages expunged meanwhile by IMAP stay listed here (their
/// bodies remain readable until garbage collection) and the update simply skips them.
#[derive(Debug, Clone)]
pub struct Maildrop {
    /// INBOX of the account.
    pub mailbox: MailboxId,
    /// INBOX's UIDVALIDITY at login, part of every unique-id.
    pub uid_validity: UidValidity,
    /// Message `n` is `entries[n - 1]`.
    entries: Vec<Entry>,
}

impl Maildrop {
    /// Reads the account's INBOX.
    pub async fn load(store: &dyn Store, account: AccountId) -> Result<Maildrop, StoreError> {
        let inbox = store
            .mailbox(account, "INBOX")
            .await?
            .ok_or_else(|| StoreError::NotFound("account has no INBOX".into()))?;
        let entries = store
            .messages(account, inbox.id)
            .await?
            .into_iter()
            .map(|m| Entry {
                uid: m.uid,
                message: m.message,
                size: m.size,
                deleted: false,
                retrieved: false,
            })
            .collect();
        Ok(Maildrop {
            mailbox: inbox.id,
            uid_validity: inbox.uid_validity,
            entries,
        })
    }

    /// A snapshot from parts (for tests).
    pub fn from_entries(
        mailbox: MailboxId,
        uid_validity: UidValidity,
        entries: Vec<Entry>,
    ) -> Self {
        Maildrop {
            mailbox,
            uid_validity,
            entries,
        }
    }

    /// Number and total size of the messages not marked deleted (RFC 1939 §5, STAT).
    pub fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, size), (_, e)| (n + 1, size + e.size))
    }

    /// The messages not marked deleted, with their message-numbers.
    pub fn live(&self) -> impl Iterator<Item = (MsgNum, &Entry)> {
        self.entries
            .iter()
            .zip(1u32..)
            .filter(|(e, _)| !e.deleted)
            .map(|(e, n)| (MsgNum(n), e))
    }

    /// The message `n`, unless it does not exist or is marked deleted.
    pub fn get(&self, n: MsgNum) -> Result<&Entry, MsgError> {
        let entry = self.slot(n).and_then(|i| self.entries.get(i));
        match entry {
            None => Err(MsgError::NoSuchMessage),
            Some(e) if e.deleted => Err(MsgError::Deleted),
            Some(e) => Ok(e),
        }
    }

    /// Marks message `n` deleted (RFC 1939 §5, DELE).
    pub fn mark_deleted(&mut self, n: MsgNum) -> Result<(), MsgError> {
        self.get(n)?;
        if let Some(e) = self.slot(n).and_then(|i| self.entries.get_mut(i)) {
            e.deleted = true;
        }
        Ok(())
    }

    /// Notes that message `n` was retrieved whole (RETR), for `\Seen` on QUIT.
    pub fn mark_retrieved(&mut self, n: MsgNum) {
        if let Some(e) = self.slot(n).and_then(|i| self.entries.get_mut(i)) {
            e.retrieved = true;
        }
    }

    /// Unmarks every message (RFC 1939 §5, RSET); like Dovecot, RSET also forgets which
    /// messages were retrieved, so nothing changes on QUIT.
    pub fn unmark_all(&mut self) {
        for e in &mut self.entries {
            e.deleted = false;
            e.retrieved = false;
        }
    }

    /// UIDs of the messages retrieved and not marked deleted, ascending.
    pub fn retrieved(&self) -> Vec<Uid> {
        self.entries
            .iter()
            .filter(|e| e.retrieved && !e.deleted)
            .map(|e| e.uid)
            .collect()
    }

    /// UIDs of the messages marked deleted, ascending.
    pub fn marked(&self) -> Vec<Uid> {
        self.entries
            .iter()
            .filter(|e| e.deleted)
            .map(|e| e.uid)
            .collect()
    }

    /// The unique-id of an entry (RFC 1939 §7, UIDL).
    pub fn unique_id(&self, entry: &Entry) -> String {
        unique_id(self.uid_validity, entry.uid)
    }

    /// RFC 1939 §6 (UPDATE state): removes the marked messages and sets `\Seen` on the ones
    /// retrieved. Expunged with `force`, so no `\Deleted` flag is involved, and through the
    /// store, so IMAP sessions of the account get the change feed's `Expunged` and flag events.
    /// Returns the UIDs actually removed (a message an IMAP session expunged first is skipped;
    /// so is its `\Seen`).
    pub async fn update(
        &self,
        store: &dyn Store,
        account: AccountId,
    ) -> Result<Vec<Uid>, StoreError> {
        let marked = self.marked();
        let expunged = if marked.is_empty() {
            Vec::new()
        } else {
            store
                .expunge(account, self.mailbox, Some(&marked), true)
                .await?
        };
        let seen = self.retrieved();
        if !seen.is_empty() {
            let flags = Flags {
                system: SystemFlags(SystemFlags::SEEN),
                ..Flags::default()
            };
            store
                .store_flags(account, self.mailbox, &seen, FlagOp::Add, &flags)
                .await?;
        }
        Ok(expunged)
    }

    fn slot(&self, n: MsgNum) -> Option<usize> {
        usize::try_from(n.0).ok()?.checked_sub(1)
    }
}

/// RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21–0x7E, the same for a message across
/// sessions and never reused for another message in the maildrop. UIDVALIDITY and UID together
/// identify a message for as long as it stays in INBOX (RFC 3501 §2.3.1.1), so both go in.
///
/// The format is Dovecot's default `pop3_uidl_format` (`%08Xu%08Xv`: UID then UIDVALIDITY, 8
/// upper-case hex digits each), so a mailbox imported from Dovecot with its UIDs and
/// UIDVALIDITY kept shows clients the unique-ids they already know: nothing is downloaded twice.
pub fn unique_id(uid_validity: UidValidity, uid: Uid) -> String {
    format!("{:08X}{:08X}", uid.0, uid_validity.0)
}

/// The part of a message TOP sends (RFC 1939 §7): the header, the blank line after it, and at
/// most `lines` lines of the body. A message without a blank line is all header. Lines end at
/// LF; when the body has no more than `lines` lines, the whole message.
pub fn top_slice(message: &[u8], lines: u64) -> &[u8] {
    // Find the end of the header: the first empty line (CRLF or bare LF).
    let mut at = 0;
    let body_start = loop {
        if at >= message.len() {
            return message;
        }
        let rest = &message[at..];
        if rest.starts_with(b"\r\n") {
            break at + 2;
        }
        if rest.starts_with(b"\n") {
            break at + 1;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => at += lf + 1,
            None => return message,
        }
    };
    let mut end = body_start;
    let mut left = lines;
    while left > 0 && end < message.len() {
        match message[end..].iter().position(|&b| b == b'\n') {
            Some(lf) => end += lf + 1,
            None => end = message.len(),
        }
        left -= 1;
    }
    &message[..end]
}

/// Process-wide exclusive locks on maildrops: RFC 1939 §4, "the POP3 server then acquires an
/// exclusive-access lock on the maildrop". Held from a successful login until the session ends
/// (after the UPDATE state). Only POP3 takes it: IMAP sessions run alongside.
#[derive(Debug, Clone, Default)]
pub struct MaildropLocks {
    held: Arc<Mutex<HashSet<AccountId>>>,
}

impl MaildropLocks {
    /// Locks `account`'s maildrop, or `None` when another session holds it.
    pub fn try_lock(&self, account: AccountId) -> Option<MaildropLock> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if !held.insert(account) {
            return None;
        }
        Some(MaildropLock {
            held: Arc::clone(&self.held),
            account,
        })
    }

    /// Whether `account` is locked (for tests and diagnostics).
    pub fn is_locked(&self, account: AccountId) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&account)
    }
}

/// A held maildrop lock; released when dropped, however the session ends.
#[derive(Debug)]
pub struct MaildropLock {
    held: Arc<Mutex<HashSet<AccountId>>>,
    account: AccountId,
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maildrop() -> Maildrop {
        let entries = (1..=3)
            .map(|i| Entry {
                uid: Uid(i * 10),
                message: MessageId(i64::from(i)),
                size: u64::from(i) * 100,
                deleted: false,
                retrieved: false,
            })
            .collect();
        Maildrop::from_entries(MailboxId(1), UidValidity(0x1234), entries)
    }

    #[test]
    fn marks_and_numbers() {
        let mut m = maildrop();
        assert_eq!(m.stat(), (3, 600));
        assert_eq!(m.get(MsgNum(0)), Err(MsgError::NoSuchMessage));
        assert_eq!(m.get(MsgNum(4)), Err(MsgError::NoSuchMessage));
        assert_eq!(m.get(MsgNum(u32::MAX)), Err(MsgError::NoSuchMessage));
        assert_eq!(m.get(MsgNum(2)).map(|e| e.uid), Ok(Uid(20)));
        assert_eq!(m.mark_deleted(MsgNum(2)), Ok(()));
        assert_eq!(m.mark_deleted(MsgNum(2)), Err(MsgError::Deleted));
        assert_eq!(m.get(MsgNum(2)), Err(MsgError::Deleted));
        assert_eq!(m.stat(), (2, 400));
        // Numbers do not shift after DELE (RFC 1939 §5).
        let live: Vec<u32> = m.live().map(|(n, _)| n.0).collect();
        assert_eq!(live, [1, 3]);
        assert_eq!(m.marked(), [Uid(20)]);
        m.unmark_all();
        assert_eq!(m.stat(), (3, 600));
        assert!(m.marked().is_empty());
    }

    #[test]
    fn unique_ids_are_stable_valid_and_distinct() {
        let m = maildrop();
        let ids: Vec<String> = m.live().map(|(_, e)| m.unique_id(e)).collect();
        assert_eq!(ids[0], "0000000A00001234");
        assert_eq!(
            ids,
            m.live().map(|(_, e)| m.unique_id(e)).collect::<Vec<_>>()
        );
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let extreme = unique_id(UidValidity(u32::MAX), Uid(u32::MAX));
        assert!(extreme.len() <= 70);
        assert!(extreme.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        // Same UID under another UIDVALIDITY is another message.
        assert_ne!(
            unique_id(UidValidity(1), Uid(5)),
            unique_id(UidValidity(2), Uid(5))
        );
    }

    #[test]
    fn top_table() {
        let msg: &[u8] = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3";
        let cases: &[(&[u8], u64, &[u8])] = &[
            (msg, 0, b"A: 1\r\nB: 2\r\n\r\n"),
            (msg, 1, b"A: 1\r\nB: 2\r\n\r\nl1\r\n"),
            (msg, 2, b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"),
            (msg, 3, msg),
            (msg, u64::MAX, msg),
            // No blank line: everything is header.
            (b"A: 1\r\nB: 2\r\n", 0, b"A: 1\r\nB: 2\r\n"),
            (b"A: 1", 5, b"A: 1"),
            // Empty header.
            (b"\r\nbody\r\n", 0, b"\r\n"),
            (b"", 0, b""),
            // Bare LF separators.
            (b"A: 1\n\nx\ny\n", 1, b"A: 1\n\nx\n"),
            // An empty body line counts as a line.
            (b"A: 1\r\n\r\n\r\nx\r\n", 1, b"A: 1\r\n\r\n\r\n"),
        ];
        for (message, lines, want) in cases {
            assert_eq!(
                top_slice(message, *lines),
                *want,
                "{:?} {lines}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let locks = MaildropLocks::default();
        let a = locks.try_lock(AccountId(1));
        assert!(a.is_some());
        assert!(locks.try_lock(AccountId(1)).is_none());
        let b = locks.try_lock(AccountId(2));
        assert!(b.is_some());
        assert!(locks.is_locked(AccountId(1)));
        drop(a);
        assert!(!locks.is_locked(AccountId(1)));
        assert!(locks.clone().try_lock(AccountId(1)).is_some());
        assert!(locks.is_locked(AccountId(2)));
    }
}
