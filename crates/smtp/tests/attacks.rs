//! Bad input and attacks, one named test each, over a raw socket against the real listeners.

mod common;

use std::time::Duration;

use common::*;

async fn start_data(c: &mut Raw) {
    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{BOB}>")).await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
}

/// Sends a message whose body hides `sequence` followed by a smuggled second transaction;
/// the server must see it all as one message (refused for its bare line ending) and never
/// run the smuggled commands.
async fn smuggling(sequence: &[u8]) {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    start_data(&mut c).await;
    let mut payload = b"Subject: hello\r\n\r\nfirst part".to_vec();
    payload.extend_from_slice(sequence);
    payload.extend_from_slice(
        b"MAIL FROM:<evil@sender.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
    );
    c.send(&payload).await;
    let r = c.reply().await;
    assert_eq!(
        (r.code, r.lines[0].get(..6)),
        (550, Some("5.6.11")),
        "{r:?}"
    );
    // Exactly one reply for all of it: the next one answers NOOP (not a smuggled MAIL, whose
    // 250 looks the same by its code alone).
    let r = c.cmd("NOOP").await;
    assert_eq!((r.code, r.lines[0].as_str()), (250, "2.0.0 OK"), "{r:?}");
    assert!(
        h.inbox(ALICE).await.is_empty(),
        "smuggled message delivered"
    );
    assert!(h.inbox(BOB).await.is_empty());
}

#[tokio::test]
async fn smuggling_lf_dot_lf_does_not_end_data() {
    smuggling(b"\n.\n").await;
}

#[tokio::test]
async fn smuggling_lf_dot_crlf_does_not_end_data() {
    smuggling(b"\n.\r\n").await;
}

#[tokio::test]
async fn smuggling_cr_dot_crlf_does_not_end_data() {
    smuggling(b"\r.\r\n").await;
}

/// Found by fuzz/smtp_data: smtp-proto's receiver ended DATA at `CRLF . CR CR LF`.
#[tokio::test]
async fn smuggling_crlf_dot_cr_cr_lf_does_not_end_data() {
    smuggling(b"\r\n.\r\r\n").await;
}

#[tokio::test]
async fn bare_lf_in_data_is_refused_consistently() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    start_data(&mut c).await;
    c.send(b"Subject: x\r\n\r\nline with bare LF\nend\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await.lines[0].get(..6), Some("5.6.11"));
    // BDAT follows the same rule.
    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{BOB}>")).await.code, 250);
    c.send(b"BDAT 12 LAST\r\nSubject: x\r\r\n").await;
    let r = c.reply().await;
    assert_eq!(
        (r.code, r.lines[0].get(..6)),
        (550, Some("5.6.11")),
        "{r:?}"
    );
    assert!(h.inbox(BOB).await.is_empty());
}

#[tokio::test]
async fn bare_lf_or_cr_in_a_command_line_is_refused() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    c.send(b"NOOP\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.lines[0].get(..5)), (500, Some("5.5.2")), "{r:?}");
    c.send(b"NO\rOP\r\n").await;
    assert_eq!(c.reply().await.code, 500);
    assert_eq!(c.cmd("NOOP").await.code, 250);
}

#[tokio::test]
async fn starttls_injection_is_discarded() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    // Commands pipelined after STARTTLS in the same packet (CVE-2011-0411 style).
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<bob@example.test>\r\n")
        .await;
    assert_eq!(c.reply().await.code, 220);
    let mut c = c.start_tls(&h.ca).await;
    // The injected MAIL was never run: RCPT now is out of sequence, and EHLO is needed again.
    let r = c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(r.code, 503, "{r:?}");
    let r = c.cmd("EHLO client.sender.test").await;
    assert_eq!(r.code, 250);
    assert!(
        !r.text().contains("STARTTLS"),
        "no STARTTLS under TLS: {r:?}"
    );
    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
}

#[tokio::test]
async fn overlong_command_line_gets_500_and_session_goes_on() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    let mut line = b"NOOP ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 200_000));
    line.extend_from_slice(b"\r\n");
    c.send(&line).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.lines[0].get(..5)), (500, Some("5.5.2")), "{r:?}");
    // A line of exactly 1,000 octets is fine; 1,001 is not.
    let ok = format!("NOOP {}\r\n", "b".repeat(1000 - 7));
    c.send(ok.as_bytes()).await;
    assert_eq!(c.reply().await.code, 250);
    let long = format!("NOOP {}\r\n", "b".repeat(1001 - 7));
    c.send(long.as_bytes()).await;
    assert_eq!(c.reply().await.code, 500);
    assert_eq!(c.cmd("NOOP").await.code, 250);
}

