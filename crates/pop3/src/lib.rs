//! Tessera's POP3 server: sessions on 110 (plaintext with STLS) and 995 (implicit TLS).
//!
//! Layers (DESIGN §2): [`wire`] parses commands and encodes responses without I/O; the session
//! (private `session` module) owns the [`net::Connection`] and the AUTHORIZATION → TRANSACTION
//! → UPDATE state machine; [`maildrop`] holds what the commands mean for the store.
//!
//! Standards:
//! - RFC 1939: POP3 (commands, states, byte-stuffing, message-numbers, unique-ids, the
//!   10-minute autologout timer). APOP is not offered.
//! - RFC 2449: CAPA, extended response codes (`[IN-USE]`, `[LOGIN-DELAY]` not used), the
//!   255-octet command line, PIPELINING, EXPIRE, IMPLEMENTATION, RESP-CODES.
//! - RFC 2595 §4: STLS; RFC 8314: implicit TLS on 995 and "no cleartext passwords".
//! - RFC 3206: `[SYS/TEMP]`, `[SYS/PERM]`, `[AUTH]` and the AUTH-RESP-CODE capability.
//! - RFC 5034: AUTH with SASL PLAIN (RFC 4616), with or without an initial response.
//!
//! Implementation notes (invariants):
//! - One command at a time: a command is read, executed and answered before the next is read.
//!   Replies to pipelined commands (RFC 2449 §6.6) are collected and written when no further
//!   complete command is waiting, so a pipelining client gets them in few packets.
//! - No password is ever accepted over plaintext: USER, PASS and AUTH are refused with
//!   `-ERR [SYS/PERM]` until TLS is up (DESIGN §6). CAPA lists USER and SASL only then.
//! - After STLS, whatever the client pipelined before the handshake is discarded
//!   ([`net::Connection::start_tls`]) and the session starts over in AUTHORIZATION.
//! - One POP3 session per account at a time (RFC 1939 §4 exclusive-access lock): a process-wide
//!   registry in [`Pop3Server`], held from login until after UPDATE; a second session gets
//!   `-ERR [IN-USE]`. IMAP sessions are not locked out. Serve both listeners (110 and 995)
//!   from the same `Arc<Pop3Server>` so they share the registry.
//! - The maildrop is INBOX as it was at login. DELE only marks; nothing changes in the store
//!   until QUIT in TRANSACTION enters UPDATE, which expunges the marked UIDs through the store
//!   (so IMAP sessions see EXPUNGE through the change feed) and sets `\Seen` on the messages
//!   RETR sent whole (not TOP; RSET forgets them), as Dovecot does. A dropped connection, an
//!   idle timeout and server shutdown never enter UPDATE: nothing changes (RFC 1939 §6).
//! - Message content goes out byte for byte, CRLF as stored, with only RFC 1939 §3
//!   byte-stuffing added; it is streamed in chunks, never copied whole.
//! - Failed logins are delayed through [`net::LoginThrottle`] before the `-ERR [AUTH]` reply.
//! - Three kinds of error: a client mistake gets `-ERR` with a clear text (ten in a row close
//!   the session); an internal failure gets `-ERR [SYS/TEMP]` with a reference that is also in
//!   the log beside the detail; an I/O error closes the connection.
//! - Wire traces are at TRACE level; PASS and AUTH payloads are masked
//!   ([`net::sasl::Secret`]).

pub mod maildrop;
mod session;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use net::{Connection, Refusal, SessionHandler};

use crate::maildrop::MaildropLocks;
use crate::wire::{Reply, RespCode};

/// POP3 settings, each with a sensible default.
#[derive(Debug, Clone)]
pub struct Pop3Config {
    /// The host name in the greeting and sign-off (RFC 1939 §4 examples).
    pub hostname: String,
    /// Autologout timer: a session with no complete command for this long is closed without
    /// a response and without UPDATE. RFC 1939 §3: at least 10 minutes.
    pub idle_timeout: Duration,
    /// Longest command line accepted, CRLF included. RFC 2449 §4 sets 255 octets; the default
    /// allows some slack for clients with long user names or passwords.
    pub max_line_len: usize,
    /// Consecutive bad commands (unknown, malformed, wrong state, overlong) after which the
    /// session is closed.
    pub max_bad_commands: u32,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            hostname: "localhost".to_owned(),
            idle_timeout: Duration::from_secs(10 * 60),
            max_line_len: 512,
            max_bad_commands: 10,
        }
    }
}

/// The POP3 service: one per process, shared (as `Arc`) by the 110 and 995 listeners.
#[derive(Debug)]
pub struct Pop3Server {
    /// Where accounts and messages live.
    store: Arc<dyn store::Store>,
    /// Failed-login delays, shared with the other protocols.
    throttle: Arc<net::LoginThrottle>,
    /// Settings.
    config: Pop3Config,
    /// Exclusive maildrop locks of the sessions in TRANSACTION.
    locks: MaildropLocks,
}

impl Pop3Server {
    /// A POP3 service over `store`.
    pub fn new(
        store: Arc<dyn store::Store>,
        throttle: Arc<net::LoginThrottle>,
        config: Pop3Config,
    ) -> Self {
        Pop3Server {
            store,
            throttle,
            config,
            locks: MaildropLocks::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Pop3Config {
        &self.config
    }

    /// Whether a POP3 session currently holds `account`'s maildrop.
    pub fn is_locked(&self, account: store::AccountId) -> bool {
        self.locks.is_locked(account)
    }
}

impl SessionHandler for Pop3Server {
    async fn handle(&self, conn: Connection) {
        session::Session::new(self, conn).run().await;
    }

    async fn refuse(&self, mut conn: Connection, refusal: Refusal) {
        tracing::debug!(?refusal, "refusing connection");
        // RFC 3206 §4: a temporary condition; the client may retry later.
        let reply = Reply::err_code(
            RespCode::SysTemp,
            "too many connections from your address, try again later",
        );
        if conn.write_all(&reply.to_bytes()).await.is_ok() {
            let _ = conn.flush().await;
        }
        conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_autologout_timer_is_at_least_ten_minutes() {
        // RFC 1939 §3.
        assert!(Pop3Config::default().idle_timeout >= Duration::from_secs(600));
        // RFC 2449 §4 (255 octets) is accepted, with slack.
        assert!(Pop3Config::default().max_line_len >= wire::MAX_COMMAND_LEN);
    }
}
