//! The renewer: decides which certificate is due, checks DNS, orders, installs,
//! records the outcome, and schedules the next look.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use store::{AcmeCertificate, Store};
use tokio::sync::Mutex;

use crate::challenge::{Published, tls_alpn_certificate};
use crate::{AcmeConfig, AcmeError};

/// Outcome names stored in `last_result`.
const ISSUED: &str = "issued";
const FAILED: &str = "failed";
const SKIPPED: &str = "skipped";
/// Reason prefix of a name left out because the CA failed to validate it.
const VALIDATION_FAILED: &str = "validation failed at the CA:";
/// Consecutive failures after which names that failed validation are left out.
const EXCLUDE_AFTER_FAILURES: u32 = 2;
/// RFC 8555 §6.7: the request's account is unknown to the CA.
const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// The names one certificate should cover; `id` is the first name (the mail host or domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateGroup {
    /// The row key in the store: the group's first name.
    pub id: String,
    /// Every wanted name, lowercase, first = `id`.
    pub names: Vec<String>,
}

impl CertificateGroup {
    /// A group from its names (lowercased, trailing dots dropped, duplicates removed); `None`
    /// when empty.
    pub fn new(names: &[String]) -> Option<CertificateGroup> {
        let mut clean: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !name.is_empty() && !clean.contains(&name) {
                clean.push(name);
            }
        }
        Some(CertificateGroup {
            id: clean.first()?.clone(),
            names: clean,
        })
    }
}

/// What one look at a certificate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A certificate was issued and installed for these names.
    Issued(Vec<String>),
    /// The order failed; the previous certificate (if any) stays; next try at this Unix time.
    Failed { error: String, retry_at: i64 },
    /// No wanted name resolves to this server; nothing was ordered.
    NothingResolves,
    /// The certificate is current; renewal is due at this Unix time.
    Current { renew_at: i64 },
    /// Waiting out the back-off after a failure until this Unix time.
    Waiting { until: i64 },
}

/// One certificate's outcome of [`Renewer::run_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The group's id.
    pub id: String,
    /// What happened.
    pub action: Action,
    /// Names left out because they do not resolve here, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Renew at two thirds of the lifetime: `not_before + 2/3 (not_after - not_before)`.
pub fn renewal_time(not_before: i64, not_after: i64) -> i64 {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add(lifetime / 3 * 2 + (lifetime % 3) * 2 / 3)
}

/// The wait after `failures` consecutive failures (at least 1): `base * 2^(failures-1)`,
/// at most `max`.
pub fn retry_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    base.saturating_mul(1u32 << doublings.min(31)).min(max)
}

fn unix_now() -> i64 {
    store::unix_now()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Orders and renews certificates; see the crate documentation for the rules.
pub struct Renewer {
    config: AcmeConfig,
    store: Arc<dyn Store>,
    certs: Arc<tls::CertStore>,
    http01: Arc<web::Http01Challenges>,
    resolver: Arc<dyn dns::Resolver>,
    account: Mutex<Option<Account>>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("directory", &self.config.directory_url)
            .finish_non_exhaustive()
    }
}

