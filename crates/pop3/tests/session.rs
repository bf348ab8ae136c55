//! End to end over real sockets with a raw client that sees exact bytes: the state machine,
//! the security rules, the maildrop lock, the store feed, limits and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, PASSWORD, PATIENCE, corpus, stuffed};
use net::ThrottleConfig;
use pop3::Pop3Config;
use store::{Change, SystemFlags};

#[tokio::test]
async fn no_login_before_stls_and_capabilities_follow_tls() {
    let h = Harness::start().await;
    let (_, address) = h.user("alice").await;
    let mut c = h.plain().await;
    let capa = c.capa().await;
    assert!(capa.contains(&"STLS".to_owned()), "{capa:?}");
    assert!(
        !capa.iter().any(|l| l == "USER" || l.starts_with("SASL")),
        "{capa:?}"
    );
    for command in [
        format!("USER {address}"),
        format!("PASS {PASSWORD}"),
        "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0IGhvcnNlIGJhdHRlcnk=".to_owned(),
        "AUTH PLAIN".to_owned(),
    ] {
        let reply = c.cmd(&command).await;
        assert!(
            reply.starts_with("-ERR [SYS/PERM] plaintext login is disabled"),
            "{command}: {reply}"
        );
    }
    // Nothing authenticated: transaction commands are refused.
    assert!(c.cmd("STAT").await.starts_with("-ERR"));
    c.stls(&h.client_tls).await;
    let capa = c.capa().await;
    assert!(capa.contains(&"USER".to_owned()), "{capa:?}");
    assert!(capa.contains(&"SASL PLAIN".to_owned()), "{capa:?}");
    assert!(!capa.contains(&"STLS".to_owned()), "{capa:?}");
    assert_eq!(c.cmd("STLS").await, "-ERR TLS is already active");
    c.login(&address).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 0 0"));

    // Implicit TLS: login allowed at once, no STLS.
    let mut c = h.tls().await;
    let capa = c.capa().await;
    assert!(capa.contains(&"USER".to_owned()) && !capa.contains(&"STLS".to_owned()));
    assert_eq!(c.cmd("STLS").await, "-ERR TLS is already active");
}

/// STARTTLS injection (CVE-2011-0411 class): a command pipelined behind STLS in the same
/// packet must be discarded, never executed as if it came under TLS.
#[tokio::test]
async fn stls_injection_is_discarded() {
    let h = Harness::start().await;
    let mut c = h.plain().await;
    c.send(b"STLS\r\nQUIT\r\n").await;
    let reply = c.line().await;
    assert!(reply.starts_with("+OK"), "{reply}");
    c.upgrade(&h.client_tls).await;
    // Had the injected QUIT run, the server would sign off and close. Instead the next reply
    // is to the first command sent under TLS.
    let capa = c.capa().await;
    assert!(capa.contains(&"USER".to_owned()), "{capa:?}");
    assert_eq!(
        c.cmd("NOOP").await,
        "-ERR NOOP is not valid in the AUTHORIZATION state"
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_and_answered_with_auth_code() {
    let throttle = ThrottleConfig {
        base_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(300),
        free_failures: 1,
        ..ThrottleConfig::default()
    };
    let h = Harness::start_with(Pop3Config::default(), throttle).await;
    let (_, address) = h.user("alice").await;
    let mut c = h.tls().await;
    c.ok(&format!("USER {address}")).await;
    let started = Instant::now();
    assert_eq!(
        c.cmd("PASS wrong password").await,
        "-ERR [AUTH] authentication failed: wrong user name or password"
    );
    let first = started.elapsed();
    // PASS consumed the USER: PASS alone is refused.
    assert_eq!(c.cmd("PASS again").await, "-ERR send USER first");
    c.ok(&format!("USER {address}")).await;
    let started = Instant::now();
    assert!(c.cmd("PASS wrong again").await.starts_with("-ERR [AUTH]"));
    let second = started.elapsed();
    assert!(
        second >= Duration::from_millis(300),
        "second failure not delayed: {second:?}"
    );
    assert!(
        first < Duration::from_millis(300) + Duration::from_millis(250),
        "{first:?}"
    );
    // Unknown accounts look the same.
    c.ok("USER nobody@example.test").await;
    assert!(c.cmd("PASS whatever").await.starts_with("-ERR [AUTH]"));
    // The right password still works.
    c.login(&address).await;
}

#[tokio::test]
async fn auth_plain_initial_response_continuation_and_cancel() {
    use base64::Engine as _;
    let h = Harness::start().await;
    let (_, address) = h.user("alice").await;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{address}\0{PASSWORD}"));
    let mut c = h.tls().await;
    // Bare AUTH lists mechanisms.
    c.ok("AUTH").await;
    assert_eq!(c.listing().await, ["PLAIN"]);
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "-ERR unsupported SASL mechanism; use PLAIN"
    );
    // Continuation, cancelled.
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, "-ERR authentication cancelled");
    // Malformed.
    assert!(
        c.cmd("AUTH PLAIN !!!")
            .await
            .starts_with("-ERR malformed AUTH PLAIN")
    );
    // Wrong password in the continuation.
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("\0{address}\0wrong"));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert!(c.cmd(&bad).await.starts_with("-ERR [AUTH]"));
    // Someone else's authorisation identity.
    let proxy = base64::engine::general_purpose::STANDARD
        .encode(format!("admin@example.test\0{address}\0{PASSWORD}"));
    assert!(
        c.cmd(&format!("AUTH PLAIN {proxy}"))
            .await
            .starts_with("-ERR [AUTH]")
    );
    // The right one, via continuation.
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert!(
        c.cmd(&token)
            .await
            .starts_with("+OK maildrop locked and ready")
    );
    // And with an initial response on another connection (after this one quits).
    c.ok("QUIT").await;
    let mut c = h.tls().await;
    assert!(
        c.cmd(&format!("AUTH PLAIN {token}"))
            .await
            .starts_with("+OK")
    );
}

