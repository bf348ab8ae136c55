//! Outbound delivery: the queue worker that sends queued messages to other mail servers.
//!
//! Standards: RFC 5321 (SMTP client, §4.5.4 retry strategy, §5 MX routing), RFC 7505 (null MX),
//! RFC 3207 (STARTTLS), RFC 8461 (MTA-STS), RFC 2920 (PIPELINING), RFC 1870 (SIZE),
//! RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 3461/3464/6522 (DSNs), RFC 3834
//! (Auto-Submitted).
//!
//! Layout: [`client`] speaks SMTP (reply parsing is pure), [`route`] finds MX hosts,
//! [`mta_sts`] fetches and caches policies, [`dsn`] builds reports, `deliver` runs one
//! connection for one domain, and [`Worker`] claims due messages from the store.
//!
//! Implementation notes (invariants):
//! - A message is worked on only under a claim (lease) taken from the store in one atomic
//!   statement; a worker that dies leaves a lease that lapses, then another claim retries it.
//! - Results are recorded per recipient before anything else happens (DSNs, removal). A crash
//!   after the remote's `250` but before the record means the next claim sends it again: at
//!   most one duplicate, never a loss (RFC 5321 §6.1 prefers duplicates to loss).
//! - Failure DSNs are marked sent only after they were delivered or queued: a crash in between
//!   sends one again rather than none. Never a DSN to the null sender, nor for NOTIFY=NEVER.
//! - One connection per destination domain carries all that domain's recipients of a message;
//!   a per-domain semaphore limits connections to one domain across messages.
//! - 4xx replies, connection and DNS trouble defer a recipient on the back-off schedule until
//!   the message expires; 5xx, null MX, NXDOMAIN and unmet SMTPUTF8/8BITMIME/SIZE needs fail
//!   it permanently.
//! - TLS: STARTTLS whenever offered (opportunistic: a certificate that does not validate is
//!   accepted unless a policy demands validation). MTA-STS `enforce` refuses MX hosts not
//!   matching the policy, without STARTTLS, or failing certificate validation; those
//!   recipients are deferred with the reason. DANE (RFC 7672) is not implemented yet.
//! - DKIM: at delivery, every active key of the sender's domain in the store (RSA and
//!   Ed25519, mail-auth) signs the message; [`OutboundConfig::signer`] is an extra hook.

pub mod client;
mod deliver;
pub mod dsn;
pub mod mta_sts;
pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use store::{
    Address, DsnNotify, NewMessage, QueueEntry, QueuedMessage, QueuedRecipient, RecipientOutcome,
    RecipientResult, RecipientState, Store, unix_now,
};
use tls::rustls;
use tokio::sync::Semaphore;

/// Signs a message at delivery time (the DKIM hook). Returns header lines (CRLF-terminated)
/// to prepend, or `None` to send the message as it is.
pub trait MessageSigner: Send + Sync + std::fmt::Debug {
    /// Signs `message` sent by `sender_domain`.
    fn sign(&self, sender_domain: &str, message: &[u8]) -> Option<Vec<u8>>;
}

/// Settings of the outbound worker.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Our host name: EHLO, DSN `Reporting-MTA`, `MAILER-DAEMON@` of DSNs.
    pub hostname: String,
    /// This node's id in queue claims (unique per running process).
    pub node_id: String,
    /// DNS server for MX/A/AAAA/TXT; `None` uses the system's resolver.
    pub resolver: Option<SocketAddr>,
    /// Each DNS query.
    pub dns_timeout: Duration,
    /// Trust roots for certificate validation (MTA-STS policy fetch and MX certificates).
    pub tls_roots: Arc<rustls::RootCertStore>,
    /// The SMTP port of remote servers (25; tests use another).
    pub smtp_port: u16,
    /// The HTTPS port of `mta-sts.<domain>` (443; tests use another).
    pub mta_sts_port: u16,
    /// Local address to connect from (SPF of multi-homed hosts), if any.
    pub source_ip: Option<IpAddr>,
    /// Waits after failed attempts: entry `n` after the `n+1`-th; the last repeats.
    pub retry_schedule: Vec<Duration>,
    /// Give up this long after queueing at the latest (the message's own expiry also counts).
    pub max_lifetime: Duration,
    /// Send one delay notice when a message is still undelivered this long after queueing.
    pub delay_notice_after: Option<Duration>,
    /// How often the queue is looked at.
    pub poll_interval: Duration,
    /// How long a claim holds (a crashed worker's messages wait this long).
    pub lease: Duration,
    /// Messages in flight at once.
    pub max_messages: usize,
    /// Connections to one destination domain at once.
    pub per_domain_connections: usize,
    /// Connecting to a host.
    pub connect_timeout: Duration,
    /// Waiting for one reply.
    pub command_timeout: Duration,
    /// DKIM hook: signs at delivery time when set.
    pub signer: Option<Arc<dyn MessageSigner>>,
}

