//! `tessera dns records|check` and `tessera dkim list|rotate|remove`: glue between the
//! configuration, the store and the `dns` crate.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use store::{Domain, SqliteStore, Store};

use crate::config::{Config, MtaStsModeFile, Service};

/// Bound on each DNS query of `dns check`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Zone-file lines / one line per check.
    Text,
    /// JSON (the `dns` crate's Plan / Report).
    Json,
}

/// `tessera dns ...`
#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// Print the DNS records a hosted domain needs, as a zone-file fragment.
    Records {
        /// The hosted domain.
        domain: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Check the domain's records live and name the exact fix for each problem. Exits 0
    /// only when nothing required is missing or wrong and every look-up was answered.
    Check {
        /// The hosted domain.
        domain: String,
        /// DNS server to ask, IP:PORT [default: `smtp.resolver` of the config, else the
        /// system's resolver].
        #[arg(long, value_name = "IP:PORT")]
        resolver: Option<SocketAddr>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Fetch the MTA-STS policy from this address instead of the one mta-sts.<domain>
        /// resolves to (to test a server before the DNS points at it).
        #[arg(long, value_name = "IP:PORT")]
        https_connect: Option<SocketAddr>,
        /// Trust this CA (PEM) instead of the system's roots for the MTA-STS policy fetch
        /// (local-CA deployments, tests).
        #[arg(long, value_name = "FILE")]
        trust_ca: Option<PathBuf>,
    },
}

/// `tessera dkim ...`
#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// List a domain's DKIM keys (active ones sign; retired ones are still published).
    List {
        /// The hosted domain.
        domain: String,
    },
    /// Make new RSA-2048 and Ed25519 keys; the current keys stop signing but stay published
    /// until `tessera dkim remove`.
    Rotate {
        /// The hosted domain.
        domain: String,
    },
    /// Delete a retired key (then remove its DNS record).
    Remove {
        /// The hosted domain.
        domain: String,
        /// The key's selector, e.g. ts2026-11r.
        selector: String,
    },
}

