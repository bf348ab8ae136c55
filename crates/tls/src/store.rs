//! The SNI certificate store and its rustls resolver.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::local_ca::LocalCa;
use crate::{PROTOCOL_VERSIONS, TlsError, pem};

/// A certificate file and its private key file, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemPair {
    /// The leaf certificate first, then any intermediates.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Where the store's certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files named in config; names taken from each certificate's SANs. The first pair's
    /// first name is the default certificate.
    Files(Vec<PemPair>),
    /// A local CA kept in `dir` (`dir/ca.pem`, `dir/ca-key.pem`, keys mode 0600), with leaf
    /// certificates it signs for the names given to [`CertStore::ensure_local_names`].
    LocalCa { dir: PathBuf },
}

/// One served certificate, as reported by [`CertStore::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The names this certificate is served for (lowercase; may include `*.` wildcards).
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The end of the leaf's validity period (UTC).
    pub not_after: OffsetDateTime,
}

/// One certificate store with SNI selection, shared by every listener as `Arc<CertStore>`.
///
/// Selection (RFC 6066 §3): the exact name, then a `*.` wildcard one label deep, then the
/// default certificate (the first name ever installed: the mail host, or the first file).
pub struct CertStore {
    origin: Origin,
    served: RwLock<Served>,
    /// Pending TLS-ALPN-01 challenge certificates (RFC 8737 §3), by lowercase name.
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

enum Origin {
    Files(Mutex<Vec<Watched>>),
    LocalCa {
        ca_path: PathBuf,
        ca: Box<Mutex<LocalCa>>,
    },
}

/// A PEM pair being watched for changes, with what it currently contributes to the store.
struct Watched {
    pair: PemPair,
    stamps: [Option<FileStamp>; 2],
    key: Arc<CertifiedKey>,
}

/// Modification time and length: changes when a file is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp(SystemTime, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp(meta.modified().ok()?, meta.len()))
}

#[derive(Default)]
struct Served {
    entries: Vec<Entry>,
    /// Index over `entries`, rebuilt on every change; no two entries share a name.
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default_name: Option<String>,
}

struct Entry {
    info: CertInfo,
    key: Arc<CertifiedKey>,
    /// Installed through [`CertStore::insert`] (ACME): the local CA never takes its names.
    external: bool,
}

impl Served {
    /// Serves `key` for `names`, taking those names away from any other certificate.
    fn install(&mut self, names: Vec<String>, key: Arc<CertifiedKey>, external: bool) {
        if names.is_empty() {
            return;
        }
        for entry in &mut self.entries {
            entry.info.names.retain(|n| !names.contains(n));
        }
        self.entries.retain(|e| !e.info.names.is_empty());
        if self.default_name.is_none() {
            self.default_name = names.first().cloned();
        }
        let facts = key
            .end_entity_cert()
            .map_err(|e| e.to_string())
            .and_then(pem::cert_facts);
        let (issuer, not_after) = match facts {
            Ok(facts) => (facts.issuer, facts.not_after),
            Err(reason) => {
                tracing::warn!(?names, %reason, "cannot parse installed certificate");
                ("(unparseable)".to_string(), OffsetDateTime::UNIX_EPOCH)
            }
        };
        self.entries.push(Entry {
            info: CertInfo {
                names,
                issuer,
                not_after,
            },
            key,
            external,
        });
        self.reindex();
    }

    /// Whether `name` is served by a certificate from [`CertStore::insert`].
    fn is_external(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.external && e.info.names.iter().any(|n| n == name))
    }

    fn remove(&mut self, key: &Arc<CertifiedKey>) {
        self.entries.retain(|e| !Arc::ptr_eq(&e.key, key));
        self.reindex();
    }

    fn reindex(&mut self) {
        self.by_name = self
            .entries
            .iter()
            .flat_map(|e| e.info.names.iter().map(|n| (n.clone(), Arc::clone(&e.key))))
            .collect();
    }

    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(key) = self.by_name.get(&name) {
                return Some(Arc::clone(key));
            }
            // RFC 6125 §6.4.3: the wildcard stands for exactly the leftmost label.
            if let Some((_, parent)) = name.split_once('.')
                && let Some(key) = self.by_name.get(&format!("*.{parent}"))
            {
                return Some(Arc::clone(key));
            }
        }
        self.default_name
            .as_ref()
            .and_then(|n| self.by_name.get(n))
            .or_else(|| self.entries.first().map(|e| &e.key))
            .cloned()
    }
}

