//! The ACME renewer against pebble on loopback: issuance with each challenge type, a renewal at
//! two thirds of the lifetime, names that do not resolve here, and the CA going down.
//! Debian package: pebble (with pebble-challtestsrv as the DNS both sides use).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use acme::{Action, CertificateGroup, ChallengeKind};
use support::{ELSEWHERE, handshake, serial_and_key, site, site_with};

fn group(names: &[&str]) -> CertificateGroup {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    CertificateGroup::new(&names).unwrap()
}

/// Sleeps until Unix time `t` (plus a margin for second rounding).
async fn sleep_until_unix(t: i64) {
    let now = store::unix_now();
    if t >= now {
        tokio::time::sleep(Duration::from_secs(u64::try_from(t - now).unwrap() + 1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_one_certificate_for_the_domain_names_and_skips_a_foreign_name() {
    let site = site(&[ChallengeKind::Http01], 3600, false, 30).await;
    site.dns.set_a("smtp.example.test", ELSEWHERE).await;
    let wanted = group(&[
        "example.test",
        "autoconfig.example.test",
        "mta-sts.example.test",
        "smtp.example.test",
    ]);
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    let ready = vec![
        "example.test".to_string(),
        "autoconfig.example.test".into(),
        "mta-sts.example.test".into(),
    ];
    assert_eq!(
        reports[0].action,
        Action::Issued(ready.clone()),
        "pebble log:\n{}",
        site.pebble.log()
    );
    assert_eq!(reports[0].skipped.len(), 1);
    assert_eq!(reports[0].skipped[0].0, "smtp.example.test");
    assert!(
        reports[0].skipped[0].1.contains(ELSEWHERE),
        "{:?}",
        reports[0].skipped
    );

    // Every ordered name is served by the new certificate, verifying to pebble's root.
    let root = site.pebble.root().await;
    let leaf = handshake(site.https, "autoconfig.example.test", &root).await;
    for name in &ready {
        assert_eq!(handshake(site.https, name, &root).await, leaf, "{name}");
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let sans = format!("{:?}", cert.subject_alternative_name().unwrap());
    assert!(!sans.contains("smtp.example.test"), "{sans}");

    // The state is stored: names, chain, key, result, the skipped name and its reason.
    let rows = site.store.acme_certificates().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, "example.test");
    assert_eq!(rows[0].names, ready);
    assert_eq!(rows[0].last_result.as_deref(), Some("issued"));
    assert_eq!(rows[0].skipped, reports[0].skipped);
    assert!(rows[0].chain_pem.is_some() && rows[0].key_pem.is_some());
    assert!(
        site.store
            .acme_account(&site.pebble.directory)
            .await
            .unwrap()
            .is_some()
    );

    // After a restart (a new SNI store), the stored certificate is served before any order.
    let restarted = tls::CertStore::new(tls::CertSource::Files(Vec::new())).unwrap();
    let config = acme::AcmeConfig::new(site.pebble.directory.clone(), Vec::new());
    let renewer = acme::Renewer::new(
        config,
        site.store.clone(),
        restarted.clone(),
        std::sync::Arc::new(web::Http01Challenges::default()),
        std::sync::Arc::new(dns::MemoryResolver::new()),
    );
    assert_eq!(renewer.install_stored().await.unwrap(), 1);
    let served = restarted.certified_key("mta-sts.example.test").unwrap();
    assert_eq!(served.end_entity_cert().unwrap().as_ref(), leaf.as_slice());

    // A second look finds it current: nothing is ordered.
    let reports = site.renewer.run_once(&[wanted]).await;
    assert!(
        matches!(reports[0].action, Action::Current { .. }),
        "{reports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_and_renews_at_two_thirds_of_the_lifetime_keeping_the_key() {
    // 9-second certificates: renewal is due 6 seconds after not-before.
    let site = site(&[ChallengeKind::TlsAlpn01], 9, true, 30).await;
    let wanted = group(&["mail.example.test"]);
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    assert_eq!(
        reports[0].action,
        Action::Issued(vec!["mail.example.test".into()]),
        "pebble log:\n{}",
        site.pebble.log()
    );
    let root = site.pebble.root().await;
    let first = handshake(site.https, "mail.example.test", &root).await;

    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    let Action::Current { renew_at } = reports[0].action else {
        panic!("expected a current certificate: {reports:?}");
    };
    let row = &site.store.acme_certificates().await.unwrap()[0];
    let (from, to) = (row.not_before.unwrap(), row.not_after.unwrap());
    assert_eq!(renew_at, acme::renewal_time(from, to));
    assert!(renew_at > from && renew_at < to);

    sleep_until_unix(renew_at).await;
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    assert_eq!(
        reports[0].action,
        Action::Issued(vec!["mail.example.test".into()]),
        "pebble log:\n{}",
        site.pebble.log()
    );
    // Served without a restart: a new certificate (serial) with the same key (keep_key).
    let second = handshake(site.https, "mail.example.test", &root).await;
    let (serial1, key1) = serial_and_key(&first);
    let (serial2, key2) = serial_and_key(&second);
    assert_ne!(serial1, serial2);
    assert_eq!(key1, key2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_do_not_resolve_here_are_skipped_and_nothing_is_ordered() {
    let site = site(&[ChallengeKind::Http01], 3600, false, 30).await;
    site.dns.set_a("foreign.test", ELSEWHERE).await;
    site.dns.set_a("autoconfig.foreign.test", ELSEWHERE).await;
    let wanted = group(&["foreign.test", "autoconfig.foreign.test"]);
    let reports = site.renewer.run_once(&[wanted]).await;
    assert_eq!(reports[0].action, Action::NothingResolves);
    let skipped: Vec<&str> = reports[0].skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["foreign.test", "autoconfig.foreign.test"]);
    // The CA was never contacted: no account was even created.
    assert!(
        site.store
            .acme_account(&site.pebble.directory)
            .await
            .unwrap()
            .is_none()
    );
    let row = &site.store.acme_certificates().await.unwrap()[0];
    assert_eq!(row.last_result.as_deref(), Some("skipped"));
    assert_eq!(row.skipped.len(), 2);
    assert!(
        row.skipped[0].1.contains("not to this server"),
        "{:?}",
        row.skipped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_down_keeps_the_old_certificate_and_retries_after_the_back_off() {
    let mut site = site(
        &[ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
        9,
        false,
        2,
    )
    .await;
    let wanted = group(&["mail.example.test"]);
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    assert!(
        matches!(reports[0].action, Action::Issued(_)),
        "{reports:?}\npebble log:\n{}",
        site.pebble.log()
    );
    let root = site.pebble.root().await;
    let before = handshake(site.https, "mail.example.test", &root).await;
    let row = site.store.acme_certificates().await.unwrap().remove(0);
    site.pebble.stop().await;

    sleep_until_unix(acme::renewal_time(
        row.not_before.unwrap(),
        row.not_after.unwrap(),
    ))
    .await;
    let started = store::unix_now();
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    let Action::Failed { error, retry_at } = &reports[0].action else {
        panic!("expected a failure with the CA down: {reports:?}");
    };
    assert!(
        *retry_at >= started + 2,
        "first retry after retry_base: {retry_at}"
    );
    assert!(error.contains("ACME CA"), "{error}");
    // The old certificate is still served.
    assert_eq!(
        handshake(site.https, "mail.example.test", &root).await,
        before
    );
    let row = site.store.acme_certificates().await.unwrap().remove(0);
    assert_eq!(row.last_result.as_deref(), Some("failed"));
    assert_eq!(row.failures, 1);
    assert_eq!(row.next_attempt, Some(*retry_at));
    assert!(row.chain_pem.is_some());

    // Within the back-off nothing is tried.
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    assert_eq!(
        reports[0].action,
        Action::Waiting {
            until: row.next_attempt.unwrap()
        }
    );

    // The CA comes back (a fresh pebble: new root, and it forgot our account); after the
    // back-off the retry gets a new certificate, through a new account.
    site.pebble.restart().await;
    sleep_until_unix(row.next_attempt.unwrap()).await;
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    assert!(
        matches!(reports[0].action, Action::Issued(_)),
        "{reports:?}\npebble log:\n{}",
        site.pebble.log()
    );
    let new_root = site.pebble.root().await;
    let after = handshake(site.https, "mail.example.test", &new_root).await;
    assert_ne!(after, before);
    let row = site.store.acme_certificates().await.unwrap().remove(0);
    assert_eq!(row.last_result.as_deref(), Some("issued"));
    assert_eq!(row.failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_failing_validation_twice_is_left_out_so_the_others_get_their_certificate() {
    // broken.example.test resolves to an address of ours where nothing answers the CA.
    let site = site_with(&[ChallengeKind::Http01], 3600, false, 1, &["127.0.0.2"]).await;
    site.dns.set_a("broken.example.test", "127.0.0.2").await;
    let wanted = group(&["example.test", "broken.example.test"]);
    for attempt in 1..=2 {
        let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
        let Action::Failed { error, retry_at } = &reports[0].action else {
            panic!("attempt {attempt}: expected a validation failure: {reports:?}");
        };
        assert!(
            error.contains("could not validate broken.example.test"),
            "{error}"
        );
        assert!(!error.contains("validate example.test"), "{error}");
        sleep_until_unix(*retry_at).await;
    }
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    assert_eq!(
        reports[0].action,
        Action::Issued(vec!["example.test".into()]),
        "pebble log:\n{}",
        site.pebble.log()
    );
    assert_eq!(reports[0].skipped.len(), 1);
    assert_eq!(reports[0].skipped[0].0, "broken.example.test");
    assert!(
        reports[0].skipped[0]
            .1
            .starts_with("validation failed at the CA:")
    );
    // Until the next renewal it stays out: the certificate is current.
    let reports = site.renewer.run_once(std::slice::from_ref(&wanted)).await;
    assert!(
        matches!(reports[0].action, Action::Current { .. }),
        "{reports:?}"
    );
    let row = site.store.acme_certificates().await.unwrap().remove(0);
    assert_eq!(row.names, ["example.test"]);
    assert_eq!(row.skipped, reports[0].skipped);
}
