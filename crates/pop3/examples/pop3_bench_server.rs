//! A POP3-over-TLS server for `bench/pop3/run`: opens a store in `--data`, creates
//! `user@bench.test` (password `--password`) with every `*.eml` file of `--eml` in its INBOX
//! (sorted by name), issues a local-CA certificate for `localhost`, serves implicit TLS on
//! 127.0.0.1:`--port` and prints `READY` once listening. Stops on SIGINT/SIGTERM.
//!
//! The certificate and key are left in `<data>/ca/certs/localhost{,.key}.pem`, so the Dovecot
//! side of the benchmark can present the same certificate.
#![allow(clippy::unwrap_used)] // a benchmark helper: failures should stop it loudly

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::{ListenerSpec, LoginThrottle, Shutdown, ThrottleConfig, TlsMode};
use pop3::{Pop3Config, Pop3Server};
use store::{Address, Domain, NewAccount, NewMessage, SqliteStore, Store};
use tls::{CertSource, CertStore};

struct Args {
    data: PathBuf,
    eml: PathBuf,
    port: u16,
    password: String,
}

fn args() -> Args {
    let mut args = Args {
        data: PathBuf::new(),
        eml: PathBuf::new(),
        port: 0,
        password: "bench-password".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => args.data = value.into(),
            "--eml" => args.eml = value.into(),
            "--port" => args.port = value.parse().unwrap(),
            "--password" => args.password = value,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.data.as_os_str().is_empty(), "--data DIR is required");
    assert!(!args.eml.as_os_str().is_empty(), "--eml DIR is required");
    args
}

fn main() -> std::io::Result<()> {
    // Threads under the policy `tessera serve` uses by default (see `net::sched`).
    net::server_runtime(net::CpuScheduling::default())?.block_on(serve());
    Ok(())
}

async fn serve() {
    let args = args();
    let store = SqliteStore::open(&args.data.join("store")).await.unwrap();
    let store: Arc<dyn Store> = store;
    let domain = Domain::parse("bench.test").unwrap();
    store.add_domain(&domain).await.unwrap();
    let account = store
        .add_account(NewAccount {
            address: Address::parse("user@bench.test").unwrap(),
            password_hash: store::password::hash_password(&args.password).unwrap(),
            display_name: String::new(),
            quota_bytes: 0,
        })
        .await
        .unwrap();

    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.eml)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    let started = Instant::now();
    // Deliver in concurrent batches so the store's group commit shares fsyncs; UIDs then
    // follow each batch's completion order, which does not matter to the benchmark.
    for batch in files.chunks(64) {
        let mut tasks = tokio::task::JoinSet::new();
        for path in batch {
            let bytes = std::fs::read(path).unwrap();
            let store = Arc::clone(&store);
            tasks.spawn(async move { store.deliver(&[account], NewMessage::now(bytes)).await });
        }
        while let Some(result) = tasks.join_next().await {
            for delivered in result.unwrap().unwrap() {
                delivered.unwrap();
            }
        }
    }
    eprintln!(
        "loaded {} messages in {:.1}s",
        files.len(),
        started.elapsed().as_secs_f64()
    );

    let certs = CertStore::new(CertSource::LocalCa {
        dir: args.data.join("ca"),
    })
    .unwrap();
    certs
        .ensure_local_names(&[vec!["localhost".into()]])
        .unwrap();
    let tls_config = certs.server_config(vec![b"pop3".to_vec()]);

    let server = Arc::new(Pop3Server::new(
        Arc::clone(&store),
        Arc::new(LoginThrottle::new(ThrottleConfig::default())),
        Pop3Config {
            hostname: "localhost".into(),
            ..Pop3Config::default()
        },
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let spec = ListenerSpec::new("pop3s", addr, TlsMode::Implicit);
    let listener = net::bind(&spec).await.unwrap();
    let shutdown = Shutdown::new();
    shutdown.install_signal_handlers();
    println!("READY {}", listener.local_addr().unwrap());
    net::serve(listener, spec, Some(tls_config), server, shutdown.clone()).await;
    shutdown.wait_sessions(Duration::from_secs(5)).await;
}