/// Lowercases `name`, drops a trailing dot, and checks it is a DNS host name (LDH labels of at
/// most 63 octets, 253 in all), optionally with a leading `*` label.
fn normalize_name(name: &str) -> Result<String, TlsError> {
    let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let ldh = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    if lower.len() > 253 || !body.split('.').all(ldh) {
        return Err(TlsError::InvalidName(name.to_string()));
    }
    Ok(lower)
}

/// Loads a PEM pair and the DNS names its leaf covers.
fn load_files(pair: &PemPair) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let key = pem::load_pair(&pair.cert, &pair.key)?;
    let leaf = key
        .end_entity_cert()
        .map_err(|e| TlsError::bad_cert(&pair.cert, e))?;
    let facts = pem::cert_facts(leaf).map_err(|e| TlsError::bad_cert(&pair.cert, e))?;
    if facts.dns_names.is_empty() {
        return Err(TlsError::NoNames {
            path: pair.cert.clone(),
        });
    }
    if facts.not_after < OffsetDateTime::now_utc() {
        tracing::warn!(cert = %pair.cert.display(), not_after = %facts.not_after, "certificate has expired");
    }
    Ok((key, facts.dns_names))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CertStore {
    /// Builds the store. Files mode loads every pair now and fails on the first bad one (an
    /// empty list gives an empty store that serves nothing until [`insert`](Self::insert)).
    /// Local-CA mode loads or creates the CA; leaves come from
    /// [`ensure_local_names`](Self::ensure_local_names).
    pub fn new(source: CertSource) -> Result<Arc<CertStore>, TlsError> {
        let mut served = Served::default();
        let origin = match source {
            CertSource::Files(pairs) => {
                let mut watched = Vec::with_capacity(pairs.len());
                for pair in pairs {
                    let stamps = [stamp(&pair.cert), stamp(&pair.key)];
                    let (key, names) = load_files(&pair)?;
                    served.install(names, Arc::clone(&key), false);
                    watched.push(Watched { pair, stamps, key });
                }
                Origin::Files(Mutex::new(watched))
            }
            CertSource::LocalCa { dir } => {
                let ca = LocalCa::open(&dir)?;
                Origin::LocalCa {
                    ca_path: ca.cert_path(),
                    ca: Box::new(Mutex::new(ca)),
                }
            }
        };
        Ok(Arc::new(CertStore {
            origin,
            served: RwLock::new(served),
            alpn_challenges: RwLock::new(HashMap::new()),
        }))
    }

    fn served(&self) -> RwLockReadGuard<'_, Served> {
        self.served.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn served_mut(&self) -> RwLockWriteGuard<'_, Served> {
        self.served.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Local-CA mode: makes sure a leaf is served for each group of names (first name =
    /// primary, stored as `dir/certs/<primary>.pem` and `.key.pem`). A stored leaf is reused
    /// across restarts unless it lacks a name, no longer verifies under the CA, or expires
    /// within 30 days; then it is re-issued. No-op in Files mode.
    pub fn ensure_local_names(&self, groups: &[Vec<String>]) -> Result<(), TlsError> {
        let Origin::LocalCa { ca, .. } = &self.origin else {
            return Ok(());
        };
        let ca = lock(ca);
        for group in groups {
            let mut names: Vec<String> = Vec::with_capacity(group.len());
            for name in group {
                let name = normalize_name(name)?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            if names.is_empty() {
                continue;
            }
            let key = ca.leaf(&names)?;
            let mut served = self.served_mut();
            // Names an ACME certificate serves stay with it.
            names.retain(|n| !served.is_external(n));
            if !names.is_empty() {
                served.install(names, key, false);
            }
        }
        Ok(())
    }

    /// The name groups for a mail host and its hosted domains: `[mail_host]`, then per domain
    /// the domain itself and its `autoconfig.`, `autodiscover.`, `mta-sts.`, `mail.`, `imap.`
    /// and `smtp.` names. A name already in an earlier group is left out of later ones, so
    /// no two leaves claim the same name.
    pub fn name_groups(mail_host: &str, domains: &[String]) -> Vec<Vec<String>> {
        const PREFIXES: [&str; 7] = [
            "",
            "autoconfig.",
            "autodiscover.",
            "mta-sts.",
            "mail.",
            "imap.",
            "smtp.",
        ];
        let host = mail_host.trim_end_matches('.').to_ascii_lowercase();
        let mut seen = HashSet::from([host.clone()]);
        let mut groups = vec![vec![host]];
        for domain in domains {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let group: Vec<String> = PREFIXES
                .iter()
                .map(|prefix| format!("{prefix}{domain}"))
                .filter(|name| seen.insert(name.clone()))
                .collect();
            if !group.is_empty() {
                groups.push(group);
            }
        }
        groups
    }

    /// A rustls server configuration over this store: TLS 1.3 and 1.2 only (aws-lc-rs), SNI
    /// selection as described on [`CertStore`], no client authentication, and `alpn` as the
    /// ALPN protocols (RFC 7301) in preference order.
    pub fn server_config(self: &Arc<Self>, alpn: Vec<Vec<u8>>) -> Arc<rustls::ServerConfig> {
        #[allow(clippy::expect_used)] // Invariant: the aws-lc-rs provider supports both versions.
        let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .expect("aws-lc-rs supports TLS 1.2 and 1.3");
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver(Arc::clone(self))));
        config.alpn_protocols = alpn;
        Arc::new(config)
    }

    /// Serves `key` for `names` (lowercased, trailing dot dropped), replacing whichever
    /// certificate served them before. The caller vouches that `key` matches its certificate.
    /// Names installed this way are never taken back by
    /// [`ensure_local_names`](Self::ensure_local_names) (ACME certificates win over the local CA).
    pub fn insert(&self, names: &[String], key: Arc<CertifiedKey>) {
        let mut clean: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !name.is_empty() && !clean.contains(&name) {
                clean.push(name);
            }
        }
        self.served_mut().install(clean, key, true);
    }

    /// Publishes the TLS-ALPN-01 challenge certificate for `name` (RFC 8737 §3): a ClientHello
    /// for `name` offering the `acme-tls/1` protocol gets `key`, nothing else does.
    pub fn set_alpn_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut map = self
            .alpn_challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(name, key);
    }

    /// Withdraws the TLS-ALPN-01 challenge certificate for `name`.
    pub fn remove_alpn_challenge(&self, name: &str) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut map = self
            .alpn_challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(&name);
    }

    /// The challenge certificate for an `acme-tls/1` ClientHello naming `sni`.
    fn alpn_challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        let map = self
            .alpn_challenges
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&name).cloned()
    }

    /// Files mode: re-reads every pair whose certificate or key file changed (mtime or length)
    /// and serves the new certificate. Returns whether anything changed. A pair that fails to
    /// load keeps its previous certificate, is logged, and makes the call return its error
    /// (other pairs are still reloaded); it is retried once its files change again.
    /// Always `Ok(false)` in local-CA mode.
    pub fn reload_changed(&self) -> Result<bool, TlsError> {
        let Origin::Files(watched) = &self.origin else {
            return Ok(false);
        };
        let mut watched = lock(watched);
        let mut changed = false;
        let mut first_error = None;
        for w in watched.iter_mut() {
            let stamps = [stamp(&w.pair.cert), stamp(&w.pair.key)];
            if stamps == w.stamps {
                continue;
            }
            w.stamps = stamps;
            match load_files(&w.pair) {
                Ok((key, names)) => {
                    tracing::info!(cert = %w.pair.cert.display(), ?names, "reloaded certificate");
                    let mut served = self.served_mut();
                    served.remove(&w.key);
                    served.install(names, Arc::clone(&key), false);
                    w.key = key;
                    changed = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "certificate reload failed; keeping the previous one");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(changed), Err)
    }

    /// Spawns a task calling [`reload_changed`](Self::reload_changed) every `interval`
    /// (at least 1 ms). It stops when the handle is aborted or the store is dropped.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // The first tick is immediate; the files were just loaded.
            loop {
                ticks.tick().await;
                let Some(store) = store.upgrade() else { return };
                // Failures were logged by reload_changed and keep the old certificate.
                let _ = tokio::task::spawn_blocking(move || store.reload_changed()).await;
            }
        })
    }

    /// The certificate chain and signing key served for `name`, chosen exactly as for a TLS
    /// client sending that SNI (exact name, one-label wildcard, then the default). For signing
    /// with the host's identity outside TLS (CMS-signed Apple profiles): the private key stays
    /// inside rustls' [`SigningKey`](rustls::sign::SigningKey). `None` while nothing is loaded.
    pub fn certified_key(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.served().lookup(Some(name))
    }

    /// Path of the local CA certificate (Some in local-CA mode), for clients to trust.
    pub fn ca_path(&self) -> Option<PathBuf> {
        match &self.origin {
            Origin::LocalCa { ca_path, .. } => Some(ca_path.clone()),
            Origin::Files(_) => None,
        }
    }

    /// Every served certificate with its names, issuer and not-after, in installation order.
    pub fn status(&self) -> Vec<CertInfo> {
        self.served()
            .entries
            .iter()
            .map(|e| e.info.clone())
            .collect()
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let served = self.served();
        f.debug_struct("CertStore")
            .field("ca_path", &self.ca_path())
            .field("names", &served.by_name.keys().collect::<Vec<_>>())
            .field("default", &served.default_name)
            .finish()
    }
}