#[tokio::test]
async fn wrong_state_unknown_overlong_and_bad_command_limit() {
    let h = Harness::start().await;
    let (_, address) = h.user("alice").await;
    let mut c = h.tls().await;
    assert_eq!(
        c.cmd("RETR 1").await,
        "-ERR RETR is not valid in the AUTHORIZATION state"
    );
    assert_eq!(c.cmd("XYZZY").await, "-ERR unknown command");
    assert_eq!(c.cmd("APOP alice deadbeef").await, "-ERR unknown command");
    assert!(c.cmd("").await.starts_with("-ERR empty command line"));
    let long = format!("USER {}", "a".repeat(600));
    assert_eq!(
        c.cmd(&long).await,
        "-ERR command line too long (limit 512 octets)"
    );
    // The session survives all that.
    c.login(&address).await;
    assert_eq!(
        c.cmd("USER x").await,
        "-ERR USER is not valid in the TRANSACTION state"
    );
    assert_eq!(
        c.cmd("STLS").await,
        "-ERR STLS is not valid in the TRANSACTION state"
    );
    assert!(
        c.cmd("TOP 1")
            .await
            .starts_with("-ERR syntax error, usage: TOP msg n")
    );
    // A good command resets the count; then ten bad ones in a row close the session.
    c.ok("NOOP").await;
    for i in 1..10 {
        assert_eq!(
            c.cmd("BOGUS").await,
            "-ERR unknown command",
            "bad command {i}"
        );
    }
    assert_eq!(
        c.cmd("BOGUS").await,
        "-ERR unknown command; too many bad commands, closing connection"
    );
    assert!(c.until_closed().await.is_empty());
    // Closing is not QUIT: the lock is released, and nothing was deleted.
}

