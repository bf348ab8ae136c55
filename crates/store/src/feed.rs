//! The change feed: every committed change to an account's mailboxes is published to
//! the sessions of that account (IMAP IDLE and unilateral updates, POP3 locks later).
//!
//! In-process feeds are tokio broadcast channels, one per account with subscribers.
//! A subscriber that falls behind gets `RecvError::Lagged` and must resynchronise from
//! the store; the feed never blocks a writer.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::types::{AccountId, MailboxId, ModSeq, Uid};

/// Buffered changes per account before a slow subscriber lags.
const FEED_CAPACITY: usize = 1024;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A message was added to a mailbox (delivery, APPEND, COPY, MOVE).
    Appended {
        /// Where.
        mailbox: MailboxId,
        /// Its UID there.
        uid: Uid,
        /// The mailbox's MODSEQ after the change.
        modseq: ModSeq,
    },
    /// A message's flags changed.
    FlagsChanged {
        /// Where.
        mailbox: MailboxId,
        /// Which message.
        uid: Uid,
        /// The message's new MODSEQ.
        modseq: ModSeq,
    },
    /// A message was expunged.
    Expunged {
        /// Where.
        mailbox: MailboxId,
        /// Which message.
        uid: Uid,
        /// The MODSEQ of the expunge.
        modseq: ModSeq,
    },
    /// Mailboxes were created, deleted, renamed or (un)subscribed.
    MailboxesChanged,
}

/// Per-account broadcast channels.
#[derive(Debug, Default)]
pub struct ChangeFeed {
    channels: Mutex<HashMap<AccountId, broadcast::Sender<Change>>>,
}

impl ChangeFeed {
    /// Subscribes to the changes of `account` committed from now on.
    pub fn subscribe(&self, account: AccountId) -> broadcast::Receiver<Change> {
        let mut map = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(account)
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Publishes committed changes; accounts nobody listens to cost a map look-up.
    pub fn publish(&self, account: AccountId, changes: impl IntoIterator<Item = Change>) {
        let mut map = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(sender) = map.get(&account) else {
            return;
        };
        if sender.receiver_count() == 0 {
            map.remove(&account);
            return;
        }
        for change in changes {
            let _ = sender.send(change);
        }
    }
}
