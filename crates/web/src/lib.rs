//! Tessera's web front: client discovery, the MTA-STS policy and the setup page, over HTTP
//! (port 80; demo 10080) and HTTPS (port 443; demo 10443).
//!
//! The axum router is served on [`net::Connection`]s accepted by Tessera's own listeners
//! (`net::bind`/`net::serve`), with the SNI certificate store of the `tls` crate for HTTPS. One
//! [`WebServer`] handles both listeners; it tells them apart by [`net::Connection::is_tls`].
//!
//! What is answered, and for which host names (see `../shared/CLIENTS.md`):
//! - Thunderbird autoconfig (CLIENTS.md A): `/mail/config-v1.1.xml` and
//!   `/.well-known/autoconfig/mail/config-v1.1.xml`, over http and https, on the mail host,
//!   every hosted domain and its `autoconfig.`/`autodiscover.`/`mail.`/`imap.`/`smtp.` names, and
//!   on `autoconfig.<base domain of the mail host>` for Thunderbird's MX-based look-up.
//! - Microsoft Autodiscover (CLIENTS.md B): POX at `/autodiscover/autodiscover.xml` (POST and
//!   GET, any letter case), JSON v2 at `/autodiscover/autodiscover.json` in both observed forms.
//! - Apple configuration profiles (CLIENTS.md C) at `/apple/<address>.mobileconfig`, signed as
//!   CMS SignedData (RFC 5652) with the mail host's certificate.
//! - The setup page at `/setup` (and `/` of the discovery hosts), with a QR code.
//! - The MTA-STS policy (RFC 8461 §3.2) at `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
//! - ACME HTTP-01 challenges (RFC 8555 §8.3) from [`Http01Challenges`]; a TLS-ALPN-01
//!   validation connection (ALPN `acme-tls/1`, RFC 8737 §3) is closed right after its handshake.
//!
//! Standards: RFC 9110/9112 (HTTP semantics and HTTP/1.1), RFC 8461 (MTA-STS), RFC 5652 (CMS),
//! RFC 5758 and RFC 8419 (CMS signature algorithms), RFC 8555 §8.3 (HTTP-01), RFC 9562 §5.8
//! (UUIDv8 for deterministic profile UUIDs).
//!
//! Implementation notes (invariants):
//! - An unknown `Host` is answered 404 before anything else, on both ports; only hosted domains
//!   and the mail host are served.
//! - Port 80 redirects to https except the autoconfig paths (Thunderbird and Evolution try
//!   plain http), the MTA-STS policy and ACME challenges; `/autodiscover/…` gets the 302 that
//!   classic Outlook expects (CLIENTS.md B.3), everything else a permanent redirect.
//! - No endpoint requires or reads authentication: an `Authorization` header (Thunderbird sends
//!   the user's password to Autodiscover, CLIENTS.md B.4) is ignored and no header is logged.
//! - Request headers must arrive within [`WebConfig::header_timeout`], a request (body included)
//!   is answered within [`WebConfig::request_timeout`], bodies are capped at
//!   [`WebConfig::max_body_bytes`] (413 beyond), and a connection lives at most
//!   [`WebConfig::connection_lifetime`]. XML is parsed with DTDs refused (roxmltree's default).
//! - Input-derived values (addresses, host names) are validated through `store`'s `Address` and
//!   `Domain` types and escaped in every XML and HTML output.
//! - The profile is signed by the certificate the HTTPS listener presents for the mail host;
//!   the private key never leaves rustls (signing goes through its `SigningKey`).

mod apple;
mod autoconfig;
mod autodiscover;
mod cms_sign;
mod mta_sts;
mod routes;
mod setup;
mod site;
mod xml;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};

pub use cms_sign::SignError;
pub use mta_sts::{MtaStsMode, policy as mta_sts_policy, policy_id as mta_sts_policy_id};

/// The Autodiscover POX request parser, for the fuzz target (`fuzz/`); not part of the API.
/// Returns the requested address, `Ok(None)` for an ActiveSync request, or the error text.
#[doc(hidden)]
pub fn fuzz_autodiscover_request(body: &[u8]) -> Result<Option<String>, String> {
    match autodiscover::parse_request(body) {
        Ok(autodiscover::Request::Outlook { email }) => Ok(Some(email)),
        Ok(autodiscover::Request::MobileSync) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The ports clients are told to use, as published in autoconfig, Autodiscover, profiles and
/// the setup page. Production uses the standard numbers ([`Default`]); the demo adds 10000.
/// A port of 0 means "not offered" and is left out of every document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPorts {
    /// IMAP over implicit TLS (RFC 8314): 993.
    pub imaps: u16,
    /// IMAP with STARTTLS: 143.
    pub imap: u16,
    /// POP3 over implicit TLS (RFC 8314): 995.
    pub pop3s: u16,
    /// POP3 with STLS: 110.
    pub pop3: u16,
    /// Submission over implicit TLS (RFC 8314): 465.
    pub submissions: u16,
    /// Submission with STARTTLS (RFC 6409): 587.
    pub submission: u16,
}

impl Default for ClientPorts {
    fn default() -> Self {
        ClientPorts {
            imaps: 993,
            imap: 143,
            pop3s: 995,
            pop3: 110,
            submissions: 465,
            submission: 587,
        }
    }
}

impl ClientPorts {
    /// The standard ports plus `offset` (the demo uses 10000).
    pub fn offset(offset: u16) -> ClientPorts {
        let d = ClientPorts::default();
        let add = |p: u16| p.saturating_add(offset);
        ClientPorts {
            imaps: add(d.imaps),
            imap: add(d.imap),
            pop3s: add(d.pop3s),
            pop3: add(d.pop3),
            submissions: add(d.submissions),
            submission: add(d.submission),
        }
    }
}

/// Configuration of the web front.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The mail host name (MX target, IMAP/SMTP server name, certificate name).
    pub hostname: String,
    /// Ports advertised to mail clients.
    pub ports: ClientPorts,
    /// The port of the HTTPS listener as clients reach it (443; demo 10443). Used in redirects
    /// and in the URLs this server hands out; left out of URLs when it is 443.
    pub https_port: u16,
    /// MTA-STS policy mode (RFC 8461 §3.2). `Testing` until certificates are publicly trusted.
    pub mta_sts_mode: MtaStsMode,
    /// MTA-STS `max_age` in seconds (RFC 8461 §3.2: at most 31557600).
    pub mta_sts_max_age: u64,
    /// Largest accepted request body (Autodiscover requests are well under 1 KiB).
    pub max_body_bytes: usize,
    /// Time allowed for a request's headers to arrive, also the keep-alive idle limit.
    pub header_timeout: Duration,
    /// Time allowed to read a request body and answer.
    pub request_timeout: Duration,
    /// Longest a single connection may stay open.
    pub connection_lifetime: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            hostname: "localhost".to_owned(),
            ports: ClientPorts::default(),
            https_port: 443,
            mta_sts_mode: MtaStsMode::Testing,
            mta_sts_max_age: 604_800,
            max_body_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            connection_lifetime: Duration::from_secs(300),
        }
    }
}

