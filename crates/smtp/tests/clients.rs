//! End to end with real clients nobody on the team wrote: Python's smtplib (STARTTLS,
//! SMTP_SSL, AUTH PLAIN and LOGIN, BDAT) and swaks, against the real listeners; then what
//! landed in the store is checked: trace headers present, body byte-exact.

mod common;

use common::*;
use store::{RecipientState, Store};

fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello,\r\n.leading dot line\r\nbody line 3 \u{e9}t\u{e9}\r\n"
    )
    .into_bytes()
}

async fn python(args: &[String]) -> String {
    require("python3");
    let mut all = vec![py_script("client.py")];
    all.extend_from_slice(args);
    let (ok, out, err) = run("python3", &all).await;
    assert!(ok, "client.py failed:\n{out}\n{err}");
    out
}

fn s(v: &str) -> String {
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_starttls_auth_plain_delivers_local_and_queues_remote() {
    let h = Harness::start().await;
    let body = message(
        ALICE,
        "bob@example.test, carol@remote.test",
        "starttls plain",
    );
    let file = h.write("m1.eml", &body);
    let out = python(&[
        s("--port"),
        h.submission.port().to_string(),
        s("--mode"),
        s("starttls"),
        s("--ca"),
        h.ca.display().to_string(),
        s("--user"),
        s(ALICE),
        s("--password"),
        s(PASSWORD),
        s("--mech"),
        s("PLAIN"),
        s("--sender"),
        s(ALICE),
        s("--to"),
        s(BOB),
        s("--to"),
        s("carol@remote.test"),
        s("--message"),
        file.display().to_string(),
    ])
    .await;
    // AUTH only after TLS (RFC 4954 §4); STARTTLS only before.
    let before = out
        .lines()
        .find(|l| l.starts_with("features-before-tls:"))
        .unwrap_or("");
    assert!(
        !before.contains("auth") && before.contains("starttls"),
        "{out}"
    );
    for ext in [
        "pipelining",
        "8bitmime",
        "smtputf8",
        "enhancedstatuscodes",
        "chunking",
        "dsn",
        "size",
    ] {
        assert!(before.contains(ext), "{ext} missing: {out}");
    }
    assert!(out.contains("feature-auth: PLAIN LOGIN"), "{out}");
    assert!(out.contains("auth: 235"), "{out}");
    assert!(out.contains("data: 250"), "{out}");

    let inbox = h.inbox(BOB).await;
    assert_eq!(inbox.len(), 1);
    let stored = &inbox[0];
    assert!(stored.ends_with(&body), "body must be byte-exact");
    let headers = headers_of(stored);
    assert!(
        headers.starts_with(&format!("Return-Path: <{ALICE}>\r\n")),
        "{headers}"
    );
    assert!(
        headers.contains("with ESMTPSA (version=TLSv1.3 cipher=TLS13_"),
        "{headers}"
    );
    assert!(
        headers.contains("\r\nMessage-ID: <"),
        "Message-ID added: {headers}"
    );
    assert!(headers.contains("\r\nDate: "), "Date added: {headers}");

    let queue = h.store.list_queue().await.expect("queue");
    assert_eq!(queue.len(), 1);
    let q = &queue[0];
    assert_eq!(
        q.sender.as_ref().map(ToString::to_string).as_deref(),
        Some(ALICE)
    );
    assert_eq!(q.recipients.len(), 1);
    assert_eq!(q.recipients[0].address.to_string(), "carol@remote.test");
    assert_eq!(q.recipients[0].state, RecipientState::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_smtps_auth_login_and_bdat_chunks() {
    let h = Harness::start().await;
    let body = message("sales@example.test", BOB, "bdat over implicit tls");
    let file = h.write("m2.eml", &body);
    let out = python(&[
        s("--port"),
        h.submissions.port().to_string(),
        s("--mode"),
        s("ssl"),
        s("--ca"),
        h.ca.display().to_string(),
        s("--user"),
        s("alice"),
        s("--password"),
        s(PASSWORD),
        s("--mech"),
        s("LOGIN"),
        s("--sender"),
        s("sales@example.test"),
        s("--to"),
        s(BOB),
        s("--message"),
        file.display().to_string(),
        s("--bdat"),
        s("40"),
    ])
    .await;
    assert!(out.contains("auth: 235"), "local part login: {out}");
    assert!(out.contains("bdat0: 250 2.0.0 40 octets received"), "{out}");
    assert!(out.contains("data: 250"), "{out}");
    let inbox = h.inbox(BOB).await;
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].ends_with(&body));
    assert!(headers_of(&inbox[0]).contains("Return-Path: <sales@example.test>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_auth_variants_and_wrong_password() {
    let h = Harness::start().await;
    let body = message(ALICE, BOB, "variants");
    let file = h.write("m3.eml", &body);
    for (mech, password, want) in [
        ("PLAIN-CHALLENGE", PASSWORD, "auth: 235"),
        ("LOGIN-IR", PASSWORD, "auth: 235"),
        ("PLAIN", "wrong-password-123", "auth: 535"),
        ("LOGIN", "wrong-password-123", "auth: 535"),
    ] {
        let out = python(&[
            s("--port"),
            h.submission.port().to_string(),
            s("--mode"),
            s("starttls"),
            s("--ca"),
            h.ca.display().to_string(),
            s("--user"),
            s("ALICE@Example.test"),
            s("--password"),
            s(password),
            s("--mech"),
            s(mech),
            s("--sender"),
            s(ALICE),
            s("--to"),
            s(BOB),
            s("--message"),
            file.display().to_string(),
        ])
        .await;
        assert!(out.contains(want), "{mech}: {out}");
    }
    assert_eq!(h.inbox(BOB).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_submission_refuses_foreign_sender_and_from() {
    let h = Harness::start().await;
    let ok_from = h.write("ok.eml", &message(ALICE, BOB, "x"));
    let bad_from = h.write("bad.eml", &message(BOB, BOB, "spoofed From"));
    let common = |file: &std::path::Path, sender: &str| {
        vec![
            s("--port"),
            h.submission.port().to_string(),
            s("--mode"),
            s("starttls"),
            s("--ca"),
            h.ca.display().to_string(),
            s("--user"),
            s(ALICE),
            s("--password"),
            s(PASSWORD),
            s("--sender"),
            s(sender),
            s("--to"),
            s(BOB),
            s("--message"),
            file.display().to_string(),
        ]
    };
    let out = python(&common(&ok_from, BOB)).await;
    assert!(
        out.contains("mail: 553 5.7.1"),
        "envelope sender of another account: {out}"
    );
    let out = python(&common(&ok_from, "stranger@example.test")).await;
    assert!(
        out.contains("mail: 553 5.7.1"),
        "an address that is not hers: {out}"
    );
    let out = python(&common(&bad_from, ALICE)).await;
    assert!(
        out.contains("data: 553 5.7.1"),
        "From: of another account: {out}"
    );
    assert!(h.inbox(BOB).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_mx_records_spf_dkim_dmarc_iprev_and_delivers_once_per_account() {
    let h = Harness::start().await;
    let body = h.dkim_sign(
        b"From: Sender <someone@sender.test>\r\nTo: info@example.test\r\nSubject: signed\r\nMessage-ID: <1@sender.test>\r\nDate: Sat, 29 Nov 2025 10:00:00 +0000\r\n\r\nSigned body.\r\n",
    );
    let file = h.write("signed.eml", &body);
    let out = python(&[
        s("--port"),
        h.mx.port().to_string(),
        s("--mode"),
        s("starttls"),
        s("--ca"),
        h.ca.display().to_string(),
        s("--sender"),
        s("someone@sender.test"),
        s("--to"),
        s("info@example.test"),
        s("--to"),
        s(BOB),
        s("--to"),
        s("anything@catchall.test"),
        s("--message"),
        file.display().to_string(),
    ])
    .await;
    assert!(out.contains("data: 250"), "{out}");
    assert!(
        !out.contains("feature-auth"),
        "no AUTH on the MX port: {out}"
    );
    // info@ -> alice + bob, bob, catch-all -> bob: one copy each.
    let bob = h.inbox(BOB).await;
    let alice = h.inbox(ALICE).await;
    assert_eq!((alice.len(), bob.len()), (1, 1));
    let stored = &bob[0];
    assert!(stored.ends_with(&body), "body byte-exact");
    let headers = headers_of(stored);
    assert!(
        headers.starts_with("Return-Path: <someone@sender.test>\r\n"),
        "{headers}"
    );
    for verdict in ["spf=pass", "dkim=pass", "dmarc=pass", "iprev=pass"] {
        assert!(headers.contains(verdict), "{verdict}: {headers}");
    }
    assert!(
        headers.contains(&format!("Authentication-Results: {HOST}")),
        "{headers}"
    );
    assert!(
        headers.contains("with ESMTPS (version=TLSv1.3"),
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_mx_dmarc_reject_policy_refuses() {
    let h = Harness::start().await;
    let body =
        b"From: ceo@strict.test\r\nTo: bob@example.test\r\nSubject: spoof\r\n\r\nPay now.\r\n";
    let file = h.write("spoof.eml", body);
    let out = python(&[
        s("--port"),
        h.mx.port().to_string(),
        s("--mode"),
        s("plain"),
        s("--ca"),
        h.ca.display().to_string(),
        s("--sender"),
        s("ceo@strict.test"),
        s("--to"),
        s(BOB),
        s("--message"),
        file.display().to_string(),
    ])
    .await;
    assert!(out.contains("data: 550 5.7.1"), "{out}");
    assert!(h.inbox(BOB).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_mx_dmarc_reject_can_be_turned_off() {
    let h = Harness::start_with(|c| c.dmarc_reject = false).await;
    let body =
        b"From: ceo@strict.test\r\nTo: bob@example.test\r\nSubject: spoof\r\n\r\nPay now.\r\n";
    let file = h.write("spoof.eml", body);
    let out = python(&[
        s("--port"),
        h.mx.port().to_string(),
        s("--mode"),
        s("plain"),
        s("--ca"),
        h.ca.display().to_string(),
        s("--sender"),
        s("ceo@strict.test"),
        s("--to"),
        s(BOB),
        s("--message"),
        file.display().to_string(),
    ])
    .await;
    assert!(out.contains("data: 250"), "{out}");
    let headers = headers_of(&h.inbox(BOB).await[0]);
    assert!(
        headers.contains("spf=fail") && headers.contains("dmarc=fail"),
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_submission_starttls_implicit_tls_and_mx() {
    require("swaks");
    let h = Harness::start().await;
    let port = |p: u16| p.to_string();
    let base = |server_port: String| {
        vec![
            s("--server"),
            s("127.0.0.1"),
            s("--port"),
            server_port,
            s("--helo"),
            s("client.sender.test"),
            s("--to"),
            s(BOB),
            s("--timeout"),
            s("20"),
            s("--body"),
            s("swaks body line"),
            s("--h-Subject"),
            s("via swaks"),
        ]
    };
    // 587: STARTTLS + AUTH PLAIN, pipelined.
    let mut args = base(port(h.submission.port()));
    args.extend([
        s("--tls"),
        s("--auth"),
        s("PLAIN"),
        s("--auth-user"),
        s(ALICE),
        s("--auth-password"),
        s(PASSWORD),
        s("--from"),
        s(ALICE),
        s("--pipeline"),
    ]);
    let (ok, out, err) = run("swaks", &args).await;
    assert!(ok, "swaks 587:\n{out}\n{err}");
    // 465: implicit TLS + AUTH LOGIN.
    let mut args = base(port(h.submissions.port()));
    args.extend([
        s("--tlsc"),
        s("--auth"),
        s("LOGIN"),
        s("--auth-user"),
        s(ALICE),
        s("--auth-password"),
        s(PASSWORD),
        s("--from"),
        s(ALICE),
    ]);
    let (ok, out, err) = run("swaks", &args).await;
    assert!(ok, "swaks 465:\n{out}\n{err}");
    // 25: plain MX delivery.
    let mut args = base(port(h.mx.port()));
    args.extend([s("--from"), s("someone@sender.test")]);
    let (ok, out, err) = run("swaks", &args).await;
    assert!(ok, "swaks 25:\n{out}\n{err}");
    // 587 without TLS: AUTH must fail (swaks exits non-zero).
    let mut args = base(port(h.submission.port()));
    args.extend([
        s("--auth"),
        s("PLAIN"),
        s("--auth-user"),
        s(ALICE),
        s("--auth-password"),
        s(PASSWORD),
        s("--from"),
        s(ALICE),
    ]);
    let (ok, out, _) = run("swaks", &args).await;
    assert!(!ok, "AUTH without TLS must fail: {out}");

    let inbox = h.inbox(BOB).await;
    assert_eq!(inbox.len(), 3);
    for m in &inbox {
        let text = String::from_utf8_lossy(m);
        assert!(text.contains("swaks body line\r\n"), "{text}");
        assert!(text.contains("Subject: via swaks"), "{text}");
    }
    let headers = headers_of(&inbox[2]);
    assert!(headers.contains("Authentication-Results:"), "{headers}");
    // swaks does not sign: the DKIM verdict is named as "none" (RFC 8601 §2.7.1).
    assert!(
        headers.contains("\tdkim=none (message not signed)\r\n"),
        "{headers}"
    );
}
