//! Tessera's real web listeners (port-80 and port-443 stand-ins) with an ACME renewer, for
//! pebble ([`pebble`]) to validate against.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod pebble;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use acme::{AcmeConfig, ChallengeKind, Renewer};
use net::{ListenerSpec, Shutdown, TlsMode};
pub use pebble::{ChallTestSrv, ELSEWHERE, HERE, Pebble, handshake, serial_and_key};
use store::{SqliteStore, Store};

/// Tessera's web front on the ports pebble validates against, with an SNI store, a store and
/// an ACME renewer.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub dns: ChallTestSrv,
    pub pebble: Pebble,
    pub store: Arc<dyn Store>,
    pub certs: Arc<tls::CertStore>,
    pub https: SocketAddr,
    pub renewer: Renewer,
    shutdown: Shutdown,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Starts DNS, pebble (certificates valid `validity_secs`) and the listeners; the renewer
/// answers the challenges in `challenges` order and keeps keys when `keep_key`.
/// A failed attempt is retried after `retry_base_secs`.
pub async fn site(
    challenges: &[ChallengeKind],
    validity_secs: u64,
    keep_key: bool,
    retry_base_secs: u64,
) -> Site {
    site_with(challenges, validity_secs, keep_key, retry_base_secs, &[]).await
}

/// [`site`], with `also_here` counted among this server's addresses (nothing listens there).
pub async fn site_with(
    challenges: &[ChallengeKind],
    validity_secs: u64,
    keep_key: bool,
    retry_base_secs: u64,
    also_here: &[&str],
) -> Site {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("acme=debug,info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let dns = ChallTestSrv::start().await;

    let http_spec = ListenerSpec::new("http", "127.0.0.1:0".parse().unwrap(), TlsMode::None);
    let https_spec = ListenerSpec::new("https", "127.0.0.1:0".parse().unwrap(), TlsMode::Implicit);
    let http_listener = net::bind(&http_spec).await.unwrap();
    let https_listener = net::bind(&https_spec).await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let https = https_listener.local_addr().unwrap();

    let pebble = Pebble::start(
        dir.path(),
        dns.dns,
        http.port(),
        https.port(),
        validity_secs,
    )
    .await;

    let sqlite = SqliteStore::open(&dir.path().join("data")).await.unwrap();
    let store: Arc<dyn Store> = sqlite;
    // An empty file store: only ACME certificates are served.
    let certs = tls::CertStore::new(tls::CertSource::Files(Vec::new())).unwrap();
    let web = Arc::new(web::WebServer::new(
        store.clone(),
        certs.clone(),
        web::WebConfig::default(),
    ));
    let shutdown = Shutdown::new();
    let https_config = certs.server_config(vec![b"http/1.1".to_vec(), tls::ACME_TLS_ALPN.to_vec()]);
    tokio::spawn(net::serve(
        http_listener,
        http_spec,
        None,
        web.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(net::serve(
        https_listener,
        https_spec,
        Some(https_config),
        web.clone(),
        shutdown.clone(),
    ));

    let here: IpAddr = HERE.parse().unwrap();
    let mut addresses = vec![here];
    addresses.extend(also_here.iter().map(|a| a.parse::<IpAddr>().unwrap()));
    let mut config = AcmeConfig::new(pebble.directory.clone(), addresses);
    config.contact = vec!["postmaster@example.test".into()];
    config.ca_file = Some(pebble.wfe_ca.clone());
    config.challenges = challenges.to_vec();
    config.keep_key = keep_key;
    config.check_interval = Duration::from_secs(2);
    config.retry_base = Duration::from_secs(retry_base_secs);
    config.retry_max = Duration::from_secs(60);
    config.order_timeout = Duration::from_secs(20);
    let resolver = dns::HickoryResolver::new(Some(dns.dns), Duration::from_secs(2)).unwrap();
    let renewer = Renewer::new(
        config,
        store.clone(),
        certs.clone(),
        web.http01_challenges(),
        Arc::new(resolver),
    );
    Site {
        dir,
        dns,
        pebble,
        store,
        certs,
        https,
        renewer,
        shutdown,
    }
}
