//! Outbound delivery fault tests: the real worker against scripted remote SMTP servers on
//! loopback addresses (127.0.0.3, 127.0.0.4, ...), MX routing through a real DNS server
//! (hickory-server, UDP on 127.0.0.1), MTA-STS over HTTPS with certificates from a local CA.
//! The remote servers listen on one free port shared by their addresses; the worker's
//! `smtp_port` points there (port 25 would need root). The back-off schedule is one second.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup: failures should panic

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::store::file::{FileConfig, FileZoneHandler};
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use smtp::outbound::{OutboundConfig, Worker, load_roots};
use store::{
    Address, NewAccount, QueueId, QueuedMessage, QueuedRecipient, RecipientState, SqliteStore,
    Store, password, unix_now,
};
use tls::{CertSource, CertStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Upper bound on any wait.
const PATIENCE: Duration = Duration::from_secs(20);
const ALICE: &str = "alice@a.test";

fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}\n$TTL 1\n@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 1\n@ IN NS ns.test.\n{records}"
    )
}

async fn start_dns(dir: &Path) -> SocketAddr {
    let zones = [
        (
            "b.test.",
            zone("b.test.", "@ IN MX 10 mx.b.test.\nmx IN A 127.0.0.3\n"),
        ),
        // Two MX hosts: the preferred one is down (nothing listens on 127.0.0.5).
        (
            "two.test.",
            zone(
                "two.test.",
                "@ IN MX 10 mx1.two.test.\n@ IN MX 20 mx2.two.test.\nmx1 IN A 127.0.0.5\nmx2 IN A 127.0.0.3\n",
            ),
        ),
        ("null.test.", zone("null.test.", "@ IN MX 0 .\n")),
        // No MX: the implicit MX is the domain's own address.
        (
            "implicit.test.",
            zone("implicit.test.", "@ IN A 127.0.0.3\n"),
        ),
        (
            "sts.test.",
            zone(
                "sts.test.",
                "@ IN MX 10 mx.sts.test.\nmx IN A 127.0.0.4\nmta-sts IN A 127.0.0.4\n_mta-sts IN TXT \"v=STSv1; id=1\"\n",
            ),
        ),
        ("test.", zone("test.", "ns IN A 127.0.0.1\n")),
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

/// A scripted remote SMTP server: RCPT replies come from `rcpt_script` (then `250`), accepted
/// messages are kept in `received`. Optionally offers STARTTLS with `tls`.
#[derive(Clone, Default)]
struct Remote {
    rcpt_script: Arc<Mutex<VecDeque<String>>>,
    received: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<u32>>,
}

impl Remote {
    fn script(&self, replies: &[&str]) {
        self.rcpt_script
            .lock()
            .unwrap()
            .extend(replies.iter().map(|s| s.to_string()));
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    async fn listen(
        &self,
        addr: SocketAddr,
        tls: Option<Arc<tls::rustls::ServerConfig>>,
    ) -> SocketAddr {
        let listener = TcpListener::bind(addr).await.unwrap();
        let local = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                *me.connections.lock().unwrap() += 1;
                let me = me.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = me.session(socket, tls).await;
                });
            }
        });
        local
    }

    async fn session(
        &self,
        socket: tokio::net::TcpStream,
        tls: Option<Arc<tls::rustls::ServerConfig>>,
    ) -> std::io::Result<()> {
        let mut plain = BufReader::new(socket);
        plain.get_mut().write_all(b"220 remote ESMTP\r\n").await?;
        let mut line = String::new();
        // Plaintext phase: EHLO, maybe STARTTLS.
        loop {
            line.clear();
            if plain.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_ascii_uppercase();
            if cmd.starts_with("EHLO") {
                let starttls = if tls.is_some() {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                plain
                    .get_mut()
                    .write_all(
                        format!("250-remote\r\n{starttls}250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n")
                            .as_bytes(),
                    )
                    .await?;
            } else if cmd == "STARTTLS" {
                let Some(config) = tls.clone() else {
                    plain.get_mut().write_all(b"502 5.5.1 no\r\n").await?;
                    continue;
                };
                plain.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                let acceptor = tls::tokio_rustls::TlsAcceptor::from(config);
                let stream = acceptor.accept(plain.into_inner()).await?;
                let mut secure = BufReader::new(stream);
                return self.transactions(&mut secure, true).await;
            } else {
                // Anything else: continue in plaintext with this line.
                return self.transactions_from(&mut plain, Some(line.clone())).await;
            }
        }
    }

    async fn transactions<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        io: &mut BufReader<S>,
        _tls: bool,
    ) -> std::io::Result<()> {
        self.transactions_from(io, None).await
    }

    async fn transactions_from<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        io: &mut BufReader<S>,
        mut first: Option<String>,
    ) -> std::io::Result<()> {
        let mut accepted = 0;
        loop {
            let line = match first.take() {
                Some(l) => l,
                None => {
                    let mut l = String::new();
                    if io.read_line(&mut l).await? == 0 {
                        return Ok(());
                    }
                    l
                }
            };
            let cmd = line.trim_end().to_ascii_uppercase();
            let reply = if cmd.starts_with("EHLO") {
                "250-remote\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000".to_string()
            } else if cmd.starts_with("MAIL") {
                accepted = 0;
                "250 2.1.0 ok".into()
            } else if cmd.starts_with("RCPT") {
                let r = self
                    .rcpt_script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(|| "250 2.1.5 ok".into());
                if r.starts_with('2') {
                    accepted += 1;
                }
                r
            } else if cmd == "DATA" {
                if accepted == 0 {
                    "554 5.5.1 no valid recipients".into()
                } else {
                    io.get_mut().write_all(b"354 go\r\n").await?;
                    let mut data = String::new();
                    loop {
                        let mut l = String::new();
                        if io.read_line(&mut l).await? == 0 {
                            return Ok(());
                        }
                        if l == ".\r\n" {
                            break;
                        }
                        // RFC 5321 §4.5.2: remove the stuffed dot.
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    }
                    self.received.lock().unwrap().push(data);
                    "250 2.0.0 queued".into()
                }
            } else if cmd == "QUIT" {
                io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            } else {
                "250 2.0.0 ok".into()
            };
            io.get_mut()
                .write_all(format!("{reply}\r\n").as_bytes())
                .await?;
        }
    }
}

