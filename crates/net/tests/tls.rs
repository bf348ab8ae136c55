//! Implicit TLS and STARTTLS with real handshakes over loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Event, PATIENCE, connect, line, line_event, send, spec, start, tls_configs, tls_connect,
};
use net::TlsMode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn implicit_tls_handshake_records_tls_info() {
    let (server_tls, client_tls) = tls_configs();
    let mut server = start(spec(TlsMode::Implicit), Some(server_tls), 64).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tls_connect(client_tls, tcp).await.unwrap();
    assert!(line(&mut tls).await.unwrap().starts_with("HELLO "));
    let Event::Tls(info) = server.event().await else {
        panic!("no TLS info");
    };
    assert_eq!(info.version, "TLSv1.3");
    assert!(info.cipher.starts_with("TLS13_"), "{}", info.cipher);
    assert_eq!(info.sni.as_deref(), Some("localhost"));

    send(&mut tls, b"PING\r\n").await;
    assert_eq!(line(&mut tls).await.unwrap(), "ECHO PING");
    // start_tls on a TLS connection is refused with NetError::AlreadyTls.
    send(&mut tls, b"STARTTLS\r\n").await;
    assert_eq!(line(&mut tls).await.unwrap(), "ERR already TLS");
}

#[tokio::test]
async fn implicit_tls_rejects_plaintext_client() {
    let (server_tls, _) = tls_configs();
    let mut server = start(spec(TlsMode::Implicit), Some(server_tls), 64).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    send(&mut tcp, b"EHLO client.example\r\n").await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "connection not closed");
    assert!(!String::from_utf8_lossy(&reply).contains("HELLO"));
    server.no_event_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn implicit_tls_handshake_timeout_closes() {
    let (server_tls, _) = tls_configs();
    let mut spec = spec(TlsMode::Implicit);
    spec.handshake_timeout = Duration::from_millis(200);
    let mut server = start(spec, Some(server_tls), 64).await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "silent client not dropped");
    assert!(started.elapsed() >= Duration::from_millis(150));
    server.no_event_for(Duration::from_millis(50)).await;
}

/// STARTTLS command injection (CVE-2011-0411 class): plaintext pipelined after STARTTLS must
/// not be read as if it came under TLS.
#[tokio::test]
async fn starttls_discards_pipelined_plaintext() {
    let (server_tls, client_tls) = tls_configs();
    let mut server = start(spec(TlsMode::StartTls), Some(server_tls), 64).await;
    let mut tcp = connect(server.addr).await;
    send(&mut tcp, b"STARTTLS\r\nINJECTED\r\n").await;
    assert_eq!(line(&mut tcp).await.unwrap(), "READY");
    let mut tls = tls_connect(client_tls, tcp).await.unwrap();
    send(&mut tls, b"AFTER\r\n").await;
    assert_eq!(line(&mut tls).await.unwrap(), "ECHO AFTER");

    assert_eq!(server.event().await, line_event(b"STARTTLS\r\n"));
    let Event::Tls(info) = server.event().await else {
        panic!("no TLS info after STARTTLS");
    };
    assert_eq!(info.version, "TLSv1.3");
    assert_eq!(server.event().await, line_event(b"AFTER\r\n"));
}

#[tokio::test]
async fn starttls_not_offered_without_tls_mode() {
    let (server_tls, _) = tls_configs();
    // serve has a config, but a TlsMode::None listener offers none through the connection.
    let server = start(spec(TlsMode::None), Some(server_tls), 64).await;
    let mut tcp = connect(server.addr).await;
    send(&mut tcp, b"STARTTLS\r\n").await;
    assert_eq!(line(&mut tcp).await.unwrap(), "ERR no TLS");
}
