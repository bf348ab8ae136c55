//! Tessera's IMAP server: IMAP4rev1 sessions over [`net`] listeners and the [`store`].
//!
//! Standards: RFC 3501 (IMAP4rev1; RFC 9051 where it clarifies), RFC 2177 (IDLE), RFC 2342
//! (NAMESPACE), RFC 2971 (ID), RFC 3516 (BINARY), RFC 3691 (UNSELECT), RFC 4315 (UIDPLUS),
//! RFC 4731 (ESEARCH), RFC 4959 (SASL-IR), RFC 4616 (PLAIN), RFC 5161 (ENABLE), RFC 5258
//! (LIST-EXTENDED), RFC 5819 (LIST-STATUS), RFC 6154 (SPECIAL-USE), RFC 6851 (MOVE), RFC 7888
//! (LITERAL+), RFC 8438 (STATUS=SIZE), RFC 8314 (implicit TLS on 993), RFC 7162 (CONDSTORE
//! and QRESYNC).
//!
//! Layers (DESIGN §2): [`wire`] parses commands and encodes strings (no I/O); [`mime`] builds
//! ENVELOPE/BODYSTRUCTURE and body sections from raw bytes; [`search`] evaluates SEARCH;
//! `session` owns the connection, the state machine and the store calls.
//!
//! The wire layer is hand-written rather than imap-codec/imap-next: the session reads through
//! [`net::Connection`] (which owns the buffer and the STARTTLS discard), needs literal limits
//! decided before a literal is read, and encodes responses imap-codec 2.0-alpha has no types for
//! (LIST-STATUS, SPECIAL-USE attributes, ESEARCH, BODYSTRUCTURE built from raw header text).
//!
//! Implementation notes (invariants):
//! - One command at a time per connection; pipelined input waits in the connection buffer, so
//!   commands are answered in order and anything after `DONE` or `STARTTLS` is handled (or
//!   discarded, for STARTTLS) correctly.
//! - A client is never sent a sequence number it was not told about: APPEND/COPY/MOVE into the
//!   selected mailbox are announced with EXISTS before the tagged OK; EXPUNGE responses are
//!   withheld during FETCH, STORE and SEARCH (RFC 3501 §7.4.1) and sent at the next allowed
//!   point; the expunged message keeps its number until then.
//! - Literals are checked against the limits before the continuation is sent; a
//!   non-synchronising literal over the limit closes the connection without reading it.
//! - Internal errors reach the client as `NO [SERVERBUG]` with a correlation id; the detail
//!   goes to the log only. Passwords are `Secret`s and never logged.
//! - \Recent is tracked per process (the first session to see a message gets it).
//! - Sessions share one in-memory list per mailbox (`index`): a snapshot labelled with a
//!   HIGHESTMODSEQ read before its rows, brought forward by the store's delta whenever a
//!   session reads a newer HIGHESTMODSEQ, so SELECT and unsolicited updates never see
//!   anything staler than the store at that read. Keyed by account, mailbox and UIDVALIDITY;
//!   bounded; copy on write per session.
//! - A session's HIGHESTMODSEQ is read from the store before the messages it describes, so
//!   it never claims a change the session has not loaded; it is only announced outside
//!   SELECT when no expunge is withheld (a client resyncing from it would miss those).
//!   Changes are loaded incrementally (`messages_changed_since`, `expunged_since`); a
//!   session's own STORE, EXPUNGE and APPEND are applied from the store's answer when the
//!   change feed shows nothing else happened in between (no MODSEQ gap).
//! - After `ENABLE QRESYNC` expunges are announced as `VANISHED` and unsolicited FETCH
//!   responses carry UID; after any CONDSTORE-enabling command FETCH FLAGS carries MODSEQ.

mod index;
mod mailbox_name;
pub mod mime;
mod search;
mod seqset;
mod session;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use mailbox_name::{decode_mutf7, encode_mutf7};
/// Parser entry points reachable for the fuzz targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub use {mailbox_name::parse_name, seqset::SeqSet};

/// IMAP settings, with safe defaults.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// The server's host name, in the greeting.
    pub hostname: String,
    /// Longest command line, literal announcements included (CLIENTS.md §F.12: ≥ 64 KiB).
    pub max_line: usize,
    /// Largest APPEND literal (message size).
    pub max_message_size: u64,
    /// Largest literal in any other command, and the whole assembled command.
    pub max_command_size: u64,
    /// Malformed commands in a row before the connection is closed.
    pub max_bad_commands: u32,
    /// Autologout timer in the authenticated states (RFC 3501 §5.4: at least 30 minutes).
    pub auth_idle_timeout: Duration,
    /// Timeout before login.
    pub preauth_idle_timeout: Duration,
    /// Allow LOGIN/AUTHENTICATE without TLS (tests and benchmarks only).
    pub allow_plaintext_auth: bool,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            hostname: "localhost".into(),
            max_line: 256 * 1024,
            max_message_size: 64 * 1024 * 1024,
            max_command_size: 1024 * 1024,
            max_bad_commands: 10,
            auth_idle_timeout: Duration::from_secs(31 * 60),
            preauth_idle_timeout: Duration::from_secs(60),
            allow_plaintext_auth: false,
        }
    }
}

/// The IMAP session handler shared by the 143 (STARTTLS) and 993 (implicit TLS) listeners.
pub struct ImapServer {
    pub(crate) store: Arc<dyn store::Store>,
    pub(crate) throttle: Arc<net::LoginThrottle>,
    pub(crate) config: ImapConfig,
    /// Per mailbox, the highest UID some session has already seen as \Recent.
    pub(crate) recent: Mutex<HashMap<store::MailboxId, u32>>,
    /// Shared per-mailbox snapshots for SELECT (`index`).
    pub(crate) index: index::IndexCache,
    /// Shared header blocks for header SEARCH (`index::HeaderCache`).
    pub(crate) headers: index::HeaderCache,
}

impl std::fmt::Debug for ImapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ImapServer {
    /// A server over `store`, throttling failed logins with `throttle`.
    pub fn new(
        store: Arc<dyn store::Store>,
        throttle: Arc<net::LoginThrottle>,
        config: ImapConfig,
    ) -> Self {
        ImapServer {
            store,
            throttle,
            config,
            recent: Mutex::new(HashMap::new()),
            index: index::IndexCache::default(),
            headers: index::HeaderCache::default(),
        }
    }

    /// Claims the messages up to `max_uid` as seen; returns the previous claim (messages
    /// above it are \Recent for the caller). With `claim == false` only reads. `stored` is
    /// the claim the store holds ([`store::MailboxInfo::recent_uid`]: what sessions wrote
    /// when they left the mailbox, before a restart too); the claim is never below it.
    pub(crate) fn claim_recent(
        &self,
        mailbox: store::MailboxId,
        max_uid: u32,
        claim: bool,
        stored: u32,
    ) -> u32 {
        let mut map = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if !claim {
            return map.get(&mailbox).copied().unwrap_or(0).max(stored);
        }
        let entry = map.entry(mailbox).or_insert(stored);
        *entry = (*entry).max(stored);
        let prev = *entry;
        if max_uid > prev {
            *entry = max_uid;
        }
        prev
    }
}

impl net::SessionHandler for ImapServer {
    async fn handle(&self, conn: net::Connection) {
        session::run(self, conn).await;
    }

    async fn refuse(&self, mut conn: net::Connection, _refusal: net::Refusal) {
        let _ = conn
            .write_all(b"* BYE [UNAVAILABLE] Too many connections from your address\r\n")
            .await;
        let _ = conn.flush().await;
        conn.close().await;
    }
}
