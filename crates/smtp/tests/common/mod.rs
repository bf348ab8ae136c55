//! End-to-end harness: a real SqliteStore and a local CA in a temporary directory, a real DNS
//! server (hickory-server, UDP on loopback) serving SPF/DKIM/DMARC/PTR records, and the three
//! SMTP listeners (MX with STARTTLS, submission with STARTTLS, submissions with implicit TLS)
//! on 127.0.0.1:0 through `net::bind`/`net::serve`. Plus a raw line client for attacks.
#![allow(dead_code)] // each test binary uses part of it
#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup: failures should panic

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hickory_server::Server;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::store::file::{FileConfig, FileZoneHandler};
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use net::{ListenerSpec, LoginThrottle, Shutdown, ThrottleConfig, TlsMode};
use smtp::{SmtpConfig, SmtpMode, SmtpServer};
use store::{Address, AliasSource, NewAccount, SqliteStore, Store, password};
use tls::{CertSource, CertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait in a test.
pub const PATIENCE: Duration = Duration::from_secs(15);
/// The server's host name (and the name in its certificate).
pub const HOST: &str = "mail.example.test";
pub const ALICE: &str = "alice@example.test";
pub const BOB: &str = "bob@example.test";
pub const PASSWORD: &str = "Correct-Horse-Battery-9";
/// DKIM selector published for sender.test.
pub const SELECTOR: &str = "sel";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub mx: SocketAddr,
    pub submission: SocketAddr,
    pub submissions: SocketAddr,
    pub ca: PathBuf,
    pub dns: SocketAddr,
    pub dkim_pkcs8: Vec<u8>,
    pub shutdown: Shutdown,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}\n$TTL 300\n@ IN SOA ns.sender.test. hostmaster.sender.test. 1 3600 600 86400 300\n@ IN NS ns.sender.test.\n{records}"
    )
}

/// Starts hickory-server on 127.0.0.1 (UDP) with the test zones; returns its address.
async fn start_dns(dir: &Path, dkim_public_b64: &str) -> SocketAddr {
    let zones = [
        (
            "sender.test.",
            zone(
                "sender.test.",
                &format!(
                    "ns IN A 127.0.0.1\nclient IN A 127.0.0.1\n@ IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n{SELECTOR}._domainkey IN TXT \"v=DKIM1; k=ed25519; p={dkim_public_b64}\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"\n"
                ),
            ),
        ),
        (
            // Publishes SPF that excludes loopback and DMARC p=reject: mail claiming it fails.
            "strict.test.",
            zone(
                "strict.test.",
                "@ IN TXT \"v=spf1 ip4:192.0.2.1 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"\n",
            ),
        ),
        (
            // The parent: DMARC's tree walk (RFC 9989 §4.10.1) also asks for `_dmarc.test`,
            // which must be an authoritative NXDOMAIN, not a refusal.
            "test.",
            zone("test.", ""),
        ),
        (
            "127.in-addr.arpa.",
            zone("127.in-addr.arpa.", "1.0.0 IN PTR client.sender.test.\n"),
        ),
    ];
    let mut catalog = Catalog::new();
    for (origin, text) in zones {
        let path = dir.join(format!("{origin}zone"));
        std::fs::write(&path, text).unwrap();
        let name = Name::from_ascii(origin).unwrap();
        let handler = FileZoneHandler::try_from_config(
            name.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            None,
            &FileConfig { zone_path: path },
        )
        .unwrap();
        catalog.upsert(LowerName::from(name), vec![Arc::new(handler)]);
    }
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut server = Server::new(catalog);
    server.register_socket(socket);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    addr
}