#[tokio::test]
async fn message_numbers_top_and_deleted_messages() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    h.deliver(alice, corpus::SIMPLE).await;
    h.deliver(alice, corpus::DOTS).await;
    let mut c = h.logged_in(&address).await;
    assert_eq!(c.cmd("RETR 3").await, "-ERR no such message: 3");
    assert_eq!(c.cmd("RETR 0").await, "-ERR no such message: 0");
    assert_eq!(
        c.cmd("RETR 99999999999999999999").await,
        format!("-ERR no such message: {}", u32::MAX)
    );
    assert_eq!(c.cmd("LIST 3").await, "-ERR no such message: 3");
    assert!(
        c.cmd("RETR -1")
            .await
            .starts_with("-ERR syntax error, usage: RETR msg")
    );
    assert!(
        c.cmd("TOP 1 -1")
            .await
            .starts_with("-ERR syntax error, usage: TOP msg n")
    );
    assert!(c.cmd("TOP 1 x").await.starts_with("-ERR syntax error"));
    // TOP with a huge n: the whole message.
    assert_eq!(
        c.ok("TOP 1 99999999999999999999999").await,
        "+OK top of message follows"
    );
    assert_eq!(c.raw_multiline().await, stuffed(corpus::SIMPLE));
    // TOP 2 0: header and blank line only.
    c.ok("TOP 2 0").await;
    assert_eq!(
        c.raw_multiline().await,
        b"From: bob@example.test\r\nSubject: dots\r\n\r\n"
    );
    assert_eq!(
        c.cmd("LIST 1").await,
        format!("+OK 1 {}", corpus::SIMPLE.len())
    );
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 deleted");
    assert_eq!(c.cmd("DELE 1").await, "-ERR message 1 already deleted");
    assert_eq!(c.cmd("RETR 1").await, "-ERR message 1 already deleted");
    assert_eq!(c.cmd("TOP 1 0").await, "-ERR message 1 already deleted");
    assert_eq!(c.cmd("UIDL 1").await, "-ERR message 1 already deleted");
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}", corpus::DOTS.len()));
    // Listings skip deleted messages, numbers stay.
    c.ok("LIST").await;
    assert_eq!(c.listing().await, [format!("2 {}", corpus::DOTS.len())]);
    assert_eq!(
        c.cmd("RSET").await,
        format!(
            "+OK maildrop has 2 messages ({} octets)",
            corpus::SIMPLE.len() + corpus::DOTS.len()
        )
    );
    assert!(c.cmd("RETR 1").await.starts_with("+OK"));
    c.raw_multiline().await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(h.messages(alice).await.len(), 2, "RSET unmarked everything");
}

/// RFC 1939 §3 byte-stuffing and byte-exactness, checked on the raw wire bytes.
#[tokio::test]
async fn retr_is_byte_exact_and_dot_stuffed() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    let binary = corpus::binary();
    // Not CRLF-terminated at the end: the server must add CRLF before the terminator.
    let unterminated: &[u8] = b"Subject: x\r\n\r\n.no final line break";
    // Bigger than the server's 64 KiB chunk, with dots at chunk-boundary-ish places.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..5000 {
        big.extend_from_slice(if i % 7 == 0 {
            b".dotted line\r\n"
        } else {
            b"0123456789 abcdefghij\r\n"
        });
    }
    let messages: Vec<&[u8]> = vec![corpus::DOTS, &binary, unterminated, &big];
    for m in &messages {
        h.deliver(alice, m).await;
    }
    let mut c = h.logged_in(&address).await;
    for (n, m) in (1..).zip(&messages) {
        assert_eq!(
            c.cmd(&format!("RETR {n}")).await,
            format!("+OK {} octets", m.len())
        );
        let wire = c.raw_multiline().await;
        assert_eq!(wire, stuffed(m), "RETR {n}");
    }
    // The stuffed form of DOTS, spelled out.
    c.ok("RETR 1").await;
    assert_eq!(
        c.raw_multiline().await,
        b"From: bob@example.test\r\nSubject: dots\r\n\r\n..\r\n...\r\n..leading dot\r\nmiddle . dot\r\n....three\r\n.. \r\nlast line\r\n..\r\n"
    );
    c.ok("RETR 3").await;
    assert_eq!(
        c.raw_multiline().await,
        b"Subject: x\r\n\r\n..no final line break\r\n"
    );
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    h.deliver(alice, corpus::SIMPLE).await;
    let mut c = h.tls().await;
    c.send(
        format!("USER {address}\r\nPASS {PASSWORD}\r\nSTAT\r\nUIDL\r\nRETR 1\r\nNOOP\r\nQUIT\r\n")
            .as_bytes(),
    )
    .await;
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.line().await.starts_with("+OK maildrop locked"));
    assert_eq!(c.line().await, format!("+OK 1 {}", corpus::SIMPLE.len()));
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.listing().await.len(), 1);
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.raw_multiline().await, stuffed(corpus::SIMPLE));
    assert_eq!(c.line().await, "+OK");
    assert!(
        c.line()
            .await
            .starts_with("+OK mail.example.test POP3 server signing off")
    );
    assert!(c.until_closed().await.is_empty());
}

#[tokio::test]
async fn drop_without_quit_deletes_nothing() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    h.deliver(alice, corpus::SIMPLE).await;
    h.deliver(alice, corpus::DOTS).await;
    let mut c = h.logged_in(&address).await;
    c.ok("DELE 1").await;
    c.ok("DELE 2").await;
    c.drop_connection();
    h.wait_unlocked(alice).await;
    assert_eq!(h.messages(alice).await.len(), 2);
    let mut c = h.logged_in(&address).await;
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 2 {}", corpus::SIMPLE.len() + corpus::DOTS.len())
    );
}

