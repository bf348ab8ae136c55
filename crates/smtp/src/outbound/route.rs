//! Where mail for a domain goes: MX records in preference order, with a random order among
//! equal preferences (RFC 5321 §5.1), the implicit MX when there is none, and null MX
//! (RFC 7505).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use rand::seq::SliceRandom;

/// The route of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Host names to try in order.
    Hosts(Vec<String>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
}

/// A routing failure: temporary (DNS trouble) or permanent (no such domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Try again later.
    Temporary(String),
    /// Give up.
    Permanent(String),
}

/// Builds the resolver: the configured server (UDP and TCP) or the system's configuration.
pub fn resolver(server: Option<SocketAddr>, timeout: Duration) -> Result<TokioResolver, String> {
    let (config, mut opts) = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            (
                ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                ResolverOpts::default(),
            )
        }
        None => hickory_resolver::system_conf::read_system_conf().map_err(|e| e.to_string())?,
    };
    opts.timeout = timeout;
    opts.attempts = 2;
    // IPv6 and IPv4 both (issue 8); the order of the answer is kept.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| e.to_string())
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Orders MX records (preference, exchange): ascending preference, shuffled among equals.
pub fn order(mut records: Vec<(u16, String)>) -> Route {
    // RFC 7505 §3: a single MX with the root as exchange.
    if records.len() == 1 && (records[0].1 == "." || records[0].1.is_empty()) {
        return Route::NullMx;
    }
    records.retain(|(_, host)| host != "." && !host.is_empty());
    records.shuffle(&mut rand::thread_rng());
    records.sort_by_key(|(pref, _)| *pref); // stable: the shuffle survives among equals
    Route::Hosts(records.into_iter().map(|(_, h)| h).collect())
}

/// Looks up the route of `domain`.
pub async fn route(resolver: &TokioResolver, domain: &str) -> Result<Route, RouteError> {
    match resolver.mx_lookup(fqdn(domain)).await {
        Ok(lookup) => {
            let records: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange
                            .to_lowercase()
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_string(),
                    )),
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                return Ok(Route::Hosts(vec![domain.to_string()]));
            }
            Ok(order(records))
        }
        Err(e) if e.is_nx_domain() => Err(RouteError::Permanent(format!(
            "domain {domain} does not exist (NXDOMAIN)"
        ))),
        // RFC 5321 §5.1: no MX records, the domain itself is the implicit MX.
        Err(e) if e.is_no_records_found() => Ok(Route::Hosts(vec![domain.to_string()])),
        Err(e) => Err(RouteError::Temporary(format!(
            "MX look-up for {domain} failed: {e}"
        ))),
    }
}

/// The addresses of a host (AAAA and A).
pub async fn addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match resolver.lookup_ip(fqdn(host)).await {
        Ok(ips) => Ok(ips.iter().collect()),
        Err(e) if e.is_no_records_found() => Err(format!("host {host} has no address")),
        Err(e) => Err(format!("address look-up for {host} failed: {e}")),
    }
}

/// The id in the `_mta-sts` TXT record of `domain`, if it publishes one.
pub async fn mta_sts_id(resolver: &TokioResolver, domain: &str) -> Option<String> {
    let lookup = resolver
        .lookup(fqdn(&format!("_mta-sts.{domain}")), RecordType::TXT)
        .await
        .ok()?;
    lookup.answers().iter().find_map(|r| match &r.data {
        RData::TXT(txt) => {
            let text: String = txt
                .txt_data
                .iter()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .collect();
            super::mta_sts::parse_txt(&text)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_with_equal_preferences_shuffled() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..64 {
            let Route::Hosts(hosts) =
                order(vec![(20, "c".into()), (10, "a".into()), (10, "b".into())])
            else {
                panic!("hosts expected");
            };
            assert_eq!(hosts[2], "c");
            seen_first.insert(hosts[0].clone());
        }
        assert_eq!(
            seen_first.len(),
            2,
            "both equal-preference hosts come first sometimes"
        );
        assert_eq!(order(vec![(0, ".".into())]), Route::NullMx);
    }
}