/// The extra certificate names the web front answers beyond `tls::CertStore::name_groups`:
/// `autoconfig.<base domain of the mail host>`, for Thunderbird's MX-based look-up
/// (CLIENTS.md A, step 4). Empty when the mail host has no parent domain.
pub fn extra_certificate_names(hostname: &str) -> Vec<String> {
    site::base_domain(&site::normalize_host(hostname))
        .map(|base| vec![format!("autoconfig.{base}")])
        .unwrap_or_default()
}

/// Pending ACME HTTP-01 challenges (RFC 8555 §8.3): token -> key authorization. The ACME client
/// inserts before telling the CA to validate and removes afterwards; the web front answers
/// `GET /.well-known/acme-challenge/<token>` on port 80 from here, on any host name.
#[derive(Debug, Default)]
pub struct Http01Challenges(RwLock<HashMap<String, String>>);

impl Http01Challenges {
    /// Publishes a challenge.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Withdraws a challenge.
    pub fn remove(&self, token: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(token);
    }

    /// The key authorization for `token`, if published.
    pub fn get(&self, token: &str) -> Option<String> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(token).cloned()
    }
}

/// Shared state of every request handler.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn store::Store>,
    pub(crate) certs: Arc<tls::CertStore>,
    pub(crate) config: WebConfig,
    /// `config.hostname`, normalized (lowercase, no trailing dot).
    pub(crate) hostname: String,
    pub(crate) challenges: Arc<Http01Challenges>,
}

/// The web front: a [`net::SessionHandler`] for one plain (`TlsMode::None`) and one implicit
/// TLS (`TlsMode::Implicit`) listener.
#[derive(Clone)]
pub struct WebServer {
    router: axum::Router,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer")
            .field("hostname", &self.shared.hostname)
            .finish_non_exhaustive()
    }
}

impl WebServer {
    /// Builds the router over `store` (hosted domains) and `certs` (profile signing).
    pub fn new(
        store: Arc<dyn store::Store>,
        certs: Arc<tls::CertStore>,
        config: WebConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            store,
            certs,
            hostname: site::normalize_host(&config.hostname),
            config,
            challenges: Arc::new(Http01Challenges::default()),
        });
        WebServer {
            router: routes::router(Arc::clone(&shared)),
            shared,
        }
    }

    /// The ACME HTTP-01 challenges this server answers on port 80.
    pub fn http01_challenges(&self) -> Arc<Http01Challenges> {
        Arc::clone(&self.shared.challenges)
    }
}

/// Facts about the connection a request came on, inserted into each request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnFacts {
    /// Whether the request came over TLS (the HTTPS listener).
    pub(crate) tls: bool,
}

impl net::SessionHandler for WebServer {
    async fn handle(&self, conn: net::Connection) {
        // RFC 8737 §3: a TLS-ALPN-01 validation connection ends after the handshake; no HTTP.
        if conn
            .tls_info()
            .and_then(|info| info.alpn.as_deref())
            .is_some_and(|alpn| alpn == tls::ACME_TLS_ALPN)
        {
            tracing::debug!("acme-tls/1 validation handshake done; closing");
            return;
        }
        let facts = ConnFacts { tls: conn.is_tls() };
        let shutdown = conn.shutdown().clone();
        let config = &self.shared.config;
        let router = self.router.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = routes::normalize_path(req);
                req.extensions_mut().insert(facts);
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(64 * 1024);
        let http = builder.serve_connection(TokioIo::new(conn), service);
        tokio::pin!(http);
        let lifetime = tokio::time::sleep(config.connection_lifetime);
        tokio::pin!(lifetime);
        tokio::select! {
            result = http.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%err, "http connection ended with an error");
                }
                return;
            }
            () = shutdown.triggered() => tracing::debug!("shutdown: finishing the current request"),
            () = lifetime.as_mut() => tracing::debug!("connection lifetime reached"),
        }
        // Finish the request in flight (if any), then close; bounded by the request timeout.
        http.as_mut().graceful_shutdown();
        if tokio::time::timeout(config.request_timeout, http)
            .await
            .is_err()
        {
            tracing::debug!("connection did not finish in time after graceful shutdown");
        }
    }
}
