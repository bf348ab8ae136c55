//! `tessera quickstart admin@example.org`: a real deployment in one command. Writes the
//! config and a systemd unit, hosts the domain (with its DKIM keys), creates the admin
//! account with a generated password, and prints the DNS records and the next steps.
//! Asks nothing; `--dry-run` prints all of it and changes nothing.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use store::{Address, Domain, NewAccount, SqliteStore, Store, password};

use crate::config::Config;

/// The default data directory of a real deployment.
const DEFAULT_DATA_DIR: &str = "/var/lib/tessera";
/// The unit's file name, written next to the config.
const UNIT_NAME: &str = "tessera.service";

/// `tessera quickstart` options.
#[derive(Debug, clap::Args)]
pub struct QuickstartArgs {
    /// The administrator's address; its domain becomes the first hosted domain.
    pub admin: String,
    /// The mail host name (MX target, certificate name) [default: mail.<domain>].
    #[arg(long, value_name = "HOST")]
    pub hostname: Option<String>,
    /// Database, message bodies and local CA.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print everything it would do (config, unit, DNS records) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What quickstart decided, before touching anything.
struct Setup {
    admin: Address,
    domain: Domain,
    config_path: PathBuf,
    unit_path: PathBuf,
    config_text: String,
    unit_text: String,
    config: Config,
}

/// Runs `tessera quickstart`.
pub async fn quickstart(config_path: &Path, args: QuickstartArgs) -> Result<()> {
    let setup = prepare(config_path, &args)?;
    if args.dry_run {
        return dry_run(&setup).await;
    }
    let Setup {
        admin,
        domain,
        config_path,
        unit_path,
        config_text,
        unit_text,
        config,
    } = setup;

    // The config directory first: if it cannot be written, fail before anything else.
    if let Some(dir) = config_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let store = SqliteStore::open(&config.data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    if store.is_hosted_domain(&domain).await? {
        bail!(
            "domain {domain} is already hosted in {} (use `tessera domain`/`tessera user` there)",
            config.data_dir.display()
        );
    }
    let selectors = crate::admin::add_domain(&*store, &domain).await?;
    let secret = password::generate_password();
    store
        .add_account(NewAccount {
            address: admin.clone(),
            password_hash: password::hash_password(&secret)?,
            display_name: String::new(),
            quota_bytes: 0,
        })
        .await?;
    write_new(&config_path, &config_text)?;
    let unit_written = if unit_path.exists() {
        false
    } else {
        write_new(&unit_path, &unit_text)?;
        true
    };

    println!("wrote config {}", config_path.display());
    println!("data in {}", config.data_dir.display());
    println!("added domain {domain} (DKIM keys {})", selectors.join(", "));
    println!("added user {admin}");
    println!("password: {secret}");
    println!("  (shown once; change it with `tessera user passwd {admin}`)");
    if unit_written {
        println!("wrote systemd unit {}", unit_path.display());
    } else {
        println!(
            "kept the existing systemd unit {} (not overwritten)",
            unit_path.display()
        );
    }
    println!();
    println!("DNS records to create for {domain} (again any time: tessera dns records {domain}):");
    println!();
    let plan = crate::dns_cmd::plan_with_keys(&config, &domain, store.dkim_keys(&domain).await?);
    print!("{}", plan.zone_file());
    println!();
    print!("{}", next_steps(&config_path, &unit_path, &config, &domain));
    Ok(())
}

/// Validates the arguments and builds the texts; touches nothing.
fn prepare(config_path: &Path, args: &QuickstartArgs) -> Result<Setup> {
    let admin = Address::parse(&args.admin)?;
    let domain = admin.domain().clone();
    let hostname = match &args.hostname {
        Some(h) => Domain::parse(h).map_err(|e| anyhow::anyhow!("--hostname: {e}"))?,
        None => Domain::parse(&format!("mail.{domain}"))?,
    };
    let config_path = std::path::absolute(config_path)
        .with_context(|| format!("bad config path {}", config_path.display()))?;
    if config_path.exists() {
        bail!(
            "{} exists already; quickstart does not overwrite a config (remove it or pass --config)",
            config_path.display()
        );
    }
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("bad data directory {}", args.data_dir.display()))?;
    let unit_path = config_path.with_file_name(UNIT_NAME);
    let addresses = crate::dns_cmd::detect_public_addresses();
    let config_text = config_text(hostname.as_str(), &data_dir, &addresses, &admin)?;
    let config = Config::parse(&config_text, &config_path)?;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| std::path::absolute(p).ok())
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/tessera"));
    let unit_text = unit_text(&exe, &config_path, &data_dir);
    Ok(Setup {
        admin,
        domain,
        config_path,
        unit_path,
        config_text,
        unit_text,
        config,
    })
}

