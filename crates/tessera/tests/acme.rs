//! ACME through the real binary: `tessera serve` with `[acme]` pointed at pebble on loopback
//! gets certificates for the mail host and the hosted domain's names (skipping one that
//! resolves elsewhere), and the IMAP, SMTP and HTTPS listeners then present chains that
//! verify against pebble's root. `tessera cert status` reports it all.
//! Debian package: pebble (with pebble-challtestsrv).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../acme/tests/support/pebble.rs"]
mod pebble;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Guard, SERVICES};
use pebble::{ChallTestSrv, ELSEWHERE, Pebble, free_port, handshake};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn tessera(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run tessera");
    assert!(
        out.status.success(),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// SMTP STARTTLS on port 25 (RFC 3207), then the handshake verified against `root`.
async fn smtp_starttls(addr: SocketAddr, sni: &str, root: &Path) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let mut read_reply = async |stream: &mut BufReader<tokio::net::TcpStream>| loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        assert!(line.len() >= 4, "short SMTP reply {line:?}");
        if line.as_bytes()[3] == b' ' {
            return line.clone();
        }
    };
    assert!(read_reply(&mut stream).await.starts_with("220"));
    stream.write_all(b"EHLO client.test\r\n").await.unwrap();
    assert!(read_reply(&mut stream).await.starts_with("250"));
    stream.write_all(b"STARTTLS\r\n").await.unwrap();
    assert!(read_reply(&mut stream).await.starts_with("220"));
    let tcp = stream.into_inner();
    let config = tls::client_config_trusting(root).unwrap();
    let connector = tls::tokio_rustls::TlsConnector::from(config);
    let name = tls::rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await.unwrap_or_else(|e| {
        panic!("SMTP STARTTLS for {sni} must verify against pebble's root: {e}")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gets_certificates_from_pebble_and_every_listener_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let dns = ChallTestSrv::start().await;
    // smtp.example.test is published, but not here: it must be skipped and reported.
    dns.set_a("smtp.example.test", ELSEWHERE).await;

    let ports: Vec<u16> = SERVICES.iter().map(|_| free_port()).collect();
    let port = |service: &str| ports[SERVICES.iter().position(|s| *s == service).unwrap()];
    let addr =
        |service: &str| -> SocketAddr { format!("127.0.0.1:{}", port(service)).parse().unwrap() };
    let pebble = Pebble::start(dir.path(), dns.dns, port("http"), port("https"), 3600).await;

    let listen: String = SERVICES
        .iter()
        .zip(&ports)
        .map(|(s, p)| format!("{s} = \"127.0.0.1:{p}\"\n"))
        .collect();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mail.example.test\"\ndata_dir = \"data\"\n[listen]\n{listen}\n\
             [dns]\naddresses = [\"127.0.0.1\"]\n\
             [acme]\nenabled = true\ndirectory = \"{}\"\ncontact = \"admin@example.test\"\n\
             ca_file = \"{}\"\nresolver = \"{}\"\n",
            pebble.directory,
            pebble.wfe_ca.display(),
            dns.dns
        ),
    )
    .unwrap();
    tessera(&config, &["domain", "add", "example.test"]);
    let status = tessera(&config, &["cert", "status"]);
    assert!(status.contains("(no attempt yet)"), "{status}");

    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let _server = Guard(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tessera serve"),
    );

    // Both certificates (mail host; example.test and its names) are issued.
    let started = Instant::now();
    let status = loop {
        let status = tessera(&config, &["cert", "status"]);
        if status.contains("mail.example.test: issued") && status.contains("  example.test: issued")
        {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no certificates after 60 s:\n{status}\nserver log:\n{}\npebble log:\n{}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{status}"))
            .to_owned()
    };
    for name in [
        "mail.example.test",
        "example.test",
        "autoconfig.example.test",
        "mta-sts.example.test",
    ] {
        let l = line(name);
        assert!(
            l.contains(" acme ") && l.contains("Pebble"),
            "{l}\n{status}"
        );
    }
    assert!(!line("smtp.example.test").contains(" acme "), "{status}");
    assert!(
        status.contains(&format!(
            "skipped smtp.example.test: resolves to {ELSEWHERE}"
        )),
        "{status}"
    );

    // New certificates are served without a restart, on every listener.
    let root = pebble.root().await;
    handshake(addr("https"), "autoconfig.example.test", &root).await;
    handshake(addr("https"), "mta-sts.example.test", &root).await;
    handshake(addr("imaps"), "mail.example.test", &root).await;
    handshake(addr("submissions"), "mail.example.test", &root).await;
    handshake(addr("pop3s"), "mail.example.test", &root).await;
    smtp_starttls(addr("smtp"), "mail.example.test", &root).await;
}
