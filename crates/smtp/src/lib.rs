//! Tessera's SMTP server: receiving mail for hosted domains (MX, port 25) and accepting mail
//! from authenticated users (submission, 587 with STARTTLS and 465 with implicit TLS).
//!
//! Standards:
//! - RFC 5321 (SMTP), RFC 5322 (message format; `Date`, `Message-ID`, `From`).
//! - RFC 3207 (STARTTLS), RFC 8314 (implicit TLS for submission), RFC 6409 (submission).
//! - RFC 4954 (AUTH) with RFC 4616 (PLAIN) and draft-murchison-sasl-login (LOGIN).
//! - RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 2920 (PIPELINING),
//!   RFC 2034 / RFC 3463 / RFC 5248 (enhanced status codes), RFC 3030 (CHUNKING/BDAT),
//!   RFC 3461 (DSN parameters, stored with queued recipients).
//! - RFC 7208 (SPF), RFC 6376 (DKIM), RFC 7489 (DMARC), RFC 8601 (Authentication-Results,
//!   iprev), RFC 3848 (`with` keywords of `Received`).
//!
//! Layout: [`wire`] parses and encodes (no I/O), `session` owns the connection and the state
//! machine, `delivery` decides what commands mean for the store, [`checks`] computes the
//! sender-authentication verdicts, [`reply`] names every reply.
//!
//! Implementation notes (invariants):
//! - One command at a time: a session reads a command, acts, queues the reply, and flushes
//!   its replies when no further pipelined input is waiting (RFC 2920 §3.2).
//! - `250` after DATA or the last BDAT is sent only after the store confirmed the message
//!   durable (blob fsynced, rows committed in the group-commit writer).
//! - Bare CR and bare LF are refused everywhere, consistently: a command line not ended by
//!   CRLF gets `500 5.5.2`; a message containing either gets `550 5.6.11` after its end
//!   (found only at `CRLF . CRLF`, RFC 5321 §4.1.1.4), so `LF . LF`, `LF . CRLF` and
//!   `CR . CRLF` never end DATA (SMTP smuggling).
//! - After STARTTLS the connection discards pipelined plaintext (`net::Connection::start_tls`)
//!   and the session forgets EHLO, AUTH and the transaction (RFC 3207 §4.2).
//! - AUTH exists only on submission and only under TLS: before TLS it is not advertised and
//!   answers `538 5.7.11`. Failed logins go through the shared [`net::LoginThrottle`].
//!   Passwords are `net::sasl::Secret`s and never reach a log; AUTH lines are not traced.
//! - Never an open relay: on the MX port only hosted recipients are accepted; source routes,
//!   IP literals, quoted local parts and `%`/`!` routing are refused on every port.
//! - Limits: command lines of 1,000 octets (longer ones are dropped while read, answered
//!   `500 5.5.2`), [`SmtpConfig::max_message_size`], [`SmtpConfig::max_recipients`],
//!   [`SmtpConfig::max_errors`] errors before `421`, RFC 5321 §4.5.3.2 timeouts.
//! - Client errors get their reply; internal errors get `451 4.3.0` with a correlation id,
//!   the detail going to the log only.
//! - The greeting and the EHLO/HELO reply carry no enhanced status code (RFC 2034 §3); every
//!   other 2xx/4xx/5xx reply does.

pub mod checks;
mod delivery;
pub mod outbound;
pub mod reply;
mod session;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use net::{Connection, Refusal, SessionHandler};

pub use checks::{ResolverError, Verifier};

/// Which service a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    /// Port 25: mail for hosted domains from anyone, no AUTH, no relaying.
    Mx,
    /// Ports 587 (STARTTLS) and 465 (implicit TLS): AUTH required, relaying for the
    /// authenticated user.
    Submission,
}

