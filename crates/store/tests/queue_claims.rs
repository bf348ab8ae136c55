//! The outbound worker's queue operations: claims with a lease, per-recipient results with
//! back-off, DSN bookkeeping, release, retry-now and removal.

use std::sync::Arc;

use store::{
    Address, QueuedMessage, QueuedRecipient, RecipientOutcome, RecipientResult, RecipientState,
    SqliteStore, Store, unix_now,
};

fn addr(s: &str) -> Address {
    Address::parse(s).expect("valid address")
}

fn queued(rcpts: &[&str]) -> QueuedMessage {
    QueuedMessage {
        sender: Some(addr("alice@example.org")),
        recipients: rcpts
            .iter()
            .map(|r| QueuedRecipient::new(addr(r)))
            .collect(),
        bytes: Arc::new(b"Subject: q\r\n\r\nbody\r\n".to_vec()),
        account: None,
        dsn_envid: None,
        dsn_ret: None,
        expires_at: unix_now() + 3600,
    }
}

#[tokio::test]
async fn a_claimed_message_is_not_claimed_again_until_released_or_lapsed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let id = store
        .enqueue(queued(&["bob@remote.test"]))
        .await
        .expect("enqueue");
    let a = store.claim_queue("node-a", 60, 10).await.expect("claim");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].id, id);
    assert_eq!(a[0].claimed_by.as_deref(), Some("node-a"));
    assert!(
        store
            .claim_queue("node-b", 60, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    // Only the holder releases.
    store.release_claim(id, "node-b").await.expect("release");
    assert!(
        store
            .claim_queue("node-b", 60, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    store.release_claim(id, "node-a").await.expect("release");
    let b = store.claim_queue("node-b", 0, 10).await.expect("claim");
    assert_eq!(b.len(), 1);
    // A lease of 0 s lapses after the current second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        store
            .claim_queue("node-c", 60, 10)
            .await
            .expect("claim")
            .len(),
        1
    );
}

#[tokio::test]
async fn results_are_recorded_per_recipient_and_the_message_follows_the_earliest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open");
    let id = store
        .enqueue(queued(&["ok@r.test", "later@r.test", "never@r.test"]))
        .await
        .expect("enqueue");
    store.claim_queue("n", 60, 10).await.expect("claim");
    let later = unix_now() + 300;
    store
        .record_attempt(
            id,
            &[
                RecipientResult {
                    address: addr("ok@r.test"),
                    outcome: RecipientOutcome::Delivered,
                },
                RecipientResult {
                    address: addr("later@r.test"),
                    outcome: RecipientOutcome::Deferred {
                        error: "451 4.3.0 try later".into(),
                        next_attempt: later,
                    },
                },
                RecipientResult {
                    address: addr("never@r.test"),
                    outcome: RecipientOutcome::Failed {
                        error: "550 5.1.1 no such user".into(),
                    },
                },
            ],
        )
        .await
        .expect("record");
    store.release_claim(id, "n").await.expect("release");
    let e = store.queue_entry(id).await.expect("read").expect("queued");
    assert_eq!(e.attempts, 1);
    assert_eq!(e.next_attempt, later);
    assert!(e.claimed_by.is_none());
    let states: Vec<_> = e.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RecipientState::Delivered,
            RecipientState::Pending,
            RecipientState::Failed
        ]
    );
    assert_eq!(
        e.recipients[1].last_error.as_deref(),
        Some("451 4.3.0 try later")
    );
    assert!(!e.recipients[2].dsn_sent);
    // Not due yet; retry-now makes it due.
    assert!(
        store
            .claim_queue("n", 60, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(store.retry_queued_now(Some(id)).await.expect("retry"), 1);
    assert_eq!(
        store.claim_queue("n", 60, 10).await.expect("claim").len(),
        1
    );

    store
        .mark_dsn_sent(id, &[addr("never@r.test")])
        .await
        .expect("dsn");
    store.mark_delay_notified(id).await.expect("delay");
    let e = store.queue_entry(id).await.expect("read").expect("queued");
    assert!(e.recipients[2].dsn_sent && e.delay_notified);
    assert_eq!(store.list_queue().await.expect("list")[0], e);

    assert!(store.remove_queued(id).await.expect("remove"));
    assert!(!store.remove_queued(id).await.expect("remove again"));
    assert!(store.queue_entry(id).await.expect("read").is_none());
}
