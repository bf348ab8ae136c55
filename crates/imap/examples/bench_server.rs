//! The IMAP server for `bench/imap/run`: a SQLite store in DATA_DIR, accounts preloaded from
//! directories of `.eml` files, one plaintext listener (`allow_plaintext_auth`, loopback only,
//! as the Dovecot side of the benchmark) with load-test limits. Not the product binary.
//!
//! ```text
//! bench_server DATA_DIR PORT USER:PASSWORD:EML_DIR...
//! ```
//!
//! An account's INBOX is loaded from EML_DIR (sorted by file name; `-` for none) only when it
//! is empty, 64 appends at a time so the store's group commit batches them. Prints `READY`
//! once listening; serves until SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use imap::{ImapConfig, ImapServer};
use net::{ListenerSpec, LoginThrottle, Shutdown, ThrottleConfig, TlsMode};
use store::{Address, Domain, NewAccount, NewMessage, SqliteStore, Store};

fn main() -> std::io::Result<()> {
    // Threads under the policy `tessera serve` uses by default (see `net::sched`).
    net::server_runtime(net::CpuScheduling::default())?.block_on(serve());
    Ok(())
}

async fn serve() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench_server DATA_DIR PORT USER:PASSWORD:EML_DIR...");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let port: u16 = args[2].parse().expect("port");
    let sqlite = SqliteStore::open(&dir.join("data"))
        .await
        .expect("open store");
    let store: Arc<dyn Store> = sqlite;
    for spec in &args[3..] {
        let mut parts = spec.splitn(3, ':');
        let (user, pass, eml) = (
            parts.next().unwrap(),
            parts.next().expect("password"),
            parts.next().expect("eml dir"),
        );
        let domain = user.rsplit_once('@').expect("user@domain").1;
        let _ = store.add_domain(&Domain::parse(domain).unwrap()).await;
        let address = Address::parse(user).expect("address");
        let _ = store
            .add_account(NewAccount {
                address: address.clone(),
                password_hash: store::password::hash_password(pass).unwrap(),
                display_name: "Bench".into(),
                quota_bytes: 0,
            })
            .await;
        let account = store.account(&address).await.unwrap().unwrap().id;
        let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap().id;
        if eml == "-" || !store.messages(account, inbox).await.unwrap().is_empty() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(eml)
            .expect("eml dir")
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let started = std::time::Instant::now();
        for chunk in files.chunks(64) {
            let mut tasks = tokio::task::JoinSet::new();
            for f in chunk {
                let bytes = std::fs::read(f).unwrap();
                let store = store.clone();
                tasks.spawn(async move {
                    store
                        .append(account, inbox, NewMessage::now(bytes))
                        .await
                        .unwrap();
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        }
        eprintln!(
            "loaded {} messages into {user} in {:.1}s",
            files.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let throttle = Arc::new(LoginThrottle::new(ThrottleConfig::disabled()));
    let config = ImapConfig {
        hostname: "localhost".into(),
        allow_plaintext_auth: true,
        ..ImapConfig::default()
    };
    let server = Arc::new(ImapServer::new(store, throttle, config));
    let shutdown = Shutdown::new();
    shutdown.install_signal_handlers();
    let mut spec = ListenerSpec::new("imap", ([127, 0, 0, 1], port).into(), TlsMode::None);
    spec.max_connections = 4096;
    spec.max_per_ip = 0;
    spec.idle_timeout = std::time::Duration::from_secs(31 * 60);
    let listener = net::bind(&spec).await.expect("bind");
    tokio::spawn(net::serve(listener, spec, None, server, shutdown.clone()));
    println!("READY pid={}", std::process::id());
    std::io::stdout().flush().unwrap();
    shutdown.triggered().await;
    std::process::exit(0);
}
