//! Listeners: bind, accept with backpressure and per-address limits, implicit TLS, one task and
//! one tracing span per connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::connection::{Stream, handshake, next_id};
use crate::{Connection, Shutdown};

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext only (e.g. port 25 without a certificate).
    None,
    /// TLS handshake right after accept (RFC 8314: 465, 993, 995).
    Implicit,
    /// Plaintext; the session may upgrade with [`Connection::start_tls`] (25, 587, 143, 110).
    StartTls,
}

/// Everything [`serve`] needs to know about one listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Protocol name for logs and spans: `"smtp"`, `"submission"`, `"imap"`, `"pop3"`, ...
    pub proto: &'static str,
    /// Address to listen on.
    pub addr: SocketAddr,
    /// TLS use.
    pub tls_mode: TlsMode,
    /// Most sessions at once; further clients wait in the kernel's backlog. 0 means no limit.
    pub max_connections: usize,
    /// Most sessions from one client address; further ones are refused
    /// ([`SessionHandler::refuse`]). 0 means no limit. Counted per single address, never
    /// per range: many users share a provider's or an office's address.
    pub max_per_ip: usize,
    /// Initial idle timeout of each connection ([`Connection::set_idle_timeout`] changes it).
    pub idle_timeout: Duration,
    /// Limit on a TLS handshake, implicit or STARTTLS.
    pub handshake_timeout: Duration,
}

