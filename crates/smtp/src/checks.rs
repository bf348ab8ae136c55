//! Sender authentication verdicts for mail received on the MX port, computed by mail-auth:
//! SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489) and iprev (RFC 8601 §3), written into
//! one `Authentication-Results` header (RFC 8601).
//!
//! DNS goes through hickory's resolver, either the system's or a configured server (tests
//! point it at a DNS server on loopback; they never query the machine's resolver).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator,
    dmarc::verify::DmarcParameters, spf::verify::SpfParameters,
};

/// Failure to set up the resolver.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverError(String);

/// The verifier shared by all MX sessions.
pub struct Verifier {
    authenticator: MessageAuthenticator,
    /// Our host name, the `authserv-id` of RFC 8601 §2.2.
    hostname: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// The outcome of the checks for one message.
#[derive(Debug, Clone)]
pub struct Verdicts {
    /// The complete `Authentication-Results:` header line(s), CRLF-terminated.
    pub header: String,
    /// `Some(domain)` when DMARC failed and the From: domain's policy is `p=reject`.
    pub dmarc_reject: Option<String>,
}

impl Verifier {
    /// A verifier using `resolver` (UDP and TCP to that address) or, when `None`, the system's
    /// resolver configuration. Every query is bounded by `timeout` and tried once.
    pub fn new(
        hostname: &str,
        resolver: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<Verifier, ResolverError> {
        let (config, mut opts) = match resolver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                (
                    ResolverConfig::from_parts(None, Vec::new(), vec![server]),
                    ResolverOpts::default(),
                )
            }
            None => hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| ResolverError(e.to_string()))?,
        };
        opts.timeout = timeout;
        opts.attempts = 1;
        let authenticator =
            MessageAuthenticator::new(config, opts).map_err(|e| ResolverError(e.to_string()))?;
        Ok(Verifier {
            authenticator,
            hostname: hostname.to_string(),
        })
    }

    /// Runs SPF (HELO and MAIL FROM identities), DKIM, DMARC and iprev for one message.
    /// `mail_from` is the reverse-path ("" for `<>`).
    pub async fn verify(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Verdicts {
        let auth = &self.authenticator;
        let host = self.hostname.as_str();
        // RFC 7208 §2.4: with a null reverse-path the HELO identity is checked as
        // postmaster@helo; mail-auth does that when given an empty sender.
        let spf_params = SpfParameters::verify(ip, helo, host, mail_from);
        let parsed = AuthenticatedMessage::parse(message);
        let (spf, iprev, dkim) =
            tokio::join!(auth.verify_spf(spf_params), auth.verify_iprev(ip), async {
                match &parsed {
                    Some(m) => auth.verify_dkim(m).await,
                    None => Vec::new(),
                }
            });
        let mail_from_domain = match mail_from.rsplit_once('@') {
            Some((_, d)) => d,
            None => helo,
        };
        let mut results = AuthenticationResults::new(host)
            .with_spf_mailfrom_result(&spf, ip, mail_from, helo)
            .with_iprev_result(&iprev, ip);
        let mut dmarc_reject = None;
        if let Some(m) = &parsed {
            results = results.with_dkim_results(&dkim, m.from());
            let dmarc = auth
                .verify_dmarc(DmarcParameters::new(m, &dkim, mail_from_domain, &spf))
                .await;
            results = results.with_dmarc_result(&dmarc);
            // RFC 7489 §6.6.2: DMARC fails when neither SPF nor DKIM passes aligned.
            if matches!(dmarc.result(), DmarcResult::Fail(_)) && dmarc.policy() == Policy::Reject {
                dmarc_reject = Some(dmarc.domain().to_string());
            }
        }
        let mut header = results.to_header();
        // RFC 8601 §2.7.1: an unsigned message's DKIM verdict is "none". mail-auth writes no
        // DKIM entry then; name it, so the header always carries all four methods.
        if parsed.is_some() && dkim.is_empty() && header.ends_with("\r\n") {
            header.truncate(header.len() - 2);
            header.push_str(";\r\n\tdkim=none (message not signed)\r\n");
        }
        Verdicts {
            header,
            dmarc_reject,
        }
    }
}