/// RETR sets `\Seen` in the UPDATE state (as Dovecot does), TOP does not, RSET forgets it,
/// and a connection dropped without QUIT changes nothing.
#[tokio::test]
async fn retr_marks_seen_on_quit_only() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    for _ in 0..4 {
        h.deliver(alice, corpus::SIMPLE).await;
    }
    let seen = |h: &Harness| {
        let h = h.store.clone();
        async move {
            let inbox = h.mailbox(alice, "INBOX").await.unwrap().expect("INBOX").id;
            h.messages(alice, inbox)
                .await
                .unwrap()
                .iter()
                .map(|m| m.flags.system.contains(SystemFlags::SEEN))
                .collect::<Vec<_>>()
        }
    };
    // Dropped without QUIT: nothing changes.
    let mut c = h.logged_in(&address).await;
    c.ok("RETR 1").await;
    c.raw_multiline().await;
    c.drop_connection();
    h.wait_unlocked(alice).await;
    assert_eq!(seen(&h).await, [false, false, false, false]);
    // RETR 1 and 2, TOP 3, RETR 4 then RSET, RETR 2 again, DELE 1 after RETR: only 2 is seen
    // (1 is gone).
    let mut c = h.logged_in(&address).await;
    for cmd in ["RETR 1", "RETR 2", "TOP 3 0", "RETR 4"] {
        c.ok(cmd).await;
        c.raw_multiline().await;
    }
    c.ok("RSET").await;
    for cmd in ["RETR 1", "RETR 2"] {
        c.ok(cmd).await;
        c.raw_multiline().await;
    }
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    h.wait_unlocked(alice).await;
    assert_eq!(seen(&h).await, [true, false, false]);
}

#[tokio::test]
async fn second_session_is_refused_in_use_across_listeners() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    let (_, bob) = h.user("bob").await;
    h.deliver(alice, corpus::SIMPLE).await;
    let mut first = h.logged_in(&address).await;
    // Second session through the STLS listener.
    let mut second = h.plain().await;
    second.stls(&h.client_tls).await;
    second.ok(&format!("USER {address}")).await;
    assert_eq!(
        second.cmd(&format!("PASS {PASSWORD}")).await,
        "-ERR [IN-USE] maildrop is locked by another POP3 session, try again later"
    );
    // Still in AUTHORIZATION: another account is fine on the same connection.
    assert!(
        second
            .cmd("STAT")
            .await
            .starts_with("-ERR STAT is not valid")
    );
    // Another account is not affected.
    let mut other = h.logged_in(&bob).await;
    other.ok("QUIT").await;
    // Once the first session quits, the second can log in.
    first.ok("QUIT").await;
    h.wait_unlocked(alice).await;
    second.login(&address).await;
    assert_eq!(
        second.cmd("STAT").await,
        format!("+OK 1 {}", corpus::SIMPLE.len())
    );
}

/// POP3 beside IMAP-like store activity: mail delivered and expunged by others during the
/// session does not disturb it, and the POP3 update reaches feed subscribers (what IMAP IDLE
/// sessions listen to) as Expunged events.
#[tokio::test]
async fn quit_expunges_through_store_and_feed_sees_it() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    let u1 = h.deliver(alice, corpus::SIMPLE).await;
    let u2 = h.deliver(alice, corpus::DOTS).await;
    let u3 = h.deliver(alice, corpus::EIGHT_BIT).await;
    let inbox = h.inbox(alice).await.id;
    let mut feed = h.store.subscribe(alice);

    let mut c = h.logged_in(&address).await;
    // An "IMAP session" acts meanwhile: new mail arrives, message 3 is expunged.
    let u4 = h.deliver(alice, b"Subject: late\r\n\r\nlate\r\n").await;
    let removed = h
        .store
        .expunge(alice, inbox, Some(&[u3]), true)
        .await
        .unwrap();
    assert_eq!(removed, [u3]);
    // The POP3 snapshot is fixed at login (RFC 1939 §4): 3 messages, new mail not shown.
    assert_eq!(c.cmd("STAT").await.split(' ').nth(1), Some("3"));
    // Message 3's body is still readable by this session.
    assert!(c.cmd("RETR 3").await.starts_with("+OK"));
    assert_eq!(c.raw_multiline().await, stuffed(corpus::EIGHT_BIT));
    c.ok("DELE 1").await;
    c.ok("DELE 3").await;
    // Before QUIT nothing is expunged by POP3.
    let drain = |feed: &mut tokio::sync::broadcast::Receiver<Change>| {
        let mut seen = Vec::new();
        while let Ok(change) = feed.try_recv() {
            seen.push(change);
        }
        seen
    };
    let before = drain(&mut feed);
    assert!(
        !before
            .iter()
            .any(|c| matches!(c, Change::Expunged { uid, .. } if *uid == u1)),
        "{before:?}"
    );
    let reply = c.cmd("QUIT").await;
    assert!(
        reply.starts_with("+OK mail.example.test POP3 server signing off (1 messages left)"),
        "{reply}"
    );
    // The feed reports the POP3 expunge (u3 was gone already and is skipped).
    let event = tokio::time::timeout(PATIENCE, async {
        loop {
            match feed.recv().await.unwrap() {
                Change::Expunged { mailbox, uid, .. } => return (mailbox, uid),
                _ => continue,
            }
        }
    })
    .await
    .expect("no Expunged event after QUIT");
    assert_eq!(event, (inbox, u1));
    let left: Vec<_> = h.messages(alice).await.iter().map(|m| m.uid).collect();
    assert_eq!(left, [u2, u4]);
}

