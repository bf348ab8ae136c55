//! `tessera serve` and `tessera demo`: open the store, load certificates, bind every
//! listener, run until SIGINT/SIGTERM, then let sessions finish and say goodbye.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use net::{ListenerSpec, LoginThrottle, Shutdown, TlsMode};
use store::{Address, Domain, NewAccount, SqliteStore, Store, password};
use tls::{CertSource, CertStore, PemPair};

use crate::config::{Config, Listener, MtaStsModeFile, Service};

/// How long sessions get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the local CA checks for new domains that need certificates.
const CERT_REFRESH: Duration = Duration::from_secs(30);
/// How often the store's garbage collection runs (bodies and message rows of expunged mail;
/// the first run is one interval after start-up).
const GC_INTERVAL: Duration = Duration::from_secs(3600);

/// The demo's domain and user.
const DEMO_DOMAIN: &str = "example.test";
const DEMO_USER: &str = "demo@example.test";
const DEMO_HOST: &str = "mail.example.test";
/// What the demo's host certificate covers besides [`DEMO_HOST`]: where its listeners are.
const DEMO_LOCAL_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Starts logging to standard error with `filter` unless `RUST_LOG` says otherwise.
pub fn init_tracing(filter: &str) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .try_init();
}

/// What the demo prints once its listeners are up.
pub struct DemoBanner {
    dir: PathBuf,
    user: String,
    password: String,
}

/// Runs the server until a shutdown signal.
pub async fn serve(config: Config, banner: Option<DemoBanner>) -> Result<()> {
    let store: Arc<SqliteStore> = SqliteStore::open(&config.data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let certs = open_certificates(&config)?;
    // The demo's clients connect to 127.0.0.1: its host certificate covers that address and
    // `localhost` too, so they verify without an /etc/hosts entry.
    let local_names: Arc<[String]> = match banner {
        Some(_) => DEMO_LOCAL_NAMES.iter().map(|n| n.to_string()).collect(),
        None => Arc::from([]),
    };
    refresh_local_certificates(&certs, &config.hostname, &local_names, &*store).await?;

    let shutdown = Shutdown::new();
    shutdown.install_signal_handlers();
    let throttle = Arc::new(LoginThrottle::new(config.throttle.clone()));
    // ACME runs for `serve` only, never for the demo.
    let acme = config.acme.as_ref().filter(|_| banner.is_none());
    let tls_config = certs.server_config(Vec::new());
    let mut https_alpn = vec![b"http/1.1".to_vec()];
    if acme.is_some() {
        // RFC 8737 §6.2: TLS-ALPN-01 validation arrives on the HTTPS listener (443).
        https_alpn.push(tls::ACME_TLS_ALPN.to_vec());
    }
    let https_config = certs.server_config(https_alpn);
    let handlers = Handlers::new(&config, store.clone(), throttle.clone(), certs.clone())?;
    let acme_task = match acme {
        Some(settings) => Some(spawn_acme(
            &config,
            settings,
            store.clone(),
            certs.clone(),
            handlers.web.http01_challenges(),
            shutdown.clone(),
        )?),
        None => None,
    };

    let mut bound = Vec::new();
    for listener in &config.listeners {
        let spec = spec_for(&config, listener);
        let socket = net::bind(&spec).await?;
        let addr = socket.local_addr().unwrap_or(listener.addr);
        bound.push((listener.service, addr));
        handlers.start(
            listener.service,
            socket,
            spec,
            tls_config.clone(),
            https_config.clone(),
            shutdown.clone(),
        );
    }

    let background = {
        let certs = certs.clone();
        let store = store.clone();
        let hostname = config.hostname.clone();
        let local_names = local_names.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CERT_REFRESH);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = refresh_local_certificates(&certs, &hostname, &local_names, &*store).await {
                            tracing::warn!(error = %e, "cannot refresh certificates");
                        }
                    }
                    _ = shutdown.triggered() => break,
                }
            }
        })
    };
    let collector = {
        let store = store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(GC_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => collect_garbage(&*store).await,
                    _ = shutdown.triggered() => break,
                }
            }
        })
    };
    let reloader =
        (!config.certificates.is_empty()).then(|| certs.spawn_reloader(Duration::from_secs(10)));
    let outbound = {
        let mut outbound = smtp::outbound::OutboundConfig::new(&config.hostname);
        outbound.resolver = config.smtp.resolver;
        apply_outbound_settings(&mut outbound, &config.outbound)?;
        smtp::outbound::Worker::new(store.clone(), outbound)
            .context("cannot set up outbound delivery")?
            .spawn(shutdown.clone())
    };

    tracing::info!(hostname = %config.hostname, data_dir = %config.data_dir.display(), "tessera started");
    match banner {
        Some(b) => print_banner(&b, &bound, &certs),
        None => {
            for (service, addr) in &bound {
                tracing::info!(listener = service.key(), %addr, "listening");
            }
        }
    }

    shutdown.triggered().await;
    tracing::info!("shutting down: letting sessions finish");
    let clean = shutdown.wait_sessions(SHUTDOWN_GRACE).await;
    if !clean {
        tracing::warn!("some sessions did not finish within {SHUTDOWN_GRACE:?}");
    }
    background.abort();
    collector.abort();
    outbound.abort();
    if let Some(task) = acme_task {
        task.abort();
    }
    if let Some(r) = reloader {
        r.abort();
    }
    Ok(())
}