#[tokio::test]
async fn message_over_size_gets_552() {
    let h = Harness::start_with(|c| c.max_message_size = 64 * 1024).await;
    let mut c = Raw::ready(h.mx).await;
    let r = c.cmd("MAIL FROM:<someone@sender.test> SIZE=70000").await;
    assert_eq!((r.code, r.lines[0].get(..5)), (552, Some("5.3.4")), "{r:?}");
    start_data(&mut c).await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..2000 {
        big.extend_from_slice(&[b'x'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b".\r\n");
    c.send(&big).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.lines[0].get(..5)), (552, Some("5.3.4")), "{r:?}");
    // BDAT over the limit: the chunk is read and dropped, then 552.
    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{BOB}>")).await.code, 250);
    let mut bdat = b"BDAT 70000 LAST\r\n".to_vec();
    bdat.extend(std::iter::repeat_n(b'y', 70000));
    c.send(&bdat).await;
    assert_eq!(c.reply().await.code, 552);
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert!(h.inbox(BOB).await.is_empty());
}

#[tokio::test]
async fn more_than_100_recipients_get_452() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
    // Pipelined, as PIPELINING allows.
    let mut batch = String::new();
    for i in 0..101 {
        batch.push_str(&format!("RCPT TO:<user{i}@catchall.test>\r\n"));
    }
    c.send(batch.as_bytes()).await;
    for i in 0..100 {
        assert_eq!(c.reply().await.code, 250, "rcpt {i}");
    }
    let r = c.reply().await;
    assert_eq!((r.code, r.lines[0].get(..5)), (452, Some("4.5.3")), "{r:?}");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    // 100 recipients, one catch-all account: one copy.
    assert_eq!(h.inbox(BOB).await.len(), 1);
}

#[tokio::test]
async fn ten_errors_close_the_session_with_421() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    for _ in 0..9 {
        assert_eq!(c.cmd("BOGUS").await.code, 500);
    }
    c.send(b"BOGUS\r\n").await;
    assert_eq!(c.reply().await.code, 500);
    let r = c.reply().await;
    assert_eq!((r.code, r.lines[0].get(..5)), (421, Some("4.7.0")), "{r:?}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn http_request_as_first_line_gets_500_and_close() {
    let h = Harness::start().await;
    let mut c = Raw::connect(h.mx).await;
    assert_eq!(c.reply().await.code, 220);
    c.send(b"GET / HTTP/1.1\r\nHost: mail.example.test\r\n\r\n")
        .await;
    let r = c.reply().await;
    assert_eq!(r.code, 500, "{r:?}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn relay_attempts_on_port_25_are_refused() {
    let h = Harness::start().await;
    let attempts = [
        "<user%other.org@example.test>",
        "<bob%other.org@example.test>",
        "<other.org!bob@example.test>",
        "<@relay.test,@other.test:bob@example.test>",
        "<@other.test:bob@remote.test>",
        "<\"bob@other.org\"@example.test>",
        "<bob@other.org>",
        "<bob@[127.0.0.1]>",
        "<bob@[IPv6:::1]>",
    ];
    // A few per session: every refusal counts towards the error limit.
    for group in attempts.chunks(4) {
        let mut c = Raw::ready(h.mx).await;
        assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
        for rcpt in group {
            let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
            assert_eq!(r.code / 100, 5, "{rcpt} accepted: {r:?}");
            assert!(
                r.lines[0].starts_with("5.7.1") || r.lines[0].starts_with("5.1.3"),
                "{rcpt}: {r:?}"
            );
        }
        assert_eq!(c.cmd("DATA").await.code, 554);
    }
    let mut c = Raw::ready(h.mx).await;
    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
    let r = c.cmd("RCPT TO:<nobody@example.test>").await;
    assert_eq!((r.code, r.lines[0].get(..5)), (550, Some("5.1.1")), "{r:?}");
    assert!(h.inbox(BOB).await.is_empty());
}

#[tokio::test]
async fn auth_before_starttls_on_587_is_refused_and_not_advertised() {
    let h = Harness::start().await;
    let mut c = Raw::connect(h.submission).await;
    assert_eq!(c.reply().await.code, 220);
    let ehlo = c.cmd("EHLO client.sender.test").await;
    assert!(ehlo.text().contains("STARTTLS"));
    assert!(!ehlo.text().contains("AUTH"), "{ehlo:?}");
    let auth = format!("AUTH PLAIN {}", b64(&format!("\0{ALICE}\0{PASSWORD}")));
    let r = c.cmd(&auth).await;
    assert_eq!(
        (r.code, r.lines[0].get(..6)),
        (538, Some("5.7.11")),
        "{r:?}"
    );
    let r = c.cmd(&format!("MAIL FROM:<{ALICE}>")).await;
    assert_eq!((r.code, r.lines[0].get(..5)), (530, Some("5.7.0")), "{r:?}");
}

#[tokio::test]
async fn mail_before_auth_on_submission_gets_530() {
    let h = Harness::start().await;
    let mut c = Raw::connect_tls(h.submissions, &h.ca).await;
    assert_eq!(c.reply().await.code, 220);
    let ehlo = c.cmd("EHLO client.sender.test").await;
    assert!(ehlo.text().contains("AUTH PLAIN LOGIN"), "{ehlo:?}");
    let r = c.cmd(&format!("MAIL FROM:<{ALICE}>")).await;
    assert_eq!((r.code, r.lines[0].get(..5)), (530, Some("5.7.0")), "{r:?}");
    // PLAIN without initial response, then `*` cancels (RFC 4954 §4).
    assert_eq!(c.cmd("AUTH PLAIN").await.code, 334);
    assert_eq!(c.cmd("*").await.code, 501);
    let r = c.cmd("AUTH CRAM-MD5").await;
    assert_eq!(r.code, 504, "{r:?}");
}

#[tokio::test]
async fn mx_port_offers_no_auth() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    let auth = format!("AUTH PLAIN {}", b64(&format!("\0{ALICE}\0{PASSWORD}")));
    assert_eq!(c.cmd(&auth).await.code, 502);
}

