//! A stand-alone IMAP server over a SQLite store, for the oracle check, mbsync and the
//! benchmarks in `bench/imap/`. Not the product binary (that is `tessera serve`).
//!
//! ```text
//! cargo run --release -p imap --example serve -- DATA_DIR USER PASSWORD [PLAIN_PORT]
//! ```
//!
//! Creates the store in DATA_DIR (an existing one is reused), the account USER (its domain
//! too), a local CA and a `localhost` certificate under DATA_DIR/tls, and listens on
//! 127.0.0.1: one plaintext listener with `allow_plaintext_auth` (PLAIN_PORT, default 0),
//! one STARTTLS and one implicit-TLS listener on free ports. Prints one line
//! `plain=PORT starttls=PORT implicit=PORT ca=PATH pid=PID` on stdout once listening, and
//! serves until stdin closes or SIGTERM. Limits are raised for load tests: 4096 connections,
//! no per-address limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use imap::{ImapConfig, ImapServer};
use net::{ListenerSpec, LoginThrottle, Shutdown, ThrottleConfig, TlsMode};
use store::{Address, Domain, NewAccount, SqliteStore, Store};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: serve DATA_DIR USER PASSWORD [PLAIN_PORT]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let user = &args[2];
    let pass = &args[3];
    let plain_port: u16 = args.get(4).map_or(0, |p| p.parse().expect("port"));

    let store = SqliteStore::open(&dir.join("data"))
        .await
        .expect("open store");
    let address = Address::parse(user).expect("user address");
    let domain = user.rsplit_once('@').expect("user@domain").1;
    let _ = store.add_domain(&Domain::parse(domain).unwrap()).await;
    let _ = store
        .add_account(NewAccount {
            address,
            password_hash: store::password::hash_password(pass).unwrap(),
            display_name: "Bench".into(),
            quota_bytes: 0,
        })
        .await;
    let certs = tls::CertStore::new(tls::CertSource::LocalCa {
        dir: dir.join("tls"),
    })
    .unwrap();
    certs
        .ensure_local_names(&[vec!["localhost".to_string()]])
        .unwrap();
    let ca = certs.ca_path().unwrap();
    let tls_config = certs.server_config(vec![b"imap".to_vec()]);
    let store: Arc<dyn Store> = store;
    let throttle = Arc::new(LoginThrottle::new(ThrottleConfig::disabled()));
    let config = ImapConfig {
        hostname: "localhost".into(),
        allow_plaintext_auth: true,
        ..ImapConfig::default()
    };
    let server = Arc::new(ImapServer::new(store, throttle, config));
    let shutdown = Shutdown::new();
    shutdown.install_signal_handlers();
    let mut ports = Vec::new();
    for (mode, port) in [
        (TlsMode::None, plain_port),
        (TlsMode::StartTls, 0),
        (TlsMode::Implicit, 0),
    ] {
        let mut spec = ListenerSpec::new("imap", ([127, 0, 0, 1], port).into(), mode);
        spec.max_connections = 4096;
        spec.max_per_ip = 0;
        spec.idle_timeout = std::time::Duration::from_secs(31 * 60);
        let listener = net::bind(&spec).await.expect("bind");
        ports.push(listener.local_addr().unwrap().port());
        let tls = (mode != TlsMode::None).then(|| tls_config.clone());
        tokio::spawn(net::serve(
            listener,
            spec,
            tls,
            server.clone(),
            shutdown.clone(),
        ));
    }
    println!(
        "plain={} starttls={} implicit={} ca={} pid={}",
        ports[0],
        ports[1],
        ports[2],
        ca.display(),
        std::process::id()
    );
    std::io::stdout().flush().unwrap();
    // Serve until stdin reaches EOF (the parent went away) or a signal arrives.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    tokio::select! {
        _ = stdin_closed => {}
        () = shutdown.triggered() => {}
    }
    shutdown.trigger();
    // The stdin reader is a blocking thread the runtime would wait for: leave at once.
    std::process::exit(0);
}
