//! One client connection: the stream (plain or TLS), a read buffer, and the facts a session
//! needs about its peer. No protocol knowledge lives here.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::{NetError, Shutdown};

/// Bytes reserved before a read when the buffer has no room left. Small on purpose: thousands
/// of idle IMAP sessions each hold one buffer.
const READ_CHUNK: usize = 2048;
/// A buffer that grew past this (a long line, a literal) is freed once it is empty again.
const SHRINK_ABOVE: usize = 16 * 1024;
/// Room one socket read asks for during a bulk transfer ([`Connection::fill_buf_bulk`],
/// [`Connection::read_exact_bytes`]): a 10 KB message body then comes in one or two reads
/// instead of five or more (one `recvfrom` each). No more than [`SHRINK_ABOVE`], so the
/// buffer is kept between the reads of one transfer instead of freed and allocated again.
const BULK_CHUNK: usize = SHRINK_ABOVE;
/// Cap on the first allocation of [`Connection::read_exact_bytes`], whatever the client claims.
const EXACT_PREALLOC: usize = 64 * 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique connection id (for logs and correlation ids).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What [`Connection::read_line`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEvent {
    /// One line, raw, including its terminator (`\r\n` or a bare `\n`): the protocol decides
    /// whether a bare LF is acceptable (RFC 5321 §2.3.8 says it is not for SMTP).
    Line(Vec<u8>),
    /// The line was longer than `max_len`. It has been read and discarded up to and including
    /// its LF, so the session can answer an error and read the next command.
    TooLong,
    /// The client closed the connection. A partial line, if any, stays in
    /// [`Connection::buffer`].
    Eof,
    /// Shutdown began while the session was waiting between commands (empty buffer).
    Shutdown,
    /// No complete line arrived within the idle timeout.
    Timeout,
}

/// What [`Connection::fill_buf`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillEvent {
    /// This many bytes were appended to the buffer.
    Read(usize),
    /// The client closed the connection.
    Eof,
    /// Shutdown began while the buffer was empty.
    Shutdown,
    /// Nothing arrived within the idle timeout.
    Timeout,
}

/// Facts about an established TLS session, for logs and `Received:` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `"TLSv1.3"` or `"TLSv1.2"`.
    pub version: String,
    /// IANA-style suite name, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher: String,
    /// The host name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
    /// The application protocol agreed through ALPN (RFC 7301), if any.
    pub alpn: Option<Vec<u8>>,
}

impl TlsInfo {
    fn from_session(session: &rustls::ServerConnection) -> TlsInfo {
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_owned(),
        };
        let cipher = match session.negotiated_cipher_suite() {
            Some(suite) => match suite.suite().as_str() {
                Some(name) => name.to_owned(),
                None => format!("{:?}", suite.suite()),
            },
            None => "unknown".to_owned(),
        };
        TlsInfo {
            version,
            cipher,
            sni: session.server_name().map(str::to_owned),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        }
    }
}

