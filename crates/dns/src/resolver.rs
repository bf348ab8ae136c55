//! A small DNS resolver interface with typed answers, a hickory implementation and an
//! in-memory zone for unit tests.
//!
//! Every answer says *why* there is no record: the name does not exist (NXDOMAIN, RFC 1035
//! §4.1.1 RCODE 3), it exists without records of that type (NODATA, RFC 2308 §2.2), the
//! server did not answer in time, or it answered with an error (SERVFAIL, REFUSED, ...).
//! Callers must never report the last two as "missing".

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

/// The outcome of one look-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// The records (never empty).
    Found(Vec<T>),
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// The name exists but has no record of this type (NOERROR, empty answer).
    NoData,
    /// No answer within the timeout.
    Timeout,
    /// The server answered with an error code (`SERVFAIL`, `REFUSED`, ...).
    ServFail(String),
    /// The server could not be reached at all (connection refused, no route); the text says
    /// which address was tried and why.
    Unreachable(String),
}

impl<T> Lookup<T> {
    /// The records, empty unless [`Lookup::Found`].
    pub fn records(&self) -> &[T] {
        match self {
            Lookup::Found(r) => r,
            _ => &[],
        }
    }

    /// NXDOMAIN or NODATA: the DNS says there is nothing.
    pub fn is_missing(&self) -> bool {
        matches!(self, Lookup::NxDomain | Lookup::NoData)
    }

    /// Maps the records.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Lookup<U> {
        match self {
            Lookup::Found(r) => Lookup::Found(r.into_iter().map(f).collect()),
            Lookup::NxDomain => Lookup::NxDomain,
            Lookup::NoData => Lookup::NoData,
            Lookup::Timeout => Lookup::Timeout,
            Lookup::ServFail(c) => Lookup::ServFail(c),
            Lookup::Unreachable(e) => Lookup::Unreachable(e),
        }
    }

    /// The same failure with another record type (for errors found before records).
    fn fail_as<U>(&self) -> Option<Lookup<U>> {
        match self {
            Lookup::Found(_) => None,
            Lookup::NxDomain => Some(Lookup::NxDomain),
            Lookup::NoData => Some(Lookup::NoData),
            Lookup::Timeout => Some(Lookup::Timeout),
            Lookup::ServFail(c) => Some(Lookup::ServFail(c.clone())),
            Lookup::Unreachable(e) => Some(Lookup::Unreachable(e.clone())),
        }
    }
}

/// An MX record (RFC 1035 §3.3.9). Host names are lower-case, without the final dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mx {
    /// Lower is preferred.
    pub preference: u16,
    /// The mail exchanger.
    pub exchange: String,
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Srv {
    /// Lower is tried first.
    pub priority: u16,
    /// Share among equal priorities.
    pub weight: u16,
    /// TCP port.
    pub port: u16,
    /// Target host, lower-case without the final dot; `""` for "." (service not offered).
    pub target: String,
}

/// A CAA record (RFC 8659 §4.1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Caa {
    /// The flags octet (128 = issuer critical).
    pub flags: u8,
    /// The property tag, e.g. `issue`.
    pub tag: String,
    /// The value as text, e.g. `letsencrypt.org`.
    pub value: String,
}

/// A TXT record: its character-strings (RFC 1035 §3.3.14), each at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txt(pub Vec<Vec<u8>>);

impl Txt {
    /// A record of one logical text, split into 255-byte strings.
    pub fn from_text(text: &str) -> Txt {
        Txt(text.as_bytes().chunks(255).map(<[u8]>::to_vec).collect())
    }

    /// The strings concatenated (RFC 7208 §3.3, RFC 6376 §3.6.2.2), lossily as UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.concat()).into_owned()
    }
}