struct Sender {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    dns: SocketAddr,
    certs: Arc<CertStore>,
}

impl Sender {
    async fn start() -> Sender {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("data")).await.unwrap();
        store
            .add_domain(&store::Domain::parse("a.test").unwrap())
            .await
            .unwrap();
        store
            .add_account(NewAccount {
                address: Address::parse(ALICE).unwrap(),
                password_hash: password::hash_password("Correct-Horse-Battery-9").unwrap(),
                display_name: String::new(),
                quota_bytes: 0,
            })
            .await
            .unwrap();
        let certs = CertStore::new(CertSource::LocalCa {
            dir: dir.path().join("ca"),
        })
        .unwrap();
        let dns = start_dns(dir.path()).await;
        Sender {
            dir,
            store,
            dns,
            certs,
        }
    }

    fn worker(&self, smtp_port: u16, tune: impl FnOnce(&mut OutboundConfig)) -> Worker {
        let mut config = OutboundConfig::new("mail.a.test");
        config.resolver = Some(self.dns);
        config.dns_timeout = Duration::from_secs(2);
        config.smtp_port = smtp_port;
        config.tls_roots = Arc::new(load_roots(&self.certs.ca_path().unwrap()).unwrap());
        config.retry_schedule = vec![Duration::from_secs(1)];
        config.poll_interval = Duration::from_millis(100);
        config.connect_timeout = Duration::from_secs(3);
        config.command_timeout = Duration::from_secs(5);
        tune(&mut config);
        Worker::new(self.store.clone(), config).unwrap()
    }

    async fn enqueue(&self, to: &[&str]) -> QueueId {
        let body = format!(
            "From: <{ALICE}>\r\nTo: <{}>\r\nSubject: outbound test\r\nMessage-ID: <{}@a.test>\r\n\r\nHello.\r\n.leading dot\r\n",
            to[0],
            rand_id()
        );
        self.store
            .enqueue(QueuedMessage {
                sender: Some(Address::parse(ALICE).unwrap()),
                recipients: to
                    .iter()
                    .map(|r| QueuedRecipient::new(Address::parse(r).unwrap()))
                    .collect(),
                bytes: Arc::new(body.into_bytes()),
                account: None,
                dsn_envid: None,
                dsn_ret: None,
                expires_at: unix_now() + 3600,
            })
            .await
            .unwrap()
    }

    async fn inbox(&self, user: &str) -> Vec<String> {
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
            let raw = self
                .store
                .read_message(account.id, m.message)
                .await
                .unwrap();
            out.push(String::from_utf8_lossy(&raw).into_owned());
        }
        out
    }
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Runs worker passes until `done` holds (bounded by PATIENCE).
async fn drive<F: std::future::Future<Output = bool>>(
    worker: &Worker,
    mut done: impl FnMut() -> F,
) {
    let start = Instant::now();
    loop {
        worker.run_once().await.unwrap();
        if done().await {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A remote on 127.0.0.3 at a free port.
async fn remote_on_3(tls: Option<Arc<tls::rustls::ServerConfig>>) -> (Remote, u16) {
    let remote = Remote::default();
    let addr = remote.listen("127.0.0.3:0".parse().unwrap(), tls).await;
    (remote, addr.port())
}

#[tokio::test]
async fn remote_451_then_accept_is_delivered_once() {
    let sender = Sender::start().await;
    let (remote, port) = remote_on_3(None).await;
    remote.script(&["451 4.3.0 greylisted, come back later"]);
    let worker = sender.worker(port, |_| {});
    let id = sender.enqueue(&["bob@b.test"]).await;

    worker.run_once().await.unwrap();
    let e = sender.store.queue_entry(id).await.unwrap().unwrap();
    assert_eq!(e.recipients[0].state, RecipientState::Pending);
    assert!(
        e.recipients[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("451 4.3.0 greylisted"),
        "{e:?}"
    );
    assert!(remote.received().is_empty());

    let store = sender.store.clone();
    drive(&worker, || {
        let store = store.clone();
        async move { store.queue_entry(id).await.unwrap().is_none() }
    })
    .await;
    let got = remote.received();
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert!(got[0].contains("Subject: outbound test"));
    assert!(
        got[0].contains("\r\n.leading dot\r\n"),
        "dot-stuffed and unstuffed: {}",
        got[0]
    );
}

#[tokio::test]
async fn remote_down_is_retried_then_delivered() {
    let sender = Sender::start().await;
    // Reserve a port, then close it: the remote is down.
    let port = {
        let l = TcpListener::bind("127.0.0.3:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let worker = sender.worker(port, |_| {});
    let id = sender.enqueue(&["bob@b.test"]).await;
    worker.run_once().await.unwrap();
    let e = sender.store.queue_entry(id).await.unwrap().unwrap();
    assert_eq!(e.recipients[0].state, RecipientState::Pending);
    assert_eq!(e.recipients[0].attempts, 1);
    assert!(
        e.recipients[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("4.4.1"),
        "{e:?}"
    );

    let remote = Remote::default();
    remote
        .listen(format!("127.0.0.3:{port}").parse().unwrap(), None)
        .await;
    let store = sender.store.clone();
    drive(&worker, || {
        let store = store.clone();
        async move { store.queue_entry(id).await.unwrap().is_none() }
    })
    .await;
    assert_eq!(remote.received().len(), 1);
}

#[tokio::test]
async fn preferred_mx_down_falls_back_to_the_next_mx() {
    let sender = Sender::start().await;
    let (remote, port) = remote_on_3(None).await;
    let worker = sender.worker(port, |_| {});
    let id = sender
        .enqueue(&["bob@two.test", "carol@implicit.test"])
        .await;
    worker.run_once().await.unwrap();
    assert!(sender.store.queue_entry(id).await.unwrap().is_none());
    assert_eq!(remote.received().len(), 2, "one connection per domain");
}

#[tokio::test]
async fn remote_550_sends_a_dsn_with_the_remote_text_to_the_senders_inbox() {
    let sender = Sender::start().await;
    let (remote, port) = remote_on_3(None).await;
    remote.script(&["550 5.1.1 <nobody@b.test>: Recipient address rejected: unknown user"]);
    let worker = sender.worker(port, |_| {});
    let id = sender.enqueue(&["nobody@b.test", "bob@b.test"]).await;
    worker.run_once().await.unwrap();
    assert!(sender.store.queue_entry(id).await.unwrap().is_none());
    assert_eq!(remote.received().len(), 1, "bob still got it");
    let inbox = sender.inbox(ALICE).await;
    assert_eq!(inbox.len(), 1, "one DSN");
    let dsn = &inbox[0];
    assert!(
        dsn.contains("multipart/report; report-type=delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Recipient address rejected: unknown user"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@b.test"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Action: failed") && dsn.contains("Status: 5.1.1"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("Final-Recipient: rfc822; bob@b.test"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Subject: outbound test"),
        "the original is returned"
    );
}

#[tokio::test]
async fn null_mx_fails_at_once_and_the_null_sender_gets_no_bounce() {
    let sender = Sender::start().await;
    let worker = sender.worker(9, |_| {});
    let id = sender.enqueue(&["x@null.test"]).await;
    worker.run_once().await.unwrap();
    assert!(sender.store.queue_entry(id).await.unwrap().is_none());
    let inbox = sender.inbox(ALICE).await;
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].contains("null MX"), "{}", inbox[0]);

    // A bounce (null sender) that fails is dropped without another bounce.
    let bounce = sender
        .store
        .enqueue(QueuedMessage {
            sender: None,
            recipients: vec![QueuedRecipient::new(Address::parse("y@null.test").unwrap())],
            bytes: Arc::new(b"Subject: dsn\r\n\r\nx\r\n".to_vec()),
            account: None,
            dsn_envid: None,
            dsn_ret: None,
            expires_at: unix_now() + 3600,
        })
        .await
        .unwrap();
    worker.run_once().await.unwrap();
    assert!(sender.store.queue_entry(bounce).await.unwrap().is_none());
    assert!(sender.store.list_queue().await.unwrap().is_empty());
    assert_eq!(sender.inbox(ALICE).await.len(), 1);
}

#[tokio::test]
async fn expiry_fails_the_message_with_a_dsn() {
    let sender = Sender::start().await;
    let port = {
        let l = TcpListener::bind("127.0.0.3:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let worker = sender.worker(port, |c| c.max_lifetime = Duration::from_secs(1));
    let id = sender.enqueue(&["bob@b.test"]).await;
    let store = sender.store.clone();
    drive(&worker, || {
        let store = store.clone();
        async move { store.queue_entry(id).await.unwrap().is_none() }
    })
    .await;
    let inbox = sender.inbox(ALICE).await;
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].contains("delivery time expired"), "{}", inbox[0]);
}

/// Serves the MTA-STS policy over HTTPS (HTTP/1.1, one request per connection).
async fn serve_policy(
    addr: SocketAddr,
    config: Arc<tls::rustls::ServerConfig>,
    policy: String,
) -> u16 {
    let listener = TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = tls::tokio_rustls::TlsAcceptor::from(config.clone());
            let policy = policy.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(socket).await else {
                    return;
                };
                let mut req = vec![0u8; 4096];
                let _ = s.read(&mut req).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                    policy.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn mta_sts_enforce_with_a_bad_certificate_is_not_delivered_and_retried() {
    let sender = Sender::start().await;
    // The policy host has a certificate from the trusted CA.
    sender
        .certs
        .ensure_local_names(&[vec!["mta-sts.sts.test".to_string()]])
        .unwrap();
    let https = sender.certs.server_config(vec![b"http/1.1".to_vec()]);
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
    let sts_port = serve_policy("127.0.0.4:0".parse().unwrap(), https, policy.into()).await;
    // The MX's certificate comes from another CA, which the sender does not trust.
    let rogue = CertStore::new(CertSource::LocalCa {
        dir: sender.dir.path().join("rogue-ca"),
    })
    .unwrap();
    rogue
        .ensure_local_names(&[vec!["mx.sts.test".to_string()]])
        .unwrap();
    let remote = Remote::default();
    let port = remote
        .listen(
            "127.0.0.4:0".parse().unwrap(),
            Some(rogue.server_config(Vec::new())),
        )
        .await
        .port();
    let worker = sender.worker(port, |c| c.mta_sts_port = sts_port);
    let id = sender.enqueue(&["bob@sts.test"]).await;

    worker.run_once().await.unwrap();
    worker.run_once().await.unwrap(); // not due yet: nothing happens
    tokio::time::sleep(Duration::from_millis(1100)).await;
    worker.run_once().await.unwrap();
    let e = sender.store.queue_entry(id).await.unwrap().unwrap();
    let r = &e.recipients[0];
    assert_eq!(r.state, RecipientState::Pending, "kept for retry");
    assert_eq!(r.attempts, 2, "retried");
    let error = r.last_error.as_deref().unwrap();
    assert!(
        error.contains("MTA-STS enforce") && error.contains("certificate"),
        "{error}"
    );
    assert!(
        remote.received().is_empty(),
        "never sent without a valid certificate"
    );
    assert!(
        sender.inbox(ALICE).await.is_empty(),
        "no bounce while retrying"
    );
}

#[tokio::test]
async fn opportunistic_tls_accepts_an_unverified_certificate_without_a_policy() {
    let sender = Sender::start().await;
    let rogue = CertStore::new(CertSource::LocalCa {
        dir: sender.dir.path().join("rogue-ca"),
    })
    .unwrap();
    rogue
        .ensure_local_names(&[vec!["mx.b.test".to_string()]])
        .unwrap();
    let (remote, port) = remote_on_3(Some(rogue.server_config(Vec::new()))).await;
    let worker = sender.worker(port, |_| {});
    let id = sender.enqueue(&["bob@b.test"]).await;
    worker.run_once().await.unwrap();
    assert!(sender.store.queue_entry(id).await.unwrap().is_none());
    assert_eq!(remote.received().len(), 1);
}

#[tokio::test]
async fn spawned_worker_delivers_and_stops_on_shutdown() {
    let sender = Sender::start().await;
    let (remote, port) = remote_on_3(None).await;
    let worker = sender.worker(port, |_| {});
    let shutdown = net::Shutdown::new();
    let task = worker.clone().spawn(shutdown.clone());
    let id = sender.enqueue(&["bob@b.test"]).await;
    worker.wake();
    let start = Instant::now();
    while sender.store.queue_entry(id).await.unwrap().is_some() {
        assert!(start.elapsed() < PATIENCE, "not delivered in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(remote.received().len(), 1);
    shutdown.trigger();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn messages_from_a_domain_with_dkim_keys_are_signed_at_delivery() {
    use mail_auth::common::crypto::Ed25519Key;
    let sender = Sender::start().await;
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap().public_key();
    sender
        .store
        .add_dkim_key(store::NewDkimKey {
            domain: store::Domain::parse("a.test").unwrap(),
            selector: "ed1".into(),
            algorithm: store::DkimAlgorithm::Ed25519Sha256,
            private_key: pkcs8,
            public_key: public,
        })
        .await
        .unwrap();
    let (remote, port) = remote_on_3(None).await;
    let worker = sender.worker(port, |_| {});
    sender.enqueue(&["bob@b.test"]).await;
    worker.run_once().await.unwrap();
    let got = remote.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("DKIM-Signature:"), "{}", got[0]);
    assert!(
        got[0].contains("d=a.test") && got[0].contains("s=ed1"),
        "{}",
        got[0]
    );
    assert!(got[0].contains("a=ed25519-sha256"), "{}", got[0]);
}