/// The transport under a [`Connection`].
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// The TCP stream was handed to a STARTTLS handshake that failed; all I/O fails.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, b),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// One client connection, owned by its session task.
///
/// Reads are line- or byte-count-oriented and never run ahead of what the session asks for by
/// more than one socket read; whatever arrived beyond the current command waits in the buffer.
pub struct Connection {
    /// The socket, plain or TLS.
    stream: Stream,
    /// Bytes received and not yet handed to the session. Starts unallocated.
    buf: BytesMut,
    /// The client's address (IPv4-mapped IPv6 addresses are kept as they came).
    peer: SocketAddr,
    /// Our address the client connected to.
    local: SocketAddr,
    /// Process-wide unique id, also in the tracing span.
    id: u64,
    /// How long a read (one whole line) or a write may take.
    idle_timeout: Duration,
    /// How long a TLS handshake may take.
    handshake_timeout: Duration,
    /// Server shutdown signal.
    shutdown: Shutdown,
    /// The one timer bounding this connection's reads and writes (see [`IdleTimer`]).
    timer: IdleTimer,
    /// A waiter on `shutdown`, registered at the first read that may stop for it and kept for
    /// the connection's life.
    stop: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Set once TLS is up.
    tls_info: Option<Box<TlsInfo>>,
    /// The configuration to offer STARTTLS with, on `TlsMode::StartTls` listeners.
    starttls: Option<Arc<rustls::ServerConfig>>,
    /// The `conn` span this session runs in.
    span: tracing::Span,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("tls", &self.tls_info)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps an accepted plain TCP stream. [`serve`](crate::serve) does this for you; it is
    /// public so protocol crates can build a session over a socket of their own in tests.
    pub fn new_plain(
        tcp: TcpStream,
        idle_timeout: Duration,
        handshake_timeout: Duration,
        shutdown: Shutdown,
    ) -> io::Result<Connection> {
        let peer = tcp.peer_addr()?;
        let local = tcp.local_addr()?;
        Ok(Connection::from_parts(
            Stream::Plain(tcp),
            peer,
            local,
            next_id(),
            idle_timeout,
            handshake_timeout,
            shutdown,
            tracing::Span::current(),
        ))
    }

    #[allow(clippy::too_many_arguments)] // private constructor; every field is needed
    fn from_parts(
        stream: Stream,
        peer: SocketAddr,
        local: SocketAddr,
        id: u64,
        idle_timeout: Duration,
        handshake_timeout: Duration,
        shutdown: Shutdown,
        span: tracing::Span,
    ) -> Connection {
        let tls_info = match &stream {
            Stream::Tls(tls) => Some(Box::new(TlsInfo::from_session(tls.get_ref().1))),
            _ => None,
        };
        Connection {
            stream,
            buf: BytesMut::new(),
            peer,
            local,
            id,
            idle_timeout,
            handshake_timeout,
            shutdown,
            timer: IdleTimer::default(),
            stop: None,
            tls_info,
            starttls: None,
            span,
        }
    }

    /// For [`serve`](crate::serve): `addrs` is (peer, local), `timeouts` is (idle, handshake).
    pub(crate) fn accepted(
        stream: Stream,
        addrs: (SocketAddr, SocketAddr),
        id: u64,
        timeouts: (Duration, Duration),
        shutdown: Shutdown,
        span: tracing::Span,
    ) -> Connection {
        Connection::from_parts(
            stream, addrs.0, addrs.1, id, timeouts.0, timeouts.1, shutdown, span,
        )
    }

    pub(crate) fn set_starttls_config(&mut self, config: Option<Arc<rustls::ServerConfig>>) {
        self.starttls = config;
    }