async fn open(config_path: &Path) -> Result<(Config, Arc<SqliteStore>)> {
    let config = Config::load(config_path)?;
    let store = SqliteStore::open(&config.data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    Ok((config, store))
}

async fn hosted(store: &dyn Store, name: &str) -> Result<Domain> {
    let domain = Domain::parse(name)?;
    if !store.is_hosted_domain(&domain).await? {
        bail!("domain {domain} is not hosted here (add it with `tessera domain add {domain}`)");
    }
    Ok(domain)
}

/// Creates the RSA and Ed25519 keys of a domain (used by `domain add` and `dkim rotate`);
/// returns the new selectors.
pub async fn create_dkim_keys(store: &dyn Store, domain: &Domain) -> Result<Vec<String>> {
    let existing = store.dkim_keys(domain).await?;
    let domain_owned = domain.clone();
    let keys = tokio::task::spawn_blocking(move || {
        dns::dkim::generate_pair(&domain_owned, store::unix_now(), &existing)
    })
    .await
    .context("key generation task failed")??;
    let mut selectors = Vec::new();
    for key in keys {
        selectors.push(key.selector.clone());
        store.add_dkim_key(key).await?;
    }
    Ok(selectors)
}

/// Runs a `dkim` command.
pub async fn dkim(config_path: &Path, cmd: DkimCommand) -> Result<()> {
    let (_config, store) = open(config_path).await?;
    match cmd {
        DkimCommand::List { domain } => {
            let domain = hosted(&*store, &domain).await?;
            for k in store.dkim_keys(&domain).await? {
                let state = match k.retired_at {
                    None => "active".to_owned(),
                    Some(t) => format!("retired {}", date(t)),
                };
                println!(
                    "{}\t{}\t{}\t{state}",
                    k.selector,
                    k.algorithm,
                    date(k.created_at)
                );
            }
        }
        DkimCommand::Rotate { domain } => {
            let domain = hosted(&*store, &domain).await?;
            let old: Vec<String> = store
                .dkim_keys(&domain)
                .await?
                .into_iter()
                .filter(|k| k.is_active())
                .map(|k| k.selector)
                .collect();
            let new = create_dkim_keys(&*store, &domain).await?;
            for s in &old {
                store.retire_dkim_key(&domain, s).await?;
            }
            println!("new DKIM keys for {domain}: {}", new.join(", "));
            if !old.is_empty() {
                println!(
                    "retired (still published until `tessera dkim remove {domain} <selector>`): {}",
                    old.join(", ")
                );
            }
            println!("publish the new records: tessera dns records {domain}");
        }
        DkimCommand::Remove { domain, selector } => {
            let domain = hosted(&*store, &domain).await?;
            let keys = store.dkim_keys(&domain).await?;
            match keys
                .iter()
                .find(|k| k.selector.eq_ignore_ascii_case(&selector))
            {
                None => bail!("{domain} has no DKIM key with selector {selector}"),
                Some(k) if k.is_active() => bail!(
                    "DKIM key {selector} of {domain} still signs; run `tessera dkim rotate {domain}` first"
                ),
                Some(_) => {}
            }
            store.remove_dkim_key(&domain, &selector).await?;
            println!(
                "removed DKIM key {selector} of {domain}; delete its DNS record {selector}._domainkey.{domain}."
            );
        }
    }
    Ok(())
}

fn date(unix: i64) -> String {
    let d =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The plan of a hosted domain from the configuration and the store.
async fn plan(config: &Config, store: &dyn Store, domain: &Domain) -> Result<dns::Plan> {
    Ok(plan_with_keys(
        config,
        domain,
        store.dkim_keys(domain).await?,
    ))
}

/// The plan of a domain from the configuration and its DKIM keys (`dns records`, and
/// `quickstart`, which also plans before anything is stored).
pub(crate) fn plan_with_keys(
    config: &Config,
    domain: &Domain,
    dkim_keys: Vec<store::DkimKey>,
) -> dns::Plan {
    let (addresses, detected) = if config.dns_addresses.is_empty() {
        let found = detect_public_addresses();
        let detected = !found.is_empty();
        (found, detected)
    } else {
        (config.dns_addresses.clone(), false)
    };
    let mode = match config.mta_sts_mode {
        MtaStsModeFile::Testing => web::MtaStsMode::Testing,
        MtaStsModeFile::Enforce => web::MtaStsMode::Enforce,
        MtaStsModeFile::None => web::MtaStsMode::None,
    };
    let policy = web::mta_sts_policy(mode, &[config.hostname.as_str()], config.mta_sts_max_age);
    let id = web::mta_sts_policy_id(&policy);
    let port = |service: Service| {
        config
            .listeners
            .iter()
            .find(|l| l.service == service)
            .map_or(0, |l| l.addr.port())
    };
    dns::Plan::new(&dns::PlanInput {
        domain: domain.clone(),
        mail_host: config.hostname.clone(),
        addresses,
        addresses_detected: detected,
        dkim_keys,
        mta_sts: dns::MtaStsPolicy { text: policy, id },
        ports: dns::ClientPorts {
            imaps: port(Service::Imaps),
            imap: port(Service::Imap),
            submissions: port(Service::Submissions),
            submission: port(Service::Submission),
            pop3s: port(Service::Pop3s),
            pop3: port(Service::Pop3),
            https: port(Service::Https),
        },
        // ACME (Let's Encrypt) is the preferred certificate source; the record is optional.
        caa_issuer: Some("letsencrypt.org".into()),
    })
}

/// This machine's public addresses: the source address the kernel would use towards a
/// global destination, kept only when it is itself global. No packet is sent (UDP connect).
pub(crate) fn detect_public_addresses() -> Vec<IpAddr> {
    let probes: [(&str, &str); 2] = [
        ("0.0.0.0:0", "192.0.2.1:53"),
        ("[::]:0", "[2001:db8::1]:53"),
    ];
    let mut found = Vec::new();
    for (bind, target) in probes {
        let Ok(sock) = UdpSocket::bind(bind) else {
            continue;
        };
        if sock.connect(target).is_err() {
            continue;
        }
        if let Ok(local) = sock.local_addr() {
            let ip = local.ip();
            if is_global(ip) {
                found.push(ip);
            }
        }
    }
    found
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            // 2000::/3 is global unicast; 2001:db8::/32 is for documentation (RFC 3849).
            let s = v6.segments();
            (s[0] & 0xe000) == 0x2000 && !(s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// Runs a `dns` command.
pub async fn dns(config_path: &Path, cmd: DnsCommand) -> Result<()> {
    let (config, store) = open(config_path).await?;
    match cmd {
        DnsCommand::Records { domain, format } => {
            let domain = hosted(&*store, &domain).await?;
            let plan = plan(&config, &*store, &domain).await?;
            match format {
                Format::Text => print!("{}", plan.zone_file()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
        }
        DnsCommand::Check {
            domain,
            resolver,
            format,
            https_connect,
            trust_ca,
        } => {
            let domain = hosted(&*store, &domain).await?;
            let plan = plan(&config, &*store, &domain).await?;
            let server = resolver.or(config.smtp.resolver);
            let resolver = dns::HickoryResolver::new(server, QUERY_TIMEOUT)?;
            let tls = match &trust_ca {
                Some(path) => tls::client_config_trusting(path)?,
                None => dns::https::system_tls_config(),
            };
            let options = dns::CheckOptions {
                https_port: 443,
                https_connect,
                tls,
                http_timeout: Duration::from_secs(10),
            };
            let report = dns::check(&resolver, &plan, &options).await?;
            match format {
                Format::Text => print!("{}", report.to_text()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            if !report.passed {
                bail!("{domain}: required DNS records are missing or wrong (see above)");
            }
            if report.incomplete {
                bail!("{domain}: some records could not be verified (timeout or server error)");
            }
        }
    }
    Ok(())
}
