//! End-to-end harness: a real SqliteStore and a local CA in a temporary directory, the POP3
//! service on two real listeners (STLS and implicit TLS) on 127.0.0.1:0, a raw POP3 client
//! over tokio (plain or TLS), and a runner for external client programs.
#![allow(dead_code)] // each test uses part of it
#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup: failures should panic

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use net::{ListenerSpec, LoginThrottle, Shutdown, ThrottleConfig, TlsMode};
use pop3::{Pop3Config, Pop3Server};
use store::{
    AccountId, Address, Domain, MessageMeta, NewAccount, NewMessage, SqliteStore, Store, Uid,
};
use tls::rustls;
use tls::rustls::pki_types::ServerName;
use tls::tokio_rustls::TlsConnector;
use tls::tokio_rustls::client::TlsStream;
use tls::{CertSource, CertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait, so a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// Upper bound on an external client program's whole run.
pub const PROGRAM_PATIENCE: Duration = Duration::from_secs(30);
/// The mail host name the certificate is issued for.
pub const HOST: &str = "mail.example.test";
/// Every test account's password.
pub const PASSWORD: &str = "correct horse battery";

/// A running POP3 service with its store.
pub struct Harness {
    /// Holds the store, the CA and client scratch files.
    pub dir: tempfile::TempDir,
    /// The store the service uses.
    pub store: Arc<dyn Store>,
    /// The service, shared by both listeners.
    pub server: Arc<Pop3Server>,
    /// Plaintext listener offering STLS (port 110's role).
    pub stls_addr: SocketAddr,
    /// Implicit TLS listener (port 995's role).
    pub tls_addr: SocketAddr,
    /// The local CA certificate (PEM) clients must trust.
    pub ca: PathBuf,
    /// A client configuration trusting the local CA.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Stops both listeners and signals the sessions.
    pub shutdown: Shutdown,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl Harness {
    /// Default settings, no login delays (STYLE §19).
    pub async fn start() -> Harness {
        Harness::start_with(Pop3Config::default(), ThrottleConfig::disabled()).await
    }

    pub async fn start_with(config: Pop3Config, throttle: ThrottleConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = SqliteStore::open(&dir.path().join("data")).await.unwrap();
        store
            .add_domain(&Domain::parse("example.test").unwrap())
            .await
            .unwrap();

        let certs = CertStore::new(CertSource::LocalCa {
            dir: dir.path().join("ca"),
        })
        .unwrap();
        certs.ensure_local_names(&[vec![HOST.to_owned()]]).unwrap();
        let ca = certs.ca_path().expect("local CA has a certificate");
        let server_tls = certs.server_config(vec![b"pop3".to_vec()]);
        let client_tls = tls::client_config_trusting(&ca).unwrap();

        let config = Pop3Config {
            hostname: HOST.to_owned(),
            ..config
        };
        let server = Arc::new(Pop3Server::new(
            Arc::clone(&store),
            Arc::new(LoginThrottle::new(throttle)),
            config,
        ));
        let shutdown = Shutdown::new();
        let mut addrs = Vec::new();
        for mode in [TlsMode::StartTls, TlsMode::Implicit] {
            let spec = ListenerSpec::new("pop3", SocketAddr::from(([127, 0, 0, 1], 0)), mode);
            let listener = net::bind(&spec).await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            tokio::spawn(net::serve(
                listener,
                spec,
                Some(Arc::clone(&server_tls)),
                Arc::clone(&server),
                shutdown.clone(),
            ));
        }
        Harness {
            dir,
            store,
            server,
            stls_addr: addrs[0],
            tls_addr: addrs[1],
            ca,
            client_tls,
            shutdown,
        }
    }

    /// Creates `local@example.test` with [`PASSWORD`].
    pub async fn user(&self, local: &str) -> (AccountId, String) {
        let address = format!("{local}@example.test");
        let id = self
            .store
            .add_account(NewAccount {
                address: Address::parse(&address).unwrap(),
                password_hash: store::password::hash_password(PASSWORD).unwrap(),
                display_name: String::new(),
                quota_bytes: 0,
            })
            .await
            .unwrap();
        (id, address)
    }

    /// Delivers `bytes` to the account's INBOX; returns its UID.
    pub async fn deliver(&self, account: AccountId, bytes: &[u8]) -> Uid {
        let results = self
            .store
            .deliver(&[account], NewMessage::now(bytes.to_vec()))
            .await
            .unwrap();
        results.into_iter().next().unwrap().unwrap().uid
    }

    /// The account's INBOX id and UIDVALIDITY.
    pub async fn inbox(&self, account: AccountId) -> store::MailboxInfo {
        self.store
            .mailbox(account, "INBOX")
            .await
            .unwrap()
            .expect("INBOX")
    }

    /// The account's INBOX messages.
    pub async fn messages(&self, account: AccountId) -> Vec<MessageMeta> {
        let inbox = self.inbox(account).await.id;
        self.store.messages(account, inbox).await.unwrap()
    }

    /// A plaintext connection to the STLS listener, greeting read.
    pub async fn plain(&self) -> Client {
        let mut client = Client::plain(self.stls_addr).await;
        let greeting = client.line().await;
        assert!(greeting.starts_with("+OK "), "{greeting}");
        client
    }

    /// An implicit-TLS connection, greeting read.
    pub async fn tls(&self) -> Client {
        let mut client = Client::tls(self.tls_addr, &self.client_tls).await;
        let greeting = client.line().await;
        assert!(greeting.starts_with("+OK "), "{greeting}");
        client
    }

    /// An implicit-TLS connection logged in with USER/PASS.
    pub async fn logged_in(&self, address: &str) -> Client {
        let mut client = self.tls().await;
        client.login(address).await;
        client
    }

    /// Waits (bounded) until no POP3 session holds the account's maildrop.
    pub async fn wait_unlocked(&self, account: AccountId) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.server.is_locked(account) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "maildrop still locked"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A scratch directory inside the harness's temporary directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A raw POP3 client that shows exact bytes.
pub struct Client {
    stream: Option<Stream>,
    buf: Vec<u8>,
}

impl Client {
    pub async fn plain(addr: SocketAddr) -> Client {
        let tcp = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            stream: Some(Stream::Plain(tcp)),
            buf: Vec::new(),
        }
    }

    pub async fn tls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Client {
        let tcp = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            stream: Some(Stream::Tls(Box::new(handshake(tcp, config).await))),
            buf: Vec::new(),
        }
    }

    /// Reads more bytes; 0 means EOF.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let read = async {
            match self.stream.as_mut().expect("connected") {
                Stream::Plain(s) => s.read(&mut chunk).await,
                Stream::Tls(s) => s.read(&mut chunk).await,
            }
        };
        let n = match tokio::time::timeout(PATIENCE, read).await {
            Ok(Ok(n)) => n,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Ok(Err(err)) => panic!("read failed: {err}"),
            Err(_) => panic!(
                "no data within {PATIENCE:?}; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        let write = async {
            match self.stream.as_mut().expect("connected") {
                Stream::Plain(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
                Stream::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
            }
        };
        tokio::time::timeout(PATIENCE, write)
            .await
            .unwrap()
            .unwrap();
    }

    /// One raw line, terminator included; panics on EOF.
    pub async fn raw_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                return self.buf.drain(..=lf).collect();
            }
            if self.fill().await == 0 {
                panic!("EOF; buffered: {:?}", String::from_utf8_lossy(&self.buf));
            }
        }
    }

    /// One line without CRLF (every response line must end with CRLF).
    pub async fn line(&mut self) -> String {
        let raw = self.raw_line().await;
        let text = raw
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("line without CRLF: {:?}", String::from_utf8_lossy(&raw)));
        String::from_utf8(text.to_vec()).expect("UTF-8 status line")
    }

    /// The body of a multi-line response as sent (still byte-stuffed), without the
    /// terminating `.` CRLF line.
    pub async fn raw_multiline(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.raw_line().await;
            if line == b".\r\n" {
                return body;
            }
            body.extend_from_slice(&line);
        }
    }

    /// Lines of a multi-line listing (CAPA, LIST, UIDL), un-stuffed.
    pub async fn listing(&mut self) -> Vec<String> {
        let raw = self.raw_multiline().await;
        String::from_utf8(raw)
            .unwrap()
            .split_terminator("\r\n")
            .map(|l| l.strip_prefix('.').unwrap_or(l).to_owned())
            .collect()
    }

    /// Sends a command line and reads the status line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.line().await
    }

    /// Sends a command that must succeed.
    pub async fn ok(&mut self, line: &str) -> String {
        let reply = self.cmd(line).await;
        assert!(reply.starts_with("+OK"), "{line}: {reply}");
        reply
    }

    /// USER + PASS with [`PASSWORD`], both must succeed.
    pub async fn login(&mut self, address: &str) {
        self.ok(&format!("USER {address}")).await;
        self.ok(&format!("PASS {PASSWORD}")).await;
    }

    /// CAPA's capability lines.
    pub async fn capa(&mut self) -> Vec<String> {
        self.ok("CAPA").await;
        self.listing().await
    }

    /// Issues STLS and upgrades. Anything buffered after the +OK is a test failure.
    pub async fn stls(&mut self, config: &Arc<rustls::ClientConfig>) {
        self.ok("STLS").await;
        self.upgrade(config).await;
    }

    /// The TLS handshake on a plain stream whose STLS was already answered.
    pub async fn upgrade(&mut self, config: &Arc<rustls::ClientConfig>) {
        assert!(self.buf.is_empty(), "server sent data after +OK to STLS");
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            panic!("STLS on a TLS connection");
        };
        self.stream = Some(Stream::Tls(Box::new(handshake(tcp, config).await)));
    }

    /// Reads until the server closes the connection; returns what arrived before.
    pub async fn until_closed(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// Drops the connection abruptly (no QUIT).
    pub fn drop_connection(mut self) {
        self.stream.take();
    }
}

