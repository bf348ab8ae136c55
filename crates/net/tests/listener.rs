//! Listener limits, connection identity and graceful shutdown over real loopback sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Event, PATIENCE, connect, line, send, spec, start};
use net::{ReadEvent, Refusal, TlsMode};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn max_per_ip_refuses_same_address_but_not_another() {
    let mut spec = spec(TlsMode::None);
    spec.max_per_ip = 1;
    let mut server = start(spec, None, 64).await;
    let first = connect(server.addr).await;

    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(line(&mut second).await.unwrap(), "REFUSED");
    assert_eq!(
        server.event().await,
        Event::Refused(Refusal::TooManyFromAddress)
    );
    assert_eq!(
        line(&mut second).await,
        None,
        "refused connection is closed"
    );

    let mut other = connect_from("127.0.0.2", server.addr).await;
    assert!(line(&mut other).await.unwrap().starts_with("HELLO "));

    // Once the first session ends, 127.0.0.1 may connect again.
    drop(first);
    assert_eq!(server.event().await, Event::Read(ReadEvent::Eof));
    for attempt in 0.. {
        let mut again = TcpStream::connect(server.addr).await.unwrap();
        let greeting = line(&mut again).await.unwrap();
        if greeting.starts_with("HELLO ") {
            break;
        }
        // The slot is released just after the Eof event; allow for that race.
        assert!(attempt < 50, "still refused: {greeting}");
        assert_eq!(
            server.event().await,
            Event::Refused(Refusal::TooManyFromAddress)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn max_connections_is_backpressure_not_refusal() {
    let mut spec = spec(TlsMode::None);
    spec.max_connections = 1;
    let server = start(spec, None, 64).await;
    let mut first = connect(server.addr).await;

    // The second client completes TCP (kernel backlog) but gets no session yet.
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read_u8()).await;
    assert!(
        early.is_err(),
        "second client served while first holds the only slot"
    );

    send(&mut first, b"QUIT\r\n").await;
    assert_eq!(line(&mut first).await.unwrap(), "BYE");
    assert!(line(&mut second).await.unwrap().starts_with("HELLO "));
}

/// The session is told the address the client connected to (taken from the listener's
/// address when it is a specific one, without asking the socket).
#[tokio::test]
async fn a_session_knows_the_address_it_was_reached_on() {
    let server = start(spec(TlsMode::None), None, 64).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let greeting = line(&mut client).await.unwrap();
    assert!(
        greeting.ends_with(&format!(" {}", server.addr)),
        "{greeting} (listening on {})",
        server.addr
    );
}

/// Accepted sockets send each reply at once (`TCP_NODELAY`): set on the listening socket,
/// which Linux copies into every accepted one, so `serve` does not set it per connection.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn accepted_sockets_inherit_nodelay_from_the_listener() {
    let listener = net::bind(&spec(TlsMode::None)).await.unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert!(accepted.nodelay().unwrap());
}

#[tokio::test]
async fn connection_ids_are_unique() {
    let server = start(spec(TlsMode::None), None, 64).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        ids.push(line(&mut client).await.unwrap());
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

#[tokio::test]
async fn graceful_shutdown_between_commands() {
    let server = start(spec(TlsMode::None), None, 64).await;
    let mut idle = connect(server.addr).await;
    send(&mut idle, b"NOOP\r\n").await;
    assert_eq!(line(&mut idle).await.unwrap(), "ECHO NOOP");

    // A session in the middle of a command finishes it before saying goodbye.
    let mut busy = connect(server.addr).await;
    send(&mut busy, b"PART").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.shutdown.trigger();
    assert_eq!(line(&mut idle).await.unwrap(), "BYE shutting down");
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returned")
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );

    send(&mut busy, b"IAL\r\n").await;
    assert_eq!(line(&mut busy).await.unwrap(), "ECHO PARTIAL");
    assert_eq!(line(&mut busy).await.unwrap(), "BYE shutting down");
    assert!(server.shutdown.wait_sessions(PATIENCE).await);
    assert_eq!(server.shutdown.sessions(), 0);
}

#[tokio::test]
async fn wait_sessions_gives_up_after_grace() {
    let server = start(spec(TlsMode::None), None, 64).await;
    let mut stuck = connect(server.addr).await;
    send(&mut stuck, b"NEVER ENDING").await; // mid-command: no Shutdown event
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.trigger();
    assert!(
        !server
            .shutdown
            .wait_sessions(Duration::from_millis(200))
            .await
    );
    assert_eq!(server.shutdown.sessions(), 1);
}

#[tokio::test]
async fn bind_error_names_protocol_and_address() {
    let first = net::bind(&spec(TlsMode::None)).await.unwrap();
    let mut taken = spec(TlsMode::None);
    taken.addr = first.local_addr().unwrap();
    let err = net::bind(&taken).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&taken.addr.to_string()) && text.contains("test"),
        "{text}"
    );
}

#[test]
fn connection_struct_is_small() {
    // Thousands of idle IMAP sessions each hold one; the buffer starts unallocated, and so
    // do the idle timer and the shutdown waiter (one pointer each).
    let size = std::mem::size_of::<net::Connection>();
    assert!(size <= 272, "Connection is {size} bytes");
}