#[tokio::test]
async fn vrfy_does_not_enumerate_users() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    let known = c.cmd("VRFY bob").await;
    let unknown = c.cmd("VRFY nobody-at-all").await;
    assert_eq!(known, unknown);
    assert_eq!((known.code, known.lines[0].get(..5)), (252, Some("2.5.0")));
}

#[tokio::test]
async fn idle_client_times_out_with_421() {
    let h = Harness::start_with(|c| c.command_timeout = Duration::from_millis(300)).await;
    let mut c = Raw::ready(h.mx).await;
    let r = c.reply().await; // nothing sent: the server gives up
    assert_eq!((r.code, r.lines[0].get(..5)), (421, Some("4.4.2")), "{r:?}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn stalled_data_times_out_with_421() {
    let h = Harness::start_with(|c| c.data_timeout = Duration::from_millis(300)).await;
    let mut c = Raw::ready(h.mx).await;
    start_data(&mut c).await;
    c.send(b"Subject: half\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.lines[0].get(..5)), (421, Some("4.4.2")), "{r:?}");
    assert!(h.inbox(BOB).await.is_empty());
}

#[tokio::test]
async fn every_reply_carries_an_enhanced_status_code() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    for cmd in [
        "NOOP",
        "HELP",
        "VRFY x",
        "EXPN x",
        "RSET",
        "RCPT TO:<bob@example.test>",
        "DATA",
        "MAIL FROM:<a@sender.test> BODY=BINARYMIME",
        "MAIL FROM:<a@sender.test>",
        "MAIL FROM:<b@sender.test>",
        "BDAT 0",
        "QUIT",
    ] {
        let r = c.cmd(cmd).await;
        let esc = r.lines[0].split(' ').next().unwrap_or("");
        let parts: Vec<&str> = esc.split('.').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|p| p.parse::<u16>().is_ok()),
            "{cmd}: {r:?}"
        );
        assert_eq!(
            esc.as_bytes()[0] - b'0',
            (r.code / 100) as u8,
            "{cmd}: {r:?}"
        );
    }
}

#[tokio::test]
async fn dot_stuffing_and_pipelining_deliver_byte_exact() {
    let h = Harness::start().await;
    let mut c = Raw::ready(h.mx).await;
    c.send(b"MAIL FROM:<someone@sender.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 354);
    c.send(b"Subject: dots\r\n\r\n..one\r\n...\r\n.\r\nNOOP\r\n")
        .await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    let stored = &h.inbox(BOB).await[0];
    assert!(stored.ends_with(b"Subject: dots\r\n\r\n.one\r\n..\r\n"));
}

/// A `MakeWriter` collecting everything logged.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn passwords_never_reach_the_log() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = Harness::start().await;
    let wrong = "Wrong-Secret-Password-77";
    let mut c = Raw::connect_tls(h.submissions, &h.ca).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO client.sender.test").await.code, 250);
    let bad = b64(&format!("\0{ALICE}\0{wrong}"));
    assert_eq!(c.cmd(&format!("AUTH PLAIN {bad}")).await.code, 535);
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&b64(ALICE)).await.code, 334);
    assert_eq!(c.cmd(&b64(PASSWORD)).await.code, 235);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    drop(h);
    let text = String::from_utf8_lossy(
        &logs
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(text.contains("authenticated"), "logging works: {text}");
    for secret in [wrong, PASSWORD, &bad, &b64(PASSWORD)] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}
