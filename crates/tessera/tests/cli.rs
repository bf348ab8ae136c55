//! The management CLI and the demo, driven through the real binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Guard;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A config in a temporary directory with every listener off (no ports needed).
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tessera.toml");
    let listen: String = [
        "smtp",
        "submission",
        "submissions",
        "imap",
        "imaps",
        "pop3",
        "pop3s",
        "http",
        "https",
    ]
    .iter()
    .map(|k| format!("{k} = \"off\"\n"))
    .collect();
    std::fs::write(
        &config,
        format!("hostname = \"mail.example.org\"\ndata_dir = \"data\"\n[listen]\n{listen}"),
    )
    .expect("write config");
    (dir, config)
}

fn run(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tessera");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            // A command that rejects its arguments exits before reading stdin; the pipe is
            // then closed, which is not an error of the test.
            if let Err(e) = input.write_all(text.as_bytes()) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
            }
        }
    }
    child.wait_with_output().expect("wait")
}

fn ok(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(config, args, stdin);
    assert!(
        out.status.success(),
        "tessera {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with exactly one line of error text containing `needle`.
fn fails(config: &Path, args: &[&str], stdin: Option<&str>, needle: &str) {
    let out = run(config, args, stdin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tessera {args:?} should fail");
    assert!(
        err.contains(needle),
        "tessera {args:?}: expected {needle:?} in {err:?}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one clear line, got {err:?}"
    );
}

#[test]
fn domains_users_and_aliases() {
    let (_dir, config) = setup();
    ok(&config, &["domain", "add", "Example.org"], None);
    fails(
        &config,
        &["domain", "add", "example.org"],
        None,
        "exists already",
    );
    fails(
        &config,
        &["domain", "add", "not a domain"],
        None,
        "malformed domain",
    );
    assert_eq!(
        ok(&config, &["domain", "list"], None).trim(),
        "example.org\t0 account(s)"
    );

    ok(
        &config,
        &[
            "user",
            "add",
            "alice@example.org",
            "--password-stdin",
            "--name",
            "Alice",
        ],
        Some("a long password\n"),
    );
    fails(
        &config,
        &["user", "add", "ALICE@example.org", "--password-stdin"],
        Some("a long password\n"),
        "exists already",
    );
    fails(
        &config,
        &["user", "add", "bob@nowhere.org", "--password-stdin"],
        Some("a long password\n"),
        "not hosted",
    );
    fails(
        &config,
        &["user", "add", "bad address", "--password-stdin"],
        Some("a long password\n"),
        "malformed address",
    );
    fails(
        &config,
        &["user", "add", "bob@example.org", "--password-stdin"],
        Some("short\n"),
        "too weak",
    );
    fails(
        &config,
        &["user", "add", "bob@example.org", "--password-stdin"],
        Some("\n"),
        "empty password",
    );
    // Without a terminal and without a flag there is no way to ask.
    fails(
        &config,
        &["user", "add", "bob@example.org"],
        None,
        "--password-stdin",
    );

    let generated = ok(
        &config,
        &["user", "add", "bob@example.org", "--generate-password"],
        None,
    );
    let password = generated
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password printed once");
    assert_eq!(password.len(), 20);

    let users = ok(&config, &["user", "list"], None);
    assert!(users.contains("alice@example.org\tAlice"), "{users}");
    assert!(users.contains("bob@example.org"), "{users}");
    ok(
        &config,
        &["user", "passwd", "bob@example.org", "--password-stdin"],
        Some("another long one\n"),
    );
    fails(
        &config,
        &["user", "passwd", "carol@example.org", "--password-stdin"],
        Some("another long one\n"),
        "no user",
    );

    ok(
        &config,
        &["alias", "add", "info@example.org", "alice@example.org"],
        None,
    );
    ok(
        &config,
        &["alias", "add", "info@example.org", "bob@example.org"],
        None,
    );
    ok(
        &config,
        &["alias", "add", "@example.org", "alice@example.org"],
        None,
    );
    fails(
        &config,
        &["alias", "add", "info@example.org", "bob@example.org"],
        None,
        "exists already",
    );
    fails(
        &config,
        &["alias", "add", "x@example.org", "nobody@example.org"],
        None,
        "no user",
    );
    let aliases = ok(&config, &["alias", "list"], None);
    assert!(
        aliases.contains("info@example.org\talice@example.org, bob@example.org"),
        "{aliases}"
    );
    assert!(
        aliases.contains("@example.org\talice@example.org"),
        "{aliases}"
    );
    ok(
        &config,
        &["alias", "remove", "info@example.org", "bob@example.org"],
        None,
    );
    ok(&config, &["alias", "remove", "@example.org"], None);
    fails(
        &config,
        &["alias", "remove", "@example.org"],
        None,
        "no alias",
    );

    fails(
        &config,
        &["domain", "remove", "example.org"],
        None,
        "remove them first",
    );
    ok(&config, &["user", "remove", "alice@example.org"], None);
    ok(&config, &["user", "remove", "bob@example.org"], None);
    fails(
        &config,
        &["user", "remove", "bob@example.org"],
        None,
        "no user",
    );
    ok(&config, &["domain", "remove", "example.org"], None);
    assert_eq!(ok(&config, &["domain", "list"], None).trim(), "");
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "hostname = \"mail.example.org\"\nlisten_typo = 1\n",
    )
    .expect("write");
    let out = run(&config, &["domain", "list"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("listen_typo"),
        "{err}"
    );

    std::fs::write(
        &config,
        "hostname = \"mail.example.org\"\n[listen]\nimaps = \"993\"\n",
    )
    .expect("write");
    let out = run(&config, &["check-config"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("imaps") && err.contains("\"993\""),
        "{err}"
    );

    std::fs::write(
        &config,
        "hostname = \"mail.example.org\"\ncpu_scheduling = \"fifo\"\n",
    )
    .expect("write");
    let out = run(&config, &["check-config"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("cpu_scheduling") && err.contains("fifo"),
        "{err}"
    );

    let missing = dir.path().join("missing.toml");
    let out = run(&missing, &["user", "list"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing.toml"), "{err}");

    // TESSERA_CONFIG is used when --config is absent.
    let (_d, good) = setup();
    let out = Command::new(BIN)
        .args(["check-config"])
        .env("TESSERA_CONFIG", &good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mail.example.org"));
    assert!(stdout.contains("cpu:       batch scheduling"), "{stdout}");
}

/// Starts `tessera demo` and waits for its banner; returns the child (killed when dropped, so
/// a failing test never leaves a demo holding the demo ports) and the banner.
fn start_demo(dir: &Path) -> (Guard, String) {
    let mut child = Command::new(BIN)
        .args(["demo", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Guard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Stop it with") {
                let _ = tx.send(banner.clone());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(banner) => (child, banner),
        Err(_) => panic!(
            "the demo printed no banner within 60 s (exit status: {:?}; are the demo ports \
             taken?)",
            child.0.try_wait()
        ),
    }
}

fn stop(mut demo: Guard) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(demo.0.id().to_string())
        .status();
    for _ in 0..200 {
        if let Ok(Some(status)) = demo.0.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the demo did not stop within 10 s of SIGTERM");
}

#[test]
fn demo_runs_prints_endpoints_and_is_managed_while_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let (child, banner) = start_demo(&dir);
    assert!(banner.contains("demo@example.test"), "{banner}");
    for port in [
        "10025", "10587", "10465", "10143", "10993", "10110", "10995", "10080", "10443",
    ] {
        assert!(
            banner.contains(&format!("127.0.0.1:{port}")),
            "{port} missing in {banner}"
        );
    }
    let ca = dir.join("tls").join("ca.pem");
    assert!(ca.exists());
    assert!(banner.contains(&ca.display().to_string()));
    let password = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("password"))
        .map(|p| p.trim().to_string())
        .expect("password line");
    // A client connecting to 127.0.0.1 (or localhost) verifies the demo's certificate with the
    // demo CA alone, no /etc/hosts entry: Python's ssl with its default hostname checks.
    for name in ["127.0.0.1", "localhost"] {
        let out = Command::new("python3")
            .args([
                "-c",
                "import socket, ssl, sys\n\
                 ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
                 with socket.create_connection(('127.0.0.1', 10993), timeout=10) as raw:\n\
                 \x20   with ctx.wrap_socket(raw, server_hostname=sys.argv[2]) as tls:\n\
                 \x20       print(tls.recv(200).decode())\n",
            ])
            .arg(&ca)
            .arg(name)
            .output()
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("* OK"),
            "TLS to 127.0.0.1 as {name}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every thread of the server (runtime workers, the store's writer and checkpointer)
    // runs under SCHED_BATCH (policy 3, field 41 of a task's stat).
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.0.id())).expect("tasks");
    let mut policies = Vec::new();
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (name, fields) = stat.rsplit_once(')').unwrap_or_default();
        let policy = fields.split_whitespace().nth(38).unwrap_or("?").to_string();
        policies.push((name.rsplit('(').next().unwrap_or("").to_string(), policy));
    }
    assert!(
        policies.len() >= 4 && policies.iter().all(|(_, p)| p == "3"),
        "{policies:?}"
    );

    // Management works against the running demo.
    let config = dir.join("tessera.toml");
    ok(
        &config,
        &["user", "add", "bob@example.test", "--password-stdin"],
        Some("bobs password\n"),
    );
    fails(
        &config,
        &["user", "add", "bob@example.test", "--password-stdin"],
        Some("bobs password\n"),
        "exists already",
    );
    assert!(stop(child).success(), "clean exit on SIGTERM");

    // Run again: the same directory, user and password are reused.
    let (child, banner) = start_demo(&dir);
    assert!(banner.contains(&password), "password kept across runs");
    assert!(ok(&config, &["user", "list"], None).contains("bob@example.test"));
    assert!(stop(child).success());
}

/// `tessera gc` removes the body and row of a message expunged from its mailbox, and
/// nothing that a mailbox still holds.
#[test]
fn gc_removes_expunged_mail_and_keeps_the_rest() {
    let (dir, config) = setup();
    ok(&config, &["domain", "add", "example.org"], None);
    ok(
        &config,
        &["user", "add", "alice@example.org", "--password-stdin"],
        Some("a long password\n"),
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let data = dir.path().join("data");
    let message = |text: &str| store::NewMessage {
        bytes: std::sync::Arc::new(format!("Subject: {text}\r\n\r\n{text}\r\n").into_bytes()),
        flags: store::Flags::default(),
        internal_date: 1_700_000_000,
        tz_offset_minutes: 0,
    };
    let (kept, inbox, alice) = runtime.block_on(async {
        use store::Store;
        let s = store::SqliteStore::open(&data).await.expect("store");
        let address = store::Address::parse("alice@example.org").expect("address");
        let alice = s.account(&address).await.expect("q").expect("alice").id;
        let inbox = s
            .mailbox(alice, "INBOX")
            .await
            .expect("q")
            .expect("inbox")
            .id;
        let kept = s
            .append(alice, inbox, message("kept"))
            .await
            .expect("append");
        let gone = s
            .append(alice, inbox, message("gone"))
            .await
            .expect("append");
        s.expunge(alice, inbox, Some(&[gone.uid]), true)
            .await
            .expect("expunge");
        (kept, inbox, alice)
    });
    let out = ok(&config, &["gc"], None);
    assert!(
        out.contains("removed 1 message row(s) and 1 body/bodies"),
        "{out}"
    );
    let out = ok(&config, &["gc"], None);
    assert!(
        out.contains("removed 0 message row(s) and 0 body/bodies"),
        "{out}"
    );
    runtime.block_on(async {
        use store::Store;
        let s = store::SqliteStore::open(&data).await.expect("store");
        let left = s.messages(alice, inbox).await.expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].uid, kept.uid);
        let body = s.read_message(alice, kept.message).await.expect("body");
        assert_eq!(body, b"Subject: kept\r\n\r\nkept\r\n");
        assert!(s.missing_blobs().await.expect("check").is_empty());
    });
}