/// Settings of an SMTP listener.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Our host name: greeting, EHLO, `Received` and `Authentication-Results`.
    pub hostname: String,
    /// RFC 1870 SIZE: largest message accepted, in octets (before our trace headers).
    pub max_message_size: usize,
    /// Most recipients per transaction (RFC 5321 §4.5.3.1.8 requires at least 100).
    pub max_recipients: usize,
    /// DNS server for SPF/DKIM/DMARC/iprev; `None` uses the system's resolver.
    pub resolver: Option<SocketAddr>,
    /// Refuse (`550 5.7.1`) MX mail failing DMARC whose domain publishes `p=reject`;
    /// otherwise it is delivered with the verdict recorded.
    pub dmarc_reject: bool,
    /// Whether the MX port computes SPF/DKIM/DMARC/iprev at all (off only for benchmarks
    /// that measure the store and want no DNS).
    pub auth_checks: bool,
    /// Waiting for a command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    pub command_timeout: Duration,
    /// Waiting for the next block of message data (RFC 5321 §4.5.3.2.5 gives the client 3
    /// minutes per block; the server waits as long).
    pub data_timeout: Duration,
    /// Each DNS query.
    pub dns_timeout: Duration,
    /// Error replies in one session before `421 4.7.0` and close.
    pub max_errors: u32,
}

impl Default for SmtpConfig {
    /// `localhost`, 50 MiB, 100 recipients, system resolver, DMARC reject on, 5 min command
    /// and 3 min data timeouts, 5 s DNS queries, 10 errors.
    fn default() -> Self {
        SmtpConfig {
            hostname: "localhost".into(),
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            resolver: None,
            dmarc_reject: true,
            auth_checks: true,
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(3 * 60),
            dns_timeout: Duration::from_secs(5),
            max_errors: 10,
        }
    }
}

/// Why an [`SmtpServer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The resolver for sender authentication could not be set up.
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    /// A setting is out of range.
    #[error("invalid SMTP setting: {0}")]
    Config(String),
}

/// Shared state of one SMTP listener.
pub(crate) struct Inner {
    pub(crate) mode: SmtpMode,
    pub(crate) store: Arc<dyn store::Store>,
    pub(crate) throttle: Arc<net::LoginThrottle>,
    pub(crate) config: SmtpConfig,
    /// `None` on submission or with `auth_checks` off.
    pub(crate) verifier: Option<Verifier>,
}

/// An SMTP listener's session handler: give it to [`net::serve`].
#[derive(Clone)]
pub struct SmtpServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("mode", &self.inner.mode)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SmtpServer {
    /// Builds the handler. On the MX port this sets up the resolver for sender checks.
    pub fn new(
        mode: SmtpMode,
        store: Arc<dyn store::Store>,
        throttle: Arc<net::LoginThrottle>,
        config: SmtpConfig,
    ) -> Result<SmtpServer, SmtpError> {
        if config.max_recipients == 0 || config.max_message_size == 0 || config.max_errors == 0 {
            return Err(SmtpError::Config(
                "max_recipients, max_message_size and max_errors must be positive".into(),
            ));
        }
        if config.hostname.is_empty() || !config.hostname.is_ascii() {
            return Err(SmtpError::Config(format!(
                "hostname {:?} must be a non-empty ASCII name",
                config.hostname
            )));
        }
        let verifier = if mode == SmtpMode::Mx && config.auth_checks {
            Some(Verifier::new(
                &config.hostname,
                config.resolver,
                config.dns_timeout,
            )?)
        } else {
            None
        };
        Ok(SmtpServer {
            inner: Arc::new(Inner {
                mode,
                store,
                throttle,
                config,
                verifier,
            }),
        })
    }
}

impl SessionHandler for SmtpServer {
    async fn handle(&self, conn: Connection) {
        session::run(&self.inner, conn).await;
    }

    async fn refuse(&self, mut conn: Connection, refusal: Refusal) {
        let _ = refusal;
        let mut out = Vec::new();
        reply::TOO_MANY_CONNECTIONS.encode(&mut out);
        let _ = conn.write_all(&out).await;
        let _ = conn.flush().await;
        conn.close().await;
    }
}