/// DNS look-ups by record type. Names are absolute with or without the final dot.
#[async_trait]
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// TXT records.
    async fn txt(&self, name: &str) -> Lookup<Txt>;
    /// MX records, sorted by preference.
    async fn mx(&self, name: &str) -> Lookup<Mx>;
    /// A records (following CNAMEs).
    async fn a(&self, name: &str) -> Lookup<Ipv4Addr>;
    /// AAAA records (following CNAMEs).
    async fn aaaa(&self, name: &str) -> Lookup<Ipv6Addr>;
    /// PTR names of an address (RFC 1035 §3.5, RFC 3596 §2.5).
    async fn ptr(&self, ip: IpAddr) -> Lookup<String>;
    /// The CNAME of a name (not followed).
    async fn cname(&self, name: &str) -> Lookup<String>;
    /// CAA records.
    async fn caa(&self, name: &str) -> Lookup<Caa>;
    /// SRV records.
    async fn srv(&self, name: &str) -> Lookup<Srv>;

    /// The server asked, for messages (e.g. `127.0.0.1:53`).
    fn server(&self) -> String {
        "the in-memory zone".to_owned()
    }

    /// A and AAAA together: found when either has records; otherwise the more telling
    /// failure (a timeout or SERVFAIL beats NODATA).
    async fn addresses(&self, name: &str) -> Lookup<IpAddr> {
        let (a, aaaa) = tokio::join!(self.a(name), self.aaaa(name));
        let mut found: Vec<IpAddr> = a.records().iter().copied().map(IpAddr::V4).collect();
        found.extend(aaaa.records().iter().copied().map(IpAddr::V6));
        if !found.is_empty() {
            return Lookup::Found(found);
        }
        for l in [&a.fail_as::<IpAddr>(), &aaaa.fail_as::<IpAddr>()]
            .into_iter()
            .flatten()
        {
            if !l.is_missing() {
                return l.clone();
            }
        }
        match (a, aaaa) {
            (Lookup::NxDomain, _) | (_, Lookup::NxDomain) => Lookup::NxDomain,
            _ => Lookup::NoData,
        }
    }
}

/// Lower-cases a host name and drops the final dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The reverse-lookup name of an address (RFC 1035 §3.5, RFC 3596 §2.5), with the final dot.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

/// Resolution through hickory: one server (UDP, then TCP on truncation) or the system's.
pub struct HickoryResolver {
    inner: hickory_resolver::Resolver<TokioRuntimeProvider>,
    /// What is queried, for error messages.
    server: String,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverSetupError(String);

impl HickoryResolver {
    /// Queries `server` (UDP and TCP at that address and port) with one attempt per query
    /// bounded by `timeout`, and no cache (a check must see the zone as it is now). `None`
    /// uses the system's configuration (`/etc/resolv.conf`).
    pub fn new(
        server: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<HickoryResolver, ResolverSetupError> {
        let (config, mut opts, label) = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                (
                    ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                    ResolverOpts::default(),
                    addr.to_string(),
                )
            }
            None => {
                let (c, o) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| ResolverSetupError(e.to_string()))?;
                let label = c
                    .name_servers
                    .iter()
                    .map(|n| n.ip.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                (c, o, format!("the system resolver ({label})"))
            }
        };
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        let inner = hickory_resolver::Resolver::builder_with_config(
            config,
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolverSetupError(e.to_string()))?;
        Ok(HickoryResolver {
            inner,
            server: label,
        })
    }

    /// The server this resolver asks, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Lookup<RData> {
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        match self.inner.lookup(fqdn.as_str(), rtype).await {
            Ok(lookup) => {
                let records: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if records.is_empty() {
                    Lookup::NoData
                } else {
                    Lookup::Found(records)
                }
            }
            Err(e) => self.classify(e),
        }
    }

    fn classify<T>(&self, e: NetError) -> Lookup<T> {
        match e {
            NetError::Dns(DnsError::NoRecordsFound(nr)) => {
                if nr.response_code == ResponseCode::NXDomain {
                    Lookup::NxDomain
                } else {
                    Lookup::NoData
                }
            }
            NetError::Dns(DnsError::ResponseCode(code)) => Lookup::ServFail(rcode_name(code)),
            NetError::Timeout => Lookup::Timeout,
            NetError::Io(e) => Lookup::Unreachable(format!("{}: {e}", self.server)),
            NetError::NoConnections => {
                Lookup::Unreachable(format!("{}: no connection possible", self.server))
            }
            other => {
                let text = other.to_string();
                if text.contains("timed out") {
                    Lookup::Timeout
                } else {
                    Lookup::ServFail(text)
                }
            }
        }
    }
}

/// The RFC 1035 §4.1.1 / RFC 6895 mnemonic of a response code (`SERVFAIL`, `REFUSED`, ...).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        other => format!("{other:?}").to_ascii_uppercase(),
    }
}

fn name_text(n: &hickory_resolver::proto::rr::Name) -> String {
    normalize(&n.to_ascii())
}

#[async_trait]
impl Resolver for HickoryResolver {
    fn server(&self) -> String {
        self.server.clone()
    }