pub fn test_config(dns: SocketAddr) -> SmtpConfig {
    SmtpConfig {
        hostname: HOST.into(),
        max_message_size: 1024 * 1024,
        resolver: Some(dns),
        dns_timeout: Duration::from_secs(2),
        ..SmtpConfig::default()
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// Starts everything; `tune` may change the SMTP configuration of all three listeners.
    pub async fn start_with(tune: impl Fn(&mut SmtpConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("data")).await.unwrap();
        let hash = password::hash_password(PASSWORD).unwrap();
        for domain in ["example.test", "catchall.test"] {
            store
                .add_domain(&store::Domain::parse(domain).unwrap())
                .await
                .unwrap();
        }
        for user in [ALICE, BOB] {
            store
                .add_account(NewAccount {
                    address: Address::parse(user).unwrap(),
                    password_hash: hash.clone(),
                    display_name: String::new(),
                    quota_bytes: 0,
                })
                .await
                .unwrap();
        }
        let alice = Address::parse(ALICE).unwrap();
        let bob = Address::parse(BOB).unwrap();
        let info = AliasSource::parse("info@example.test").unwrap();
        store.add_alias(&info, &alice).await.unwrap();
        store.add_alias(&info, &bob).await.unwrap();
        store
            .add_alias(&AliasSource::parse("sales@example.test").unwrap(), &alice)
            .await
            .unwrap();
        store
            .add_alias(&AliasSource::parse("@catchall.test").unwrap(), &bob)
            .await
            .unwrap();

        let certs = CertStore::new(CertSource::LocalCa {
            dir: dir.path().join("ca"),
        })
        .unwrap();
        certs.ensure_local_names(&[vec![HOST.to_string()]]).unwrap();
        let ca = certs.ca_path().unwrap();
        let tls = certs.server_config(Vec::new());

        let dkim_pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
        let key = Ed25519Key::from_pkcs8_der(&dkim_pkcs8).unwrap();
        let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
        let dns = start_dns(dir.path(), &public).await;

        let mut config = test_config(dns);
        tune(&mut config);
        let throttle = Arc::new(LoginThrottle::new(ThrottleConfig::disabled()));
        let shutdown = Shutdown::new();
        let mut addrs = Vec::new();
        for (proto, mode, tls_mode) in [
            ("smtp", SmtpMode::Mx, TlsMode::StartTls),
            ("submission", SmtpMode::Submission, TlsMode::StartTls),
            ("submissions", SmtpMode::Submission, TlsMode::Implicit),
        ] {
            let server = SmtpServer::new(
                mode,
                store.clone() as Arc<dyn Store>,
                throttle.clone(),
                config.clone(),
            )
            .unwrap();
            let mut spec = ListenerSpec::new(proto, "127.0.0.1:0".parse().unwrap(), tls_mode);
            spec.max_per_ip = 0;
            spec.idle_timeout = config.command_timeout;
            let listener = net::bind(&spec).await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            tokio::spawn(net::serve(
                listener,
                spec,
                Some(tls.clone()),
                Arc::new(server),
                shutdown.clone(),
            ));
        }
        Harness {
            dir,
            store,
            mx: addrs[0],
            submission: addrs[1],
            submissions: addrs[2],
            ca,
            dns,
            dkim_pkcs8,
            shutdown,
        }
    }

    /// DKIM-signs `message` for sender.test (Ed25519) and returns the signed bytes.
    pub fn dkim_sign(&self, message: &[u8]) -> Vec<u8> {
        let key = Ed25519Key::from_pkcs8_der(&self.dkim_pkcs8).unwrap();
        let signature = DkimSigner::from_key(key)
            .domain("sender.test")
            .selector(SELECTOR)
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(message)
            .unwrap();
        let mut out = signature.to_header().into_bytes();
        out.extend_from_slice(message);
        out
    }

    /// The messages in `user`'s INBOX, raw.
    pub async fn inbox(&self, user: &str) -> Vec<Vec<u8>> {
        let account = self
            .store
            .account(&Address::parse(user).unwrap())
            .await
            .unwrap()
            .unwrap();
        let inbox = self
            .store
            .mailbox(account.id, "INBOX")
            .await
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        for m in self.store.messages(account.id, inbox.id).await.unwrap() {
            out.push(
                self.store
                    .read_message(account.id, m.message)
                    .await
                    .unwrap(),
            );
        }
        out
    }

    /// Writes a file in the temporary directory and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

/// Header block of a stored message as text.
pub fn headers_of(message: &[u8]) -> String {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end]).into_owned()
}

/// Runs an external program with a time limit; returns (status ok, stdout, stderr).
/// A missing program is a test failure, never a skip.
pub async fn run(program: &str, args: &[String]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    let child = cmd.output();
    let output = match tokio::time::timeout(Duration::from_secs(60), child).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            panic!("cannot run {program} (install it: see crates/smtp/tests/README): {e}")
        }
        Err(_) => panic!("{program} did not finish within 60 s"),
    };
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Path of a script under tests/py/.
pub fn py_script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Checks that a program exists (used where a test needs it; absence fails the test).
pub fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is required for this test (Debian package: see crates/smtp/tests/README)"
    );
}

// ---------------------------------------------------------------------------
// A raw SMTP client for attack tests.
// ---------------------------------------------------------------------------

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Raw {
    pub stream: Pin<Box<dyn Io>>,
    buf: Vec<u8>,
}

/// One reply: code and its lines' texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Answer {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let tcp = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Raw {
            stream: Box::pin(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects and reads the greeting, then says EHLO.
    pub async fn ready(addr: SocketAddr) -> Raw {
        let mut c = Raw::connect(addr).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO client.sender.test").await.code, 250);
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(PATIENCE, self.stream.write_all(bytes))
            .await
            .unwrap()
            .unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Sends `line` + CRLF and reads one reply.
    pub async fn cmd(&mut self, line: &str) -> Answer {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("server answered in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Answer {
        self.try_reply().await.expect("a reply before EOF")
    }

    /// Reads one reply, or `None` at EOF.
    pub async fn try_reply(&mut self) -> Option<Answer> {
        let mut lines = Vec::new();
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let code: u16 = text
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .expect("reply code");
                let last = text.as_bytes().get(3) != Some(&b'-');
                lines.push(text.get(4..).unwrap_or("").to_string());
                if last {
                    return Some(Answer { code, lines });
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Whether the server closed the connection (EOF before any further byte).
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }

    /// Upgrades to TLS (after a 220 to STARTTLS), trusting the harness's CA.
    pub async fn start_tls(self, ca: &Path) -> Raw {
        assert!(self.buf.is_empty(), "unread bytes before TLS");
        let config = tls::client_config_trusting(ca).unwrap();
        let connector = tls::tokio_rustls::TlsConnector::from(config);
        let name = tls::rustls::pki_types::ServerName::try_from(HOST.to_string()).unwrap();
        let stream = tokio::time::timeout(PATIENCE, connector.connect(name, self.stream))
            .await
            .unwrap()
            .unwrap();
        Raw {
            stream: Box::pin(stream),
            buf: Vec::new(),
        }
    }

    /// Connects with implicit TLS.
    pub async fn connect_tls(addr: SocketAddr, ca: &Path) -> Raw {
        Raw::connect(addr).await.start_tls(ca).await
    }
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}
