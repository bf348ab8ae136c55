//! The outbound queue on a real SQLite file: durable enqueue through the group-commit
//! writer, per-recipient state, and garbage collection that keeps queued bodies.

use std::sync::Arc;
use std::time::Duration;

use store::{
    Address, DsnNotify, DsnRet, QueuedMessage, QueuedRecipient, RecipientState, SqliteStore, Store,
    StoreError, unix_now,
};

fn addr(s: &str) -> Address {
    Address::parse(s).expect("valid address")
}

fn queued(body: &str, rcpts: &[&str]) -> QueuedMessage {
    QueuedMessage {
        sender: Some(addr("alice@example.org")),
        recipients: rcpts
            .iter()
            .map(|r| QueuedRecipient::new(addr(r)))
            .collect(),
        bytes: Arc::new(format!("Subject: q\r\n\r\n{body}\r\n").into_bytes()),
        account: None,
        dsn_envid: None,
        dsn_ret: None,
        expires_at: unix_now() + 3600,
    }
}

#[tokio::test]
async fn enqueue_lists_pending_recipients_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let mut message = queued("one", &["bob@remote.test", "carol@other.test"]);
    message.recipients[1].notify = DsnNotify(DsnNotify::FAILURE | DsnNotify::DELAY);
    message.recipients[1].orcpt = Some("rfc822;Carol@other.test".into());
    message.dsn_envid = Some("env-1".into());
    message.dsn_ret = Some(DsnRet::Headers);
    let id = store.enqueue(message).await.expect("enqueue");
    let second = store
        .enqueue(QueuedMessage {
            sender: None,
            ..queued("two", &["dave@remote.test"])
        })
        .await
        .expect("enqueue bounce");
    assert!(second > id);

    let queue = store.list_queue().await.expect("list");
    assert_eq!(queue.len(), 2);
    let first = &queue[0];
    assert_eq!(first.id, id);
    assert_eq!(first.sender, Some(addr("alice@example.org")));
    assert_eq!(first.dsn_envid.as_deref(), Some("env-1"));
    assert_eq!(first.dsn_ret, Some(DsnRet::Headers));
    assert_eq!(first.attempts, 0);
    assert!(first.claimed_by.is_none());
    let rcpts: Vec<String> = first
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(rcpts, ["bob@remote.test", "carol@other.test"]);
    assert!(
        first
            .recipients
            .iter()
            .all(|r| r.state == RecipientState::Pending && r.last_error.is_none())
    );
    assert_eq!(
        first.recipients[1].notify.0,
        DsnNotify::FAILURE | DsnNotify::DELAY
    );
    assert_eq!(queue[1].sender, None);
}

#[tokio::test]
async fn enqueue_refuses_a_message_without_recipients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let err = store.enqueue(queued("x", &[])).await.expect_err("refused");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(store.list_queue().await.expect("list").is_empty());
}

#[tokio::test]
async fn garbage_collection_keeps_queued_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    store
        .enqueue(queued("keep me", &["bob@remote.test"]))
        .await
        .expect("enqueue");
    let report = store.collect_garbage(Duration::ZERO).await.expect("gc");
    assert_eq!(report.blobs, 0, "a queued body is referenced");
    assert!(store.missing_blobs().await.expect("check").is_empty());
    let entry = &store.list_queue().await.expect("list")[0];
    let body = store
        .read_blob(&entry.blob)
        .await
        .expect("queued body readable");
    assert_eq!(body.len() as u64, entry.size);
}

#[tokio::test]
async fn concurrent_enqueues_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enqueue(queued(&format!("m{i}"), &["bob@remote.test"]))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("enqueue");
    }
    assert_eq!(store.list_queue().await.expect("list").len(), 64);
    let (commits, jobs) = store.writer_stats();
    assert_eq!(jobs, 64);
    assert!(commits <= jobs);
}
