//! The store suite on a real SQLite file in a temporary directory.
//!
//! Written against `Arc<dyn Store>` so the PostgreSQL backend can run the same tests.

use std::sync::Arc;
use std::time::Duration;

use store::{
    Address, AliasSource, Change, Domain, FlagOp, Flags, ModSeq, NewAccount, NewMessage,
    SpecialUse, SqliteStore, Store, StoreError, SystemFlags, Uid, password,
};

fn addr(s: &str) -> Address {
    Address::parse(s).expect("valid address")
}

fn dom(s: &str) -> Domain {
    Domain::parse(s).expect("valid domain")
}

fn msg(text: &str) -> NewMessage {
    NewMessage::now(format!("Subject: {text}\r\n\r\n{text}\r\n").into_bytes())
}

/// A fixed cheap-to-verify password hash for tests that do not log in.
fn hash() -> String {
    password::hash_password("correct horse battery").expect("hash")
}

async fn open() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open store");
    (dir, store)
}

/// Takes the database's write lock from a connection of its own (as the CLI in another
/// process would), holds it for `held`, then lets it go; returns once the lock is taken.
fn hold_write_lock(dir: &std::path::Path, held: Duration) -> std::thread::JoinHandle<()> {
    let db = dir.join("tessera.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).expect("open");
        c.execute_batch("BEGIN IMMEDIATE").expect("lock");
        locked_tx.send(()).expect("send");
        std::thread::sleep(held);
        c.execute_batch("ROLLBACK").expect("unlock");
    });
    locked_rx.recv().expect("locked");
    holder
}

async fn with_user(store: &dyn Store, address: &str, password_hash: &str) -> store::AccountId {
    let a = addr(address);
    if !store.is_hosted_domain(a.domain()).await.expect("query") {
        store.add_domain(a.domain()).await.expect("add domain");
    }
    store
        .add_account(NewAccount {
            address: a,
            password_hash: password_hash.to_string(),
            display_name: String::new(),
            quota_bytes: 0,
        })
        .await
        .expect("add account")
}