    async fn txt(&self, name: &str) -> Lookup<Txt> {
        filter(self.query(name, RecordType::TXT).await, |d| match d {
            RData::TXT(t) => Some(Txt(t.txt_data.iter().map(|s| s.to_vec()).collect())),
            _ => None,
        })
    }

    async fn mx(&self, name: &str) -> Lookup<Mx> {
        let mut l = filter(self.query(name, RecordType::MX).await, |d| match d {
            RData::MX(m) => Some(Mx {
                preference: m.preference,
                exchange: name_text(&m.exchange),
            }),
            _ => None,
        });
        if let Lookup::Found(r) = &mut l {
            r.sort();
        }
        l
    }

    async fn a(&self, name: &str) -> Lookup<Ipv4Addr> {
        filter(self.query(name, RecordType::A).await, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        })
    }

    async fn aaaa(&self, name: &str) -> Lookup<Ipv6Addr> {
        filter(self.query(name, RecordType::AAAA).await, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
    }

    async fn ptr(&self, ip: IpAddr) -> Lookup<String> {
        filter(
            self.query(&reverse_name(ip), RecordType::PTR).await,
            |d| match d {
                RData::PTR(p) => Some(name_text(&p.0)),
                _ => None,
            },
        )
    }

    async fn cname(&self, name: &str) -> Lookup<String> {
        filter(self.query(name, RecordType::CNAME).await, |d| match d {
            RData::CNAME(c) => Some(name_text(&c.0)),
            _ => None,
        })
    }

    async fn caa(&self, name: &str) -> Lookup<Caa> {
        filter(self.query(name, RecordType::CAA).await, |d| match d {
            RData::CAA(c) => Some(Caa {
                flags: if c.issuer_critical { 128 } else { 0 } | c.reserved_flags,
                tag: c.tag.to_ascii_lowercase(),
                value: String::from_utf8_lossy(&c.value).into_owned(),
            }),
            _ => None,
        })
    }

    async fn srv(&self, name: &str) -> Lookup<Srv> {
        filter(self.query(name, RecordType::SRV).await, |d| match d {
            RData::SRV(s) => Some(Srv {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                target: name_text(&s.target),
            }),
            _ => None,
        })
    }
}

fn filter<T>(l: Lookup<RData>, f: impl FnMut(RData) -> Option<T>) -> Lookup<T> {
    match l {
        Lookup::Found(r) => {
            let out: Vec<T> = r.into_iter().filter_map(f).collect();
            if out.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Found(out)
            }
        }
        other => other.fail_as().unwrap_or(Lookup::NoData),
    }
}

/// One record of a [`MemoryResolver`] zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryRecord {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Mail exchanger.
    Mx(Mx),
    /// Text.
    Txt(Txt),
    /// Alias to another name (followed by A, AAAA, TXT, MX look-ups).
    Cname(String),
    /// Reverse pointer (put it at [`reverse_name`]).
    Ptr(String),
    /// CA authorization.
    Caa(Caa),
    /// Service location.
    Srv(Srv),
}

/// What a [`MemoryResolver`] answers for a name.
#[derive(Debug, Clone)]
enum Node {
    Records(Vec<MemoryRecord>),
    Timeout,
    ServFail,
}

/// An in-memory zone for unit tests: names without records are NXDOMAIN, names with other
/// records NODATA; a name can be made to time out or fail.
#[derive(Debug, Default, Clone)]
pub struct MemoryResolver {
    nodes: Arc<Mutex<BTreeMap<String, Node>>>,
}

impl MemoryResolver {
    /// An empty zone.
    pub fn new() -> MemoryResolver {
        MemoryResolver::default()
    }

    /// Adds a record at `name`.
    pub fn add(&self, name: &str, record: MemoryRecord) -> &Self {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let node = nodes
            .entry(normalize(name))
            .or_insert_with(|| Node::Records(Vec::new()));
        match node {
            Node::Records(r) => r.push(record),
            _ => *node = Node::Records(vec![record]),
        }
        self
    }

    /// Removes every record at `name` (it becomes NXDOMAIN).
    pub fn remove(&self, name: &str) -> &Self {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes.remove(&normalize(name));
        self
    }

    /// Every query for `name` times out.
    pub fn time_out(&self, name: &str) -> &Self {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes.insert(normalize(name), Node::Timeout);
        self
    }

    /// Every query for `name` gets SERVFAIL.
    pub fn fail(&self, name: &str) -> &Self {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes.insert(normalize(name), Node::ServFail);
        self
    }