/// One garbage collection of the store (what `tessera gc` runs): the bodies and message
/// rows of mail expunged from every mailbox and no longer queued, and the oldest entries of
/// long expunge logs. A failure is logged and retried at the next interval.
async fn collect_garbage(store: &dyn Store) {
    match store.collect_garbage(crate::admin::GC_MIN_BLOB_AGE).await {
        Ok(r) if r.messages > 0 || r.blobs > 0 || r.expunge_log > 0 => {
            tracing::info!(
                messages = r.messages,
                bodies = r.blobs,
                expunge_log = r.expunge_log,
                "garbage collected"
            );
        }
        Ok(_) => tracing::debug!("garbage collection: nothing to remove"),
        Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
    }
}

/// Applies `[outbound]` over the worker's production defaults.
fn apply_outbound_settings(
    outbound: &mut smtp::outbound::OutboundConfig,
    settings: &crate::config::OutboundSettings,
) -> Result<()> {
    if let Some(port) = settings.port {
        outbound.smtp_port = port;
    }
    if let Some(ca_file) = &settings.ca_file {
        let extra = smtp::outbound::load_roots(ca_file)
            .with_context(|| format!("key `outbound.ca_file` ({})", ca_file.display()))?;
        if extra.is_empty() {
            anyhow::bail!(
                "key `outbound.ca_file`: no certificate in {}",
                ca_file.display()
            );
        }
        let mut roots = (*outbound.tls_roots).clone();
        roots.roots.extend(extra.roots);
        outbound.tls_roots = Arc::new(roots);
    }
    if settings.source_ip.is_some() {
        outbound.source_ip = settings.source_ip;
    }
    if let Some(schedule) = &settings.retry_schedule {
        outbound.retry_schedule = schedule.clone();
    }
    if let Some(lifetime) = settings.max_lifetime {
        outbound.max_lifetime = lifetime;
    }
    if let Some(lease) = settings.lease {
        outbound.lease = lease;
    }
    Ok(())
}

fn spec_for(config: &Config, listener: &Listener) -> ListenerSpec {
    let mode = if listener.service.implicit_tls() {
        TlsMode::Implicit
    } else if listener.service == Service::Http {
        TlsMode::None
    } else {
        TlsMode::StartTls
    };
    let mut spec = ListenerSpec::new(listener.service.key(), listener.addr, mode);
    spec.max_connections = config.max_connections;
    spec.max_per_ip = config.max_connections_per_ip;
    spec
}

/// The protocol handlers, one per protocol and shared by its listeners (POP3's maildrop
/// locks and IMAP's \\Recent bookkeeping must be process-wide).
struct Handlers {
    mx: Arc<smtp::SmtpServer>,
    submission: Arc<smtp::SmtpServer>,
    imap: Arc<imap::ImapServer>,
    pop3: Arc<pop3::Pop3Server>,
    web: Arc<web::WebServer>,
}