    /// Reads one line of at most `max_len` bytes (terminator included).
    ///
    /// The whole line must arrive within the idle timeout. [`ReadEvent::Shutdown`] is returned
    /// only when shutdown has begun and nothing of a next command has arrived; a half-received
    /// line is still read to its end.
    pub async fn read_line(&mut self, max_len: usize) -> Result<ReadEvent, NetError> {
        let deadline = Instant::now() + self.idle_timeout;
        // Bytes of the buffer already known to hold no LF.
        let mut scanned = 0;
        // Set once the current line is known to be too long; its bytes are being dropped.
        let mut discarding = false;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos + 1;
                if discarding || end > max_len {
                    self.consume(end);
                    return Ok(ReadEvent::TooLong);
                }
                let line = self.buf.split_to(end).to_vec();
                self.shrink_after_line();
                return Ok(ReadEvent::Line(line));
            }
            if discarding || self.buf.len() >= max_len {
                // No LF within max_len bytes: the line is too long whatever follows. Keep
                // memory bounded by dropping what we have and reading on to the LF.
                discarding = true;
                self.buf.clear();
                scanned = 0;
            } else {
                scanned = self.buf.len();
            }
            let may_stop = !discarding && self.buf.is_empty();
            match self.fill_until(deadline, may_stop, READ_CHUNK).await? {
                FillEvent::Read(_) => {}
                FillEvent::Eof => return Ok(ReadEvent::Eof),
                FillEvent::Shutdown => return Ok(ReadEvent::Shutdown),
                FillEvent::Timeout => return Ok(ReadEvent::Timeout),
            }
        }
    }

    /// Reads exactly `n` bytes (an IMAP literal, a BDAT chunk), taking buffered bytes first.
    /// Returns `None` if the client closed the connection first. The idle timeout applies to
    /// each wait for more bytes, not to the whole transfer. The caller enforces its size limit
    /// on `n` before calling; memory grows with the bytes actually received, not with `n`.
    pub async fn read_exact_bytes(&mut self, n: usize) -> Result<Option<Vec<u8>>, NetError> {
        let mut out = Vec::with_capacity(n.min(EXACT_PREALLOC));
        while out.len() < n {
            if self.buf.is_empty() {
                let deadline = Instant::now() + self.idle_timeout;
                match self.fill_until(deadline, false, n - out.len()).await? {
                    FillEvent::Read(_) => {}
                    FillEvent::Eof => return Ok(None),
                    FillEvent::Timeout => return Err(NetError::Timeout),
                    // Not reachable with `may_stop == false`; treat as a closed stream.
                    FillEvent::Shutdown => return Ok(None),
                }
            }
            let take = self.buf.len().min(n - out.len());
            out.extend_from_slice(&self.buf[..take]);
            self.buf.advance(take);
        }
        self.shrink_if_idle();
        Ok(Some(out))
    }

    /// Appends the next bytes from the socket to [`buffer`](Self::buffer), waiting at most the
    /// idle timeout. For codecs that parse from the buffer and ask for more when their input is
    /// incomplete; such a caller bounds the buffer's size itself. [`FillEvent::Shutdown`] comes
    /// only while the buffer is empty.
    pub async fn fill_buf(&mut self) -> Result<FillEvent, NetError> {
        let deadline = Instant::now() + self.idle_timeout;
        let may_stop = self.buf.is_empty();
        self.fill_until(deadline, may_stop, READ_CHUNK).await
    }

    /// [`fill_buf`](Self::fill_buf) for a bulk transfer the caller knows is under way (SMTP
    /// message data): one read takes up to 16 KiB rather than 2 KiB, so a message costs a
    /// few socket reads rather than one per 2 KiB. The room lasts as long as the transfer:
    /// the next command line read frees it (see [`read_line`](Self::read_line)).
    pub async fn fill_buf_bulk(&mut self) -> Result<FillEvent, NetError> {
        let deadline = Instant::now() + self.idle_timeout;
        let may_stop = self.buf.is_empty();
        self.fill_until(deadline, may_stop, BULK_CHUNK).await
    }

    /// Bytes received and not yet consumed.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` buffered bytes (all of them if fewer are buffered).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.advance(n);
        self.shrink_if_idle();
    }

    /// One socket read into the buffer, until `deadline`, with room for about `want` bytes
    /// (clamped to [`READ_CHUNK`]..=[`BULK_CHUNK`]). With `may_stop`, returns
    /// [`FillEvent::Shutdown`] as soon as shutdown has begun.
    async fn fill_until(
        &mut self,
        deadline: Instant,
        may_stop: bool,
        want: usize,
    ) -> Result<FillEvent, NetError> {
        if may_stop && self.shutdown.is_triggered() {
            return Ok(FillEvent::Shutdown);
        }
        let want = want.clamp(READ_CHUNK, BULK_CHUNK);
        let spare = self.buf.capacity() - self.buf.len();
        // A line read tops up once less than a quarter chunk is left; a bulk read wants its
        // whole room (an emptied buffer gets it back without allocating).
        if spare < READ_CHUNK / 4 || (want > READ_CHUNK && spare < want) {
            self.buf.reserve(want);
        }
        let Connection {
            stream,
            buf,
            timer,
            stop,
            shutdown,
            ..
        } = self;
        let mut read = std::pin::pin!(stream.read_buf(buf));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = read.as_mut().poll(cx) {
                return Poll::Ready(match result {
                    Ok(0) => Ok(FillEvent::Eof),
                    Ok(n) => Ok(FillEvent::Read(n)),
                    Err(err) => Err(NetError::Io(err)),
                });
            }
            if may_stop {
                let stop = stop.get_or_insert_with(|| Box::pin(shutdown.triggered_owned()));
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(FillEvent::Shutdown));
                }
            }
            timer
                .poll_expired(cx, deadline)
                .map(|()| Ok(FillEvent::Timeout))
        })
        .await
    }

    /// After a whole line was taken: frees an emptied buffer bigger than two line-read chunks
    /// (a bulk transfer or a long line grew it), so a session waiting for its next command
    /// holds no more than a line read needs.
    fn shrink_after_line(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 2 * READ_CHUNK {
            self.buf = BytesMut::new();
        }
    }

    /// Frees a buffer that grew big once it is empty, so idle sessions stay small.
    fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::new();
        }
    }

    /// Writes `bytes` (buffered inside TLS until [`flush`](Self::flush)). Fails with
    /// [`NetError::Timeout`] if the client does not take them within the idle timeout.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        let deadline = Instant::now() + self.idle_timeout;
        match self
            .timer
            .bound(deadline, self.stream.write_all(bytes))
            .await
        {
            Some(result) => Ok(result?),
            None => Err(NetError::Timeout),
        }
    }

    /// Sends everything written so far.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        let deadline = Instant::now() + self.idle_timeout;
        match self.timer.bound(deadline, self.stream.flush()).await {
            Some(result) => Ok(result?),
            None => Err(NetError::Timeout),
        }
    }

    /// Flushes, sends TLS close_notify if TLS is up, and half-closes the socket. Errors are
    /// ignored: the session is over either way.
    pub async fn close(&mut self) {
        let deadline = Instant::now() + self.idle_timeout;
        let _ = self.timer.bound(deadline, self.stream.shutdown()).await;
    }

    /// Upgrades the connection to TLS (SMTP STARTTLS, IMAP STARTTLS, POP3 STLS). The session
    /// sends its "go ahead" reply and flushes *before* calling this.
    ///
    /// RFC 3207 §4.2, RFC 2595 §3.1, RFC 3501 §6.2.1: anything the client sent after the
    /// command and before the handshake is discarded here, never interpreted as if it had come
    /// under TLS. The session must also forget what it learned before (EHLO, capabilities).
    /// On a handshake error the connection is unusable and must be dropped.
    pub async fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> Result<(), NetError> {
        if self.is_tls() {
            return Err(NetError::AlreadyTls);
        }
        if !self.buf.is_empty() {
            tracing::debug!(
                bytes = self.buf.len(),
                "discarding plaintext pipelined before TLS handshake"
            );
        }
        self.buf = BytesMut::new();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(NetError::Closed);
        };
        let tls = handshake(tcp, config, self.handshake_timeout).await?;
        self.tls_info = Some(Box::new(TlsInfo::from_session(tls.get_ref().1)));
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// TLS facts, once TLS is up.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls_info.as_deref()
    }

    /// The configuration to offer STARTTLS with: `Some` on a `TlsMode::StartTls` listener that
    /// was given a TLS configuration and while TLS is not yet up. A session advertises
    /// STARTTLS exactly when this is `Some`.
    pub fn starttls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        if self.is_tls() {
            None
        } else {
            self.starttls.clone()
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The local address the client connected to.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Process-wide unique connection id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The idle timeout in force.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Changes the idle timeout (IMAP IDLE wants 30 minutes: RFC 2177 §3).
    pub fn set_idle_timeout(&mut self, timeout: Duration) {
        self.idle_timeout = timeout;
    }

    /// Whether server shutdown has begun.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// The shutdown handle; clone it to `select!` on [`Shutdown::triggered`] while also
    /// borrowing the connection mutably.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The `conn` span this session runs in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records the authenticated user in the connection's span.
    pub fn set_user(&self, user: &str) {
        self.span.record("user", user);
    }
}

