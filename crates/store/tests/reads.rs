//! The mailbox reads IMAP and POP3 make on every command, on a real SQLite file: each sees
//! the commit made just before it (also one made through another connection), and each is
//! scoped to the account that asks.

use std::sync::Arc;

use store::{
    AccountId, Address, FlagOp, Flags, MailboxId, ModSeq, NewAccount, NewMessage, SqliteStore,
    Store, StoreError, Uid,
};

async fn open(dir: &std::path::Path) -> Arc<dyn Store> {
    SqliteStore::open(dir).await.expect("open store")
}

async fn account(store: &dyn Store, address: &str) -> AccountId {
    let a = Address::parse(address).expect("address");
    if !store.is_hosted_domain(a.domain()).await.expect("query") {
        store.add_domain(a.domain()).await.expect("add domain");
    }
    store
        .add_account(NewAccount {
            address: a,
            password_hash: "not used".into(),
            display_name: String::new(),
            quota_bytes: 0,
        })
        .await
        .expect("add account")
}

async fn inbox(store: &dyn Store, account: AccountId) -> MailboxId {
    store
        .mailbox(account, "INBOX")
        .await
        .expect("query")
        .expect("INBOX")
        .id
}

fn message(i: u32) -> NewMessage {
    NewMessage::now(format!("Subject: m{i}\r\n\r\nbody {i}\r\n").into_bytes())
}

fn seen() -> Flags {
    Flags::from_names(["\\Seen"]).expect("flags")
}

/// Every read right after each kind of commit reflects it: an append, a flag change and an
/// expunge, 30 rounds, so that pooled connections are reused between the commits.
#[tokio::test]
async fn each_read_sees_the_commit_made_just_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let alice = account(&*store, "alice@example.org").await;
    let inbox = inbox(&*store, alice).await;
    for i in 0..30u32 {
        let before = store
            .mailbox(alice, "INBOX")
            .await
            .expect("q")
            .expect("box");
        let a = store
            .append(alice, inbox, message(i))
            .await
            .expect("append");

        let info = store
            .mailbox(alice, "INBOX")
            .await
            .expect("q")
            .expect("box");
        assert_eq!(info.uid_next, Uid(a.uid.0 + 1), "round {i}: UIDNEXT");
        assert!(info.highest_modseq > before.highest_modseq, "round {i}");
        let listed = store.list_mailboxes(alice).await.expect("list");
        let listed = listed.iter().find(|m| m.id == inbox).expect("INBOX listed");
        assert_eq!(listed.uid_next, info.uid_next, "round {i}: LIST");
        let flags = store.message_flags(alice, inbox).await.expect("flags");
        assert_eq!(flags.last().map(|m| m.uid), Some(a.uid), "round {i}");
        let metas = store.messages(alice, inbox).await.expect("messages");
        assert_eq!(metas.last().map(|m| m.uid), Some(a.uid), "round {i}");
        let status = store.mailbox_status(alice, inbox).await.expect("status");
        assert_eq!(status.messages, 1, "round {i}: STATUS");
        assert_eq!(status.uid_next, info.uid_next, "round {i}: STATUS UIDNEXT");
        let body = store.read_message(alice, a.message).await.expect("body");
        assert_eq!(
            body,
            format!("Subject: m{i}\r\n\r\nbody {i}\r\n").into_bytes()
        );
        let head = store
            .read_message_header(alice, a.message, 1024)
            .await
            .expect("header");
        assert_eq!(head, format!("Subject: m{i}\r\n\r\n").into_bytes());
        let heads = store
            .message_headers(alice, inbox, a.uid, a.uid, 1024)
            .await
            .expect("headers");
        assert_eq!(heads.len(), 1, "round {i}: header of the new message");
        let bodies = store
            .message_bodies(alice, inbox, a.uid, a.uid, 1 << 20)
            .await
            .expect("bodies");
        assert_eq!(bodies.len(), 1, "round {i}: body of the new message");
        let changed = store
            .messages_changed_since(alice, inbox, before.highest_modseq)
            .await
            .expect("changed");
        assert_eq!(changed.iter().map(|m| m.uid).collect::<Vec<_>>(), [a.uid]);

        store
            .store_flags(alice, inbox, &[a.uid], FlagOp::Add, &seen())
            .await
            .expect("store");
        let changed = store
            .messages_changed_since(alice, inbox, info.highest_modseq)
            .await
            .expect("changed");
        assert_eq!(changed.len(), 1, "round {i}: the flag change");
        assert!(changed[0].flags.system.contains(store::SystemFlags::SEEN));
        let flags = store.message_flags(alice, inbox).await.expect("flags");
        assert!(flags[0].flags.system.contains(store::SystemFlags::SEEN));
        let status = store.mailbox_status(alice, inbox).await.expect("status");
        assert_eq!(status.unseen, 0, "round {i}: STATUS UNSEEN after \\Seen");

        let after_flags = store
            .mailbox(alice, "INBOX")
            .await
            .expect("q")
            .expect("box");
        let gone = store
            .expunge(alice, inbox, Some(&[a.uid]), true)
            .await
            .expect("expunge");
        assert_eq!(gone, [a.uid]);
        let vanished = store
            .expunged_since(alice, inbox, after_flags.highest_modseq)
            .await
            .expect("vanished");
        assert_eq!(vanished, Some(vec![a.uid]), "round {i}: expunge log");
        assert!(
            store
                .message_flags(alice, inbox)
                .await
                .expect("flags")
                .is_empty()
        );
        assert!(store.messages(alice, inbox).await.expect("m").is_empty());
        assert_eq!(
            store
                .mailbox_status(alice, inbox)
                .await
                .expect("status")
                .messages,
            0
        );
    }
}

