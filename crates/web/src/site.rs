//! Which site a request's `Host` names: the mail host, a hosted domain under one of its
//! discovery names, or the mail host's base domain's `autoconfig.` name.

use store::{Domain, Store};

/// The host names a hosted domain is served under, by their first label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DomainName {
    /// `<domain>` itself (Autodiscover B.3 tries `https://<domain>/autodiscover/...`).
    Bare,
    /// `autoconfig.<domain>` (CLIENTS.md A).
    Autoconfig,
    /// `autodiscover.<domain>` (CLIENTS.md B).
    Autodiscover,
    /// `mta-sts.<domain>`: serves only the MTA-STS policy (RFC 8461 §3.3).
    MtaSts,
    /// `mail.`, `imap.` or `smtp.<domain>`: names clients guess (CLIENTS.md D).
    Service,
}

const PREFIXES: [(&str, DomainName); 6] = [
    ("autoconfig.", DomainName::Autoconfig),
    ("autodiscover.", DomainName::Autodiscover),
    ("mta-sts.", DomainName::MtaSts),
    ("mail.", DomainName::Service),
    ("imap.", DomainName::Service),
    ("smtp.", DomainName::Service),
];

/// What a request's host name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Site {
    /// The configured mail host.
    MailHost,
    /// A hosted domain under one of its names.
    Domain { domain: Domain, name: DomainName },
    /// `autoconfig.<base domain of the mail host>`, where the base domain is not hosted:
    /// Thunderbird's MX-based look-up (CLIENTS.md A, step 4) for every hosted domain.
    MxAutoconfig,
}

impl Site {
    /// The hosted domain the host name belongs to, if any.
    pub(crate) fn domain(&self) -> Option<&Domain> {
        match self {
            Site::Domain { domain, .. } => Some(domain),
            Site::MailHost | Site::MxAutoconfig => None,
        }
    }
}

/// Lowercases a host name and drops a trailing dot.
pub(crate) fn normalize_host(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The host name of a `Host` header value (RFC 9110 §7.2): the port is dropped. IP literals
/// are returned as they are (and will not match a site).
pub(crate) fn host_of(header: &str) -> String {
    let header = header.trim();
    let host = if header.starts_with('[') {
        header.split_once(']').map_or(header, |(h, _)| h)
    } else {
        header.rsplit_once(':').map_or(header, |(h, _)| h)
    };
    normalize_host(host)
}

/// The parent of a host name: `mail.example.org` -> `example.org`. `None` when that would
/// leave a single label (`mail.org` has no base domain of its own to serve).
///
/// A public-suffix list would be exact (Thunderbird uses eTLD+1); without one, the mail host
/// minus its first label is what CLIENTS.md A's example (`mail.hoster.net` -> `hoster.net`)
/// needs and what the setup documentation tells operators to configure.
pub(crate) fn base_domain(host: &str) -> Option<String> {
    let (_, parent) = host.split_once('.')?;
    parent.contains('.').then(|| parent.to_owned())
}

/// Resolves a host name to its site; `Ok(None)` for names this server does not answer.
pub(crate) async fn resolve(
    store: &dyn Store,
    mail_host: &str,
    host: &str,
) -> store::Result<Option<Site>> {
    if host == mail_host {
        return Ok(Some(Site::MailHost));
    }
    if let Some(domain) = hosted(store, host).await? {
        return Ok(Some(Site::Domain {
            domain,
            name: DomainName::Bare,
        }));
    }
    for (prefix, name) in PREFIXES {
        if let Some(rest) = host.strip_prefix(prefix)
            && let Some(domain) = hosted(store, rest).await?
        {
            return Ok(Some(Site::Domain { domain, name }));
        }
    }
    if base_domain(mail_host).is_some_and(|base| host == format!("autoconfig.{base}")) {
        return Ok(Some(Site::MxAutoconfig));
    }
    Ok(None)
}

/// `name` as a hosted domain, or `None` (also for a name that is not a valid domain).
pub(crate) async fn hosted(store: &dyn Store, name: &str) -> store::Result<Option<Domain>> {
    let Ok(domain) = Domain::parse(name) else {
        return Ok(None);
    };
    Ok(store.is_hosted_domain(&domain).await?.then_some(domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_forms() {
        assert_eq!(host_of("Mail.Example.ORG:10443"), "mail.example.org");
        assert_eq!(host_of("example.org."), "example.org");
        assert_eq!(host_of("[::1]:80"), "[::1");
        assert_eq!(host_of("example.org"), "example.org");
    }

    #[test]
    fn base_domain_drops_one_label_but_never_reaches_a_tld() {
        assert_eq!(
            base_domain("mail.example.org").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            base_domain("mx1.mail.hoster.net").as_deref(),
            Some("mail.hoster.net")
        );
        assert_eq!(base_domain("example.org"), None);
        assert_eq!(base_domain("localhost"), None);
    }
}