impl Handlers {
    fn new(
        config: &Config,
        store: Arc<dyn Store>,
        throttle: Arc<LoginThrottle>,
        certs: Arc<CertStore>,
    ) -> Result<Handlers> {
        let smtp_config = smtp::SmtpConfig {
            hostname: config.hostname.clone(),
            max_message_size: config.smtp.max_message_size,
            max_recipients: config.smtp.max_recipients,
            resolver: config.smtp.resolver,
            dmarc_reject: config.smtp.dmarc_reject,
            ..smtp::SmtpConfig::default()
        };
        let mx = smtp::SmtpServer::new(
            smtp::SmtpMode::Mx,
            store.clone(),
            throttle.clone(),
            smtp_config.clone(),
        )
        .context("cannot set up SMTP")?;
        let submission = smtp::SmtpServer::new(
            smtp::SmtpMode::Submission,
            store.clone(),
            throttle.clone(),
            smtp_config,
        )
        .context("cannot set up submission")?;
        let imap = imap::ImapServer::new(
            store.clone(),
            throttle.clone(),
            imap::ImapConfig {
                hostname: config.hostname.clone(),
                ..imap::ImapConfig::default()
            },
        );
        let web = web::WebServer::new(store.clone(), certs, web_config(config));
        let pop3 = pop3::Pop3Server::new(
            store,
            throttle,
            pop3::Pop3Config {
                hostname: config.hostname.clone(),
                ..pop3::Pop3Config::default()
            },
        );
        Ok(Handlers {
            mx: Arc::new(mx),
            submission: Arc::new(submission),
            imap: Arc::new(imap),
            pop3: Arc::new(pop3),
            web: Arc::new(web),
        })
    }

    /// Spawns the accept loop of one listener.
    fn start(
        &self,
        service: Service,
        socket: tokio::net::TcpListener,
        spec: ListenerSpec,
        tls_config: Arc<tls::rustls::ServerConfig>,
        https_config: Arc<tls::rustls::ServerConfig>,
        shutdown: Shutdown,
    ) {
        let tls = Some(tls_config);
        match service {
            Service::Smtp => {
                tokio::spawn(net::serve(socket, spec, tls, self.mx.clone(), shutdown));
            }
            Service::Submission | Service::Submissions => {
                tokio::spawn(net::serve(
                    socket,
                    spec,
                    tls,
                    self.submission.clone(),
                    shutdown,
                ));
            }
            Service::Imap | Service::Imaps => {
                tokio::spawn(net::serve(socket, spec, tls, self.imap.clone(), shutdown));
            }
            Service::Pop3 | Service::Pop3s => {
                tokio::spawn(net::serve(socket, spec, tls, self.pop3.clone(), shutdown));
            }
            Service::Http => {
                tokio::spawn(net::serve(socket, spec, None, self.web.clone(), shutdown));
            }
            Service::Https => {
                let tls = Some(https_config);
                tokio::spawn(net::serve(socket, spec, tls, self.web.clone(), shutdown));
            }
        }
    }
}

/// The web endpoints advertise the ports clients reach: those of the configured listeners.
fn web_config(config: &Config) -> web::WebConfig {
    let port = |service: Service| {
        config
            .listeners
            .iter()
            .find(|l| l.service == service)
            .map_or(0, |l| l.addr.port())
    };
    web::WebConfig {
        hostname: config.hostname.clone(),
        ports: web::ClientPorts {
            imaps: port(Service::Imaps),
            imap: port(Service::Imap),
            pop3s: port(Service::Pop3s),
            pop3: port(Service::Pop3),
            submissions: port(Service::Submissions),
            submission: port(Service::Submission),
        },
        https_port: port(Service::Https),
        mta_sts_mode: match config.mta_sts_mode {
            MtaStsModeFile::Testing => web::MtaStsMode::Testing,
            MtaStsModeFile::Enforce => web::MtaStsMode::Enforce,
            MtaStsModeFile::None => web::MtaStsMode::None,
        },
        mta_sts_max_age: config.mta_sts_max_age,
        ..web::WebConfig::default()
    }
}

