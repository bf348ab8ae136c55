//! A shared in-memory index of mailboxes (UID, message, flags, MODSEQ), so SELECT of a large
//! mailbox copies from memory instead of stepping every row in the store.
//!
//! Invariants:
//! - A [`MailboxIndex`] is an immutable snapshot. Its `modseq` is a lower bound: every change
//!   with a MODSEQ up to it is reflected in `msgs` (it was read from the store *before* the
//!   rows, like a session's HIGHESTMODSEQ). Rows may reflect later changes too; they were one
//!   consistent read of the store.
//! - A session never uses a snapshot as is: it reads the mailbox's current HIGHESTMODSEQ and,
//!   when the snapshot is older, applies what changed since (`messages_changed_since`,
//!   `expunged_since`), or reads the mailbox whole when garbage collection has pruned the
//!   expunge log past the snapshot (`expunged_since` answers `None`). So the index cannot
//!   serve anything staler than the store at the start of the SELECT.
//! - A snapshot is only used for the account, mailbox id *and* UIDVALIDITY it was built for.
//! - Shared by all sessions of all accounts (a mailbox id belongs to one account, and sessions
//!   only ask for ids of their own account). Memory is bounded: at most [`MAX_CACHED_MESSAGES`]
//!   messages over all snapshots, least recently used dropped first, and snapshots unused for
//!   [`UNUSED_FOR`] are dropped. Small mailboxes are kept too: sharing one list keeps
//!   thousands of idle sessions on the same mailbox small.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use store::{AccountId, Flags, MailboxId, MessageId, MessageMeta};

/// What the caches are keyed by: the account too, so that a mailbox id reused by the store
/// for another account's mailbox can never reach the first account's entries.
pub(crate) type MailboxKey = (AccountId, MailboxId);

/// Messages held over all snapshots at most (~72 bytes each).
pub(crate) const MAX_CACHED_MESSAGES: usize = 500_000;
/// A snapshot nobody asked for in this long is dropped.
const UNUSED_FOR: Duration = Duration::from_secs(15 * 60);

/// One message of a mailbox as a session knows it. In a shared snapshot `recent` and
/// `expunged` are false; `size`, `date`, `tz` are zero when unknown (messages listed by a
/// full read; sessions load them when a command needs them), set for messages added later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Msg {
    pub uid: u32,
    pub message: MessageId,
    pub size: u64,
    pub date: i64,
    pub tz: i32,
    pub flags: Flags,
    pub modseq: u64,
    /// \Recent in this session (never in a shared snapshot).
    pub recent: bool,
    /// Expunged in the store, not yet announced (RFC 3501 §7.4.1; never in a snapshot).
    pub expunged: bool,
}

impl Msg {
    /// A message as a snapshot holds it.
    pub(crate) fn new(uid: u32, message: MessageId, flags: Flags, modseq: u64) -> Self {
        Msg {
            uid,
            message,
            size: 0,
            date: 0,
            tz: 0,
            flags,
            modseq,
            recent: false,
            expunged: false,
        }
    }

    /// Same UID, message, flags and MODSEQ (what a snapshot holds).
    pub(crate) fn same_state(&self, other: &Msg) -> bool {
        self.uid == other.uid
            && self.message == other.message
            && self.modseq == other.modseq
            && self.flags == other.flags
    }
}

/// A mailbox's messages at (at least) `modseq`, ascending UIDs.
#[derive(Debug)]
pub(crate) struct MailboxIndex {
    pub uid_validity: u32,
    pub modseq: u64,
    /// Shared as is with sessions that have no \Recent message in it (copy on write).
    pub msgs: Arc<Vec<Msg>>,
}

impl MailboxIndex {
    /// A copy brought forward to `modseq` by the store's changes (`changed`: every message
    /// with a MODSEQ above the snapshot's, ascending UIDs; `gone`: UIDs expunged since).
    pub(crate) fn advanced(&self, modseq: u64, changed: &[MessageMeta], gone: &[u32]) -> Self {
        let mut msgs = Vec::clone(&self.msgs);
        apply_changes(&mut msgs, changed, gone);
        MailboxIndex {
            uid_validity: self.uid_validity,
            modseq: modseq.max(self.modseq),
            msgs: Arc::new(msgs),
        }
    }
}

/// Applies a store delta to an ascending-UID list: flags and MODSEQ of known messages
/// replaced, new messages (above the highest known UID) appended, expunged ones removed.
pub(crate) fn apply_changes(msgs: &mut Vec<Msg>, changed: &[MessageMeta], gone: &[u32]) {
    let max_known = msgs.last().map_or(0, |m| m.uid);
    for c in changed {
        let uid = c.uid.0;
        if uid > max_known {
            if msgs.last().is_none_or(|m| m.uid < uid) {
                let mut m = Msg::new(uid, c.message, c.flags.clone(), c.modseq.0);
                (m.size, m.date, m.tz) = (c.size, c.internal_date, c.tz_offset_minutes);
                msgs.push(m);
            }
            continue;
        }
        if let Ok(i) = msgs.binary_search_by_key(&uid, |m| m.uid) {
            let m = &mut msgs[i];
            if c.modseq.0 >= m.modseq {
                m.flags = c.flags.clone();
                m.modseq = c.modseq.0;
            }
        }
    }
    if !gone.is_empty() {
        let gone: BTreeSet<u32> = gone.iter().copied().collect();
        msgs.retain(|m| !gone.contains(&m.uid));
    }
}