/// Byte-stream access for protocols framed by a library of their own (HTTP through hyper):
/// reads hand out bytes already buffered by [`Connection::read_line`] and friends first, then
/// read the socket. Unlike the line API these reads apply no idle timeout and never report
/// shutdown; such a caller bounds its reads itself (hyper's header timeout, a body timeout).
impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            let n = this.buf.len().min(buf.remaining());
            buf.put_slice(&this.buf[..n]);
            this.buf.advance(n);
            this.shrink_if_idle();
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

/// Byte-stream writes straight to the socket (TLS buffers until flushed). No idle timeout
/// applies here; see the [`AsyncRead`] impl.
impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// One timer per connection for its idle timeout, instead of one per read or write.
///
/// A session waits on its socket about seven times per SMTP message; a `tokio::time::timeout`
/// around each wait registered a timer entry and removed it again, each time under the
/// runtime's timer lock, and sometimes woke the thread parked on the I/O driver to tell it
/// about a nearer deadline. Here the entry is registered once and stays: each wait passes
/// its own deadline, and the timer is moved only when that deadline is *earlier* than the
/// one set (a shorter timeout), or when it fires before the current deadline (the client
/// was active meanwhile), which happens at most once per timeout period. Operations that
/// complete without waiting do not touch the timer at all.
#[derive(Default)]
struct IdleTimer(Option<Pin<Box<Sleep>>>);

