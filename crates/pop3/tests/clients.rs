//! End to end with real POP3 clients nobody on the team wrote: Python's poplib (STLS and
//! POP3_SSL), fetchmail (STLS) and getmail6 (POP3S). They must be installed: a missing client
//! fails the test (Debian: python3, fetchmail, getmail6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{HOST, Harness, PASSWORD, b64, corpus, poplib, py, run};
use serde_json::Value;

/// The unique-id format promised in `maildrop::unique_id` (Dovecot's `%08Xu%08Xv`), rebuilt
/// here from the store's numbers rather than through the crate.
fn expected_uidl(uid: store::Uid, uid_validity: store::UidValidity) -> String {
    format!("{:08X}{:08X}", uid.0, uid_validity.0)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poplib_stls_then_pop3_ssl_retrieves_and_deletes() {
    let h = Harness::start().await;
    let (alice, address) = h.user("alice").await;
    let binary = corpus::binary();
    let originals: Vec<&[u8]> = vec![corpus::SIMPLE, corpus::DOTS, &binary];
    for message in &originals {
        h.deliver(alice, message).await;
    }
    let inbox = h.inbox(alice).await;
    let uidls: Vec<String> = h
        .messages(alice)
        .await
        .iter()
        .map(|m| expected_uidl(m.uid, inbox.uid_validity))
        .collect();

    // Session 1: plaintext + STLS, USER/PASS, TOP, delete message 1.
    let report = poplib(
        &h,
        "stls",
        &address,
        &["--pre-stls-login", "--top", "1", "--delete", "1"],
    )
    .await;
    let before = strings(&report["capa_before_tls"]);
    assert!(before.contains(&"STLS".to_owned()), "{before:?}");
    assert!(!before.contains(&"USER".to_owned()), "{before:?}");
    assert!(!before.contains(&"SASL".to_owned()), "{before:?}");
    for key in ["user_before_tls", "pass_before_tls"] {
        let text = report[key].as_str().unwrap();
        assert!(text.starts_with("-ERR [SYS/PERM]"), "{key}: {text}");
    }
    assert!(report["welcome"].as_str().unwrap().contains(HOST));
    let capa = strings(&report["capa"]);
    for want in [
        "TOP",
        "UIDL",
        "USER",
        "SASL PLAIN",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "EXPIRE NEVER",
        "IMPLEMENTATION Tessera",
    ] {
        assert!(
            capa.contains(&want.to_owned()),
            "{want} missing from {capa:?}"
        );
    }
    assert!(
        !capa.iter().any(|c| c == "STLS"),
        "STLS offered under TLS: {capa:?}"
    );
    let total: usize = originals.iter().map(|m| m.len()).sum();
    assert_eq!(report["stat"], serde_json::json!([3, total]));
    let sizes: Vec<Value> = originals
        .iter()
        .zip(1..)
        .map(|(m, n)| serde_json::json!([n, m.len()]))
        .collect();
    assert_eq!(report["list"], Value::Array(sizes));
    let uidl_pairs: Vec<Value> = uidls
        .iter()
        .zip(1..)
        .map(|(u, n)| serde_json::json!([n, u]))
        .collect();
    assert_eq!(report["uidl"], Value::Array(uidl_pairs));
    for (n, original) in (1..).zip(&originals) {
        assert_eq!(
            b64(&report["messages"][n.to_string()]),
            *original,
            "RETR {n} not byte-exact"
        );
    }
    // TOP n 1: header, blank line, one body line.
    assert_eq!(
        b64(&report["top"]["1"]),
        b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: hello\r\nMessage-ID: <1@example.test>\r\n\r\nHello Alice,\r\n"
    );
    assert_eq!(
        b64(&report["top"]["2"]),
        b"From: bob@example.test\r\nSubject: dots\r\n\r\n.\r\n"
    );
    assert!(report["quit"].as_str().unwrap().starts_with("+OK"));
    assert_eq!(
        h.messages(alice).await.len(),
        2,
        "DELE 1 + QUIT expunged one"
    );

    // Session 2: implicit TLS, AUTH PLAIN; unique-ids unchanged, numbers reassigned.
    h.wait_unlocked(alice).await;
    let report = poplib(&h, "ssl", &address, &["--auth", "plain", "--delete", "all"]).await;
    assert!(report["login"].as_str().unwrap().starts_with("+OK"));
    assert!(
        !strings(&report["capa"]).contains(&"STLS".to_owned()),
        "STLS on implicit TLS"
    );
    assert_eq!(
        report["stat"],
        serde_json::json!([2, originals[1].len() + originals[2].len()])
    );
    assert_eq!(
        report["uidl"],
        serde_json::json!([[1, uidls[1]], [2, uidls[2]]]),
        "unique-ids must be stable across sessions"
    );
    assert_eq!(b64(&report["messages"]["1"]), originals[1]);
    assert_eq!(b64(&report["messages"]["2"]), originals[2]);
    assert!(h.messages(alice).await.is_empty(), "everything deleted");
}

/// LF line endings, as local delivery programs get them.
fn unix(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"\r\n") {
            out.push(b'\n');
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The delivered files in `dir` (recursively), sorted by content.
fn delivered(dir: &Path) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(std::fs::read(&path).unwrap());
            }
        }
    }
    files.sort();
    files
}