impl OutboundConfig {
    /// Production defaults for `hostname`: port 25 and 443, system resolver, trust roots from
    /// the system bundle (`/etc/ssl/certs/ca-certificates.crt` if readable), back-off 1m, 5m,
    /// 15m, 30m, 1h, 2h, 4h, then every 4h for 5 days, a delay notice after 4 hours.
    pub fn new(hostname: &str) -> OutboundConfig {
        let roots = load_roots(Path::new("/etc/ssl/certs/ca-certificates.crt"))
            .unwrap_or_else(|_| rustls::RootCertStore::empty());
        OutboundConfig {
            hostname: hostname.to_string(),
            node_id: format!(
                "{hostname}/{}/{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            resolver: None,
            dns_timeout: Duration::from_secs(5),
            tls_roots: Arc::new(roots),
            smtp_port: 25,
            mta_sts_port: 443,
            source_ip: None,
            retry_schedule: store::DEFAULT_RETRY_SCHEDULE_SECS
                .iter()
                .map(|s| Duration::from_secs(s.unsigned_abs()))
                .collect(),
            max_lifetime: Duration::from_secs(store::DEFAULT_QUEUE_LIFETIME_SECS.unsigned_abs()),
            delay_notice_after: Some(Duration::from_secs(4 * 3600)),
            poll_interval: Duration::from_secs(5),
            lease: Duration::from_secs(15 * 60),
            max_messages: 32,
            per_domain_connections: 4,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(5 * 60),
            signer: None,
        }
    }
}

/// Reads PEM certificates into a root store (e.g. a local CA for tests, the system bundle).
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, OutboundError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| OutboundError::Config(format!("cannot read {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| OutboundError::Config(format!("bad PEM in {}: {e}", path.display())))?;
        // Bundles contain the odd certificate rustls refuses; skip those.
        let _ = roots.add(cert);
    }
    Ok(roots)
}

/// Why the worker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// A setting is wrong.
    #[error("invalid outbound setting: {0}")]
    Config(String),
    /// The resolver could not be built.
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
}

/// State shared by the worker's tasks.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: OutboundConfig,
    pub(crate) resolver: TokioResolver,
    pub(crate) policies: mta_sts::PolicyCache,
    /// Validating TLS client configuration.
    pub(crate) tls_verified: Arc<rustls::ClientConfig>,
    /// Opportunistic TLS: any certificate (signatures still checked).
    pub(crate) tls_any: Arc<rustls::ClientConfig>,
    domains: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Shared {
    fn domain_permits(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_domain_connections.max(1))))
            .clone()
    }
}

