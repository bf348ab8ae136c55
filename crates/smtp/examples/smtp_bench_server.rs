//! The Tessera side of `bench/smtp/run`: a store in a given directory with one domain
//! (`bench.test`) and at least one user (`bob@bench.test`; the script adds `2bob`..`10bob` for
//! the 10-recipient runs), served as MX on 127.0.0.1:PORT without TLS. Prints `ready` once
//! listening; on SIGINT/SIGTERM prints the messages delivered (summed over every INBOX of the
//! domain) and the group-commit writer's counters, then exits.
//!
//! Usage: `smtp_bench_server DATA_DIR PORT [--checks DNS_ADDR]` (with `--checks`, SPF/DKIM/
//! DMARC/iprev run against that DNS server for every message).

use std::net::SocketAddr;
use std::sync::Arc;

use net::{ListenerSpec, LoginThrottle, Shutdown, ThrottleConfig, TlsMode};
use smtp::{SmtpConfig, SmtpMode, SmtpServer};
use store::{Address, Domain, NewAccount, SqliteStore, Store, password};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Threads under the policy `tessera serve` uses by default (see `net::sched`).
    net::server_runtime(net::CpuScheduling::default())?.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(port)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: smtp_bench_server DATA_DIR PORT [--checks DNS_ADDR]");
        std::process::exit(2);
    };
    let checks: Option<SocketAddr> = match (args.get(3).map(String::as_str), args.get(4)) {
        (Some("--checks"), Some(addr)) => Some(addr.parse()?),
        _ => None,
    };
    let store = SqliteStore::open(std::path::Path::new(dir)).await?;
    let domain = Domain::parse("bench.test")?;
    if !store.is_hosted_domain(&domain).await? {
        store.add_domain(&domain).await?;
        store
            .add_account(NewAccount {
                address: Address::parse("bob@bench.test")?,
                password_hash: password::hash_password("bench-password-123")?,
                display_name: String::new(),
                quota_bytes: 0,
            })
            .await?;
    }
    let config = SmtpConfig {
        hostname: "mx.bench.test".into(),
        resolver: checks,
        auth_checks: checks.is_some(),
        ..SmtpConfig::default()
    };
    let server = SmtpServer::new(
        SmtpMode::Mx,
        store.clone() as Arc<dyn Store>,
        Arc::new(LoginThrottle::new(ThrottleConfig::disabled())),
        config,
    )?;
    let mut spec = ListenerSpec::new("smtp", format!("127.0.0.1:{port}").parse()?, TlsMode::None);
    spec.max_per_ip = 0;
    let listener = net::bind(&spec).await?;
    let shutdown = Shutdown::new();
    let serving = tokio::spawn(net::serve(
        listener,
        spec,
        None,
        Arc::new(server),
        shutdown.clone(),
    ));
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.trigger();
    let _ = serving.await;
    let mut delivered = 0u64;
    for account in store.list_accounts(Some(&domain)).await? {
        if let Some(inbox) = store.mailbox(account.id, "INBOX").await? {
            delivered += u64::from(store.mailbox_status(account.id, inbox.id).await?.messages);
        }
    }
    let (commits, jobs) = store.writer_stats();
    println!(
        "delivered={delivered} commits={commits} jobs={jobs} avg_batch={:.1}",
        jobs as f64 / commits.max(1) as f64
    );
    Ok(())
}