impl IdleTimer {
    /// Ready once `deadline` has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier wait's deadline: wait on for this one.
            sleep.as_mut().reset(deadline);
        }
    }

    /// `operation`'s output, or `None` if `deadline` passed first.
    async fn bound<F: Future>(&mut self, deadline: Instant, operation: F) -> Option<F::Output> {
        let mut operation = std::pin::pin!(operation);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = operation.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            self.poll_expired(cx, deadline).map(|()| None)
        })
        .await
    }
}

/// Server side of a TLS handshake, bounded by `limit`.
pub(crate) async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, NetError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(err)) => Err(NetError::Handshake(err)),
        Err(_elapsed) => Err(NetError::HandshakeTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A connection over loopback with the given idle timeout, and its client end.
    async fn pair(idle: Duration) -> Result<(TcpStream, Connection), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (tcp, _) = listener.accept().await?;
        Ok((
            client,
            Connection::new_plain(tcp, idle, idle, Shutdown::new())?,
        ))
    }

    /// The idle timer is set once, for the first wait's deadline; a later wait has a later
    /// deadline, and the timer firing for the old one must not end it.
    #[tokio::test(start_paused = true)]
    async fn a_wait_is_not_cut_short_by_an_earlier_waits_deadline() -> TestResult {
        let (mut client, mut conn) = pair(Duration::from_secs(10)).await?;
        let start = Instant::now();
        let talker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(8)).await;
            client.write_all(b"ONE\r\n").await?;
            tokio::time::sleep(Duration::from_secs(8)).await;
            client.write_all(b"TWO\r\n").await?;
            Ok::<_, io::Error>(client)
        });
        assert_eq!(
            conn.read_line(64).await?,
            ReadEvent::Line(b"ONE\r\n".to_vec())
        );
        // Timer set for 10 s; this wait may last until 18 s.
        assert_eq!(
            conn.read_line(64).await?,
            ReadEvent::Line(b"TWO\r\n".to_vec())
        );
        assert!(start.elapsed() >= Duration::from_secs(16));
        let _client = talker.await??;
        // A silent client still times out, a whole timeout after its last line.
        let silent = Instant::now();
        assert_eq!(conn.read_line(64).await?, ReadEvent::Timeout);
        let waited = silent.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
        Ok(())
    }

    /// A shorter timeout after a longer one (SMTP's data timeout after its command timeout)
    /// moves the timer earlier.
    #[tokio::test(start_paused = true)]
    async fn a_shorter_timeout_takes_effect_at_once() -> TestResult {
        let (mut client, mut conn) = pair(Duration::from_secs(100)).await?;
        let talker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"ONE\r\n").await?;
            Ok::<_, io::Error>(client)
        });
        // This read waits, so the timer is set, for 100 s.
        assert_eq!(
            conn.read_line(64).await?,
            ReadEvent::Line(b"ONE\r\n".to_vec())
        );
        let _client = talker.await??;
        conn.set_idle_timeout(Duration::from_secs(5));
        let silent = Instant::now();
        assert_eq!(conn.read_line(64).await?, ReadEvent::Timeout);
        let waited = silent.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        Ok(())
    }

    /// The byte-stream view starts with what the line reader had buffered beyond its line, so
    /// a protocol that reads a first line itself and then hands over to a library loses nothing.
    #[tokio::test]
    async fn async_read_returns_buffered_bytes_first_then_the_socket() -> TestResult {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (tcp, _) = listener.accept().await?;
        let secs = Duration::from_secs(5);
        let mut conn = Connection::new_plain(tcp, secs, secs, Shutdown::new())?;

        client.write_all(b"FIRST\r\nbuffered").await?;
        assert_eq!(
            conn.read_line(64).await?,
            ReadEvent::Line(b"FIRST\r\n".to_vec())
        );
        while conn.buffer().len() < b"buffered".len() {
            assert!(matches!(conn.fill_buf().await?, FillEvent::Read(_)));
        }
        assert_eq!(conn.buffer(), b"buffered");
        client.write_all(b" then socket").await?;
        client.shutdown().await?;
        let mut rest = Vec::new();
        timeout(secs, conn.read_to_end(&mut rest)).await??;
        assert_eq!(rest, b"buffered then socket");

        AsyncWriteExt::write_all(&mut conn, b"reply").await?;
        AsyncWriteExt::flush(&mut conn).await?;
        AsyncWriteExt::shutdown(&mut conn).await?;
        let mut got = Vec::new();
        timeout(secs, client.read_to_end(&mut got)).await??;
        assert_eq!(got, b"reply");
        Ok(())
    }

    /// A bulk fill takes what is waiting in one socket read, up to 16 KiB, where a line
    /// read takes one 2 KiB chunk; the bytes come through intact either way.
    #[tokio::test]
    async fn bulk_fill_takes_a_message_body_in_one_read() -> TestResult {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (tcp, _) = listener.accept().await?;
        let secs = Duration::from_secs(5);
        let mut conn = Connection::new_plain(tcp, secs, secs, Shutdown::new())?;
        let body: Vec<u8> = (0..12 * 1024).map(|i| (i % 251) as u8).collect();

        client.write_all(&body).await?;
        let FillEvent::Read(small) = conn.fill_buf().await? else {
            return Err("line fill read nothing".into());
        };
        assert!(small <= READ_CHUNK, "a line fill read {small} bytes");
        let mut got = conn.buffer().to_vec();
        let n = got.len();
        conn.consume(n);
        while got.len() < body.len() {
            assert!(matches!(conn.fill_buf().await?, FillEvent::Read(_)));
            got.extend_from_slice(conn.buffer());
            let n = conn.buffer().len();
            conn.consume(n);
        }
        assert_eq!(got, body);

        client.write_all(&body).await?;
        let FillEvent::Read(bulk) = conn.fill_buf_bulk().await? else {
            return Err("bulk fill read nothing".into());
        };
        assert_eq!(
            bulk,
            body.len(),
            "a bulk fill took {bulk} of the waiting bytes"
        );
        assert_eq!(conn.buffer(), &body[..]);

        // The next command line gives the room back: an idle session holds a small buffer.
        conn.consume(body.len());
        client.write_all(b"NEXT\r\n").await?;
        assert_eq!(
            conn.read_line(64).await?,
            ReadEvent::Line(b"NEXT\r\n".to_vec())
        );
        assert!(
            conn.buf.capacity() <= 2 * READ_CHUNK,
            "{} bytes kept after the transfer",
            conn.buf.capacity()
        );
        Ok(())
    }
}