/// The outbound queue worker.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Builds the worker (resolver, TLS configurations); nothing runs until [`Worker::spawn`].
    pub fn new(store: Arc<dyn Store>, config: OutboundConfig) -> Result<Worker, OutboundError> {
        if config.hostname.is_empty() || !config.hostname.is_ascii() {
            return Err(OutboundError::Config(format!(
                "hostname {:?} must be a non-empty ASCII name",
                config.hostname
            )));
        }
        if config.max_messages == 0 {
            return Err(OutboundError::Config(
                "max_messages must be positive".into(),
            ));
        }
        let resolver = route::resolver(config.resolver, config.dns_timeout)
            .map_err(OutboundError::Resolver)?;
        let tls_verified = Arc::new(
            rustls::ClientConfig::builder_with_provider(tls::provider())
                .with_protocol_versions(tls::PROTOCOL_VERSIONS)
                .map_err(|e| OutboundError::Config(e.to_string()))?
                .with_root_certificates(config.tls_roots.clone())
                .with_no_client_auth(),
        );
        let tls_any = Arc::new(
            rustls::ClientConfig::builder_with_provider(tls::provider())
                .with_protocol_versions(tls::PROTOCOL_VERSIONS)
                .map_err(|e| OutboundError::Config(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    deliver::AnyCertificate(tls::provider()),
                ))
                .with_no_client_auth(),
        );
        Ok(Worker {
            shared: Arc::new(Shared {
                store,
                config,
                resolver,
                policies: mta_sts::PolicyCache::default(),
                tls_verified,
                tls_any,
                domains: Mutex::new(HashMap::new()),
            }),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Makes the worker look at the queue now (after an enqueue, `queue flush`).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the worker until `shutdown`; in-flight deliveries finish their current step.
    pub fn spawn(self, shutdown: net::Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(self.shared.config.max_messages));
            loop {
                let free = permits.available_permits();
                if free > 0 {
                    match self
                        .shared
                        .store
                        .claim_queue(
                            &self.shared.config.node_id,
                            self.shared.config.lease.as_secs().max(1),
                            free,
                        )
                        .await
                    {
                        Ok(entries) => {
                            for entry in entries {
                                let Ok(permit) = permits.clone().acquire_owned().await else {
                                    return;
                                };
                                let shared = self.shared.clone();
                                tokio::spawn(async move {
                                    process(&shared, entry).await;
                                    drop(permit);
                                });
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot claim queued messages"),
                    }
                }
                tokio::select! {
                    _ = shutdown.triggered() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.shared.config.poll_interval) => {}
                }
            }
            tracing::info!("outbound worker stopped");
        })
    }

    /// One pass: claims what is due and delivers it, waiting for the deliveries. Returns how
    /// many messages were worked on (for tests and `queue flush` without a server).
    pub async fn run_once(&self) -> Result<usize, store::StoreError> {
        let entries = self
            .shared
            .store
            .claim_queue(
                &self.shared.config.node_id,
                self.shared.config.lease.as_secs().max(1),
                self.shared.config.max_messages,
            )
            .await?;
        let n = entries.len();
        let mut tasks = tokio::task::JoinSet::new();
        for entry in entries {
            let shared = self.shared.clone();
            tasks.spawn(async move { process(&shared, entry).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }
}

/// The domain of an address, lower-case.
fn domain_of(address: &Address) -> String {
    address.domain().as_str().to_ascii_lowercase()
}

/// Works on one claimed message: deliver, record, notify, then remove or release.
async fn process(shared: &Arc<Shared>, entry: QueueEntry) {
    let id = entry.id;
    if let Err(e) = attempt(shared, &entry).await {
        tracing::error!(queue_id = %id, error = %e, "delivery attempt failed internally");
    }
    match shared.store.queue_entry(id).await {
        Ok(Some(after)) => {
            if let Err(e) = notify_and_finish(shared, after).await {
                tracing::error!(queue_id = %id, error = %e, "cannot finish queued message");
                let _ = shared.store.release_claim(id, &shared.config.node_id).await;
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot read queued message");
            let _ = shared.store.release_claim(id, &shared.config.node_id).await;
        }
    }
}

/// The message's expiry: its own, capped by the configured lifetime.
fn expiry(shared: &Shared, entry: &QueueEntry) -> i64 {
    let lifetime = i64::try_from(shared.config.max_lifetime.as_secs()).unwrap_or(i64::MAX);
    entry
        .expires_at
        .min(entry.created_at.saturating_add(lifetime))
}

/// Delivers the pending recipients and records the outcome.
async fn attempt(shared: &Arc<Shared>, entry: &QueueEntry) -> Result<(), store::StoreError> {
    let pending: Vec<&store::QueueRecipientStatus> = entry
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Pending)
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let now = unix_now();
    let expires = expiry(shared, entry);
    if now >= expires {
        let results: Vec<RecipientResult> = pending
            .iter()
            .map(|r| RecipientResult {
                address: r.address.clone(),
                outcome: RecipientOutcome::Failed {
                    error: format!(
                        "delivery time expired (queued too long); last error: {}",
                        r.last_error.as_deref().unwrap_or("none")
                    ),
                },
            })
            .collect();
        return shared.store.record_attempt(entry.id, &results).await;
    }
    let body = shared.store.read_blob(&entry.blob).await?;
    let body = match &entry.sender {
        Some(sender) => dkim_sign(shared, &domain_of(sender), body).await,
        None => body,
    };
    let body = match (&shared.config.signer, &entry.sender) {
        (Some(signer), Some(sender)) => match signer.sign(&domain_of(sender), &body) {
            Some(mut signed) => {
                signed.extend_from_slice(&body);
                signed
            }
            None => body,
        },
        _ => body,
    };
    let body = Arc::new(body);
    let mut by_domain: BTreeMap<String, Vec<Address>> = BTreeMap::new();
    for r in &pending {
        by_domain
            .entry(domain_of(&r.address))
            .or_default()
            .push(r.address.clone());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (domain, rcpts) in by_domain {
        let permits = shared.domain_permits(&domain);
        let sender = entry.sender.clone();
        let body = body.clone();
        let work = deliver::Job {
            domain,
            sender,
            recipients: rcpts,
            body,
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            deliver::deliver_domain(&shared, &work).await
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => results.extend(r),
            Err(e) => tracing::error!(error = %e, "delivery task failed"),
        }
    }
    // Temporary outcomes get their next attempt from the schedule, never past the expiry.
    let attempts: HashMap<&Address, u32> =
        pending.iter().map(|r| (&r.address, r.attempts)).collect();
    let results: Vec<RecipientResult> = results
        .into_iter()
        .map(|(address, outcome)| {
            let outcome = match outcome {
                deliver::Outcome::Delivered => RecipientOutcome::Delivered,
                deliver::Outcome::Permanent(error) => RecipientOutcome::Failed { error },
                deliver::Outcome::Temporary(error) => {
                    let n = attempts.get(&address).copied().unwrap_or(0) + 1;
                    let schedule: Vec<i64> = shared
                        .config
                        .retry_schedule
                        .iter()
                        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1))
                        .collect();
                    let wait = store::retry_delay(&schedule, n);
                    RecipientOutcome::Deferred {
                        error,
                        next_attempt: now.saturating_add(wait).min(expires),
                    }
                }
            };
            RecipientResult { address, outcome }
        })
        .collect();
    shared.store.record_attempt(entry.id, &results).await
}

/// Signs `body` with every active DKIM key of the sender's domain (RFC 6376, RSA and
/// Ed25519 per RFC 8463) when the store has keys for it; the signatures are prepended.
/// Signing happens at delivery time (each attempt signs afresh), so a key rotated while a
/// message waits signs with the current key.
async fn dkim_sign(shared: &Shared, domain: &str, body: Vec<u8>) -> Vec<u8> {
    use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;
    let Ok(parsed) = store::Domain::parse(domain) else {
        return body;
    };
    let keys = match shared.store.dkim_keys(&parsed).await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(domain, error = %e, "cannot read DKIM keys; sending unsigned");
            return body;
        }
    };
    // RFC 6376 §5.4: the headers signed; From is required.
    const SIGNED: [&str; 8] = [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
    ];
    let mut headers = Vec::new();
    for key in keys.iter().filter(|k| k.is_active()) {
        let signature = match key.algorithm {
            store::DkimAlgorithm::RsaSha256 => RsaKey::<Sha256>::from_key_der(
                tls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.private_key.as_slice().into()),
            )
            .and_then(|k| {
                DkimSigner::from_key(k)
                    .domain(domain)
                    .selector(&key.selector)
                    .headers(SIGNED)
                    .sign(&body)
            }),
            store::DkimAlgorithm::Ed25519Sha256 => Ed25519Key::from_pkcs8_der(&key.private_key)
                .and_then(|k| {
                    DkimSigner::from_key(k)
                        .domain(domain)
                        .selector(&key.selector)
                        .headers(SIGNED)
                        .sign(&body)
                }),
        };
        match signature {
            Ok(sig) => headers.extend_from_slice(sig.to_header().as_bytes()),
            Err(e) => {
                tracing::warn!(domain, selector = %key.selector, error = %e, "DKIM signing failed")
            }
        }
    }
    if headers.is_empty() {
        return body;
    }
    headers.extend_from_slice(&body);
    headers
}