#[tokio::test]
async fn domains_and_accounts() {
    let (_dir, store) = open().await;
    store.add_domain(&dom("Example.org")).await.expect("add");
    assert!(matches!(
        store.add_domain(&dom("example.ORG")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let id = with_user(&*store, "Alice@Example.org", &hash()).await;
    let dup = store
        .add_account(NewAccount {
            address: addr("alice@EXAMPLE.org"),
            password_hash: hash(),
            display_name: String::new(),
            quota_bytes: 0,
        })
        .await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))), "{dup:?}");
    let unknown = store
        .add_account(NewAccount {
            address: addr("bob@elsewhere.org"),
            password_hash: hash(),
            display_name: String::new(),
            quota_bytes: 0,
        })
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );

    let account = store
        .account(&addr("ALICE@example.org"))
        .await
        .expect("query")
        .expect("found");
    assert_eq!(account.id, id);
    assert_eq!(account.address.to_string(), "alice@example.org");

    // Every account gets the RFC 6154 mailboxes.
    let boxes = store.list_mailboxes(id).await.expect("list");
    let names: Vec<(&str, Option<SpecialUse>)> = boxes
        .iter()
        .map(|b| (b.name.as_str(), b.special_use))
        .collect();
    assert_eq!(
        names,
        vec![
            ("Archive", Some(SpecialUse::Archive)),
            ("Drafts", Some(SpecialUse::Drafts)),
            ("INBOX", None),
            ("Junk", Some(SpecialUse::Junk)),
            ("Sent", Some(SpecialUse::Sent)),
            ("Trash", Some(SpecialUse::Trash)),
        ]
    );

    let domains = store.list_domains().await.expect("list");
    assert_eq!(domains.len(), 1);
    assert_eq!(domains[0].accounts, 1);
    assert!(matches!(
        store.remove_domain(&dom("example.org")).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .remove_account(&addr("alice@example.org"))
        .await
        .expect("remove");
    assert!(
        store
            .account(&addr("alice@example.org"))
            .await
            .expect("query")
            .is_none()
    );
    assert!(store.list_mailboxes(id).await.expect("list").is_empty());
    store
        .remove_domain(&dom("example.org"))
        .await
        .expect("remove domain");
    assert!(store.list_domains().await.expect("list").is_empty());
}

#[tokio::test]
async fn authenticate_by_address_or_unique_local_part() {
    let (_dir, store) = open().await;
    let h = hash();
    let alice = with_user(&*store, "alice@example.org", &h).await;
    with_user(&*store, "bob@example.org", &h).await;
    with_user(&*store, "bob@example.net", &h).await;

    let ok = store
        .authenticate("Alice@EXAMPLE.org", "correct horse battery")
        .await
        .expect("auth");
    assert_eq!(ok.map(|a| a.id), Some(alice));
    let local = store
        .authenticate("alice", "correct horse battery")
        .await
        .expect("auth");
    assert_eq!(local.map(|a| a.id), Some(alice));
    // bob exists in two domains: a bare local part is ambiguous.
    assert!(
        store
            .authenticate("bob", "correct horse battery")
            .await
            .expect("auth")
            .is_none()
    );
    assert!(
        store
            .authenticate("bob@example.net", "correct horse battery")
            .await
            .expect("auth")
            .is_some()
    );
    assert!(
        store
            .authenticate("alice@example.org", "wrong")
            .await
            .expect("auth")
            .is_none()
    );
    assert!(
        store
            .authenticate("nobody@example.org", "x")
            .await
            .expect("auth")
            .is_none()
    );
    assert!(
        store
            .authenticate("not an address@", "x")
            .await
            .expect("auth")
            .is_none()
    );

    let new_hash = password::hash_password("another password").expect("hash");
    store
        .set_password_hash(&addr("alice@example.org"), &new_hash)
        .await
        .expect("set");
    assert!(
        store
            .authenticate("alice@example.org", "another password")
            .await
            .expect("auth")
            .is_some()
    );
    assert!(
        store
            .authenticate("alice@example.org", "correct horse battery")
            .await
            .expect("auth")
            .is_none()
    );
}

#[tokio::test]
async fn aliases_and_catch_all_resolve_to_accounts_once() {
    let (_dir, store) = open().await;
    let h = "x";
    let alice = with_user(&*store, "alice@example.org", h).await;
    let bob = with_user(&*store, "bob@example.org", h).await;
    let team = AliasSource::parse("team@example.org").expect("alias");
    store
        .add_alias(&team, &addr("alice@example.org"))
        .await
        .expect("add");
    store
        .add_alias(&team, &addr("bob@example.org"))
        .await
        .expect("add");
    assert!(matches!(
        store.add_alias(&team, &addr("bob@example.org")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .add_alias(
                &AliasSource::parse("alice@example.org").expect("a"),
                &addr("bob@example.org")
            )
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.add_alias(&team, &addr("carol@example.org")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .add_alias(
                &AliasSource::parse("x@other.org").expect("a"),
                &addr("bob@example.org")
            )
            .await,
        Err(StoreError::NotFound(_))
    ));

    assert_eq!(
        store
            .resolve_recipient(&addr("TEAM@example.org"))
            .await
            .expect("r"),
        vec![alice, bob]
    );
    assert_eq!(
        store
            .resolve_recipient(&addr("alice@example.org"))
            .await
            .expect("r"),
        vec![alice]
    );
    assert_eq!(
        store
            .resolve_recipient(&addr("alice+lists@example.org"))
            .await
            .expect("r"),
        vec![alice]
    );
    assert!(
        store
            .resolve_recipient(&addr("nobody@example.org"))
            .await
            .expect("r")
            .is_empty()
    );

    let catch_all = AliasSource::parse("@example.org").expect("catch-all");
    store
        .add_alias(&catch_all, &addr("bob@example.org"))
        .await
        .expect("add");
    assert_eq!(
        store
            .resolve_recipient(&addr("nobody@example.org"))
            .await
            .expect("r"),
        vec![bob]
    );
    // Exact addresses still win over the catch-all.
    assert_eq!(
        store
            .resolve_recipient(&addr("alice@example.org"))
            .await
            .expect("r"),
        vec![alice]
    );

    let listed = store.list_aliases(None).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].source.key(), "@example.org");
    assert_eq!(listed[1].targets.len(), 2);

    let senders = store.sender_addresses(bob).await.expect("senders");
    let keys: Vec<String> = senders.iter().map(AliasSource::key).collect();
    assert_eq!(
        keys,
        vec!["bob@example.org", "@example.org", "team@example.org"]
    );

    store
        .remove_alias(&team, Some(&addr("alice@example.org")))
        .await
        .expect("remove one");
    assert_eq!(
        store
            .resolve_recipient(&addr("team@example.org"))
            .await
            .expect("r"),
        vec![bob]
    );
    store.remove_alias(&team, None).await.expect("remove all");
    assert!(matches!(
        store.remove_alias(&team, None).await,
        Err(StoreError::NotFound(_))
    ));
}

/// RCPT's one-call routing gives what the separate lookups give, for every kind of
/// address: an account's own (one statement in SQLite), with a full quota or not, an alias,
/// a `+tag`, the catch-all, an unknown address in a hosted domain, another domain.
#[tokio::test]
async fn route_recipient_agrees_with_the_separate_lookups() {
    let (_dir, store) = open().await;
    store.add_domain(&dom("example.org")).await.expect("domain");
    let alice = store
        .add_account(NewAccount {
            address: addr("alice@example.org"),
            password_hash: "x".into(),
            display_name: String::new(),
            quota_bytes: 100,
        })
        .await
        .expect("account");
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    store
        .append(alice, inbox.id, NewMessage::now(vec![b'a'; 100]))
        .await
        .expect("fills the quota");
    let bob = with_user(&*store, "bob@example.org", "x").await;
    let team = AliasSource::parse("team@example.org").expect("alias");
    for target in ["alice@example.org", "bob@example.org"] {
        store.add_alias(&team, &addr(target)).await.expect("add");
    }
    let separately = async |address: &str| {
        let address = addr(address);
        if !store.is_hosted_domain(address.domain()).await.expect("q") {
            return None;
        }
        let mut out = Vec::new();
        for id in store.resolve_recipient(&address).await.expect("q") {
            let a = store.account_by_id(id).await.expect("q").expect("account");
            out.push((id, a.quota_bytes > 0 && a.used_bytes >= a.quota_bytes));
        }
        Some(out)
    };
    let routed = async |address: &str| {
        store
            .route_recipient(&addr(address))
            .await
            .expect("route")
            .map(|v| v.iter().map(|r| (r.id, r.full)).collect::<Vec<_>>())
    };
    let expected = [
        ("alice@example.org", Some(vec![(alice, true)])),
        ("Bob@Example.org", Some(vec![(bob, false)])),
        ("bob+tag@example.org", Some(vec![(bob, false)])),
        ("team@example.org", Some(vec![(alice, true), (bob, false)])),
        ("nobody@example.org", Some(vec![])),
        ("bob@other.org", None),
    ];
    for (address, want) in &expected {
        assert_eq!(&routed(address).await, want, "{address}");
        assert_eq!(&separately(address).await, want, "{address}");
    }
    let catch_all = AliasSource::parse("@example.org").expect("catch-all");
    store
        .add_alias(&catch_all, &addr("bob@example.org"))
        .await
        .expect("add");
    assert_eq!(routed("nobody@example.org").await, Some(vec![(bob, false)]));
    assert_eq!(routed("alice@example.org").await, Some(vec![(alice, true)]));
}

#[tokio::test]
async fn append_assigns_ascending_uids_and_is_scoped_to_the_account() {
    let (_dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let mallory = with_user(&*store, "mallory@example.org", "x").await;
    let inbox = store
        .mailbox(alice, "inbox")
        .await
        .expect("q")
        .expect("INBOX");
    let mut uids = Vec::new();
    for i in 0..5 {
        let a = store
            .append(alice, inbox.id, msg(&format!("m{i}")))
            .await
            .expect("append");
        assert_eq!(a.uid_validity, inbox.uid_validity);
        uids.push(a.uid);
    }
    assert_eq!(uids, (1..=5).map(Uid).collect::<Vec<_>>());
    let list = store.messages(alice, inbox.id).await.expect("list");
    assert_eq!(list.len(), 5);
    let body = store
        .read_message(alice, list[2].message)
        .await
        .expect("read");
    assert_eq!(body, b"Subject: m2\r\n\r\nm2\r\n");
    assert_eq!(list[2].size, body.len() as u64);

    // Another account sees nothing of it.
    assert!(
        store
            .messages(mallory, inbox.id)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(matches!(
        store.read_message(mallory, list[2].message).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .append(mallory, inbox.id, msg("intrusion"))
            .await
            .is_err()
    );
    assert!(
        store
            .store_flags(mallory, inbox.id, &[Uid(1)], FlagOp::Add, &Flags::default())
            .await
            .is_err()
    );

    let status = store.mailbox_status(alice, inbox.id).await.expect("status");
    assert_eq!(status.messages, 5);
    assert_eq!(status.unseen, 5);
    assert_eq!(status.uid_next, Uid(6));
    assert_eq!(
        store
            .account_by_id(alice)
            .await
            .expect("q")
            .expect("a")
            .used_bytes,
        status.size
    );
}

#[tokio::test]
async fn flags_raise_modseq_and_feed_sessions() {
    let (_dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let inbox = store
        .mailbox(alice, "INBOX")
        .await
        .expect("q")
        .expect("INBOX");
    let mut feed = store.subscribe(alice);
    let a = store
        .append(alice, inbox.id, msg("one"))
        .await
        .expect("append");
    assert!(matches!(feed.recv().await, Ok(Change::Appended { uid, .. }) if uid == a.uid));

    let before = store
        .mailbox(alice, "INBOX")
        .await
        .expect("q")
        .expect("m")
        .highest_modseq;
    let seen = Flags::from_names(["\\Seen", "$Label1"]).expect("flags");
    let updates = store
        .store_flags(alice, inbox.id, &[a.uid, Uid(99)], FlagOp::Add, &seen)
        .await
        .expect("store");
    assert_eq!(updates.len(), 1, "missing UIDs are skipped");
    assert!(updates[0].flags.system.contains(SystemFlags::SEEN));
    assert!(updates[0].modseq > before);
    assert!(matches!(feed.recv().await, Ok(Change::FlagsChanged { uid, .. }) if uid == a.uid));

    // Setting flags already set changes nothing and raises no MODSEQ.
    assert!(
        store
            .store_flags(alice, inbox.id, &[a.uid], FlagOp::Add, &seen)
            .await
            .expect("store")
            .is_empty()
    );

    let label = Flags::from_names(["$Label1"]).expect("flags");
    let removed = store
        .store_flags(alice, inbox.id, &[a.uid], FlagOp::Remove, &label)
        .await
        .expect("store");
    assert_eq!(removed[0].flags.names(), vec!["\\Seen"]);
    let replaced = store
        .store_flags(
            alice,
            inbox.id,
            &[a.uid],
            FlagOp::Replace,
            &Flags::from_names(["\\Flagged"]).expect("f"),
        )
        .await
        .expect("store");
    assert_eq!(replaced[0].flags.names(), vec!["\\Flagged"]);
    assert!(replaced[0].modseq > removed[0].modseq);
    let after = store
        .mailbox(alice, "INBOX")
        .await
        .expect("q")
        .expect("m")
        .highest_modseq;
    assert_eq!(after, replaced[0].modseq);
}

#[tokio::test]
async fn copy_move_and_expunge() {
    let (_dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let inbox = store
        .mailbox(alice, "INBOX")
        .await
        .expect("q")
        .expect("INBOX");
    let archive = store
        .mailbox(alice, "Archive")
        .await
        .expect("q")
        .expect("Archive");
    for i in 0..4 {
        store
            .append(alice, inbox.id, msg(&format!("m{i}")))
            .await
            .expect("append");
    }
    let copied = store
        .copy(alice, inbox.id, &[Uid(2), Uid(1), Uid(42)], archive.id)
        .await
        .expect("copy");
    assert_eq!(copied.uid_validity, archive.uid_validity);
    assert_eq!(copied.uids, vec![(Uid(1), Uid(1)), (Uid(2), Uid(2))]);
    assert_eq!(store.messages(alice, inbox.id).await.expect("l").len(), 4);

    let mut feed = store.subscribe(alice);
    let moved = store
        .move_messages(alice, inbox.id, &[Uid(3)], archive.id)
        .await
        .expect("move");
    assert_eq!(moved.uids, vec![(Uid(3), Uid(3))]);
    let inbox_uids: Vec<Uid> = store
        .messages(alice, inbox.id)
        .await
        .expect("l")
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(inbox_uids, vec![Uid(1), Uid(2), Uid(4)]);
    assert!(
        matches!(feed.recv().await, Ok(Change::Appended { mailbox, .. }) if mailbox == archive.id)
    );
    assert!(
        matches!(feed.recv().await, Ok(Change::Expunged { mailbox, uid: Uid(3), .. }) if mailbox == inbox.id)
    );

    // EXPUNGE removes only \Deleted messages (and only the given UIDs for UID EXPUNGE).
    let deleted = Flags::from_names(["\\Deleted"]).expect("f");
    store
        .store_flags(alice, inbox.id, &[Uid(1), Uid(4)], FlagOp::Add, &deleted)
        .await
        .expect("store");
    assert_eq!(
        store
            .expunge(alice, inbox.id, Some(&[Uid(4), Uid(2)]), false)
            .await
            .expect("x"),
        vec![Uid(4)]
    );
    assert_eq!(
        store
            .expunge(alice, inbox.id, None, false)
            .await
            .expect("x"),
        vec![Uid(1)]
    );
    assert_eq!(
        store
            .expunge(alice, inbox.id, Some(&[Uid(2)]), true)
            .await
            .expect("x"),
        vec![Uid(2)]
    );
    assert!(store.messages(alice, inbox.id).await.expect("l").is_empty());
    // New UIDs never reuse old ones.
    assert_eq!(
        store
            .append(alice, inbox.id, msg("again"))
            .await
            .expect("a")
            .uid,
        Uid(5)
    );

    // The copies in Archive still read.
    let archived = store.messages(alice, archive.id).await.expect("l");
    assert_eq!(archived.len(), 3);
    assert!(store.read_message(alice, archived[0].message).await.is_ok());
}

#[tokio::test]
async fn mailboxes_create_rename_delete() {
    let (_dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    store
        .create_mailbox(alice, "Projects", None)
        .await
        .expect("create");
    store
        .create_mailbox(alice, "Projects/Tessera", None)
        .await
        .expect("create");
    assert!(matches!(
        store.create_mailbox(alice, "Projects", None).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.create_mailbox(alice, "inbox", None).await,
        Err(StoreError::AlreadyExists(_))
    ));
    for bad in ["", "/abs", "a//b", "a/../b", "..", "trail/", "ctl\u{7}"] {
        assert!(
            matches!(
                store.create_mailbox(alice, bad, None).await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let old = store
        .mailbox(alice, "Projects/Tessera")
        .await
        .expect("q")
        .expect("m");
    store
        .rename_mailbox(alice, "Projects", "Work")
        .await
        .expect("rename");
    assert!(store.mailbox(alice, "Projects").await.expect("q").is_none());
    let moved = store
        .mailbox(alice, "Work/Tessera")
        .await
        .expect("q")
        .expect("child renamed");
    assert_eq!(moved.id, old.id);
    assert!(store.rename_mailbox(alice, "INBOX", "Old").await.is_err());
    assert!(matches!(
        store.rename_mailbox(alice, "Work", "Sent").await,
        Err(StoreError::AlreadyExists(_))
    ));

    store
        .set_subscribed(alice, "Work", false)
        .await
        .expect("unsubscribe");
    assert!(
        !store
            .mailbox(alice, "Work")
            .await
            .expect("q")
            .expect("m")
            .subscribed
    );

    assert!(store.delete_mailbox(alice, "INBOX").await.is_err());
    let work = store.mailbox(alice, "Work").await.expect("q").expect("m");
    store.delete_mailbox(alice, "Work").await.expect("delete");
    store
        .create_mailbox(alice, "Work", None)
        .await
        .expect("recreate");
    let again = store.mailbox(alice, "Work").await.expect("q").expect("m");
    assert_ne!(
        again.uid_validity, work.uid_validity,
        "a recreated mailbox gets a new UIDVALIDITY"
    );
}

#[tokio::test]
async fn quota_refuses_messages_that_do_not_fit() {
    let (_dir, store) = open().await;
    store.add_domain(&dom("example.org")).await.expect("domain");
    let id = store
        .add_account(NewAccount {
            address: addr("small@example.org"),
            password_hash: "x".into(),
            display_name: "Small".into(),
            quota_bytes: 100,
        })
        .await
        .expect("account");
    let inbox = store.mailbox(id, "INBOX").await.expect("q").expect("m");
    store
        .append(id, inbox.id, NewMessage::now(vec![b'a'; 60]))
        .await
        .expect("fits");
    let refused = store
        .append(id, inbox.id, NewMessage::now(vec![b'b'; 60]))
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::QuotaExceeded {
                used: 60,
                quota: 100,
                size: 60
            })
        ),
        "{refused:?}"
    );
    store
        .expunge(id, inbox.id, Some(&[Uid(1)]), true)
        .await
        .expect("expunge");
    store
        .append(id, inbox.id, NewMessage::now(vec![b'b'; 60]))
        .await
        .expect("fits after expunge");
}

#[tokio::test]
async fn deliver_to_several_accounts_stores_one_blob() {
    let (dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let bob = with_user(&*store, "bob@example.org", "x").await;
    // Over the inline limit, so the body is a file.
    let big =
        NewMessage::now(format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(100_000)).into_bytes());
    let results = store.deliver(&[alice, bob], big).await.expect("deliver");
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(Result::is_ok));
    let blobs = std::fs::read_dir(dir.path().join("blobs"))
        .expect("blobs dir")
        .flatten()
        .filter(|e| e.file_name() != "tmp")
        .flat_map(|d| std::fs::read_dir(d.path()).expect("dir").flatten())
        .count();
    assert_eq!(blobs, 1);
    for account in [alice, bob] {
        let inbox = store
            .mailbox(account, "INBOX")
            .await
            .expect("q")
            .expect("m");
        assert_eq!(store.messages(account, inbox.id).await.expect("l").len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_share_commits() {
    let (_dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    let n = 400;
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(alice, inbox.id, msg(&format!("concurrent {i}")))
                .await
        }));
    }
    let mut uids = Vec::new();
    for t in tasks {
        uids.push(t.await.expect("join").expect("append").uid.0);
    }
    uids.sort_unstable();
    assert_eq!(
        uids,
        (1..=n).collect::<Vec<u32>>(),
        "every delivery got its own UID"
    );
    let (commits, jobs) = store.writer_stats();
    assert!(jobs >= u64::from(n));
    assert!(
        commits < jobs,
        "group commit: {commits} commits for {jobs} jobs"
    );
    assert!(store.missing_blobs().await.expect("check").is_empty());
}

#[tokio::test]
async fn garbage_collection_removes_only_unreferenced_blobs() {
    let (dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    let big = |tag: &str| {
        NewMessage::now(format!("Subject: {tag}\r\n\r\n{}\r\n", "y".repeat(80_000)).into_bytes())
    };
    store.append(alice, inbox.id, msg("keep")).await.expect("a"); // inline
    store.append(alice, inbox.id, msg("drop")).await.expect("a"); // inline
    store
        .append(alice, inbox.id, big("drop big"))
        .await
        .expect("a"); // file
    store
        .expunge(alice, inbox.id, Some(&[Uid(2), Uid(3)]), true)
        .await
        .expect("x");
    // Unreferenced inline bodies go at once (they commit with their rows); young files are
    // kept: a delivery may be about to commit a row for them.
    let young = store
        .collect_garbage(Duration::from_secs(3600))
        .await
        .expect("gc");
    assert_eq!((young.messages, young.blobs), (2, 1));
    let file_count = || {
        std::fs::read_dir(dir.path().join("blobs"))
            .expect("blobs dir")
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).expect("dir").flatten())
            .count()
    };
    assert_eq!(file_count(), 1);
    let report = store.collect_garbage(Duration::ZERO).await.expect("gc");
    assert_eq!(report.blobs, 1);
    assert_eq!(file_count(), 0);
    assert!(store.missing_blobs().await.expect("check").is_empty());
    let left = store.messages(alice, inbox.id).await.expect("l");
    assert_eq!(
        store
            .read_message(alice, left[0].message)
            .await
            .expect("read"),
        b"Subject: keep\r\n\r\nkeep\r\n"
    );
}

#[tokio::test]
async fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice;
    {
        let store = SqliteStore::open(dir.path()).await.expect("open");
        alice = with_user(&*store, "alice@example.org", "x").await;
        let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
        store
            .append(alice, inbox.id, msg("durable"))
            .await
            .expect("a");
    }
    let store = SqliteStore::open(dir.path()).await.expect("reopen");
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    assert_eq!(inbox.uid_next, Uid(2));
    assert_eq!(store.messages(alice, inbox.id).await.expect("l").len(), 1);
}

#[tokio::test]
async fn header_reads_and_lean_listing_match_the_full_reads() {
    let (_dir, store) = open().await;
    let account = with_user(&*store, "hdr@example.org", &hash()).await;
    let inbox = store
        .mailbox(account, "INBOX")
        .await
        .expect("query")
        .expect("inbox")
        .id;
    let big_body = "x".repeat(store::INLINE_BODY_MAX + 10);
    let bodies = [
        "Subject: small\r\nFrom: a@b\r\n\r\nbody\r\n\r\nmore\r\n".to_string(),
        format!("Subject: large\r\n\r\n{big_body}\r\n"),
        "Subject: no body at all\r\n".to_string(),
        format!("Subject: {}\r\n\r\nx\r\n", "long ".repeat(100)),
    ];
    for b in &bodies {
        store
            .append(account, inbox, NewMessage::now(b.clone().into_bytes()))
            .await
            .expect("append");
    }
    let metas = store.messages(account, inbox).await.expect("messages");
    let lean = store.message_flags(account, inbox).await.expect("lean");
    assert_eq!(lean.len(), metas.len());
    for (l, m) in lean.iter().zip(&metas) {
        assert_eq!(
            (l.uid, l.message, &l.flags, l.modseq),
            (m.uid, m.message, &m.flags, m.modseq)
        );
    }
    let max = 64;
    let expected: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| {
            let b = b.as_bytes();
            b[..store::header_prefix_len(b, max)].to_vec()
        })
        .collect();
    assert_eq!(expected[0], b"Subject: small\r\nFrom: a@b\r\n\r\n");
    assert_eq!(expected[2], b"Subject: no body at all\r\n");
    assert_eq!(expected[3].len(), max);
    for (m, want) in metas.iter().zip(&expected) {
        let got = store
            .read_message_header(account, m.message, max)
            .await
            .expect("header");
        assert_eq!(&got, want);
    }
    let all = store
        .message_headers(account, inbox, Uid(1), Uid(u32::MAX), max)
        .await
        .expect("headers");
    let got: Vec<Vec<u8>> = all.iter().map(|(_, h)| h.clone()).collect();
    assert_eq!(got, expected);
    let some = store
        .message_headers(account, inbox, metas[1].uid, metas[2].uid, max)
        .await
        .expect("headers");
    assert_eq!(some.len(), 2);
    assert_eq!(some[0].0, metas[1].uid);
    // Another account sees nothing.
    let other = with_user(&*store, "other@example.org", &hash()).await;
    assert!(
        store
            .read_message_header(other, metas[0].message, max)
            .await
            .is_err()
    );
    assert!(
        store
            .message_headers(other, inbox, Uid(1), Uid(u32::MAX), max)
            .await
            .expect("query")
            .is_empty()
    );
}

#[tokio::test]
async fn message_bodies_read_a_range_inline_and_from_files_within_a_byte_budget() {
    let (_dir, store) = open().await;
    let account = with_user(&*store, "bodies@example.org", &hash()).await;
    let inbox = store
        .mailbox(account, "INBOX")
        .await
        .expect("query")
        .expect("inbox")
        .id;
    let big_body = "y".repeat(store::INLINE_BODY_MAX + 10);
    let bodies = [
        "Subject: one\r\n\r\nfirst\r\n".to_string(),
        format!("Subject: file\r\n\r\n{big_body}\r\n"),
        "Subject: three\r\n\r\nthird\r\n".to_string(),
        "Subject: four\r\n\r\nfourth\r\n".to_string(),
    ];
    for b in &bodies {
        store
            .append(account, inbox, NewMessage::now(b.clone().into_bytes()))
            .await
            .expect("append");
    }
    let metas = store.messages(account, inbox).await.expect("messages");
    // Expunge the third message: a gap in the range.
    store
        .store_flags(
            account,
            inbox,
            &[metas[2].uid],
            store::FlagOp::Add,
            &store::Flags::from_names(["\\Deleted"]).expect("flags"),
        )
        .await
        .expect("flag");
    store
        .expunge(account, inbox, None, false)
        .await
        .expect("expunge");
    let all = store
        .message_bodies(account, inbox, Uid(1), Uid(u32::MAX), u64::MAX)
        .await
        .expect("bodies");
    let got: Vec<(Uid, Vec<u8>)> = all;
    let want: Vec<(Uid, Vec<u8>)> = [0, 1, 3]
        .iter()
        .map(|&i| (metas[i].uid, bodies[i].clone().into_bytes()))
        .collect();
    assert_eq!(got, want);
    // A budget smaller than the first message still returns it; then stops before the file.
    let first = store
        .message_bodies(account, inbox, Uid(1), Uid(u32::MAX), 1)
        .await
        .expect("bodies");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, metas[0].uid);
    // Another account sees nothing.
    let other = with_user(&*store, "other2@example.org", &hash()).await;
    assert!(
        store
            .message_bodies(other, inbox, Uid(1), Uid(u32::MAX), u64::MAX)
            .await
            .expect("query")
            .is_empty()
    );
}

/// RFC 3501 §2.3.1.1: a mailbox deleted and created again gets a UIDVALIDITY never given
/// before, even when it held the highest one and it all happens within one second.
#[tokio::test]
async fn recreated_mailbox_never_reuses_a_uidvalidity() {
    let (_dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", &hash()).await;
    let mut seen = std::collections::BTreeSet::new();
    for m in store.list_mailboxes(alice).await.expect("list") {
        seen.insert(m.uid_validity);
    }
    for round in 0..5 {
        store
            .create_mailbox(alice, "Scratch", None)
            .await
            .expect("create");
        let m = store
            .mailbox(alice, "Scratch")
            .await
            .expect("q")
            .expect("m");
        assert!(
            seen.insert(m.uid_validity),
            "round {round}: UIDVALIDITY {:?} given twice",
            m.uid_validity
        );
        store
            .delete_mailbox(alice, "Scratch")
            .await
            .expect("delete");
    }
    // The same holds across a restart of the store.
    drop(store);
    let store = SqliteStore::open(_dir.path()).await.expect("reopen");
    store
        .create_mailbox(alice, "Scratch", None)
        .await
        .expect("create");
    let m = store
        .mailbox(alice, "Scratch")
        .await
        .expect("q")
        .expect("m");
    assert!(
        seen.insert(m.uid_validity),
        "after a restart: {:?}",
        m.uid_validity
    );
}

/// A database made by the previous schema (version 6) migrates: the UIDVALIDITY counter
/// starts above every existing mailbox's, so a mailbox deleted after the upgrade and created
/// again does not get the value it had.
#[tokio::test]
async fn schema_6_database_migrates_and_keeps_uidvalidity_unique() {
    let dir = tempfile::tempdir().expect("tempdir");
    let future = store::unix_now() + 100_000;
    {
        let conn = rusqlite::Connection::open(dir.path().join("tessera.db")).expect("open");
        for sql in [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_queue.sql"),
            include_str!("../migrations/sqlite/0003_inline_bodies.sql"),
            include_str!("../migrations/sqlite/0004_outbound.sql"),
            include_str!("../migrations/sqlite/0005_dkim.sql"),
            include_str!("../migrations/sqlite/0006_acme.sql"),
        ] {
            conn.execute_batch(sql).expect("old schema");
        }
        conn.execute_batch(&format!(
            "PRAGMA user_version = 6;
             INSERT INTO domains (id, name, created_at) VALUES (1, 'example.org', 0);
             INSERT INTO accounts (id, domain_id, local_part, address, password_hash, created_at)
                 VALUES (1, 1, 'alice', 'alice@example.org', 'x', 0);
             INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, highestmodseq, subscribed)
                 VALUES (1, 'INBOX', 7, 1, 1, 1), (1, 'Old', {future}, 1, 1, 1),
                        (1, 'Full', 8, 5, 1, 1);"
        ))
        .expect("old data");
    }
    let store = SqliteStore::open(dir.path()).await.expect("migrate");
    let alice = store::AccountId(1);
    store.delete_mailbox(alice, "Old").await.expect("delete");
    store
        .create_mailbox(alice, "Old", None)
        .await
        .expect("create");
    let m = store.mailbox(alice, "Old").await.expect("q").expect("m");
    assert!(
        i64::from(m.uid_validity.0) > future,
        "{:?} not above {future}",
        m.uid_validity
    );
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    assert_eq!(inbox.uid_validity.0, 7, "existing mailboxes keep theirs");
    // Schema 10: the messages a mailbox held before the upgrade are not \Recent again.
    let full = store.mailbox(alice, "Full").await.expect("q").expect("m");
    assert_eq!(full.recent_uid, store::Uid(4));
    assert_eq!(inbox.recent_uid, store::Uid(0));
}

/// The stored \Recent claim only grows, only for the owner's mailbox, and survives a reopen.
#[tokio::test]
async fn recent_uid_only_grows_and_is_scoped_to_the_account() {
    let (dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", &hash()).await;
    let bob = with_user(&*store, "bob@example.org", &hash()).await;
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    assert_eq!(inbox.recent_uid, store::Uid(0));
    store
        .set_recent_uid(alice, inbox.id, store::Uid(7))
        .await
        .expect("set");
    store
        .set_recent_uid(alice, inbox.id, store::Uid(3))
        .await
        .expect("lower");
    // Bob cannot touch Alice's mailbox (no error: as if it were gone).
    store
        .set_recent_uid(bob, inbox.id, store::Uid(50))
        .await
        .expect("other account");
    drop(store);
    let store = SqliteStore::open(dir.path()).await.expect("reopen");
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    assert_eq!(inbox.recent_uid, store::Uid(7));
    let status = store.mailbox_status(alice, inbox.id).await.expect("status");
    assert_eq!(status.recent_uid, store::Uid(7));
}

/// A write that finds the writer idle commits on the caller's thread, but never waits there
/// for a write lock another connection holds (the CLI, the garbage collector): it goes to the
/// writer thread instead, and the caller's runtime thread stays free meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_write_never_waits_for_another_connections_lock_on_the_callers_thread() {
    let (dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    let a = store
        .append(alice, inbox.id, msg("locked"))
        .await
        .expect("append");
    let holder = hold_write_lock(dir.path(), Duration::from_millis(400));
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let seen = Flags::from_names(["\\Seen"]).expect("flags");
    let started = std::time::Instant::now();
    let updates = store
        .store_flags(alice, inbox.id, &[a.uid], FlagOp::Add, &seen)
        .await
        .expect("the write waits for the lock, then commits");
    let waited = started.elapsed();
    ticker.abort();
    holder.join().expect("holder");
    assert_eq!(updates.len(), 1);
    assert!(
        waited >= Duration::from_millis(300),
        "it waited: {waited:?}"
    );
    let ticks = ticks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ticks >= 10,
        "the runtime thread stayed free: {ticks} ticks in {waited:?}"
    );
}

/// Garbage collection bounds the expunge log: the newest entries stay, and asking for what
/// vanished since a MODSEQ below what is left answers `None` (unknown), never a short list.
#[tokio::test]
async fn pruned_expunge_log_answers_unknown_below_its_floor() {
    let (_dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    let mut uids = Vec::new();
    for i in 0..6 {
        uids.push(
            store
                .append(alice, inbox.id, msg(&format!("m{i}")))
                .await
                .expect("append")
                .uid,
        );
    }
    let mut after = Vec::new();
    for &uid in &uids {
        store
            .expunge(alice, inbox.id, Some(&[uid]), true)
            .await
            .expect("expunge");
        let info = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
        after.push(info.highest_modseq);
    }
    assert_eq!(
        store
            .expunged_since(alice, inbox.id, ModSeq(0))
            .await
            .expect("q"),
        Some(uids.clone())
    );
    assert_eq!(store.prune_expunge_log(2).await.expect("prune"), 4);
    assert_eq!(
        store
            .expunged_since(alice, inbox.id, ModSeq(0))
            .await
            .expect("q"),
        None
    );
    // From the MODSEQ after the fourth expunge on, the log is whole.
    assert_eq!(
        store
            .expunged_since(alice, inbox.id, after[3])
            .await
            .expect("q"),
        Some(uids[4..].to_vec())
    );
    assert_eq!(
        store
            .expunged_since(alice, inbox.id, after[2])
            .await
            .expect("q"),
        None
    );
    assert_eq!(store.prune_expunge_log(2).await.expect("again"), 0);
    let report = store
        .collect_garbage(Duration::from_secs(3600))
        .await
        .expect("gc");
    assert_eq!(report.expunge_log, 0);
    assert_eq!(report.messages, 6);
}

/// A database created by the store has 8 KiB pages and stays consistent under writes.
#[tokio::test]
async fn a_new_database_has_eight_kib_pages() {
    let (dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    for i in 0..20 {
        store
            .append(alice, inbox.id, msg(&format!("{i} {}", "x".repeat(10_000))))
            .await
            .expect("append");
    }
    let db = rusqlite::Connection::open(dir.path().join("tessera.db")).expect("open");
    let page: u32 = db
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    assert_eq!(page, store::NEW_DATABASE_PAGE_SIZE);
    assert_eq!(page, 8192);
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(check, "ok");
}

/// Jobs committed together run without savepoints; when one of them fails, the batch runs
/// again with each job in its own savepoint: the failing job's error is its answer, and the
/// others are committed whole, once (UIDs follow on, the quota is charged once each).
#[tokio::test]
async fn a_failing_job_in_a_shared_commit_is_undone_alone() {
    let (dir, store) = open().await;
    let alice = with_user(&*store, "alice@example.org", "x").await;
    let small = store
        .add_account(NewAccount {
            address: addr("small@example.org"),
            password_hash: "x".into(),
            display_name: String::new(),
            quota_bytes: 10,
        })
        .await
        .expect("account");
    // Another connection holds the write lock, so the writer thread waits in its first
    // batch while the next jobs queue up behind it and are committed together.
    let holder = hold_write_lock(dir.path(), Duration::from_millis(500));
    let (commits_before, jobs_before) = store.writer_stats();
    let deliver = |account, text: &'static str| {
        let store = store.clone();
        tokio::spawn(async move { store.deliver(&[account], msg(text)).await })
    };
    let first = deliver(alice, "first");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let batch = [
        deliver(alice, "second"),
        deliver(small, "too big for the quota"),
        deliver(alice, "third"),
    ];
    let mut results = vec![first.await.expect("task").expect("deliver")];
    for task in batch {
        results.push(task.await.expect("task").expect("deliver"));
    }
    holder.join().expect("holder");
    let (commits, jobs) = store.writer_stats();
    assert_eq!(jobs - jobs_before, 4);
    assert_eq!(
        commits - commits_before,
        2,
        "the three queued jobs shared a commit"
    );
    let uids: Vec<Option<u32>> = results
        .iter()
        .map(|r| r[0].as_ref().ok().map(|a| a.uid.0))
        .collect();
    assert_eq!(uids, [Some(1), Some(2), None, Some(3)]);
    assert!(
        matches!(
            results[2][0],
            Err(StoreError::QuotaExceeded { used: 0, .. })
        ),
        "{:?}",
        results[2][0]
    );
    let inbox = store.mailbox(alice, "INBOX").await.expect("q").expect("m");
    let status = store.mailbox_status(alice, inbox.id).await.expect("status");
    assert_eq!(status.messages, 3);
    let used = store
        .account_by_id(alice)
        .await
        .expect("q")
        .expect("a")
        .used_bytes;
    let sizes: u64 = ["first", "second", "third"]
        .iter()
        .map(|t| msg(t).bytes.len() as u64)
        .sum();
    assert_eq!(used, sizes, "each delivery charged once");
    assert_eq!(
        store
            .account_by_id(small)
            .await
            .expect("q")
            .expect("a")
            .used_bytes,
        0
    );
    // The failing job had stored its body before the quota refused it: undone too.
    let c = rusqlite::Connection::open(dir.path().join("tessera.db")).expect("open");
    let bodies: i64 = c
        .query_row("SELECT count(*) FROM inline_blobs", [], |r| r.get(0))
        .expect("count");
    assert_eq!(bodies, 3);
}
