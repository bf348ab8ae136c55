//! Session plumbing shared by every protocol crate (SMTP, IMAP, POP3): listeners, implicit TLS
//! and STARTTLS, connection limits, per-connection tracing spans, graceful shutdown, failed-login
//! throttling and the SASL PLAIN/LOGIN decoders.
//!
//! This crate accepts sockets; protocol crates never do (DESIGN §2). It knows nothing about any
//! protocol's grammar: it hands out raw lines and bytes, and the protocol decides what they mean.
//!
//! Standards:
//! - RFC 3207 §4.2 (SMTP STARTTLS), RFC 2595 §3.1 / RFC 3501 §6.2.1 (IMAP/POP3 STARTTLS/STLS):
//!   after the upgrade the server discards any knowledge obtained from the client before it.
//! - RFC 8314: implicit TLS for submission (465), IMAP (993) and POP3 (995).
//! - RFC 4616: the SASL PLAIN mechanism; RFC 4648 §4: base64.
//! - draft-murchison-sasl-login: the SASL LOGIN mechanism.
//! - RFC 4954 §4: `*` cancels an AUTH exchange, `=` is an empty initial response.
//!
//! Implementation notes (invariants):
//! - One command at a time per connection: a session reads one line (or literal), acts on it,
//!   answers, then reads the next. [`Connection`] never reads ahead on its own, so anything
//!   pipelined stays in its buffer, where [`Connection::start_tls`] can throw it away.
//! - STARTTLS buffer discard: [`Connection::start_tls`] clears the read buffer before the
//!   handshake, so plaintext a client (or a man in the middle) pipelined after `STARTTLS` is
//!   never read as if it had arrived under TLS (CVE-2011-0411 and its many siblings).
//! - Idle timeout: every read waits at most the connection's idle timeout; one line must be
//!   complete within it (a client cannot hold a session by trickling bytes). Writes are bounded by
//!   the same timeout, so a client that stops reading cannot pin a task forever.
//! - Limits: a listener holds at most `max_connections` sessions (a permit is taken *before*
//!   `accept`, so excess clients wait in the kernel backlog), at most `max_per_ip` from one
//!   address (the rest are refused through [`SessionHandler::refuse`]), lines are bounded by the
//!   caller's `max_len`, TLS handshakes by `handshake_timeout`.
//! - Graceful shutdown: [`Shutdown::trigger`] stops every accept loop at once; a session learns it
//!   through [`ReadEvent::Shutdown`], which is only returned between commands (empty buffer), so
//!   the current command finishes and the session says its protocol's goodbye.
//! - Secrets: SASL passwords are [`sasl::Secret`]s whose `Debug`/`Display` print `REDACTED`. This
//!   crate does no wire tracing itself: protocol crates trace at TRACE and mask AUTH payloads.
//! - Failed logins are delayed per (account, address) and per address, never banned by range
//!   (DESIGN §6): see [`LoginThrottle`].

mod connection;
mod listener;
pub mod sasl;
pub mod sched;
mod shutdown;
mod throttle;

pub use connection::{Connection, FillEvent, ReadEvent, TlsInfo};
pub use listener::{ListenerSpec, Refusal, SessionHandler, TlsMode, bind, serve};
pub use sched::{CpuScheduling, server_runtime};
pub use shutdown::Shutdown;
pub use throttle::{LoginThrottle, ThrottleConfig};

/// Errors of the connection layer. Any of them means the session should close the connection.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Reading from or writing to the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (bad ClientHello, no shared cipher, client rejected our
    /// certificate, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// The TLS handshake did not finish within the listener's handshake timeout.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// A write or a byte read did not make progress within the idle timeout.
    #[error("idle timeout")]
    Timeout,
    /// `start_tls` was called on a connection that is already encrypted.
    #[error("TLS is already active")]
    AlreadyTls,
    /// The stream is unusable: a STARTTLS handshake failed half-way through.
    #[error("connection closed after failed TLS handshake")]
    Closed,
}