impl ListenerSpec {
    /// A spec with default limits: 1024 connections, 50 per address, 5 minutes idle
    /// (RFC 5321 §4.5.3.2.7; IMAP raises it), 30 seconds per handshake.
    pub fn new(proto: &'static str, addr: SocketAddr, tls_mode: TlsMode) -> ListenerSpec {
        ListenerSpec {
            proto,
            addr,
            tls_mode,
            max_connections: 1024,
            max_per_ip: 50,
            idle_timeout: Duration::from_secs(5 * 60),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a connection is refused before its session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The client's address already has `max_per_ip` sessions on this listener.
    TooManyFromAddress,
}

/// A protocol's session entry point. [`serve`] calls [`handle`](Self::handle) once per
/// accepted connection, in its own task and inside its `conn` span.
///
/// Implementations may write `async fn handle(&self, conn: Connection)`; the returned future
/// must be `Send`.
pub trait SessionHandler: Send + Sync + 'static {
    /// Runs one session to its end. Dropping the connection closes it.
    fn handle(&self, conn: Connection) -> impl Future<Output = ()> + Send;

    /// Called instead of `handle` for a connection over a limit, so the protocol can say why
    /// (SMTP `421 4.7.0`, IMAP `* BYE`, POP3 `-ERR [IN-USE]`). On implicit-TLS listeners
    /// the handshake has been done, so the reply is readable. The default closes silently.
    fn refuse(&self, conn: Connection, refusal: Refusal) -> impl Future<Output = ()> + Send {
        let _ = refusal;
        async move { drop(conn) }
    }
}

/// Connections waiting to be accepted, per listener (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: u32 = 1024;

/// Binds the listener's address. The error names the protocol and the address, so a port
/// already in use or a missing privilege is obvious in the operator's log.
///
/// The listening socket has `SO_REUSEADDR` (a restart rebinds at once) and `TCP_NODELAY`:
/// line protocols write whole replies, which must not wait for the client's ACK of the
/// previous one. On Linux accepted sockets inherit `TCP_NODELAY`, which saves a
/// `setsockopt` per connection; elsewhere [`serve`] sets it on each.
pub async fn bind(spec: &ListenerSpec) -> io::Result<TcpListener> {
    let listen = || {
        let socket = match spec.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        socket.bind(spec.addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|err: io::Error| {
        io::Error::new(
            err.kind(),
            format!("cannot listen for {} on {}: {err}", spec.proto, spec.addr),
        )
    })
}

/// Accepts connections until `shutdown` is triggered, then returns (dropping the listener).
/// Sessions keep running; wait for them with [`Shutdown::wait_sessions`].
///
/// A permit is taken *before* each accept, so at most `max_connections` sessions exist and
/// the rest wait in the backlog. `tls` is required for [`TlsMode::Implicit`] (without it,
/// `serve` logs an error and returns at once) and is what
/// [`Connection::starttls_config`] offers on [`TlsMode::StartTls`] listeners.
pub async fn serve<H: SessionHandler>(
    listener: TcpListener,
    spec: ListenerSpec,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<H>,
    shutdown: Shutdown,
) {
    let proto = spec.proto;
    let listen_addr = listener.local_addr().unwrap_or(spec.addr);
    if spec.tls_mode == TlsMode::Implicit && tls.is_none() {
        tracing::error!(proto, addr = %listen_addr, "implicit TLS listener has no TLS configuration");
        return;
    }
    let max = match spec.max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n.min(Semaphore::MAX_PERMITS),
    };
    let permits = Arc::new(Semaphore::new(max));
    let per_ip = PerIp::default();
    let mut backoff = Duration::from_millis(10);
    tracing::info!(proto, addr = %listen_addr, "listening");

    // One waiter for the listener's life, not one per select (a lock each to register and
    // to remove, twice per connection).
    let mut stopped = std::pin::pin!(shutdown.triggered_owned());
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut stopped => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break, // never closed; here for completeness
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually transient (ECONNABORTED) or resource exhaustion (EMFILE): back
                    // off rather than spin.
                    tracing::warn!(proto, %err, "accept failed");
                    tokio::select! {
                        () = &mut stopped => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(10);
        if !cfg!(target_os = "linux") {
            let _ = tcp.set_nodelay(true); // inherited from the listener on Linux (see `bind`)
        }
        // A listener bound to one address accepts on that address only: no getsockname.
        let local = if listen_addr.ip().is_unspecified() {
            tcp.local_addr().unwrap_or(listen_addr)
        } else {
            listen_addr
        };
        let id = next_id();
        let ip_slot = per_ip.try_acquire(peer.ip(), spec.max_per_ip);
        let span =
            tracing::info_span!("conn", proto, peer = %peer, id, user = tracing::field::Empty);
        let handler = Arc::clone(&handler);
        let tls = tls.clone();
        let mode = spec.tls_mode;
        let timeouts = (spec.idle_timeout, spec.handshake_timeout);
        let max_per_ip = spec.max_per_ip;
        let session_shutdown = shutdown.clone();
        let task_span = span.clone();
        let task = async move {
            let _permit = permit;
            let stream = match (mode, &tls) {
                (TlsMode::Implicit, Some(config)) => {
                    match handshake(tcp, Arc::clone(config), timeouts.1).await {
                        Ok(tls) => Stream::Tls(Box::new(tls)),
                        Err(err) => {
                            tracing::debug!(%err, "implicit TLS handshake failed");
                            return;
                        }
                    }
                }
                _ => Stream::Plain(tcp),
            };
            let mut conn = Connection::accepted(
                stream,
                (peer, local),
                id,
                timeouts,
                session_shutdown,
                task_span,
            );
            if mode == TlsMode::StartTls {
                conn.set_starttls_config(tls);
            }
            match ip_slot {
                Some(slot) => {
                    tracing::debug!("session start");
                    handler.handle(conn).await;
                    tracing::debug!("session end");
                    drop(slot);
                }
                None => {
                    tracing::debug!(max_per_ip, "too many connections from this address");
                    handler.refuse(conn, Refusal::TooManyFromAddress).await;
                }
            }
        };
        shutdown.spawn(task.instrument(span));
    }
    tracing::info!(proto, addr = %listen_addr, "stopped listening");
}

/// Live session counts per client address, for `max_per_ip`.
#[derive(Default, Clone)]
struct PerIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PerIp {
    /// Counts one more session from `ip`, unless that would exceed `max` (0: no limit).
    fn try_acquire(&self, ip: IpAddr, max: usize) -> Option<IpSlot> {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if max != 0 && *count >= max {
            return None; // count >= max >= 1: the entry is not left at zero
        }
        *count += 1;
        Some(IpSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One counted session; uncounts itself when dropped.
struct IpSlot {
    counts: PerIp,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}
