//! Crash safety: a process delivering at full speed is killed with SIGKILL at random
//! moments; afterwards every index row must have its blob, with the right content.
//! (There may be blobs without rows; garbage collection removes them.)
//!
//! The test re-executes its own binary in "child" mode (`CRASH_CHILD_DIR` set) to get a
//! real process to kill.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use store::{Address, Domain, NewAccount, NewMessage, SqliteStore, Store, Uid};

const CHILD_ENV: &str = "CRASH_CHILD_DIR";

/// Child mode: deliver forever from 16 concurrent tasks; print `ready` once data is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only runs when spawned by `sigkill_never_leaves_a_row_without_its_blob`.
    };
    let store = SqliteStore::open(std::path::Path::new(&dir))
        .await
        .expect("open");
    let account = store
        .account(&Address::parse("crash@example.org").expect("addr"))
        .await
        .expect("query")
        .expect("account exists")
        .id;
    let inbox = store
        .mailbox(account, "INBOX")
        .await
        .expect("q")
        .expect("inbox")
        .id;
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let store: Arc<SqliteStore> = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                // Mostly small bodies (stored inline), every fifth one large (a file).
                let len = if i % 5 == 0 { 70_000 } else { 2000 } + (i % 97) as usize;
                let body = format!("Subject: crash {t}/{i}\r\n\r\n{}\r\n", "x".repeat(len));
                store
                    .append(account, inbox, NewMessage::now(body.into_bytes()))
                    .await
                    .expect("append");
                if t == 0 && i == 3 {
                    println!("ready");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_leaves_a_row_without_its_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = SqliteStore::open(dir.path()).await.expect("open");
        store
            .add_domain(&Domain::parse("example.org").expect("d"))
            .await
            .expect("domain");
        store
            .add_account(NewAccount {
                address: Address::parse("crash@example.org").expect("addr"),
                password_hash: "x".into(),
                display_name: String::new(),
                quota_bytes: 0,
            })
            .await
            .expect("account");
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut last_count = 0;
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        // Read the child's output on a thread so a silent child cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest prints "test crash_child_writer ... " without a newline first.
                if line.trim_end().ends_with("ready") {
                    let _ = tx.send(());
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(60)).is_ok();
        if !ready {
            let _ = child.kill();
        }
        assert!(ready, "child exited before delivering");
        // Let it run a varying while so the kill lands at different points of a batch.
        tokio::time::sleep(Duration::from_millis(40 + round * 70)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();

        let store = SqliteStore::open(dir.path())
            .await
            .expect("reopen after crash");
        assert!(
            store.missing_blobs().await.expect("check").is_empty(),
            "round {round}: row without blob"
        );
        let account = store
            .account(&Address::parse("crash@example.org").expect("addr"))
            .await
            .expect("q")
            .expect("account");
        let inbox = store
            .mailbox(account.id, "INBOX")
            .await
            .expect("q")
            .expect("inbox");
        let messages = store.messages(account.id, inbox.id).await.expect("list");
        assert!(
            messages.len() > last_count,
            "round {round}: the child committed nothing"
        );
        last_count = messages.len();
        let mut previous = Uid(0);
        let mut large = 0;
        for m in &messages {
            assert!(m.uid > previous, "UIDs strictly ascending");
            previous = m.uid;
            let body = store
                .read_message(account.id, m.message)
                .await
                .expect("blob readable");
            assert_eq!(body.len() as u64, m.size);
            assert!(body.starts_with(b"Subject: crash "));
            // Large bodies are files named by their content address; the file holds them.
            if body.len() > store::INLINE_BODY_MAX {
                let hash = hex_of(&Sha256::digest(&body));
                let file = dir.path().join("blobs").join(&hash[..2]).join(&hash[2..]);
                assert_eq!(std::fs::read(&file).expect("body file"), body);
                large += 1;
            }
        }
        assert!(large > 0, "round {round}: no large body was delivered");
        assert!(inbox.uid_next > previous);
        drop(store);
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