/// The rustls hook: picks the certificate for each ClientHello's SNI.
#[derive(Debug)]
struct SniResolver(Arc<CertStore>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737 §3: a validation handshake offers only `acme-tls/1`; it gets the challenge
        // certificate or nothing, never a served certificate.
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == crate::ACME_TLS_ALPN));
        if acme {
            return self.0.alpn_challenge(hello.server_name());
        }
        self.0.served().lookup(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Each group installed with its own local-CA leaf, in order.
    fn served_with(groups: &[&[&str]]) -> Result<Served, TlsError> {
        let dir = tempfile::tempdir().map_err(|source| TlsError::Write {
            path: "tmp".into(),
            source,
        })?;
        let ca = LocalCa::open(dir.path())?;
        let mut served = Served::default();
        for group in groups {
            served.install(strings(group), ca.leaf(&strings(group))?, false);
        }
        Ok(served)
    }

    /// The names of the certificate served for `sni`.
    fn pick(served: &Served, sni: Option<&str>) -> Vec<String> {
        let key = served.lookup(sni);
        let entry = served
            .entries
            .iter()
            .find(|e| key.as_ref().is_some_and(|k| Arc::ptr_eq(&e.key, k)));
        entry.map(|e| e.info.names.clone()).unwrap_or_default()
    }

    #[test]
    fn selection_is_exact_then_one_label_wildcard_then_default() -> TestResult {
        let served = served_with(&[
            &["mail.example.test"],
            &["*.example.org"],
            &["a.example.org"],
        ])?;
        assert_eq!(pick(&served, Some("a.example.org")), ["a.example.org"]);
        assert_eq!(pick(&served, Some("B.Example.ORG.")), ["*.example.org"]);
        // RFC 6125 §6.4.3: not two labels deep, and not the parent itself.
        assert_eq!(
            pick(&served, Some("x.b.example.org")),
            ["mail.example.test"]
        );
        assert_eq!(pick(&served, Some("example.org")), ["mail.example.test"]);
        assert_eq!(pick(&served, None), ["mail.example.test"]);
        Ok(())
    }

    #[test]
    fn a_newer_certificate_takes_its_names_from_older_ones() -> TestResult {
        let mut served =
            served_with(&[&["a.example.test", "b.example.test"], &["c.example.test"]])?;
        let c = served
            .lookup(Some("c.example.test"))
            .ok_or("no certificate")?;
        served.install(strings(&["b.example.test", "c.example.test"]), c, false);
        let names: Vec<Vec<String>> = served
            .entries
            .iter()
            .map(|e| e.info.names.clone())
            .collect();
        assert_eq!(
            names,
            [
                strings(&["a.example.test"]),
                strings(&["b.example.test", "c.example.test"])
            ]
        );
        Ok(())
    }

    #[test]
    fn certified_key_picks_like_sni() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = CertStore::new(CertSource::LocalCa {
            dir: dir.path().to_owned(),
        })?;
        assert!(store.certified_key("mail.example.test").is_none());
        store.ensure_local_names(&[
            strings(&["mail.example.test"]),
            strings(&["example.org", "autoconfig.example.org"]),
        ])?;
        let names_of = |name: &str| -> Result<Vec<String>, Box<dyn std::error::Error>> {
            let key = store.certified_key(name).ok_or("no certificate")?;
            let facts = pem::cert_facts(key.end_entity_cert()?)?;
            Ok(facts.dns_names)
        };
        assert_eq!(
            names_of("AUTOCONFIG.example.org")?,
            ["example.org", "autoconfig.example.org"]
        );
        assert_eq!(names_of("unknown.example.net")?, ["mail.example.test"]);
        Ok(())
    }

    #[test]
    fn the_local_ca_never_takes_names_from_an_inserted_certificate() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = CertStore::new(CertSource::LocalCa {
            dir: dir.path().to_owned(),
        })?;
        let group = strings(&["example.org", "mta-sts.example.org"]);
        store.ensure_local_names(std::slice::from_ref(&group))?;
        let other = tempfile::tempdir()?;
        let acme_like = LocalCa::open(other.path())?.leaf(&strings(&["example.org"]))?;
        store.insert(&strings(&["example.org"]), Arc::clone(&acme_like));
        store.ensure_local_names(&[group])?;
        let served = store.certified_key("example.org").ok_or("no certificate")?;
        assert!(Arc::ptr_eq(&served, &acme_like));
        let local = store
            .certified_key("mta-sts.example.org")
            .ok_or("no certificate")?;
        assert!(!Arc::ptr_eq(&local, &acme_like));
        Ok(())
    }

    #[test]
    fn host_names_are_validated() {
        assert_eq!(
            normalize_name("Mail.Example.ORG.").ok().as_deref(),
            Some("mail.example.org")
        );
        assert_eq!(
            normalize_name("*.example.org").ok().as_deref(),
            Some("*.example.org")
        );
        for bad in [
            "",
            "../etc/passwd",
            "a..b",
            "-a.example",
            "a/b.example",
            "a.*.example",
            "é.example",
        ] {
            assert!(normalize_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn name_groups_cover_discovery_names_once() {
        let groups = CertStore::name_groups(
            "mail.example.org",
            &strings(&["Example.org", "example.net"]),
        );
        assert_eq!(groups[0], ["mail.example.org"]);
        let org = [
            "example.org",
            "autoconfig.example.org",
            "autodiscover.example.org",
        ];
        let org_rest = [
            "mta-sts.example.org",
            "imap.example.org",
            "smtp.example.org",
        ];
        assert_eq!(groups[1], [org.as_slice(), org_rest.as_slice()].concat());
        assert_eq!((groups[2].len(), groups[2][0].as_str()), (7, "example.net"));
    }
}