struct Slot {
    index: Arc<MailboxIndex>,
    last_used: Instant,
}

/// The shared cache of snapshots.
pub(crate) struct IndexCache {
    slots: Mutex<HashMap<MailboxKey, Slot>>,
    /// Messages held at most over all snapshots.
    max_messages: usize,
}

impl Default for IndexCache {
    fn default() -> Self {
        IndexCache::with_limit(MAX_CACHED_MESSAGES)
    }
}

impl IndexCache {
    /// A cache holding at most `max_messages` messages.
    pub(crate) fn with_limit(max_messages: usize) -> Self {
        IndexCache {
            slots: Mutex::new(HashMap::new()),
            max_messages,
        }
    }

    /// The snapshot of `mailbox`, if one is held for this UIDVALIDITY.
    pub(crate) fn get(&self, mailbox: MailboxKey, uid_validity: u32) -> Option<Arc<MailboxIndex>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.get_mut(&mailbox)?;
        if slot.index.uid_validity != uid_validity {
            slots.remove(&mailbox);
            return None;
        }
        slot.last_used = Instant::now();
        Some(slot.index.clone())
    }

    /// Offers a snapshot; kept unless a newer one (higher MODSEQ, same UIDVALIDITY) is held
    /// or it is larger than the whole cache.
    pub(crate) fn put(&self, mailbox: MailboxKey, index: Arc<MailboxIndex>) {
        let n = index.msgs.len();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if n > self.max_messages {
            slots.remove(&mailbox);
            return;
        }
        if let Some(old) = slots.get(&mailbox)
            && old.index.uid_validity == index.uid_validity
            && old.index.modseq >= index.modseq
        {
            return;
        }
        let now = Instant::now();
        slots.insert(
            mailbox,
            Slot {
                index,
                last_used: now,
            },
        );
        slots.retain(|_, s| now.duration_since(s.last_used) < UNUSED_FOR);
        let mut total: usize = slots.values().map(|s| s.index.msgs.len()).sum();
        while total > self.max_messages {
            let Some((&oldest, _)) = slots.iter().min_by_key(|(_, s)| s.last_used) else {
                break;
            };
            if let Some(s) = slots.remove(&oldest) {
                total -= s.index.msgs.len();
            }
        }
    }

    /// Forgets `mailbox` (deleted, or its UIDVALIDITY changed).
    pub(crate) fn forget(&self, mailbox: MailboxKey) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&mailbox);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Header bytes held at most over all mailboxes.
pub(crate) const MAX_CACHED_HEADER_BYTES: usize = 64 * 1024 * 1024;

/// Header blocks of one mailbox, by UID.
struct MailboxHeaders {
    uid_validity: u32,
    heads: HashMap<u32, Arc<[u8]>>,
    bytes: usize,
    last_used: Instant,
}

/// Shared header blocks for header SEARCH (`SUBJECT`, `FROM`, `HEADER` ...), keyed by mailbox,
/// UIDVALIDITY and UID. A message's content never changes and a UID is never reused within
/// one UIDVALIDITY (RFC 3501 §2.3.1.1), so an entry can never be stale; expunged UIDs simply
/// stop being asked for and leave with their mailbox's entry. Bounded by
/// [`MAX_CACHED_HEADER_BYTES`], least recently used mailbox dropped first.
pub(crate) struct HeaderCache {
    mailboxes: Mutex<HashMap<MailboxKey, MailboxHeaders>>,
    max_bytes: usize,
}

impl Default for HeaderCache {
    fn default() -> Self {
        HeaderCache::with_limit(MAX_CACHED_HEADER_BYTES)
    }
}

impl HeaderCache {
    /// A cache holding at most `max_bytes` of headers.
    pub(crate) fn with_limit(max_bytes: usize) -> Self {
        HeaderCache {
            mailboxes: Mutex::new(HashMap::new()),
            max_bytes,
        }
    }

    /// The cached header blocks of `uids` (same order; `None` where not cached).
    pub(crate) fn get_many(
        &self,
        mailbox: MailboxKey,
        uid_validity: u32,
        uids: impl Iterator<Item = u32>,
    ) -> Vec<Option<Arc<[u8]>>> {
        let mut all = self
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match all.get_mut(&mailbox) {
            Some(m) if m.uid_validity == uid_validity => {
                m.last_used = Instant::now();
                uids.map(|u| m.heads.get(&u).cloned()).collect()
            }
            _ => uids.map(|_| None).collect(),
        }
    }