/// A commit made through another connection to the same file (here a second store, as the
/// CLI is another process) is seen by the next read, even by connections that read before.
#[tokio::test]
async fn a_commit_through_another_connection_is_seen_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = open(dir.path()).await;
    let alice = account(&*server, "alice@example.org").await;
    let inbox = inbox(&*server, alice).await;
    assert!(
        server
            .message_flags(alice, inbox)
            .await
            .expect("q")
            .is_empty()
    );
    let other = open(dir.path()).await;
    for i in 0..10 {
        let a = other
            .append(alice, inbox, message(i))
            .await
            .expect("append");
        let info = server
            .mailbox(alice, "INBOX")
            .await
            .expect("q")
            .expect("box");
        assert_eq!(info.uid_next, Uid(a.uid.0 + 1), "round {i}");
        let flags = server.message_flags(alice, inbox).await.expect("flags");
        assert_eq!(flags.last().map(|m| m.uid), Some(a.uid), "round {i}");
        assert!(server.read_message(alice, a.message).await.is_ok());
    }
}

/// Another account's mailbox id and message ids read as absent through every read path.
#[tokio::test]
async fn another_accounts_mailbox_and_messages_read_as_absent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let alice = account(&*store, "alice@example.org").await;
    let mallory = account(&*store, "mallory@example.net").await;
    let alice_inbox = inbox(&*store, alice).await;
    let mallory_inbox = inbox(&*store, mallory).await;
    let a = store
        .append(alice, alice_inbox, message(1))
        .await
        .expect("append");
    let b = store
        .append(alice, alice_inbox, message(2))
        .await
        .expect("append");
    store
        .expunge(alice, alice_inbox, Some(&[b.uid]), true)
        .await
        .expect("expunge");
    // Alice sees her own message, so what follows can only fail through scoping.
    assert_eq!(
        store.messages(alice, alice_inbox).await.expect("q").len(),
        1
    );
    assert_eq!(
        store
            .expunged_since(alice, alice_inbox, ModSeq(0))
            .await
            .expect("q"),
        Some(vec![b.uid])
    );

    let (id, all) = (alice_inbox, (Uid(1), Uid(u32::MAX)));
    assert!(store.messages(mallory, id).await.expect("q").is_empty());
    assert!(
        store
            .message_flags(mallory, id)
            .await
            .expect("q")
            .is_empty()
    );
    assert!(
        store
            .messages_changed_since(mallory, id, ModSeq(0))
            .await
            .expect("q")
            .is_empty()
    );
    assert!(
        store
            .expunged_since(mallory, id, ModSeq(0))
            .await
            .expect("q")
            .is_some_and(|u| u.is_empty())
    );
    assert!(
        store
            .message_headers(mallory, id, all.0, all.1, 1024)
            .await
            .expect("q")
            .is_empty()
    );
    assert!(
        store
            .message_bodies(mallory, id, all.0, all.1, 1 << 20)
            .await
            .expect("q")
            .is_empty()
    );
    assert!(matches!(
        store.mailbox_status(mallory, id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.read_message(mallory, a.message).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.read_message_header(mallory, a.message, 1024).await,
        Err(StoreError::NotFound(_))
    ));
    // By name, each account gets its own INBOX; listings hold only its own mailboxes.
    let own = store
        .mailbox(mallory, "INBOX")
        .await
        .expect("q")
        .expect("box");
    assert_eq!(own.id, mallory_inbox);
    let listed = store.list_mailboxes(mallory).await.expect("list");
    assert!(listed.iter().all(|m| m.id != alice_inbox));
    assert!(listed.iter().any(|m| m.id == mallory_inbox));
}
