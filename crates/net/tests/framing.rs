//! Line and literal framing over real loopback sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Event, connect, line, line_event, send, spec, start};
use net::{ReadEvent, TlsMode};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn two_lines_in_one_write_crlf_and_bare_lf_returned_raw() {
    let mut server = start(spec(TlsMode::None), None, 64).await;
    let mut client = connect(server.addr).await;
    send(&mut client, b"A\r\nB\n").await;
    assert_eq!(server.event().await, line_event(b"A\r\n"));
    assert_eq!(server.event().await, line_event(b"B\n"));
    assert_eq!(line(&mut client).await.unwrap(), "ECHO A");
    assert_eq!(line(&mut client).await.unwrap(), "ECHO B");
}

#[tokio::test]
async fn line_split_across_many_tiny_writes() {
    let mut server = start(spec(TlsMode::None), None, 64).await;
    let mut client = connect(server.addr).await;
    for byte in b"HELLO WORLD\r\n" {
        send(&mut client, &[*byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(server.event().await, line_event(b"HELLO WORLD\r\n"));
    assert_eq!(line(&mut client).await.unwrap(), "ECHO HELLO WORLD");
}

#[tokio::test]
async fn overlong_line_is_discarded_and_next_line_still_reads() {
    let mut server = start(spec(TlsMode::None), None, 16).await;
    let mut client = connect(server.addr).await;
    let mut input = vec![b'x'; 100];
    input.extend_from_slice(b"\r\nNEXT\r\n");
    send(&mut client, &input).await;
    assert_eq!(server.event().await, Event::Read(ReadEvent::TooLong));
    assert_eq!(server.event().await, line_event(b"NEXT\r\n"));
    assert_eq!(line(&mut client).await.unwrap(), "ERR too long");
    assert_eq!(line(&mut client).await.unwrap(), "ECHO NEXT");
}

#[tokio::test]
async fn overlong_line_over_many_reads_keeps_memory_bounded() {
    let mut server = start(spec(TlsMode::None), None, 64).await;
    let mut client = connect(server.addr).await;
    for _ in 0..256 {
        client.write_all(&[b'y'; 1024]).await.unwrap();
    }
    send(&mut client, b"\r\nNEXT\r\n").await;
    assert_eq!(server.event().await, Event::Read(ReadEvent::TooLong));
    assert_eq!(server.event().await, line_event(b"NEXT\r\n"));
}

#[tokio::test]
async fn max_len_counts_the_terminator() {
    let mut server = start(spec(TlsMode::None), None, 16).await;
    let mut client = connect(server.addr).await;
    send(&mut client, b"0123456789abcd\r\n0123456789abcde\r\n").await;
    assert_eq!(server.event().await, line_event(b"0123456789abcd\r\n"));
    assert_eq!(server.event().await, Event::Read(ReadEvent::TooLong));
}

#[tokio::test]
async fn eof_mid_line() {
    let mut server = start(spec(TlsMode::None), None, 64).await;
    let mut client = connect(server.addr).await;
    send(&mut client, b"PARTIAL").await;
    client.shutdown().await.unwrap();
    assert_eq!(server.event().await, Event::Read(ReadEvent::Eof));
}

#[tokio::test]
async fn literal_takes_buffered_bytes_then_next_line() {
    let mut server = start(spec(TlsMode::None), None, 64).await;
    let mut client = connect(server.addr).await;
    send(&mut client, b"LIT 10\r\n0123456789NEXT\r\n").await;
    assert_eq!(server.event().await, line_event(b"LIT 10\r\n"));
    assert_eq!(server.event().await, Event::Literal(b"0123456789".to_vec()));
    assert_eq!(server.event().await, line_event(b"NEXT\r\n"));
    assert_eq!(line(&mut client).await.unwrap(), "GOT 0123456789");
    assert_eq!(line(&mut client).await.unwrap(), "ECHO NEXT");

    // A literal split over writes, containing CRLF.
    send(&mut client, b"LIT 6\r\nab").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    send(&mut client, b"\r\ncd").await;
    assert_eq!(server.event().await, line_event(b"LIT 6\r\n"));
    assert_eq!(server.event().await, Event::Literal(b"ab\r\ncd".to_vec()));
}

#[tokio::test]
async fn idle_timeout_fires() {
    let mut spec = spec(TlsMode::None);
    spec.idle_timeout = Duration::from_millis(200);
    let mut server = start(spec, None, 64).await;
    let mut client = connect(server.addr).await;
    assert_eq!(server.event().await, Event::Read(ReadEvent::Timeout));
    assert_eq!(line(&mut client).await.unwrap(), "TIMEOUT");
}

#[tokio::test]
async fn idle_timeout_covers_a_trickled_line() {
    // One byte every 50 ms keeps the socket busy, but the line is not complete within 200 ms.
    let mut spec = spec(TlsMode::None);
    spec.idle_timeout = Duration::from_millis(200);
    let mut server = start(spec, None, 64).await;
    let mut client = connect(server.addr).await;
    for byte in b"SLOWLORIS" {
        if client.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.event().await, Event::Read(ReadEvent::Timeout));
}