async fn handshake(tcp: TcpStream, config: &Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(Arc::clone(config));
    let name = ServerName::try_from(HOST).unwrap();
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake failed")
}

/// RFC 1939 §3 byte-stuffing, written independently of the crate's encoder: the expected
/// wire form of `content` in a multi-line response, without the final `.` CRLF.
pub fn stuffed(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Path of a helper script under tests/py.
pub fn py(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script)
}

/// Runs an external program to completion (bounded). A missing program fails the test: these
/// clients are part of the test suite, not optional.
pub async fn run(program: &str, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.output();
    match tokio::time::timeout(PROGRAM_PATIENCE, child).await {
        Err(_) => panic!("{program} did not finish within {PROGRAM_PATIENCE:?}"),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is not installed; it is required by this test (Debian: apt-get install \
             python3 fetchmail getmail6)"
        ),
        Ok(Err(err)) => panic!("cannot run {program}: {err}"),
        Ok(Ok(output)) => output,
    }
}

/// Runs tests/py/pop3_client.py and returns its JSON report; panics with its stderr on failure.
pub async fn poplib(
    harness: &Harness,
    mode: &str,
    user: &str,
    extra: &[&str],
) -> serde_json::Value {
    let port = match mode {
        "stls" => harness.stls_addr.port(),
        _ => harness.tls_addr.port(),
    }
    .to_string();
    let script = py("pop3_client.py");
    let ca = harness.ca.to_str().unwrap();
    let mut args = vec![
        script.to_str().unwrap(),
        "--port",
        &port,
        "--mode",
        mode,
        "--ca",
        ca,
        "--servername",
        HOST,
        "--user",
        user,
        "--password",
        PASSWORD,
    ];
    args.extend_from_slice(extra);
    let output = run("python3", &args, &[]).await;
    assert!(
        output.status.success(),
        "pop3_client.py {mode} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "bad JSON from pop3_client.py ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Decodes a base64 string from a JSON report.
pub fn b64(value: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("base64 string"))
        .unwrap()
}

/// Sample messages (CRLF throughout, lines under 1000 octets).
pub mod corpus {
    /// Plain text.
    pub const SIMPLE: &[u8] = b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: hello\r\nMessage-ID: <1@example.test>\r\n\r\nHello Alice,\r\nhow are you?\r\n";

    /// Lines that begin with dots, including a lone dot (RFC 1939 §3 byte-stuffing).
    pub const DOTS: &[u8] = b"From: bob@example.test\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nmiddle . dot\r\n...three\r\n. \r\nlast line\r\n.\r\n";

    /// 8-bit text and binary-ish bytes: UTF-8, Latin-1, NUL, lone CR, DEL, every byte but LF.
    pub fn binary() -> Vec<u8> {
        let mut m = b"From: bob@example.test\r\nSubject: =?utf-8?q?bin=C3=A4r?=\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
        m.extend_from_slice("Grüße, ça va? ✓\r\n".as_bytes());
        m.extend_from_slice(b"latin1 \xe9\xe8\xff\r\n");
        m.extend_from_slice(b"nul\x00byte and lone\rcarriage return\r\n");
        let every: Vec<u8> = (0u8..=255).filter(|&b| b != b'\n').collect();
        m.extend_from_slice(&every);
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(b".\x80 dot then 8-bit\r\n\x7f\r\n");
        m
    }

    /// 8-bit text without NUL or lone CR (for clients that normalise those).
    pub const EIGHT_BIT: &[u8] = "From: bob@example.test\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln, ça va? ✓\r\n.dot line\r\n".as_bytes();
}