/// `--dry-run`: everything it would do, nothing done.
async fn dry_run(s: &Setup) -> Result<()> {
    println!("dry run: nothing is written or created.");
    println!();
    println!(
        "would create the data directory {}",
        s.config.data_dir.display()
    );
    println!(
        "would host {} and create its DKIM keys (RSA-2048 and Ed25519)",
        s.domain
    );
    println!(
        "would add the user {} with a generated password, shown once",
        s.admin
    );
    println!();
    println!("would write {}:", s.config_path.display());
    println!();
    print!("{}", s.config_text);
    println!();
    println!("would write {}:", s.unit_path.display());
    println!();
    print!("{}", s.unit_text);
    println!();
    // Keys made in memory only, so the records show their real shape; the real run makes
    // (and stores) its own keys.
    let domain = s.domain.clone();
    let new_keys = tokio::task::spawn_blocking(move || {
        dns::dkim::generate_pair(&domain, store::unix_now(), &[])
    })
    .await
    .context("key generation task failed")??;
    let now = store::unix_now();
    let keys = new_keys
        .into_iter()
        .map(|k| store::DkimKey {
            domain: k.domain,
            selector: k.selector,
            algorithm: k.algorithm,
            private_key: k.private_key,
            public_key: k.public_key,
            created_at: now,
            retired_at: None,
        })
        .collect();
    println!(
        "DNS records to create for {} (the DKIM keys here are samples, the real run makes its own):",
        s.domain
    );
    println!();
    let plan = crate::dns_cmd::plan_with_keys(&s.config, &s.domain, keys);
    print!("{}", plan.zone_file());
    println!();
    print!(
        "{}",
        next_steps(&s.config_path, &s.unit_path, &s.config, &s.domain)
    );
    Ok(())
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A TOML string literal.
fn toml_str(s: &str) -> Result<String> {
    Ok(toml::Value::String(s.to_owned()).to_string())
}

fn config_text(
    hostname: &str,
    data_dir: &Path,
    addresses: &[IpAddr],
    admin: &Address,
) -> Result<String> {
    let data_dir = data_dir
        .to_str()
        .context("the data directory's path is not UTF-8")?;
    let mut t = String::new();
    t.push_str(
        "# Written by `tessera quickstart`. Every key: README.md, \"Running a real server\".\n",
    );
    t.push_str("# The mail host name: the MX target and the name in the certificate.\n");
    let _ = writeln!(t, "hostname = {}", toml_str(hostname)?);
    t.push_str("# Database, message bodies and local CA.\n");
    let _ = writeln!(t, "data_dir = {}", toml_str(data_dir)?);
    t.push_str("\n# Listeners: the defaults (every service on 0.0.0.0, standard ports).\n");
    t.push_str("# Certificates: from Let's Encrypt ([acme] below); until one is issued, and for\n");
    t.push_str("# names that do not resolve here, a local CA in <data_dir>/tls.\n");
    t.push_str("\n[dns]\n");
    if addresses.is_empty() {
        t.push_str("# No public address detected; set the mail host's public A/AAAA addresses:\n");
        t.push_str("# addresses = [\"203.0.113.5\", \"2001:db8::5\"]\n");
    } else {
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        t.push_str("# The mail host's public addresses (detected), published as its A/AAAA.\n");
        let _ = writeln!(t, "addresses = [{}]", list.join(", "));
    }
    t.push_str("\n[acme]\n");
    t.push_str(
        "# Certificates from Let's Encrypt for the mail host and each domain's client names\n",
    );
    t.push_str(
        "# (autoconfig., autodiscover., mta-sts., ...) that resolve to the addresses above;\n",
    );
    t.push_str(
        "# renewed at two thirds of their lifetime. `tessera cert status` shows the state.\n",
    );
    t.push_str("enabled = true\n");
    t.push_str(
        "# \"letsencrypt\", \"letsencrypt-staging\" (for a first try) or a directory URL.\n",
    );
    t.push_str("directory = \"letsencrypt\"\n");
    t.push_str("# Expiry and policy notices from the CA.\n");
    let _ = writeln!(t, "contact = {}", toml_str(&admin.to_string())?);
    Ok(t)
}

fn unit_text(exe: &Path, config_path: &Path, data_dir: &Path) -> String {
    format!(
        "# Written by `tessera quickstart`. Install: see the next steps it printed.
[Unit]
Description=Tessera mail server (SMTP, IMAP, POP3, HTTPS)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} --config {config} serve
User=tessera
Group=tessera
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=true
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
ProtectSystem=strict
ReadWritePaths={data}
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
MemoryDenyWriteExecute=true
SystemCallArchitectures=native
UMask=0027

[Install]
WantedBy=multi-user.target
",
        exe = exe.display(),
        config = config_path.display(),
        data = data_dir.display(),
    )
}

fn next_steps(config_path: &Path, unit_path: &Path, config: &Config, domain: &Domain) -> String {
    let data = config.data_dir.display();
    let cfg = config_path.display();
    format!(
        "Next steps:
  1. Create the DNS records above at your DNS provider (PTR: ask your hosting provider),
     then check them: tessera --config {cfg} dns check {domain}
  2. Run it in the foreground to try:  tessera --config {cfg} serve
  3. Or as a service, as the user `tessera`:
       useradd --system --home-dir {data} --shell /usr/sbin/nologin tessera
       chown -R tessera:tessera {data}
       cp {unit} /etc/systemd/system/ && systemctl daemon-reload
       systemctl enable --now tessera
Certificates: ACME is on: once the A/AAAA records above point here and ports 80 and 443
are reachable, Tessera gets Let's Encrypt certificates by itself (names that do not
resolve here are skipped and reported). Until then the local CA in {data}/tls serves,
which clients do not trust. Check with: tessera --config {cfg} cert status
",
        unit = unit_path.display(),
    )
}