/// Each original must arrive; delivery agents may add trace headers at the top, so the
/// delivered file must end with the whole original (LF-normalised).
fn assert_delivered(got: &[Vec<u8>], originals: &[&[u8]], client: &str) {
    assert_eq!(
        got.len(),
        originals.len(),
        "{client} delivered {} files",
        got.len()
    );
    for original in originals {
        let want = unix(original);
        assert!(
            got.iter().any(|file| unix(file).ends_with(&want)),
            "{client} did not deliver {:?}; got {:?}",
            String::from_utf8_lossy(original),
            got.iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchmail_retrieves_and_deletes_over_stls() {
    let h = Harness::start().await;
    let (bob, address) = h.user("bob").await;
    let originals: Vec<&[u8]> = vec![corpus::SIMPLE, corpus::DOTS, corpus::EIGHT_BIT];
    for message in &originals {
        h.deliver(bob, message).await;
    }
    let home = h.scratch("fetchmail-home");
    let out = h.scratch("fetchmail-out");
    let rc = home.join("fetchmailrc");
    let mda = py("mda.py");
    // sslproto without ssl: STLS is mandatory (fetchmail 6.4 semantics); sslcertck verifies
    // the chain against the local CA and the name against the poll name.
    std::fs::write(
        &rc,
        format!(
            "set no syslog\n\
             set invisible\n\
             poll {HOST} via 127.0.0.1 service {port} proto POP3 timeout 10\n\
             \tuser \"{address}\" there with password \"{PASSWORD}\" is root here\n\
             \toptions fetchall nokeep no rewrite sslproto \"TLS1.2+\" sslcertck sslcertfile \"{ca}\" sslcommonname \"{HOST}\"\n\
             \tmda \"python3 {mda} {out}\"\n",
            port = h.stls_addr.port(),
            ca = h.ca.display(),
            mda = mda.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    set_private(&rc);
    let output = run(
        "fetchmail",
        &["-f", rc.to_str().unwrap(), "--nodetach", "-v"],
        &[("HOME", &home), ("FETCHMAILHOME", &home)],
    )
    .await;
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "fetchmail failed ({}):\n{log}",
        output.status
    );
    assert!(
        log.contains("POP3> STLS"),
        "fetchmail did not use STLS:\n{log}"
    );
    assert_delivered(&delivered(&out), &originals, "fetchmail");
    h.wait_unlocked(bob).await;
    assert!(
        h.messages(bob).await.is_empty(),
        "fetchmail should have deleted\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getmail6_retrieves_and_deletes_over_pop3s() {
    let h = Harness::start().await;
    let (carol, address) = h.user("carol").await;
    let originals: Vec<&[u8]> = vec![corpus::SIMPLE, corpus::DOTS, corpus::EIGHT_BIT];
    for message in &originals {
        h.deliver(carol, message).await;
    }
    let home = h.scratch("getmail");
    // An external MDA rather than getmail's Maildir destination, which refuses to run as root.
    let maildir = h.scratch("getmail-out");
    let rc = home.join("getmailrc");
    std::fs::write(
        &rc,
        format!(
            "[retriever]\n\
             type = SimplePOP3SSLRetriever\n\
             server = 127.0.0.1\n\
             port = {port}\n\
             username = {address}\n\
             password = {PASSWORD}\n\
             ca_certs = {ca}\n\
             ssl_cert_hostname = {HOST}\n\
             \n\
             [destination]\n\
             type = MDA_external\n\
             path = {python}\n\
             arguments = (\"{mda}\", \"{maildir}\")\n\
             allow_root_commands = true\n\
             \n\
             [options]\n\
             read_all = true\n\
             delete = true\n\
             delivered_to = false\n\
             received = false\n\
             verbose = 2\n",
            port = h.tls_addr.port(),
            ca = h.ca.display(),
            maildir = maildir.display(),
            mda = py("mda.py").display(),
            python = which("python3").display(),
        ),
    )
    .unwrap();
    set_private(&rc);
    let output = run(
        "getmail",
        &[
            &format!("--rcfile={}", rc.display()),
            &format!("--getmaildir={}", home.display()),
        ],
        &[("HOME", &home)],
    )
    .await;
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "getmail failed ({}):\n{log}",
        output.status
    );
    assert_delivered(&delivered(&maildir), &originals, "getmail6");
    h.wait_unlocked(carol).await;
    assert!(
        h.messages(carol).await.is_empty(),
        "getmail should have deleted\n{log}"
    );
}

/// The absolute path of a program found in PATH (getmail wants one for its MDA).
fn which(program: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed (not found in PATH)"))
}

/// fetchmail refuses a run-control file others can read.
fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