#[tokio::test]
async fn shutdown_says_goodbye_without_update() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    h.deliver(alice, corpus::SIMPLE).await;
    let mut c = h.logged_in(&address).await;
    c.ok("DELE 1").await;
    h.shutdown.trigger();
    assert_eq!(
        c.line().await,
        "-ERR [SYS/TEMP] server shutting down, try again later"
    );
    assert!(c.until_closed().await.is_empty());
    h.wait_unlocked(alice).await;
    assert_eq!(
        h.messages(alice).await.len(),
        1,
        "shutdown must not enter UPDATE"
    );
}

#[tokio::test]
async fn idle_session_is_closed_silently_without_update() {
    let config = Pop3Config {
        idle_timeout: Duration::from_millis(300),
        ..Pop3Config::default()
    };
    let h = Harness::start_with(config, ThrottleConfig::disabled()).await;
    let (alice, address) = h.user("alice").await;
    h.deliver(alice, corpus::SIMPLE).await;
    let mut c = h.logged_in(&address).await;
    c.ok("DELE 1").await;
    let started = Instant::now();
    // RFC 1939 §3: autologout closes without a response.
    assert!(c.until_closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    h.wait_unlocked(alice).await;
    assert_eq!(h.messages(alice).await.len(), 1);
}

/// Garbage in every state: every line gets a well-formed `-ERR` (or `+OK`) reply, nothing
/// panics, and the session stays usable while under the bad-command limit.
#[tokio::test]
async fn garbage_in_each_state_gets_clean_errors() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    h.deliver(alice, corpus::SIMPLE).await;
    // Deterministic pseudo-random lines (xorshift), plus hand-picked nasty ones.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random_line = || {
        let mut line = Vec::new();
        for _ in 0..(seed % 40) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = (seed & 0xff) as u8;
            if b != b'\n' {
                line.push(b);
            }
        }
        line.extend_from_slice(b"\r\n");
        line
    };
    let mut lines: Vec<Vec<u8>> = vec![
        b"\0\0\0\r\n".to_vec(),
        b"RETR \xff\r\n".to_vec(),
        b"LIST 1 \x00\r\n".to_vec(),
        b"TOP 1 1 1\r\n".to_vec(),
        b"\r\r\r\n".to_vec(),
        "UIDL \u{2603}\r\n".as_bytes().to_vec(),
        b"DELE 18446744073709551616\r\n".to_vec(),
    ];
    lines.extend((0..20).map(|_| random_line()));

    async fn feed(c: &mut common::Client, lines: &[Vec<u8>]) {
        for chunk in lines.chunks(5) {
            for line in chunk {
                c.send(line).await;
                let reply = c.line().await;
                assert!(
                    reply.starts_with("-ERR ") || reply.starts_with("+OK"),
                    "{:?} -> {reply}",
                    String::from_utf8_lossy(line)
                );
                if reply.starts_with("+OK") {
                    // A random line that happened to be a valid listing command.
                    c.raw_multiline().await;
                }
            }
            // Stay under the bad-command limit: a valid command resets it.
            c.capa().await;
        }
    }

    let mut plain = h.plain().await;
    feed(&mut plain, &lines).await;
    let mut tls = h.tls().await;
    feed(&mut tls, &lines).await;
    tls.login(&address).await;
    feed(&mut tls, &lines).await;
    assert_eq!(
        tls.cmd("STAT").await,
        format!("+OK 1 {}", corpus::SIMPLE.len())
    );
}