    /// Remembers header blocks read from the store.
    pub(crate) fn put_many(
        &self,
        mailbox: MailboxKey,
        uid_validity: u32,
        heads: impl Iterator<Item = (u32, Arc<[u8]>)>,
    ) {
        let now = Instant::now();
        let mut all = self
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let m = all.entry(mailbox).or_insert_with(|| MailboxHeaders {
            uid_validity,
            heads: HashMap::new(),
            bytes: 0,
            last_used: now,
        });
        if m.uid_validity != uid_validity {
            *m = MailboxHeaders {
                uid_validity,
                heads: HashMap::new(),
                bytes: 0,
                last_used: now,
            };
        }
        m.last_used = now;
        for (uid, head) in heads {
            if head.len() > self.max_bytes / 4 {
                continue;
            }
            let len = head.len();
            if let Some(old) = m.heads.insert(uid, head) {
                m.bytes -= old.len();
            }
            m.bytes += len;
        }
        all.retain(|_, m| now.duration_since(m.last_used) < UNUSED_FOR);
        let mut total: usize = all.values().map(|m| m.bytes).sum();
        while total > self.max_bytes {
            let Some((&oldest, _)) = all.iter().min_by_key(|(_, m)| m.last_used) else {
                break;
            };
            if let Some(m) = all.remove(&oldest) {
                total -= m.bytes;
            }
        }
    }

    /// Forgets `mailbox` (deleted).
    pub(crate) fn forget(&self, mailbox: MailboxKey) {
        self.mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::{ModSeq, SystemFlags, Uid};

    fn key(id: i64) -> MailboxKey {
        (AccountId(1), MailboxId(id))
    }

    fn entry(uid: u32, modseq: u64) -> Msg {
        Msg::new(uid, MessageId(i64::from(uid)), Flags::default(), modseq)
    }

    fn meta(uid: u32, modseq: u64, seen: bool) -> MessageMeta {
        let mut flags = Flags::default();
        if seen {
            flags.system.0 |= SystemFlags::SEEN;
        }
        MessageMeta {
            uid: Uid(uid),
            message: MessageId(i64::from(uid)),
            size: 1,
            internal_date: 0,
            tz_offset_minutes: 0,
            flags,
            modseq: ModSeq(modseq),
        }
    }

    fn index(n: u32, modseq: u64) -> Arc<MailboxIndex> {
        Arc::new(MailboxIndex {
            uid_validity: 7,
            modseq,
            msgs: Arc::new((1..=n).map(|u| entry(u, 1)).collect()),
        })
    }

    #[test]
    fn delta_updates_flags_appends_and_expunges() {
        let snap = index(5, 10);
        let next = snap.advanced(
            14,
            &[meta(2, 11, true), meta(6, 12, false), meta(7, 13, false)],
            &[3, 7],
        );
        let uids: Vec<u32> = next.msgs.iter().map(|m| m.uid).collect();
        assert_eq!(uids, [1, 2, 4, 5, 6]);
        assert!(next.msgs[1].flags.system.contains(SystemFlags::SEEN));
        assert_eq!(next.msgs[1].modseq, 11);
        assert_eq!(next.modseq, 14);
        // The shared snapshot itself is untouched.
        assert_eq!(snap.msgs.len(), 5);
        assert_eq!(snap.modseq, 10);
    }

    #[test]
    fn an_older_change_never_overwrites_a_newer_one() {
        let mut msgs = vec![entry(1, 20)];
        apply_changes(&mut msgs, &[meta(1, 15, true)], &[]);
        assert_eq!(msgs[0].modseq, 20);
        assert!(!msgs[0].flags.system.contains(SystemFlags::SEEN));
    }

    #[test]
    fn cache_keys_on_uidvalidity_and_keeps_the_newest() {
        let cache = IndexCache::default();
        let id = key(1);
        cache.put(id, index(300, 10));
        cache.put(id, index(300, 5));
        assert_eq!(cache.get(id, 7).map(|i| i.modseq), Some(10));
        assert!(cache.get(id, 8).is_none(), "other UIDVALIDITY");
        assert!(
            cache.get(id, 7).is_none(),
            "dropped after a UIDVALIDITY mismatch"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let cache = IndexCache::with_limit(1000);
        cache.put(key(2), index(500, 1));
        cache.put(key(3), index(500, 1));
        cache.put(key(4), index(500, 1));
        cache.put(key(5), index(1001, 1));
        assert_eq!(cache.len(), 2, "least recently used dropped");
        assert!(cache.get(key(5), 7).is_none(), "larger than the cache");
        assert!(cache.get(key(2), 7).is_none());
    }

    #[test]
    fn header_cache_keys_on_uidvalidity_and_is_bounded() {
        let cache = HeaderCache::with_limit(100);
        let h: Arc<[u8]> = Arc::from(&b"Subject: x\r\n\r\n"[..]);
        cache.put_many(key(1), 7, [(1, h.clone()), (2, h.clone())].into_iter());
        let got = cache.get_many(key(1), 7, [1, 2, 3].into_iter());
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 2);
        assert!(cache.get_many(key(1), 8, [1].into_iter())[0].is_none());
        for i in 0..10 {
            cache.put_many(key(2 + i), 7, [(1, h.clone())].into_iter());
        }
        let total: usize = cache
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|m| m.bytes)
            .sum();
        assert!(total <= 100);
    }
}