/// Sends due DSNs, then removes a finished message or releases the claim.
async fn notify_and_finish(shared: &Shared, entry: QueueEntry) -> Result<(), store::StoreError> {
    let now = unix_now();
    let undone: Vec<&store::QueueRecipientStatus> = entry
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Failed && !r.dsn_sent)
        .collect();
    if !undone.is_empty() {
        let wanted: Vec<dsn::ReportedRecipient> = undone
            .iter()
            .filter(|r| wants(r.notify, DsnNotify::FAILURE))
            .map(|r| dsn::ReportedRecipient {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                error: r.last_error.clone().unwrap_or_default(),
            })
            .collect();
        if entry.sender.is_some() && !wanted.is_empty() {
            send_dsn(shared, &entry, dsn::Action::Failed, &wanted, now).await?;
        }
        let addresses: Vec<Address> = undone.iter().map(|r| r.address.clone()).collect();
        shared.store.mark_dsn_sent(entry.id, &addresses).await?;
    }
    let pending: Vec<&store::QueueRecipientStatus> = entry
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Pending)
        .collect();
    if pending.is_empty() {
        shared.store.remove_queued(entry.id).await?;
        return Ok(());
    }
    if let Some(after) = shared.config.delay_notice_after
        && !entry.delay_notified
        && now - entry.created_at >= i64::try_from(after.as_secs()).unwrap_or(i64::MAX)
    {
        let wanted: Vec<dsn::ReportedRecipient> = pending
            .iter()
            .filter(|r| wants(r.notify, DsnNotify::DELAY))
            .map(|r| dsn::ReportedRecipient {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                error: r.last_error.clone().unwrap_or_default(),
            })
            .collect();
        if entry.sender.is_some() && !wanted.is_empty() {
            send_dsn(shared, &entry, dsn::Action::Delayed, &wanted, now).await?;
        }
        shared.store.mark_delay_notified(entry.id).await?;
    }
    shared
        .store
        .release_claim(entry.id, &shared.config.node_id)
        .await
}

