//! Pebble (Let's Encrypt's test CA, Debian package `pebble`) and pebble-challtestsrv (its mock
//! DNS) on loopback, one pair per test on its own ports; a TLS client that verifies what a
//! server presents against pebble's root. A missing `pebble` binary fails the test; it never
//! skips. Shared by the `acme` crate's tests and the binary's (`crates/tessera/tests/acme.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tls::rustls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// This server's public address in every test: challtestsrv answers every A query with it.
pub const HERE: &str = "127.0.0.1";
/// An address that is not this server's.
pub const ELSEWHERE: &str = "192.0.2.1";

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections at `addr`.
async fn wait_listening(addr: SocketAddr, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not start listening on {addr}");
}

/// The mock DNS: every name resolves to [`HERE`] (A only) unless overridden.
pub struct ChallTestSrv {
    child: Child,
    /// DNS (UDP and TCP).
    pub dns: SocketAddr,
    management: SocketAddr,
}

impl ChallTestSrv {
    pub async fn start() -> ChallTestSrv {
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", HERE, "-defaultIPv6", ""])
            .args([
                "-dns01",
                &dns.to_string(),
                "-management",
                &management.to_string(),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble-challtestsrv (Debian package `pebble`) must be installed");
        wait_listening(management, "pebble-challtestsrv").await;
        ChallTestSrv {
            child,
            dns,
            management,
        }
    }

    /// Makes `host` resolve to `address` (A record) instead of [`HERE`].
    pub async fn set_a(&self, host: &str, address: &str) {
        let body = format!(r#"{{"host":"{host}","addresses":["{address}"]}}"#);
        let request = format!(
            "POST /add-a HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.management,
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(self.management)
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "add-a: {reply}");
    }
}

/// A running pebble with its own WFE certificate authority.
pub struct Pebble {
    child: Option<Child>,
    config_path: PathBuf,
    dns: SocketAddr,
    listen: SocketAddr,
    pub dir: PathBuf,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that signed pebble's own HTTPS certificate (for `ca_file`).
    pub wfe_ca: PathBuf,
    pub management: SocketAddr,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 at `http_port` and TLS-ALPN-01 at `tls_port`, resolving
    /// names through `dns`, issuing certificates valid for `validity_secs`.
    pub async fn start(
        dir: &Path,
        dns: SocketAddr,
        http_port: u16,
        tls_port: u16,
        validity_secs: u64,
    ) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        // Pebble's own HTTPS (WFE and management) certificate, from a throw-away CA.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let wfe_ca = dir.join("wfe-ca.pem");
        std::fs::write(&wfe_ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("wfe-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("wfe-key.pem"), leaf_key.serialize_pem()).unwrap();

        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.join("wfe-cert.pem"),
                "privateKey": dir.join("wfe-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut pebble = Pebble {
            child: None,
            config_path,
            dns,
            listen,
            directory: format!("https://{listen}/dir"),
            dir,
            wfe_ca,
            management,
        };
        pebble.restart().await;
        pebble
    }

    /// Starts pebble again after [`stop`](Self::stop): same ports and directory URL, but a
    /// fresh CA (new root, no accounts), as pebble keeps nothing.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pebble.log"))
            .unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config_path)
            .args(["-dnsserver", &self.dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("pebble (Debian package `pebble`) must be installed");
        self.child = Some(child);
        wait_listening(self.listen, "pebble").await;
    }

    /// Stops pebble (the CA goes down).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Pebble's issuing root, from its management interface (`/roots/0`), as a PEM file.
    pub async fn root(&self) -> PathBuf {
        let config = tls::client_config_trusting(&self.wfe_ca).unwrap();
        let connector = tls::tokio_rustls::TlsConnector::from(config);
        let tcp = tokio::net::TcpStream::connect(self.management)
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        let request = format!(
            "GET /roots/0 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.management
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        // Go closes without close_notify; what arrived before is the whole reply.
        let _ = stream.read_to_end(&mut reply).await;
        let reply = String::from_utf8(reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "roots/0: {head}");
        assert!(body.contains("BEGIN CERTIFICATE"), "roots/0: {body}");
        let path = self.dir.join("root.pem");
        std::fs::write(&path, body).unwrap();
        path
    }

    /// Pebble's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}

/// What a client sees: the chain presented for `sni` on the HTTPS listener, verified
/// against `root` (the handshake fails otherwise). Returns the leaf's DER.
pub async fn handshake(addr: SocketAddr, sni: &str, root: &Path) -> Vec<u8> {
    let config = tls::client_config_trusting(root).unwrap();
    let connector = tls::tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let stream = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("handshake for {sni} must verify against pebble's root: {e}"));
    let (_, session) = stream.get_ref();
    session.peer_certificates().unwrap()[0].to_vec()
}

/// The leaf's serial number and SubjectPublicKeyInfo.
pub fn serial_and_key(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    (cert.raw_serial().to_vec(), cert.public_key().raw.to_vec())
}
