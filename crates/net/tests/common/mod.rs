//! Test harness: a recording session handler served on 127.0.0.1:0, TLS configurations from a
//! fresh self-signed certificate, and small client helpers.
#![allow(dead_code)] // each test binary uses part of it
#![allow(clippy::unwrap_used)] // test setup; failures should panic

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use net::{
    Connection, ListenerSpec, NetError, ReadEvent, Refusal, SessionHandler, Shutdown, TlsInfo,
    TlsMode,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// Upper bound on any single wait in a test, so a bug fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What the recording handler saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Read(ReadEvent),
    Tls(TlsInfo),
    Literal(Vec<u8>),
    Refused(Refusal),
}

/// Greets, then echoes lines; `STARTTLS` upgrades, `LIT n` reads an n-byte literal, `QUIT`
/// ends. Everything it reads is reported on `events`.
pub struct Recorder {
    pub events: mpsc::UnboundedSender<Event>,
    pub max_len: usize,
    /// Used for STARTTLS on a connection that is already TLS (to provoke `AlreadyTls`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl SessionHandler for Recorder {
    async fn handle(&self, mut conn: Connection) {
        if let Some(info) = conn.tls_info() {
            let _ = self.events.send(Event::Tls(info.clone()));
        }
        let _ = self.session(&mut conn).await;
    }

    async fn refuse(&self, mut conn: Connection, refusal: Refusal) {
        let _ = self.events.send(Event::Refused(refusal));
        let _ = conn.write_all(b"REFUSED\r\n").await;
        let _ = conn.flush().await;
    }
}

impl Recorder {
    async fn session(&self, conn: &mut Connection) -> Result<(), NetError> {
        conn.write_all(format!("HELLO {} {}\r\n", conn.id(), conn.local()).as_bytes())
            .await?;
        conn.flush().await?;
        loop {
            let event = conn.read_line(self.max_len).await?;
            let _ = self.events.send(Event::Read(event.clone()));
            let reply = match event {
                ReadEvent::Line(line) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    if text == "STARTTLS" {
                        let fallback = self.tls.clone().filter(|_| conn.is_tls());
                        let Some(config) = conn.starttls_config().or(fallback) else {
                            conn.write_all(b"ERR no TLS\r\n").await?;
                            conn.flush().await?;
                            continue;
                        };
                        if conn.is_tls() {
                            let err = conn.start_tls(config).await;
                            assert!(matches!(err, Err(NetError::AlreadyTls)), "{err:?}");
                            conn.write_all(b"ERR already TLS\r\n").await?;
                            conn.flush().await?;
                            continue;
                        }
                        conn.write_all(b"READY\r\n").await?;
                        conn.flush().await?;
                        conn.start_tls(config).await?;
                        if let Some(info) = conn.tls_info() {
                            let _ = self.events.send(Event::Tls(info.clone()));
                        }
                        continue;
                    } else if let Some(n) = text.strip_prefix("LIT ") {
                        let n: usize = n.parse().unwrap_or(0);
                        let Some(bytes) = conn.read_exact_bytes(n).await? else {
                            return Ok(());
                        };
                        let _ = self.events.send(Event::Literal(bytes.clone()));
                        format!("GOT {}\r\n", String::from_utf8_lossy(&bytes))
                    } else if text == "QUIT" {
                        conn.write_all(b"BYE\r\n").await?;
                        conn.flush().await?;
                        return Ok(());
                    } else {
                        format!("ECHO {text}\r\n")
                    }
                }
                ReadEvent::TooLong => "ERR too long\r\n".to_owned(),
                ReadEvent::Timeout => {
                    conn.write_all(b"TIMEOUT\r\n").await?;
                    conn.flush().await?;
                    return Ok(());
                }
                ReadEvent::Shutdown => {
                    conn.write_all(b"BYE shutting down\r\n").await?;
                    conn.flush().await?;
                    return Ok(());
                }
                ReadEvent::Eof => return Ok(()),
            };
            conn.write_all(reply.as_bytes()).await?;
            conn.flush().await?;
        }
    }
}

/// A running `serve` with its recorder.
pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub task: JoinHandle<()>,
}

impl Server {
    /// The next recorded event.
    pub async fn event(&mut self) -> Event {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no event in time")
            .expect("event channel closed")
    }

    /// Asserts that nothing is recorded for `wait`.
    pub async fn no_event_for(&mut self, wait: Duration) {
        if let Ok(Some(event)) = tokio::time::timeout(wait, self.events.recv()).await {
            panic!("unexpected event {event:?}");
        }
    }
}

/// A spec for 127.0.0.1:0 with generous limits and timeouts.
pub fn spec(tls_mode: TlsMode) -> ListenerSpec {
    let mut spec = ListenerSpec::new("test", "127.0.0.1:0".parse().unwrap(), tls_mode);
    spec.idle_timeout = PATIENCE;
    spec.handshake_timeout = PATIENCE;
    spec
}

/// Binds and serves `spec` with a [`Recorder`] reading lines of at most `max_len` bytes.
pub async fn start(
    spec: ListenerSpec,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_len: usize,
) -> Server {
    let listener = net::bind(&spec).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let handler = Arc::new(Recorder {
        events: tx,
        max_len,
        tls: tls.clone(),
    });
    let shutdown = Shutdown::new();
    let task = tokio::spawn(net::serve(listener, spec, tls, handler, shutdown.clone()));
    Server {
        addr,
        shutdown,
        events,
        task,
    }
}

/// Server and client TLS configurations around a fresh self-signed `localhost` certificate.
pub fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// Client side of a TLS handshake with SNI `localhost`.
pub async fn tls_connect(
    client: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
}

/// Reads one line byte by byte (so nothing after it is consumed), without the terminator.
/// `None` on EOF or error.
pub async fn line<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let read = async {
        let mut bytes = Vec::new();
        loop {
            let byte = stream.read_u8().await.ok()?;
            if byte == b'\n' {
                let text = String::from_utf8(bytes).ok()?;
                return Some(text.trim_end_matches('\r').to_owned());
            }
            bytes.push(byte);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("no line in time")
}

/// Writes and flushes.
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}

/// Connects and reads the greeting.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let greeting = line(&mut tcp).await.unwrap();
    assert!(greeting.starts_with("HELLO "), "{greeting}");
    tcp
}

/// A `Line` read event.
pub fn line_event(bytes: &[u8]) -> Event {
    Event::Read(ReadEvent::Line(bytes.to_vec()))
}
