//! ACME state rows: the account per directory and the per-certificate state survive a reopen.

use std::sync::Arc;

use store::{AcmeCertificate, SqliteStore, Store};

#[tokio::test]
async fn acme_state_is_saved_replaced_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store: Arc<dyn Store> = SqliteStore::open(dir.path()).await.expect("open store");
        assert_eq!(
            store
                .acme_account("https://ca.test/dir")
                .await
                .expect("get"),
            None
        );
        store
            .save_acme_account("https://ca.test/dir", "{\"id\":1}")
            .await
            .expect("save");
        store
            .save_acme_account("https://ca.test/dir", "{\"id\":2}")
            .await
            .expect("replace");
        let mut cert = AcmeCertificate {
            id: "example.org".into(),
            names: vec!["example.org".into(), "mta-sts.example.org".into()],
            chain_pem: Some("CHAIN".into()),
            key_pem: Some("KEY".into()),
            not_after: Some(1_900_000_000),
            last_result: Some("failed".into()),
            last_error: Some("CA down\nsecond line".into()),
            skipped: vec![("smtp.example.org".into(), "no A/AAAA record".into())],
            failures: 2,
            next_attempt: Some(1_800_000_000),
            ..AcmeCertificate::default()
        };
        store.save_acme_certificate(&cert).await.expect("save cert");
        cert.failures = 3;
        store
            .save_acme_certificate(&cert)
            .await
            .expect("update cert");
        let bad = AcmeCertificate {
            id: "two words".into(),
            ..AcmeCertificate::default()
        };
        assert!(store.save_acme_certificate(&bad).await.is_err());
    }
    let store: Arc<dyn Store> = SqliteStore::open(dir.path()).await.expect("reopen");
    assert_eq!(
        store
            .acme_account("https://ca.test/dir")
            .await
            .expect("get"),
        Some("{\"id\":2}".into())
    );
    let certs = store.acme_certificates().await.expect("list");
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].names, ["example.org", "mta-sts.example.org"]);
    assert_eq!(certs[0].failures, 3);
    assert_eq!(
        certs[0].skipped,
        [(
            "smtp.example.org".to_string(),
            "no A/AAAA record".to_string()
        )]
    );
    assert_eq!(certs[0].last_error.as_deref(), Some("CA down\nsecond line"));
}
