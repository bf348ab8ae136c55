//! Schema migrations on real SQLite files: a database written at an older schema version
//! opens with today's store, and every message in it reads back byte for byte.
//!
//! The old database is built from the migration files themselves (exactly the schema an
//! older Tessera created), with rows as that Tessera's writer put them.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};
use store::{Address, NewMessage, SqliteStore, Store, Uid};

/// The migrations up to schema version 6, as shipped before version 7 existed.
const V6: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_queue.sql"),
    include_str!("../migrations/sqlite/0003_inline_bodies.sql"),
    include_str!("../migrations/sqlite/0004_outbound.sql"),
    include_str!("../migrations/sqlite/0005_dkim.sql"),
    include_str!("../migrations/sqlite/0006_acme.sql"),
];

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A message body with every byte value in it, so a lossy conversion anywhere would show.
fn body(tag: &str, filler: usize) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\r\nX-Bytes: ").into_bytes();
    b.extend((0u8..=255).filter(|c| *c != b'\r' && *c != b'\n'));
    b.extend_from_slice(b"\r\n\r\n");
    b.extend(std::iter::repeat_n(b'z', filler));
    b.extend_from_slice(b"\r\n");
    b
}

/// Writes a version-6 database into `dir` holding alice@example.org with `bodies` in her
/// INBOX (UIDs 1..), the way the version-6 writer stored them: bodies up to 64 KiB in
/// `inline_blobs`, larger ones as files under `blobs/`, `blob_hash` the SHA-256 in hex.
fn write_v6_database(dir: &Path, bodies: &[Vec<u8>]) -> Result<(), Box<dyn std::error::Error>> {
    let conn = Connection::open(dir.join("tessera.db"))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    for (i, sql) in V6.iter().enumerate() {
        conn.execute_batch(sql)?;
        conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    conn.execute(
        "INSERT INTO domains (id, name, created_at) VALUES (1, 'example.org', 0)",
        [],
    )?;
    let used: usize = bodies.iter().map(Vec::len).sum();
    conn.execute(
        "INSERT INTO accounts (id, domain_id, local_part, address, password_hash, quota_bytes, used_bytes, created_at) \
         VALUES (1, 1, 'alice', 'alice@example.org', 'x', 0, ?, 0)",
        [i64::try_from(used)?],
    )?;
    let uid_next = i64::try_from(bodies.len())? + 1;
    conn.execute(
        "INSERT INTO mailboxes (id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed) \
         VALUES (1, 1, 'INBOX', NULL, 1700000000, ?1, ?1, 1)",
        [uid_next],
    )?;
    for (i, bytes) in bodies.iter().enumerate() {
        let hash = hex_sha256(bytes);
        if bytes.len() <= store::INLINE_BODY_MAX {
            conn.execute(
                "INSERT OR IGNORE INTO inline_blobs (hash, data) VALUES (?, ?)",
                params![hash, bytes],
            )?;
        } else {
            let file_dir = dir.join("blobs").join(&hash[..2]);
            std::fs::create_dir_all(&file_dir)?;
            std::fs::write(file_dir.join(&hash[2..]), bytes)?;
        }
        let uid = i64::try_from(i)? + 1;
        conn.execute(
            "INSERT INTO messages (id, account_id, blob_hash, size, internal_date, tz_offset) VALUES (?, 1, ?, ?, 1700000000, 60)",
            params![uid, hash, i64::try_from(bytes.len())?],
        )?;
        conn.execute(
            "INSERT INTO mailbox_messages (mailbox_id, uid, message_id, flags, keywords, modseq) VALUES (1, ?1, ?1, 0, '', ?1)",
            [uid],
        )?;
    }
    Ok(())
}

/// Regression for schema version 7 (the index on `messages.blob_hash` dropped to make each
/// delivery write fewer pages): a version-6 database with inline, shared and file bodies
/// migrates, keeps every message byte for byte, takes new deliveries (one sharing an old
/// body) and survives garbage collection.
#[tokio::test]
async fn version_6_database_migrates_and_its_messages_read_back_exactly()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let shared = body("shared", 100);
    let bodies = vec![
        body("inline", 10_000),
        shared.clone(),
        shared.clone(),
        body("file", 100_000),
    ];
    write_v6_database(dir.path(), &bodies)?;

    let store = SqliteStore::open(dir.path()).await?;
    let alice = store
        .account(&Address::parse("alice@example.org")?)
        .await?
        .ok_or("alice is gone")?
        .id;
    let inbox = store.mailbox(alice, "INBOX").await?.ok_or("no INBOX")?;
    let listed = store.messages(alice, inbox.id).await?;
    assert_eq!(listed.len(), bodies.len());
    for (meta, want) in listed.iter().zip(&bodies) {
        assert_eq!(meta.size, want.len() as u64, "size of UID {}", meta.uid.0);
        assert_eq!(meta.tz_offset_minutes, 60);
        let got = store.read_message(alice, meta.message).await?;
        assert!(got == *want, "UID {} changed in the migration", meta.uid.0);
    }

    {
        let db = Connection::open(dir.path().join("tessera.db"))?;
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert!(version >= 7, "schema version {version} after migrating");
        let index: Option<String> = db
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'messages_blob'",
                [],
                |r| r.get(0),
            )
            .ok();
        assert_eq!(index, None, "messages_blob is still there");
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        assert_eq!(check, "ok");
        let page: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        assert_eq!(page, 4096, "an existing database keeps its page size");
    }

    // New mail after the migration: a body an old message already has, and a new one.
    let fresh = body("after", 5_000);
    for bytes in [&shared, &fresh] {
        let results = store
            .deliver(&[alice], NewMessage::now(bytes.clone()))
            .await?;
        assert!(results.iter().all(Result::is_ok), "delivery failed");
    }
    // Expunging one of the two old copies of the shared body must not take the body away
    // from the other copy or from the new delivery.
    store
        .expunge(alice, inbox.id, Some(&[Uid(2)]), true)
        .await?;
    store.collect_garbage(Duration::ZERO).await?;
    assert!(store.missing_blobs().await?.is_empty());

    let listed = store.messages(alice, inbox.id).await?;
    let uids: Vec<u32> = listed.iter().map(|m| m.uid.0).collect();
    assert_eq!(uids, vec![1, 3, 4, 5, 6]);
    let want = [&bodies[0], &bodies[2], &bodies[3], &shared, &fresh];
    for (meta, want) in listed.iter().zip(want) {
        let got = store.read_message(alice, meta.message).await?;
        assert!(got == *want, "UID {} differs after GC", meta.uid.0);
    }

    // And once more from a cold start: the version stays, nothing is migrated twice.
    drop(store);
    let store = SqliteStore::open(dir.path()).await?;
    let inbox = store.mailbox(alice, "INBOX").await?.ok_or("no INBOX")?;
    assert_eq!(store.messages(alice, inbox.id).await?.len(), 5);
    Ok(())
}