impl Renewer {
    /// A renewer over the store (state), the SNI store (where certificates and TLS-ALPN-01
    /// responses go), the HTTP-01 map of the port-80 listener, and a resolver for the check.
    pub fn new(
        config: AcmeConfig,
        store: Arc<dyn Store>,
        certs: Arc<tls::CertStore>,
        http01: Arc<web::Http01Challenges>,
        resolver: Arc<dyn dns::Resolver>,
    ) -> Renewer {
        // instant-acme's HTTP client builds its rustls configuration with the process-wide
        // provider; make it aws-lc-rs like everything else (an error means one is installed).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Renewer {
            config,
            store,
            certs,
            http01,
            resolver,
            account: Mutex::new(None),
        }
    }

    /// Serves every stored, unexpired certificate (at start-up, before the first order).
    /// Returns how many were installed; unusable rows are logged and skipped.
    pub async fn install_stored(&self) -> Result<usize, AcmeError> {
        let now = unix_now();
        let mut installed = 0;
        for row in self.store.acme_certificates().await? {
            let (Some(chain), Some(key)) = (&row.chain_pem, &row.key_pem) else {
                continue;
            };
            if row.not_after.is_some_and(|t| t <= now) {
                tracing::warn!(id = %row.id, "stored ACME certificate has expired; not served");
                continue;
            }
            match tls::certified_key_from_pem(chain, key) {
                Ok(certified) => {
                    self.certs.insert(&row.names, certified);
                    installed += 1;
                }
                Err(error) => {
                    tracing::warn!(id = %row.id, %error, "stored ACME certificate unusable")
                }
            }
        }
        Ok(installed)
    }

    /// Looks at every group once: orders what is due, skips names that do not resolve here.
    pub async fn run_once(&self, groups: &[CertificateGroup]) -> Vec<Report> {
        let stored: HashMap<String, AcmeCertificate> = match self.store.acme_certificates().await {
            Ok(rows) => rows.into_iter().map(|r| (r.id.clone(), r)).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read ACME state");
                return Vec::new();
            }
        };
        let mut reports = Vec::with_capacity(groups.len());
        for group in groups {
            let state = stored.get(&group.id).cloned().unwrap_or(AcmeCertificate {
                id: group.id.clone(),
                ..AcmeCertificate::default()
            });
            reports.push(self.look_at(group, state).await);
        }
        reports
    }

    /// Runs until `shutdown` completes: [`run_once`](Self::run_once) over `groups()` (called
    /// each round, so new domains are picked up), then sleeps until the next attempt or
    /// renewal is due, at most [`AcmeConfig::check_interval`].
    pub async fn run<G, F>(self, mut groups: G, shutdown: impl Future<Output = ()>)
    where
        G: FnMut() -> F,
        F: Future<Output = Vec<CertificateGroup>>,
    {
        match self.install_stored().await {
            Ok(n) => tracing::info!(installed = n, "ACME: stored certificates served"),
            Err(error) => tracing::warn!(%error, "ACME: cannot read stored certificates"),
        }
        tokio::pin!(shutdown);
        loop {
            let reports = self.run_once(&groups().await).await;
            let now = unix_now();
            let next = reports
                .iter()
                .filter_map(|r| match r.action {
                    Action::Failed { retry_at, .. } => Some(retry_at),
                    Action::Current { renew_at } => Some(renew_at),
                    Action::Waiting { until } => Some(until),
                    Action::Issued(_) | Action::NothingResolves => None,
                })
                .min()
                .map_or(self.config.check_interval, |t| {
                    Duration::from_secs(u64::try_from(t.saturating_sub(now)).unwrap_or(0))
                })
                .clamp(Duration::from_secs(1), self.config.check_interval);
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = &mut shutdown => return,
            }
        }
    }

    async fn look_at(&self, group: &CertificateGroup, mut state: AcmeCertificate) -> Report {
        let now = unix_now();
        let (mut ready, mut skipped) = self.check_names(&group.names).await;
        let renew_at = match (state.chain_pem.is_some(), state.not_before, state.not_after) {
            (true, Some(from), Some(to)) => Some(renewal_time(from, to)),
            _ => None,
        };
        let renewal_due = renew_at.is_none_or(|t| now >= t);
        // Names the CA failed to validate twice in a row stay out of orders until the next
        // renewal, so one broken name (a firewall, a CAA record) cannot let the others expire.
        if !renewal_due || state.last_result.as_deref() == Some(FAILED) {
            for (name, reason) in &state.skipped {
                if reason.starts_with(VALIDATION_FAILED) && ready.contains(name) {
                    ready.retain(|n| n != name);
                    skipped.push((name.clone(), reason.clone()));
                }
            }
        }
        let missing = ready.iter().any(|n| !state.names.contains(n));
        let due = renewal_due || missing;
        let report = |action| Report {
            id: group.id.clone(),
            action,
            skipped: skipped.clone(),
        };
        if !due && let Some(t) = renew_at {
            return report(Action::Current { renew_at: t });
        }
        if state.last_result.as_deref() != Some(ISSUED)
            && let Some(until) = state.next_attempt
            && now < until
        {
            return report(Action::Waiting { until });
        }
        // Said once per attempt (not on every look), so the log shows what an order left out.
        for (name, reason) in &skipped {
            tracing::warn!(certificate = %group.id, %name, %reason, "ACME: name left out");
        }
        state.last_attempt = Some(now);
        state.skipped = skipped.clone();
        let action = if ready.is_empty() {
            state.last_result = Some(SKIPPED.into());
            state.last_error = Some("no name resolves to this server".into());
            state.next_attempt = Some(now.saturating_add(secs(self.config.check_interval)));
            Action::NothingResolves
        } else {
            match self.order(&ready, state.key_pem.as_deref()).await {
                Ok(issued) => {
                    self.certs.insert(&ready, issued.certified);
                    state.names = ready.clone();
                    state.chain_pem = Some(issued.chain_pem);
                    state.key_pem = Some(issued.key_pem);
                    state.issuer = Some(issued.issuer);
                    state.not_before = Some(issued.not_before);
                    state.not_after = Some(issued.not_after);
                    state.last_result = Some(ISSUED.into());
                    state.last_error = None;
                    state.failures = 0;
                    state.next_attempt = Some(renewal_time(issued.not_before, issued.not_after));
                    tracing::info!(certificate = %group.id, names = ?ready, "ACME: certificate issued and installed");
                    Action::Issued(ready)
                }
                Err(error) => {
                    state.failures = state.failures.saturating_add(1);
                    if let AcmeError::ValidationFailed(failed) = &error
                        && state.failures >= EXCLUDE_AFTER_FAILURES
                        && failed.len() < ready.len()
                    {
                        for (name, detail) in failed {
                            tracing::warn!(certificate = %group.id, %name, %detail,
                                "ACME: name failed validation again; leaving it out until the next renewal");
                            state
                                .skipped
                                .push((name.clone(), format!("{VALIDATION_FAILED} {detail}")));
                        }
                    }
                    let wait = retry_delay(
                        state.failures,
                        self.config.retry_base,
                        self.config.retry_max,
                    );
                    let retry_at = now.saturating_add(secs(wait).max(1));
                    state.last_result = Some(FAILED.into());
                    state.last_error = Some(error.to_string());
                    state.next_attempt = Some(retry_at);
                    tracing::warn!(certificate = %group.id, %error, failures = state.failures, retry_in = ?wait,
                        "ACME: order failed; keeping the current certificate");
                    Action::Failed {
                        error: error.to_string(),
                        retry_at,
                    }
                }
            }
        };
        if let Err(error) = self.store.save_acme_certificate(&state).await {
            tracing::warn!(certificate = %group.id, %error, "ACME: cannot save state");
        }
        report(action)
    }

    /// Splits `names` into those resolving only to this server and the rest, with reasons.
    async fn check_names(&self, names: &[String]) -> (Vec<String>, Vec<(String, String)>) {
        let mut ready = Vec::new();
        let mut skipped = Vec::new();
        for name in names {
            match self.points_here(name).await {
                Ok(()) => ready.push(name.clone()),
                Err(reason) => skipped.push((name.clone(), reason)),
            }
        }
        (ready, skipped)
    }

    async fn points_here(&self, name: &str) -> Result<(), String> {
        if self.config.addresses.is_empty() {
            return Err("this server's addresses are not configured ([dns] addresses)".into());
        }
        let found: Vec<IpAddr> = match self.resolver.addresses(name).await {
            dns::Lookup::Found(found) => found,
            dns::Lookup::NxDomain => return Err("does not exist in DNS (NXDOMAIN)".into()),
            dns::Lookup::NoData => return Err("has no A or AAAA record".into()),
            dns::Lookup::Timeout => return Err("DNS look-up timed out".into()),
            dns::Lookup::ServFail(code) => return Err(format!("DNS look-up failed ({code})")),
            dns::Lookup::Unreachable(e) => return Err(format!("DNS unreachable ({e})")),
        };
        let foreign: Vec<String> = found
            .iter()
            .filter(|a| !self.config.addresses.contains(a))
            .map(IpAddr::to_string)
            .collect();
        if foreign.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "resolves to {}, not to this server",
                foreign.join(", ")
            ))
        }
    }

    /// The account for the configured directory: cached, else restored from the store, else
    /// created (and stored).
    /// With `fresh`, stored credentials are ignored and replaced by a new account.
    async fn account(&self, fresh: bool) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref().filter(|_| !fresh) {
            return Ok(account.clone());
        }
        let directory = &self.config.directory_url;
        let ca = |source| AcmeError::Ca {
            directory: directory.clone(),
            source,
        };
        let builder = || match &self.config.ca_file {
            Some(path) => Account::builder_with_root(path),
            None => Account::builder(),
        };
        let stored = match fresh {
            true => None,
            false => self.store.acme_account(directory).await?,
        };
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials =
                    serde_json::from_str(&json).map_err(|source| AcmeError::Credentials {
                        directory: directory.clone(),
                        source,
                    })?;
                builder()
                    .map_err(ca)?
                    .from_credentials(credentials)
                    .await
                    .map_err(ca)?
            }
            None => {
                let contact: Vec<String> = self
                    .config
                    .contact
                    .iter()
                    .map(|c| format!("mailto:{c}"))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder()
                    .map_err(ca)?
                    .create(&new, directory.clone(), None)
                    .await
                    .map_err(ca)?;
                let json = serde_json::to_string(&credentials).map_err(|source| {
                    AcmeError::Credentials {
                        directory: directory.clone(),
                        source,
                    }
                })?;
                self.store.save_acme_account(directory, &json).await?;
                tracing::info!(%directory, "ACME: account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// One order for `names` (RFC 8555 §7.4): authorizations answered with the preferred
    /// challenge type, finalize with a CSR for `names`, download the chain.
    async fn order(&self, names: &[String], stored_key: Option<&str>) -> Result<Issued, AcmeError> {
        let directory = &self.config.directory_url;
        let ca = |source| AcmeError::Ca {
            directory: directory.clone(),
            source,
        };
        let account = self.account(false).await?;
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let new_order = NewOrder::new(&identifiers);
        let mut order = match account.new_order(&new_order).await {
            // RFC 8555 §7.3: a CA that lost the account (a reset test CA, a deactivated
            // account) gets a new one, and the order is tried once more with it.
            Err(instant_acme::Error::Api(problem))
                if problem.r#type.as_deref() == Some(ACCOUNT_DOES_NOT_EXIST) =>
            {
                tracing::warn!(%directory, "ACME: the CA does not know the stored account; creating a new one");
                self.account(true)
                    .await?
                    .new_order(&new_order)
                    .await
                    .map_err(ca)?
            }
            other => other.map_err(ca)?,
        };
        let mut published = Published::new(self.http01.clone(), self.certs.clone());
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(ca)?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => {
                        return Err(AcmeError::Invalid(format!(
                            "authorization for {} is {other:?}",
                            authz.identifier()
                        )));
                    }
                }
                let name = authz.identifier().to_string();
                let kind = self
                    .config
                    .challenges
                    .iter()
                    .copied()
                    .find(|k| authz.challenges.iter().any(|c| c.r#type == k.acme_type()));
                let Some(kind) = kind else {
                    let offered: Vec<String> = authz
                        .challenges
                        .iter()
                        .map(|c| format!("{:?}", c.r#type))
                        .collect();
                    return Err(AcmeError::NoChallenge {
                        name,
                        offered: offered.join(", "),
                    });
                };
                let Some(mut challenge) = authz.challenge(kind.acme_type()) else {
                    return Err(AcmeError::Invalid(format!("challenge for {name} vanished")));
                };
                let key_authorization = challenge.key_authorization();
                match kind {
                    crate::ChallengeKind::Http01 => {
                        published.http01(&challenge.token, key_authorization.as_str());
                    }
                    crate::ChallengeKind::TlsAlpn01 => {
                        let cert =
                            tls_alpn_certificate(&name, key_authorization.digest().as_ref())?;
                        published.tls_alpn01(&name, cert);
                    }
                }
                tracing::debug!(%name, challenge = kind.as_str(), "ACME: challenge published");
                challenge.set_ready().await.map_err(ca)?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(self.config.order_timeout);
        let status = match order.poll_ready(&retry).await {
            Ok(status) => status,
            // The order failed: name the identifiers whose validation failed, if the CA says.
            Err(instant_acme::Error::Api(problem)) => {
                return Err(match self.why_invalid(&mut order).await {
                    failed @ AcmeError::ValidationFailed(_) => failed,
                    _ => ca(instant_acme::Error::Api(problem)),
                });
            }
            Err(e) => return Err(ca(e)),
        };
        if status != OrderStatus::Ready {
            return Err(self.why_invalid(&mut order).await);
        }
        drop(published);

        let key = match (self.config.keep_key, stored_key) {
            (true, Some(pem)) => KeyPair::from_pem(pem).map_err(|source| AcmeError::Key {
                what: "the certificate key from the store".into(),
                source,
            })?,
            _ => KeyPair::generate().map_err(|source| AcmeError::Key {
                what: "a certificate key".into(),
                source,
            })?,
        };
        let csr_err = |source| AcmeError::Key {
            what: "the certificate request".into(),
            source,
        };
        let mut params = CertificateParams::new(names.to_vec()).map_err(csr_err)?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(csr_err)?;
        order.finalize_csr(csr.der()).await.map_err(ca)?;
        let chain_pem = order.poll_certificate(&retry).await.map_err(ca)?;
        let key_pem = key.serialize_pem();
        Issued::new(chain_pem, key_pem, names)
    }

    /// The CA's reasons for an invalid order, from its authorizations' challenge errors.
    async fn why_invalid(&self, order: &mut instant_acme::Order) -> AcmeError {
        let mut failed = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            let Ok(state) = authz.refresh().await else {
                continue;
            };
            for challenge in &state.challenges {
                if let Some(error) = &challenge.error {
                    failed.push((state.identifier().to_string(), error.to_string()));
                }
            }
        }
        if failed.is_empty() {
            AcmeError::Invalid("order is invalid".into())
        } else {
            AcmeError::ValidationFailed(failed)
        }
    }
}

/// A certificate fresh from the CA, checked.
struct Issued {
    certified: Arc<rustls::sign::CertifiedKey>,
    chain_pem: String,
    key_pem: String,
    issuer: String,
    not_before: i64,
    not_after: i64,
}

impl Issued {
    /// Checks that the chain parses, matches the key and covers every name.
    fn new(chain_pem: String, key_pem: String, names: &[String]) -> Result<Issued, AcmeError> {
        let certified = tls::certified_key_from_pem(&chain_pem, &key_pem)
            .map_err(|e| AcmeError::BadCertificate(e.to_string()))?;
        let leaf = certified
            .end_entity_cert()
            .map_err(|e| AcmeError::BadCertificate(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| AcmeError::BadCertificate(e.to_string()))?;
        let covered: Vec<String> = cert
            .subject_alternative_name()
            .map_err(|e| AcmeError::BadCertificate(e.to_string()))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(s) => {
                            Some(s.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(name) = names.iter().find(|n| !covered.contains(n)) {
            return Err(AcmeError::BadCertificate(format!(
                "it does not cover {name}"
            )));
        }
        let validity = cert.validity();
        Ok(Issued {
            issuer: cert.issuer().to_string(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            certified,
            chain_pem,
            key_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        assert_eq!(renewal_time(0, 90), 60);
        assert_eq!(
            renewal_time(1_000, 1_000 + 90 * 86_400),
            1_000 + 60 * 86_400
        );
        assert_eq!(renewal_time(100, 100), 100);
        assert_eq!(renewal_time(100, 50), 100);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_maximum() {
        let base = Duration::from_secs(600);
        let max = Duration::from_secs(12 * 3600);
        assert_eq!(retry_delay(1, base, max), base);
        assert_eq!(retry_delay(2, base, max), base * 2);
        assert_eq!(retry_delay(4, base, max), base * 8);
        assert_eq!(retry_delay(100, base, max), max);
        assert_eq!(retry_delay(0, base, max), base);
    }

    #[test]
    fn groups_are_normalized() {
        let names = ["Mail.Example.ORG.".to_string(), "mail.example.org".into()];
        let group = CertificateGroup::new(&names);
        assert_eq!(
            group,
            Some(CertificateGroup {
                id: "mail.example.org".into(),
                names: vec!["mail.example.org".into()],
            })
        );
        assert_eq!(CertificateGroup::new(&[]), None);
    }
}