    fn get<T>(
        &self,
        name: &str,
        follow_cname: bool,
        mut pick: impl FnMut(&MemoryRecord) -> Option<T>,
    ) -> Lookup<T> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut name = normalize(name);
        for _ in 0..8 {
            match nodes.get(&name) {
                None => return Lookup::NxDomain,
                Some(Node::Timeout) => return Lookup::Timeout,
                Some(Node::ServFail) => return Lookup::ServFail("SERVFAIL".into()),
                Some(Node::Records(r)) => {
                    let found: Vec<T> = r.iter().filter_map(&mut pick).collect();
                    if !found.is_empty() {
                        return Lookup::Found(found);
                    }
                    let alias = r.iter().find_map(|x| match x {
                        MemoryRecord::Cname(t) => Some(normalize(t)),
                        _ => None,
                    });
                    match alias {
                        Some(target) if follow_cname => name = target,
                        _ => return Lookup::NoData,
                    }
                }
            }
        }
        Lookup::ServFail("CNAME loop".into())
    }
}

#[async_trait]
impl Resolver for MemoryResolver {
    async fn txt(&self, name: &str) -> Lookup<Txt> {
        self.get(name, true, |r| match r {
            MemoryRecord::Txt(t) => Some(t.clone()),
            _ => None,
        })
    }

    async fn mx(&self, name: &str) -> Lookup<Mx> {
        let mut l = self.get(name, true, |r| match r {
            MemoryRecord::Mx(m) => Some(Mx {
                preference: m.preference,
                exchange: normalize(&m.exchange),
            }),
            _ => None,
        });
        if let Lookup::Found(r) = &mut l {
            r.sort();
        }
        l
    }

    async fn a(&self, name: &str) -> Lookup<Ipv4Addr> {
        self.get(name, true, |r| match r {
            MemoryRecord::A(a) => Some(*a),
            _ => None,
        })
    }

    async fn aaaa(&self, name: &str) -> Lookup<Ipv6Addr> {
        self.get(name, true, |r| match r {
            MemoryRecord::Aaaa(a) => Some(*a),
            _ => None,
        })
    }

    async fn ptr(&self, ip: IpAddr) -> Lookup<String> {
        self.get(&reverse_name(ip), false, |r| match r {
            MemoryRecord::Ptr(p) => Some(normalize(p)),
            _ => None,
        })
    }

    async fn cname(&self, name: &str) -> Lookup<String> {
        self.get(name, false, |r| match r {
            MemoryRecord::Cname(c) => Some(normalize(c)),
            _ => None,
        })
    }

    async fn caa(&self, name: &str) -> Lookup<Caa> {
        self.get(name, false, |r| match r {
            MemoryRecord::Caa(c) => Some(c.clone()),
            _ => None,
        })
    }

    async fn srv(&self, name: &str) -> Lookup<Srv> {
        self.get(name, false, |r| match r {
            MemoryRecord::Srv(s) => Some(s.clone()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.5".parse().expect("ip")),
            "5.2.0.192.in-addr.arpa."
        );
        assert_eq!(
            reverse_name("2001:db8::5".parse().expect("ip")),
            "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }

    #[tokio::test]
    async fn memory_zone_tells_nxdomain_nodata_timeout_and_servfail_apart() {
        let z = MemoryResolver::new();
        z.add(
            "example.org",
            MemoryRecord::A("192.0.2.1".parse().expect("ip")),
        )
        .add(
            "www.example.org",
            MemoryRecord::Cname("example.org.".into()),
        )
        .time_out("slow.example.org")
        .fail("broken.example.org");
        assert_eq!(
            z.a("www.example.org.").await,
            Lookup::Found(vec!["192.0.2.1".parse().expect("ip")])
        );
        assert_eq!(z.txt("example.org").await, Lookup::NoData);
        assert_eq!(z.txt("nope.example.org").await, Lookup::NxDomain);
        assert_eq!(z.txt("slow.example.org").await, Lookup::Timeout);
        assert!(matches!(
            z.txt("broken.example.org").await,
            Lookup::ServFail(_)
        ));
        assert_eq!(
            z.addresses("www.example.org").await,
            Lookup::Found(vec!["192.0.2.1".parse().expect("ip")])
        );
        assert_eq!(z.addresses("slow.example.org").await, Lookup::Timeout);
    }

    #[test]
    fn txt_splits_at_255_bytes() {
        let t = Txt::from_text(&"a".repeat(600));
        assert_eq!(
            t.0.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![255, 255, 90]
        );
        assert_eq!(t.text().len(), 600);
    }
}
