//! WAL checkpoints under sustained delivery, on a real SQLite file: the checkpoint thread
//! copies the WAL into the database beside the writer, and the WAL still restarts, so its
//! file stays bounded however long the writer is kept busy.

use std::sync::Arc;

use store::{Address, Domain, NewAccount, NewMessage, SqliteStore, Store};

/// Concurrent senders and messages each: enough WAL pages for several checkpoints and for the
/// writer's own fallback checkpoint (at 16 MB of pages).
const SENDERS: usize = 20;
const EACH: usize = 100;
/// A body like the benchmark's: 10 KB, stored inline (three pages or so).
const BODY: usize = 10 * 1024;

fn body(sender: usize, n: usize) -> Vec<u8> {
    let mut b = format!("Subject: {sender}/{n}\r\n\r\n").into_bytes();
    b.extend((0..BODY).map(|i| b'a' + ((i + sender * 7 + n) % 26) as u8));
    b.extend_from_slice(b"\r\n");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_stays_bounded_while_deliveries_never_stop() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path()).await?;
    store.add_domain(&Domain::parse("example.org")?).await?;
    let alice = store
        .add_account(NewAccount {
            address: Address::parse("alice@example.org")?,
            password_hash: "x".into(),
            display_name: String::new(),
            quota_bytes: 0,
        })
        .await?;

    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let store: Arc<SqliteStore> = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                let results = store
                    .deliver(&[alice], NewMessage::now(body(sender, n)))
                    .await
                    .map_err(|e| format!("delivery {sender}/{n}: {e}"))?;
                if !results.iter().all(Result::is_ok) {
                    return Err(format!("delivery {sender}/{n} refused"));
                }
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await??;
    }

    let total = SENDERS * EACH;
    // Without checkpoints and WAL restarts the WAL would hold every page written: more than
    // `total` bodies of 10 KB. Bounded: the writer's fallback threshold (16 MB of pages,
    // 4,000 of 4 KiB or 2,000 of 8 KiB, each with a 24-byte frame header) and a few batches'
    // worth on top.
    let wal = std::fs::metadata(dir.path().join("tessera.db-wal"))?.len();
    let bound = 5_000 * (4096 + 24);
    assert!(
        wal <= bound,
        "the WAL grew to {wal} bytes (bound {bound}) for {total} messages"
    );
    assert!(wal < (total * BODY) as u64);
    // The checkpoints copied the bodies into the database file itself.
    let db = std::fs::metadata(dir.path().join("tessera.db"))?.len();
    assert!(
        db >= (total * BODY / 2) as u64,
        "the database file holds {db} bytes after {total} messages"
    );

    let inbox = store.mailbox(alice, "INBOX").await?.ok_or("no INBOX")?;
    let listed = store.messages(alice, inbox.id).await?;
    assert_eq!(listed.len(), total);
    for meta in [&listed[0], &listed[total / 2], &listed[total - 1]] {
        let got = store.read_message(alice, meta.message).await?;
        let subject = String::from_utf8_lossy(&got[..got.len().min(20)]).into_owned();
        let (sender, n) = subject
            .trim_start_matches("Subject: ")
            .split_once("\r\n")
            .and_then(|(s, _)| s.split_once('/'))
            .ok_or("no subject")?;
        assert_eq!(got, body(sender.parse()?, n.parse()?));
    }
    Ok(())
}
