//! DKIM key rows: add, list (active and retired), retire, remove; scoped to hosted domains.

use std::sync::Arc;

use store::{DkimAlgorithm, Domain, NewDkimKey, SqliteStore, Store, StoreError};

fn dom(s: &str) -> Domain {
    Domain::parse(s).expect("valid domain")
}

fn key(domain: &str, selector: &str, algorithm: DkimAlgorithm) -> NewDkimKey {
    NewDkimKey {
        domain: dom(domain),
        selector: selector.into(),
        algorithm,
        private_key: vec![1, 2, 3],
        public_key: selector.as_bytes().to_vec(),
    }
}

async fn open() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("open store");
    (dir, store)
}

#[tokio::test]
async fn keys_are_added_listed_retired_and_removed() {
    let (_dir, store) = open().await;
    let store: Arc<dyn Store> = store;
    let d = dom("example.org");
    store.add_domain(&d).await.expect("domain");
    store
        .add_dkim_key(key("example.org", "ts2026-11r", DkimAlgorithm::RsaSha256))
        .await
        .expect("rsa");
    store
        .add_dkim_key(key(
            "example.org",
            "ts2026-11e",
            DkimAlgorithm::Ed25519Sha256,
        ))
        .await
        .expect("ed25519");

    let keys = store.dkim_keys(&d).await.expect("list");
    assert_eq!(
        keys.iter()
            .map(|k| (k.selector.as_str(), k.algorithm, k.is_active()))
            .collect::<Vec<_>>(),
        vec![
            ("ts2026-11r", DkimAlgorithm::RsaSha256, true),
            ("ts2026-11e", DkimAlgorithm::Ed25519Sha256, true)
        ]
    );
    assert_eq!(keys[0].private_key, vec![1, 2, 3]);
    assert_eq!(keys[1].public_key, b"ts2026-11e".to_vec());
    assert!(
        !format!("{:?}", keys[0]).contains("[1, 2, 3]"),
        "private key redacted"
    );

    // Retired keys stay listed (still published) but no longer active.
    store
        .retire_dkim_key(&d, "ts2026-11r")
        .await
        .expect("retire");
    store
        .retire_dkim_key(&d, "TS2026-11R")
        .await
        .expect("idempotent");
    let keys = store.dkim_keys(&d).await.expect("list");
    assert!(!keys[0].is_active() && keys[1].is_active());

    store
        .remove_dkim_key(&d, "ts2026-11r")
        .await
        .expect("remove");
    let keys = store.dkim_keys(&d).await.expect("list");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].selector, "ts2026-11e");
}

#[tokio::test]
async fn bad_input_is_refused_with_the_reason() {
    let (_dir, store) = open().await;
    let d = dom("example.org");
    let e = store
        .add_dkim_key(key("example.org", "s1", DkimAlgorithm::RsaSha256))
        .await
        .expect_err("not hosted");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    store.add_domain(&d).await.expect("domain");
    store
        .add_dkim_key(key("example.org", "s1", DkimAlgorithm::RsaSha256))
        .await
        .expect("add");
    let e = store
        .add_dkim_key(key("example.org", "s1", DkimAlgorithm::Ed25519Sha256))
        .await
        .expect_err("duplicate");
    assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}");
    for bad in ["", "a.b", "-x", "x y", &"a".repeat(64)] {
        let e = store
            .add_dkim_key(key("example.org", bad, DkimAlgorithm::RsaSha256))
            .await
            .expect_err("bad selector");
        assert!(matches!(e, StoreError::Invalid(_)), "{bad:?}: {e:?}");
    }
    let e = store
        .retire_dkim_key(&d, "nope")
        .await
        .expect_err("missing");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = store
        .remove_dkim_key(&d, "nope")
        .await
        .expect_err("missing");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
}

#[tokio::test]
async fn keys_go_with_their_domain() {
    let (_dir, store) = open().await;
    let d = dom("example.org");
    store.add_domain(&d).await.expect("domain");
    store
        .add_dkim_key(key("example.org", "s1", DkimAlgorithm::RsaSha256))
        .await
        .expect("add");
    store.remove_domain(&d).await.expect("remove domain");
    store.add_domain(&d).await.expect("domain again");
    assert!(store.dkim_keys(&d).await.expect("list").is_empty());
}
