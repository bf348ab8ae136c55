//! `tessera`: the binary. Command-line parsing, configuration, wiring; nothing else.

mod admin;
mod cert_cmd;
mod config;
mod dns_cmd;
mod quickstart;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tessera: an all-in-one mail server (SMTP, IMAP, POP3, TLS) in one binary.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
struct Cli {
    /// Configuration file [default: $TESSERA_CONFIG, else /etc/tessera/tessera.toml]
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a complete local demo on 127.0.0.1 (ports + 10000), nothing to configure.
    Demo {
        /// Directory for the demo's config, data and CA (reused when run again).
        #[arg(long, default_value = "./tessera-demo", value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Run the server with the configuration file (production entry point).
    Serve,
    /// Manage hosted domains.
    #[command(subcommand)]
    Domain(admin::DomainCommand),
    /// Manage user accounts.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage aliases (an address or a catch-all `@domain` delivering to accounts).
    #[command(subcommand)]
    Alias(admin::AliasCommand),
    /// Inspect the outbound queue.
    #[command(subcommand)]
    Queue(admin::QueueCommand),
    /// The DNS records a domain needs, and a live check of them.
    #[command(subcommand)]
    Dns(dns_cmd::DnsCommand),
    /// Manage DKIM signing keys.
    #[command(subcommand)]
    Dkim(dns_cmd::DkimCommand),
    /// TLS certificates: what is served, and the ACME renewal state.
    #[command(subcommand)]
    Cert(cert_cmd::CertCommand),
    /// Remove the bodies and message rows of expunged mail, and the oldest entries of long
    /// expunge logs, now (`serve` does it every hour).
    Gc,
    /// Check the configuration file and print the resolved settings.
    CheckConfig,
    /// Set up a real deployment in one command: config, domain, DKIM keys, admin account,
    /// systemd unit, and the DNS records to create.
    Quickstart(quickstart::QuickstartArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The servers' threads (the runtime's, and the store's, which they start) inherit the
    // policy, so it is set before the runtime exists; the CLI commands keep the default.
    let scheduling = match &cli.command {
        Command::Demo { .. } => net::CpuScheduling::default(),
        // A config that does not load is reported by `run`.
        Command::Serve => config::Config::load(&config::config_path(cli.config.as_deref()))
            .map_or(net::CpuScheduling::Normal, |c| c.cpu_scheduling),
        _ => net::CpuScheduling::Normal,
    };
    let runtime = match net::server_runtime(scheduling) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = config::config_path(cli.config.as_deref());
    match cli.command {
        Command::Demo { data_dir } => server::demo(&data_dir).await,
        Command::Serve => {
            let config = config::Config::load(&config_path)?;
            server::init_tracing(&config.log_level);
            server::serve(config, None).await
        }
        Command::CheckConfig => {
            let config = config::Config::load(&config_path)?;
            println!("config:    {}", config.path.display());
            println!("hostname:  {}", config.hostname);
            println!("cpu:       {} scheduling", config.cpu_scheduling.as_str());
            println!("data_dir:  {}", config.data_dir.display());
            for l in &config.listeners {
                println!("listen:    {:<12} {}", l.service.key(), l.addr);
            }
            if config.certificates.is_empty() {
                println!(
                    "tls:       local CA in {}",
                    config.data_dir.join("tls").display()
                );
            }
            for (cert, key) in &config.certificates {
                println!("tls:       {} (key {})", cert.display(), key.display());
            }
            match &config.acme {
                Some(acme) => {
                    let challenges: Vec<&str> =
                        acme.challenges.iter().map(|c| c.as_str()).collect();
                    println!(
                        "acme:      {} ({}; keep_key {})",
                        acme.directory_url,
                        challenges.join(", "),
                        acme.keep_key
                    );
                }
                None => println!("acme:      off"),
            }
            Ok(())
        }
        Command::Domain(cmd) => admin::domain(&config_path, cmd).await,
        Command::User(cmd) => admin::user(&config_path, cmd).await,
        Command::Alias(cmd) => admin::alias(&config_path, cmd).await,
        Command::Queue(cmd) => admin::queue(&config_path, cmd).await,
        Command::Gc => admin::gc(&config_path).await,
        Command::Dns(cmd) => dns_cmd::dns(&config_path, cmd).await,
        Command::Dkim(cmd) => dns_cmd::dkim(&config_path, cmd).await,
        Command::Cert(cmd) => cert_cmd::cert(&config_path, cmd).await,
        Command::Quickstart(args) => quickstart::quickstart(&config_path, args).await,
    }
}