/// RFC 3461 §4.1: with no NOTIFY the MTA decides (failure and delay notices); NEVER means none.
fn wants(notify: DsnNotify, bit: u8) -> bool {
    if notify.0 & DsnNotify::NEVER != 0 {
        return false;
    }
    notify.0 == 0 || notify.0 & bit != 0
}

/// Delivers a DSN to the entry's sender: into the INBOX when the sender is hosted here, else
/// through the queue with the null sender.
async fn send_dsn(
    shared: &Shared,
    entry: &QueueEntry,
    action: dsn::Action,
    recipients: &[dsn::ReportedRecipient],
    now: i64,
) -> Result<(), store::StoreError> {
    let Some(sender) = &entry.sender else {
        return Ok(());
    };
    let original = shared.store.read_blob(&entry.blob).await?;
    let report = dsn::build(
        &shared.config.hostname,
        entry,
        &original,
        action,
        recipients,
        now,
    );
    let accounts = shared.store.resolve_recipient(sender).await?;
    if !accounts.is_empty() {
        for r in shared
            .store
            .deliver(&accounts, NewMessage::now(report))
            .await?
        {
            if let Err(e) = r {
                tracing::warn!(error = %e, "DSN not stored for one account");
            }
        }
    } else {
        shared
            .store
            .enqueue(QueuedMessage {
                sender: None,
                recipients: vec![QueuedRecipient::new(sender.clone())],
                bytes: Arc::new(report),
                account: None,
                dsn_envid: None,
                dsn_ret: None,
                expires_at: now + store::DEFAULT_QUEUE_LIFETIME_SECS,
            })
            .await?;
    }
    tracing::info!(queue_id = %entry.id, to = %sender, ?action, "DSN sent");
    Ok(())
}