fn open_certificates(config: &Config) -> Result<Arc<CertStore>> {
    let source = if config.certificates.is_empty() {
        CertSource::LocalCa {
            dir: config.data_dir.join("tls"),
        }
    } else {
        CertSource::Files(
            config
                .certificates
                .iter()
                .map(|(cert, key)| PemPair {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect(),
        )
    };
    Ok(CertStore::new(source)?)
}

/// The names served, one group per certificate: the mail host (with
/// `autoconfig.<its base domain>`), then each hosted domain's names.
pub async fn certificate_groups(hostname: &str, store: &dyn Store) -> Result<Vec<Vec<String>>> {
    let domains: Vec<String> = store
        .list_domains()
        .await?
        .into_iter()
        .map(|d| d.name.to_string())
        .collect();
    let mut groups = CertStore::name_groups(hostname, &domains);
    // Thunderbird's MX-based look-up asks autoconfig.<base domain of the mail host>; when
    // that base domain is hosted, its own group has the name already.
    let extra: Vec<String> = web::extra_certificate_names(hostname)
        .into_iter()
        .filter(|name| !groups.iter().flatten().any(|n| n == name))
        .collect();
    if let Some(host_group) = groups.first_mut() {
        host_group.extend(extra);
    }
    Ok(groups)
}

/// Starts the ACME renewer: it serves stored certificates at once, then orders and renews.
fn spawn_acme(
    config: &Config,
    settings: &crate::config::AcmeSettings,
    store: Arc<SqliteStore>,
    certs: Arc<CertStore>,
    http01: Arc<web::Http01Challenges>,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>> {
    if config.dns_addresses.is_empty() {
        tracing::warn!(
            "ACME: `[dns] addresses` is not set, so no name can be checked against this server \
             and none is ordered; set the server's public addresses"
        );
    }
    let resolver = dns::HickoryResolver::new(settings.resolver, Duration::from_secs(5))
        .context("key `acme.resolver`")?;
    let mut acme_config =
        acme::AcmeConfig::new(settings.directory_url.clone(), config.dns_addresses.clone());
    acme_config.contact = settings.contact.clone();
    acme_config.ca_file = settings.ca_file.clone();
    acme_config.keep_key = settings.keep_key;
    // A challenge type whose listener is off cannot be answered: leave it out.
    let listening = |service: Service| config.listeners.iter().any(|l| l.service == service);
    acme_config.challenges = settings
        .challenges
        .iter()
        .copied()
        .filter(|kind| match kind {
            acme::ChallengeKind::TlsAlpn01 => listening(Service::Https),
            acme::ChallengeKind::Http01 => listening(Service::Http),
        })
        .collect();
    if acme_config.challenges.is_empty() {
        anyhow::bail!(
            "ACME is on but neither listener its challenges need is: turn on `listen.https` \
             (tls-alpn-01) or `listen.http` (http-01), or set `acme.enabled = false`"
        );
    }
    let renewer = acme::Renewer::new(
        acme_config,
        store.clone(),
        certs,
        http01,
        Arc::new(resolver),
    );
    let hostname = config.hostname.clone();
    let groups = move || {
        let store = store.clone();
        let hostname = hostname.clone();
        async move {
            match certificate_groups(&hostname, &*store).await {
                Ok(groups) => groups
                    .iter()
                    .filter_map(|g| acme::CertificateGroup::new(g))
                    .collect(),
                Err(error) => {
                    tracing::warn!(%error, "ACME: cannot list the hosted domains");
                    Vec::new()
                }
            }
        }
    };
    tracing::info!(directory = %settings.directory_url, "ACME on");
    Ok(tokio::spawn(async move {
        renewer
            .run(groups, async move { shutdown.triggered().await })
            .await;
    }))
}

/// In local-CA mode, makes sure every served name has a certificate (new domains get one),
/// the mail host's also covering `extra_host_names`. Names an ACME certificate serves keep it.
async fn refresh_local_certificates(
    certs: &Arc<CertStore>,
    hostname: &str,
    extra_host_names: &[String],
    store: &dyn Store,
) -> Result<()> {
    let mut groups = certificate_groups(hostname, store).await?;
    if let Some(host_group) = groups.first_mut() {
        host_group.extend(extra_host_names.iter().cloned());
    }
    let certs = certs.clone();
    tokio::task::spawn_blocking(move || certs.ensure_local_names(&groups))
        .await
        .context("certificate task failed")??;
    Ok(())
}

/// `tessera demo`: a complete server on 127.0.0.1 with ports + 10000.
pub async fn demo(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let config_path = dir.join("tessera.toml");
    if !config_path.exists() {
        std::fs::write(&config_path, demo_config(&dir))
            .with_context(|| format!("cannot write {}", config_path.display()))?;
    }
    let config = Config::load(&config_path)?;
    init_tracing(&config.log_level);

    let password_file = dir.join("demo-password.txt");
    {
        let store = SqliteStore::open(&config.data_dir).await?;
        let domain = Domain::parse(DEMO_DOMAIN)?;
        if !store.is_hosted_domain(&domain).await? {
            store.add_domain(&domain).await?;
        }
        let user = Address::parse(DEMO_USER)?;
        if store.account(&user).await?.is_none() {
            let pw = password::generate_password();
            store
                .add_account(NewAccount {
                    address: user,
                    password_hash: password::hash_password(&pw)?,
                    display_name: "Demo User".into(),
                    quota_bytes: 0,
                })
                .await?;
            write_private(&password_file, &pw)?;
        }
    }
    let password = std::fs::read_to_string(&password_file)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown: reset it with `tessera user passwd`)".into());
    serve(
        config,
        Some(DemoBanner {
            dir,
            user: DEMO_USER.into(),
            password,
        }),
    )
    .await
}

fn demo_config(dir: &Path) -> String {
    let mut listen = String::new();
    for (service, key, port) in Service::ALL {
        let _ = service;
        listen.push_str(&format!("{key} = \"127.0.0.1:{}\"\n", port + 10000));
    }
    format!(
        "# Tessera demo configuration (written by `tessera demo`).\n\
         hostname = \"{DEMO_HOST}\"\n\
         data_dir = \"{}\"\n\n\
         [listen]\n{listen}\n\
         [auth]\n\
         # Failed logins are delayed after this many attempts.\n\
         free_failures = 3\n",
        toml_escape(&dir.display().to_string())
    )
}

fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{text}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn describe(service: Service) -> (&'static str, &'static str) {
    match service {
        Service::Smtp => ("SMTP (incoming, MX)", "STARTTLS"),
        Service::Submission => ("SMTP submission", "STARTTLS, login required"),
        Service::Submissions => ("SMTP submission", "TLS, login required"),
        Service::Imap => ("IMAP", "STARTTLS"),
        Service::Imaps => ("IMAP", "TLS"),
        Service::Pop3 => ("POP3", "STLS"),
        Service::Pop3s => ("POP3", "TLS"),
        Service::Http => ("HTTP", "autoconfig, MTA-STS"),
        Service::Https => ("HTTPS", "setup page, autoconfig"),
    }
}

fn print_banner(b: &DemoBanner, bound: &[(Service, SocketAddr)], certs: &CertStore) {
    println!(
        "Tessera demo is running (config, data and CA in {})",
        b.dir.display()
    );
    println!();
    for (service, addr) in bound {
        let (what, security) = describe(*service);
        println!("  {what:<22} {addr:<18} {security}");
    }
    println!();
    println!(
        "  mail host  {DEMO_HOST} (certificates are issued for it, for {DEMO_DOMAIN}, and for \
         localhost and 127.0.0.1)"
    );
    println!("  login      {}", b.user);
    println!("  password   {}", b.password);
    if let Some((_, addr)) = bound.iter().find(|(s, _)| *s == Service::Https) {
        println!("  setup      https://{DEMO_HOST}:{}/setup", addr.port());
    }
    if let Some(ca) = certs.ca_path() {
        println!("  CA         {} (trust it in your client)", ca.display());
    }
    println!();
    println!(
        "Manage it:  tessera --config {} user add bob@{DEMO_DOMAIN} --password-stdin",
        b.dir.join("tessera.toml").display()
    );
    println!("Stop it with Ctrl-C.");
}
