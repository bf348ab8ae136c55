//! `tessera.toml`: the one configuration file. Only this crate reads it.
//!
//! Two stages (STYLE.md §13): [`ConfigFile`] is what serde reads and validates (unknown
//! keys are errors naming the key and the file); [`Config`] is the resolved value the
//! server runs with (paths made absolute, defaults filled in).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "TESSERA_CONFIG";
/// Where the config lives when neither `--config` nor `TESSERA_CONFIG` says.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tessera/tessera.toml";

/// The file as written. Every key is optional except `hostname`; see `Config` for defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The mail host name: MX target, EHLO name, certificate name (e.g. `mail.example.org`).
    pub hostname: String,
    /// Database, message blobs and local CA; relative to the config file. Default `data`.
    pub data_dir: Option<PathBuf>,
    /// The threads' CPU scheduling policy: `"batch"` (default, Linux `SCHED_BATCH`: no
    /// wake-up preemption, see `net::sched`) or `"normal"` (as started).
    pub cpu_scheduling: Option<String>,
    /// Listener addresses.
    #[serde(default)]
    pub listen: ListenFile,
    /// Certificates.
    #[serde(default)]
    pub tls: TlsFile,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Failed-login throttle.
    #[serde(default)]
    pub auth: AuthFile,
    /// SMTP.
    #[serde(default)]
    pub smtp: SmtpFile,
    /// Web endpoints.
    #[serde(default)]
    pub web: WebFile,
    /// Logging.
    #[serde(default)]
    pub log: LogFile,
    /// DNS records.
    #[serde(default)]
    pub dns: DnsFile,
    /// Outbound delivery (the queue worker).
    #[serde(default)]
    pub outbound: OutboundFile,
    /// Certificates from an ACME CA (Let's Encrypt).
    #[serde(default)]
    pub acme: AcmeFile,
}

/// `[acme]`: certificates from an ACME CA (RFC 8555) for the mail host and, per hosted domain,
/// the domain and its `autoconfig.`, `autodiscover.`, `mta-sts.`, `mail.`, `imap.`, `smtp.`
/// names that resolve to `[dns] addresses`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    /// Turn ACME on. Default false (local CA or `[tls] certificates`).
    pub enabled: Option<bool>,
    /// `"letsencrypt"` (default), `"letsencrypt-staging"`, or a directory URL (`https://…`).
    pub directory: Option<String>,
    /// Contact e-mail address for the CA account (expiry and policy notices). Default none.
    pub contact: Option<String>,
    /// A PEM file with the root certificate the directory's HTTPS is signed by, for a private
    /// or test CA (pebble). Relative to the config file. Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Keep each certificate's private key across renewals, so TLSA (DANE) records that pin
    /// the key stay valid. Default false (a fresh key each time).
    pub keep_key: Option<bool>,
    /// Challenge types in order of preference: `"tls-alpn-01"` (port 443) and/or `"http-01"`
    /// (port 80). Default `["tls-alpn-01", "http-01"]`.
    pub challenges: Option<Vec<String>>,
    /// DNS server for the check that each name resolves to this server, e.g. `"127.0.0.1:53"`.
    /// Default: the system's resolver.
    pub resolver: Option<SocketAddr>,
}

/// Resolved `[acme]` settings (present only when enabled).
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// Directory URL.
    pub directory_url: String,
    /// Contact addresses.
    pub contact: Vec<String>,
    /// Extra root for the directory's HTTPS (absolute path).
    pub ca_file: Option<PathBuf>,
    /// Keep keys across renewals.
    pub keep_key: bool,
    /// Challenge preference.
    pub challenges: Vec<acme::ChallengeKind>,
    /// DNS server for the resolution check; `None` = system resolver.
    pub resolver: Option<SocketAddr>,
}

/// `[outbound]`: how the queue worker delivers to other mail servers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundFile {
    /// The SMTP port of remote servers. Default 25 (tests use a high port).
    pub port: Option<u16>,
    /// Extra trust roots (PEM), added to the system's bundle, for MTA-STS policy fetches and
    /// MX certificate checks (a test or private CA). Relative to the config file. Default none.
    pub ca_file: Option<PathBuf>,
    /// Local address to connect from (for SPF on multi-homed hosts). Default: the system's
    /// choice.
    pub source_ip: Option<std::net::IpAddr>,
    /// Waits after failed attempts in seconds; entry `n` after the `n+1`-th attempt, the last
    /// repeats. Default `[60, 300, 900, 1800, 3600, 7200, 14400]` (then every 4 hours).
    pub retry_schedule_secs: Option<Vec<u64>>,
    /// Give up (and bounce) this many hours after queueing. Default 120 (5 days).
    pub max_lifetime_hours: Option<u64>,
    /// How long a worker's claim on a message holds, in seconds: after a crash, the message
    /// waits this long before another attempt. Default 900.
    pub lease_secs: Option<u64>,
}

/// Resolved `[outbound]` settings; `None` keeps the worker's default.
#[derive(Debug, Clone, Default)]
pub struct OutboundSettings {
    /// Remote SMTP port.
    pub port: Option<u16>,
    /// Extra PEM trust roots (absolute path).
    pub ca_file: Option<PathBuf>,
    /// Source address.
    pub source_ip: Option<std::net::IpAddr>,
    /// Retry waits.
    pub retry_schedule: Option<Vec<Duration>>,
    /// Queue lifetime.
    pub max_lifetime: Option<Duration>,
    /// Claim lease.
    pub lease: Option<Duration>,
}

/// `[dns]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// The mail host's public addresses, published as its A/AAAA records (and needing PTR
    /// records), e.g. `["203.0.113.5", "2001:db8::5"]`. Default: detected, with a note.
    pub addresses: Option<Vec<std::net::IpAddr>>,
}

/// `[smtp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    /// Largest message accepted, in megabytes (advertised as SIZE). Default 50.
    pub max_message_size_mb: Option<usize>,
    /// Most recipients per message. Default 100 (RFC 5321 §4.5.3.1.8's minimum).
    pub max_recipients: Option<usize>,
    /// DNS server for SPF, DKIM, DMARC and reverse DNS checks, e.g. `"127.0.0.1:53"`.
    /// Default: the system's resolver (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Refuse incoming mail that fails DMARC for a domain publishing `p=reject`. Default true.
    pub dmarc_reject: Option<bool>,
}

/// `[web]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebFile {
    /// MTA-STS policy mode served at `mta-sts.<domain>`: `"testing"` (default, until the
    /// certificates are publicly trusted), `"enforce"` or `"none"`.
    pub mta_sts_mode: Option<MtaStsModeFile>,
    /// MTA-STS `max_age` in seconds. Default 604800 (one week).
    pub mta_sts_max_age: Option<u64>,
}

/// The MTA-STS modes (RFC 8461 §3.2).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsModeFile {
    /// Report, deliver anyway.
    Testing,
    /// Refuse delivery without valid TLS.
    Enforce,
    /// Withdraw a policy.
    None,
}

/// Resolved `[smtp]` settings.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Largest message in bytes.
    pub max_message_size: usize,
    /// Most recipients.
    pub max_recipients: usize,
    /// DNS server for sender checks; `None` = system resolver.
    pub resolver: Option<SocketAddr>,
    /// Refuse DMARC `p=reject` failures.
    pub dmarc_reject: bool,
}

/// `[listen]`: one address per listener, or `"off"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// SMTP for incoming mail (MX). Default `0.0.0.0:25`.
    pub smtp: Option<ListenAddr>,
    /// Submission with STARTTLS. Default `0.0.0.0:587`.
    pub submission: Option<ListenAddr>,
    /// Submission with implicit TLS. Default `0.0.0.0:465`.
    pub submissions: Option<ListenAddr>,
    /// IMAP with STARTTLS. Default `0.0.0.0:143`.
    pub imap: Option<ListenAddr>,
    /// IMAP with implicit TLS. Default `0.0.0.0:993`.
    pub imaps: Option<ListenAddr>,
    /// POP3 with STLS. Default `0.0.0.0:110`.
    pub pop3: Option<ListenAddr>,
    /// POP3 with implicit TLS. Default `0.0.0.0:995`.
    pub pop3s: Option<ListenAddr>,
    /// HTTP: autoconfig, MTA-STS, redirects to HTTPS. Default `0.0.0.0:80`.
    pub http: Option<ListenAddr>,
    /// HTTPS: autoconfig, Autodiscover, Apple profiles, setup page. Default `0.0.0.0:443`.
    pub https: Option<ListenAddr>,
}

/// A listener address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// Listen here.
    At(SocketAddr),
    /// Do not listen.
    Off,
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("off") {
            return Ok(ListenAddr::Off);
        }
        s.parse().map(ListenAddr::At).map_err(|_| {
            serde::de::Error::custom(format!(
                "expected an address like \"0.0.0.0:993\" or \"off\", found {s:?}"
            ))
        })
    }
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chains and keys; names come from each certificate. When empty,
    /// Tessera runs a local CA in `<data_dir>/tls` and signs its own certificates.
    #[serde(default)]
    pub certificates: Vec<PemPairFile>,
}

/// One `{ cert = "...", key = "..." }` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemPairFile {
    /// Full chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Connections per listener. Default 1024.
    pub max_connections: Option<usize>,
    /// Connections per client address per listener. Default 50.
    pub max_connections_per_ip: Option<usize>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Failed logins per account and address answered without delay. Default 3.
    pub free_failures: Option<u32>,
    /// First delay after those, in seconds; doubles per failure. Default 1. 0 disables.
    pub base_delay_secs: Option<u64>,
    /// Longest delay, in seconds. Default 60.
    pub max_delay_secs: Option<u64>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// A tracing filter such as `info` or `tessera=debug,net=trace`. Default `info`;
    /// the `RUST_LOG` variable overrides it.
    pub level: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Mail host name.
    pub hostname: String,
    /// Absolute data directory.
    pub data_dir: PathBuf,
    /// Enabled listeners.
    pub listeners: Vec<Listener>,
    /// PEM pairs (absolute); empty means local CA.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// Connections per listener.
    pub max_connections: usize,
    /// Connections per client address.
    pub max_connections_per_ip: usize,
    /// Throttle settings.
    pub throttle: net::ThrottleConfig,
    /// SMTP settings.
    pub smtp: SmtpSettings,
    /// MTA-STS mode.
    pub mta_sts_mode: MtaStsModeFile,
    /// MTA-STS max_age.
    pub mta_sts_max_age: u64,
    /// Log filter.
    pub log_level: String,
    /// The threads' CPU scheduling policy.
    pub cpu_scheduling: net::CpuScheduling,
    /// The mail host's public addresses from `[dns] addresses` (empty = not configured).
    pub dns_addresses: Vec<std::net::IpAddr>,
    /// Outbound delivery settings.
    pub outbound: OutboundSettings,
    /// ACME, when enabled.
    pub acme: Option<AcmeSettings>,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// SMTP MX, port 25.
    Smtp,
    /// Submission with STARTTLS, port 587.
    Submission,
    /// Submission with implicit TLS, port 465.
    Submissions,
    /// IMAP with STARTTLS, port 143.
    Imap,
    /// IMAP with implicit TLS, port 993.
    Imaps,
    /// POP3 with STLS, port 110.
    Pop3,
    /// POP3 with implicit TLS, port 995.
    Pop3s,
    /// HTTP, port 80.
    Http,
    /// HTTPS, port 443.
    Https,
}

impl Service {
    /// Every service with its config key and standard port.
    pub const ALL: [(Service, &'static str, u16); 9] = [
        (Service::Smtp, "smtp", 25),
        (Service::Submission, "submission", 587),
        (Service::Submissions, "submissions", 465),
        (Service::Imap, "imap", 143),
        (Service::Imaps, "imaps", 993),
        (Service::Pop3, "pop3", 110),
        (Service::Pop3s, "pop3s", 995),
        (Service::Http, "http", 80),
        (Service::Https, "https", 443),
    ];

    /// The config key (also the listener's name in logs).
    pub fn key(self) -> &'static str {
        Service::ALL
            .iter()
            .find(|(s, _, _)| *s == self)
            .map(|(_, k, _)| *k)
            .unwrap_or("?")
    }

    /// Whether the listener starts TLS right after accept.
    pub fn implicit_tls(self) -> bool {
        matches!(
            self,
            Service::Submissions | Service::Imaps | Service::Pop3s | Service::Https
        )
    }
}

/// One enabled listener.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    /// What it serves.
    pub service: Service,
    /// Where.
    pub addr: SocketAddr,
}

impl Config {
    /// Reads and resolves the file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let file: ConfigFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let hostname = store::Domain::parse(&file.hostname)
            .map_err(|e| anyhow::anyhow!("{}: key `hostname`: {e}", path.display()))?
            .to_string();
        let data_dir = resolve(file.data_dir.as_deref().unwrap_or(Path::new("data")));

        let l = &file.listen;
        let given = [
            l.smtp,
            l.submission,
            l.submissions,
            l.imap,
            l.imaps,
            l.pop3,
            l.pop3s,
            l.http,
            l.https,
        ];
        let mut listeners = Vec::new();
        for ((service, _, port), addr) in Service::ALL.iter().zip(given) {
            match addr.unwrap_or(ListenAddr::At(SocketAddr::from(([0, 0, 0, 0], *port)))) {
                ListenAddr::At(addr) => listeners.push(Listener {
                    service: *service,
                    addr,
                }),
                ListenAddr::Off => {}
            }
        }
        for (i, a) in listeners.iter().enumerate() {
            if let Some(b) = listeners[..i].iter().find(|b| b.addr == a.addr) {
                bail!(
                    "{}: keys `listen.{}` and `listen.{}` both use {}",
                    path.display(),
                    b.service.key(),
                    a.service.key(),
                    a.addr
                );
            }
        }

        let max_connections = file.limits.max_connections.unwrap_or(1024);
        let max_connections_per_ip = file.limits.max_connections_per_ip.unwrap_or(50);
        if max_connections == 0 {
            bail!(
                "{}: key `limits.max_connections` must be at least 1",
                path.display()
            );
        }

        let mut throttle = net::ThrottleConfig::default();
        if let Some(n) = file.auth.free_failures {
            throttle.free_failures = n;
        }
        match file.auth.base_delay_secs {
            Some(0) => throttle = net::ThrottleConfig::disabled(),
            Some(s) => throttle.base_delay = Duration::from_secs(s),
            None => {}
        }
        if let Some(s) = file.auth.max_delay_secs {
            throttle.max_delay = Duration::from_secs(s);
        }

        let max_mb = file.smtp.max_message_size_mb.unwrap_or(50);
        if max_mb == 0 || max_mb > 2048 {
            bail!(
                "{}: key `smtp.max_message_size_mb` must be between 1 and 2048",
                path.display()
            );
        }
        let max_recipients = file.smtp.max_recipients.unwrap_or(100);
        if !(1..=10_000).contains(&max_recipients) {
            bail!(
                "{}: key `smtp.max_recipients` must be between 1 and 10000",
                path.display()
            );
        }
        let smtp = SmtpSettings {
            max_message_size: max_mb * 1024 * 1024,
            max_recipients,
            resolver: file.smtp.resolver,
            dmarc_reject: file.smtp.dmarc_reject.unwrap_or(true),
        };

        let o = &file.outbound;
        if o.port == Some(0) {
            bail!("{}: key `outbound.port` must not be 0", path.display());
        }
        if let Some(schedule) = &o.retry_schedule_secs
            && (schedule.is_empty() || schedule.contains(&0))
        {
            bail!(
                "{}: key `outbound.retry_schedule_secs` must list at least one wait, each at least 1 second",
                path.display()
            );
        }
        if o.max_lifetime_hours == Some(0) || o.lease_secs == Some(0) {
            bail!(
                "{}: keys `outbound.max_lifetime_hours` and `outbound.lease_secs` must be at least 1",
                path.display()
            );
        }
        let outbound = OutboundSettings {
            port: o.port,
            ca_file: o.ca_file.as_deref().map(resolve),
            source_ip: o.source_ip,
            retry_schedule: o
                .retry_schedule_secs
                .as_ref()
                .map(|s| s.iter().copied().map(Duration::from_secs).collect()),
            max_lifetime: o
                .max_lifetime_hours
                .map(|h| Duration::from_secs(h.saturating_mul(3600))),
            lease: o.lease_secs.map(Duration::from_secs),
        };

        let mta_sts_max_age = file.web.mta_sts_max_age.unwrap_or(604_800);
        if !(86_400..=31_557_600).contains(&mta_sts_max_age) {
            bail!(
                "{}: key `web.mta_sts_max_age` must be between 86400 and 31557600 seconds (RFC 8461)",
                path.display()
            );
        }

        let acme = resolve_acme(&file.acme, path, &resolve)?;
        let cpu_scheduling = match file.cpu_scheduling.as_deref() {
            None => net::CpuScheduling::default(),
            Some(value) => net::CpuScheduling::parse(value).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: key `cpu_scheduling` must be \"batch\" or \"normal\", not {value:?}",
                    path.display()
                )
            })?,
        };

        Ok(Config {
            acme,
            path: path.to_path_buf(),
            smtp,
            mta_sts_mode: file.web.mta_sts_mode.unwrap_or(MtaStsModeFile::Testing),
            mta_sts_max_age,
            hostname,
            data_dir,
            listeners,
            certificates: file
                .tls
                .certificates
                .iter()
                .map(|p| (resolve(&p.cert), resolve(&p.key)))
                .collect(),
            max_connections,
            max_connections_per_ip,
            throttle,
            log_level: file.log.level.unwrap_or_else(|| "info".into()),
            cpu_scheduling,
            dns_addresses: file.dns.addresses.unwrap_or_default(),
            outbound,
        })
    }
}

/// Validates `[acme]`; `None` unless `enabled = true`.
fn resolve_acme(
    a: &AcmeFile,
    path: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<AcmeSettings>> {
    if a.enabled != Some(true) {
        return Ok(None);
    }
    let given = a.directory.as_deref().unwrap_or("letsencrypt");
    let Some(directory_url) = acme::directory_url(given) else {
        bail!(
            "{}: key `acme.directory` must be \"letsencrypt\", \"letsencrypt-staging\" or an https:// URL, found {given:?}",
            path.display()
        );
    };
    let mut contact = Vec::new();
    if let Some(c) = &a.contact {
        store::Address::parse(c)
            .map_err(|e| anyhow::anyhow!("{}: key `acme.contact`: {e}", path.display()))?;
        contact.push(c.clone());
    }
    let mut challenges = Vec::new();
    for name in a
        .challenges
        .clone()
        .unwrap_or_else(|| vec!["tls-alpn-01".into(), "http-01".into()])
    {
        let Some(kind) = acme::ChallengeKind::parse(&name) else {
            bail!(
                "{}: key `acme.challenges`: unknown challenge {name:?} (use \"tls-alpn-01\" and/or \"http-01\")",
                path.display()
            );
        };
        if challenges.contains(&kind) {
            bail!(
                "{}: key `acme.challenges` lists {name:?} twice",
                path.display()
            );
        }
        challenges.push(kind);
    }
    if challenges.is_empty() {
        bail!(
            "{}: key `acme.challenges` must name at least one challenge",
            path.display()
        );
    }
    Ok(Some(AcmeSettings {
        directory_url,
        contact,
        ca_file: a.ca_file.as_deref().map(resolve),
        keep_key: a.keep_key.unwrap_or(false),
        challenges,
        resolver: a.resolver,
    }))
}

/// The config path from `--config`, else `TESSERA_CONFIG`, else the default.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/tessera/tessera.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("hostname = \"Mail.Example.org\"\n").expect("valid");
        assert_eq!(c.hostname, "mail.example.org");
        assert_eq!(c.data_dir, PathBuf::from("/etc/tessera/data"));
        assert_eq!(c.listeners.len(), 9);
        assert_eq!(c.listeners[0].addr, "0.0.0.0:25".parse().expect("addr"));
        assert!(c.certificates.is_empty());
    }

    #[test]
    fn listeners_can_be_moved_and_turned_off() {
        let c = parse(
            "hostname = \"mail.example.org\"\ndata_dir = \"/srv/mail\"\n[listen]\nimap = \"127.0.0.1:1143\"\npop3 = \"off\"\npop3s = \"OFF\"\n",
        )
        .expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/srv/mail"));
        assert_eq!(c.listeners.len(), 7);
        let imap = c
            .listeners
            .iter()
            .find(|l| l.service == Service::Imap)
            .expect("imap");
        assert_eq!(imap.addr, "127.0.0.1:1143".parse().expect("addr"));
    }

    #[test]
    fn web_settings() {
        let c = parse("hostname = \"mail.example.org\"\n[web]\nmta_sts_mode = \"enforce\"\n")
            .expect("valid");
        assert_eq!(c.mta_sts_mode, MtaStsModeFile::Enforce);
        assert_eq!(c.mta_sts_max_age, 604_800);
        let e = parse("hostname = \"mail.example.org\"\n[web]\nmta_sts_mode = \"strict\"\n")
            .expect_err("bad mode");
        assert!(format!("{e:#}").contains("mta_sts_mode"), "{e:#}");
    }

    #[test]
    fn outbound_settings() {
        let c = parse("hostname = \"mail.example.org\"\n").expect("valid");
        assert!(c.outbound.port.is_none() && c.outbound.ca_file.is_none());
        assert!(c.outbound.retry_schedule.is_none() && c.outbound.lease.is_none());
        let c = parse(
            "hostname = \"mail.example.org\"\n[outbound]\nport = 2525\nca_file = \"ca.pem\"\nsource_ip = \"192.0.2.7\"\nretry_schedule_secs = [1, 30]\nmax_lifetime_hours = 2\nlease_secs = 10\n",
        )
        .expect("valid");
        let o = &c.outbound;
        assert_eq!(o.port, Some(2525));
        assert_eq!(o.ca_file, Some(PathBuf::from("/etc/tessera/ca.pem")));
        assert_eq!(o.source_ip, Some("192.0.2.7".parse().expect("ip")));
        assert_eq!(
            o.retry_schedule,
            Some(vec![Duration::from_secs(1), Duration::from_secs(30)])
        );
        assert_eq!(o.max_lifetime, Some(Duration::from_secs(7200)));
        assert_eq!(o.lease, Some(Duration::from_secs(10)));
        for bad in [
            "port = 0",
            "retry_schedule_secs = []",
            "retry_schedule_secs = [0]",
            "lease_secs = 0",
            "max_lifetime_hours = 0",
            "smtp_port = 25",
        ] {
            let e = parse(&format!(
                "hostname = \"mail.example.org\"\n[outbound]\n{bad}\n"
            ))
            .expect_err(bad);
            assert!(
                format!("{e:#}").contains("outbound") || format!("{e:#}").contains("smtp_port"),
                "{bad}: {e:#}"
            );
        }
    }

    #[test]
    fn dns_addresses() {
        let c = parse("hostname = \"mail.example.org\"\n").expect("valid");
        assert!(c.dns_addresses.is_empty());
        let c = parse(
            "hostname = \"mail.example.org\"\n[dns]\naddresses = [\"203.0.113.5\", \"2001:db8::5\"]\n",
        )
        .expect("valid");
        assert_eq!(c.dns_addresses.len(), 2);
        let e = parse("hostname = \"mail.example.org\"\n[dns]\naddresses = [\"nope\"]\n")
            .expect_err("bad address");
        assert!(format!("{e:#}").contains("addresses"), "{e:#}");
    }

    #[test]
    fn acme_settings() {
        let c = parse("hostname = \"mail.example.org\"\n").expect("valid");
        assert!(c.acme.is_none());
        let c = parse("hostname = \"mail.example.org\"\n[acme]\nenabled = true\n").expect("valid");
        let a = c.acme.expect("enabled");
        assert_eq!(a.directory_url, acme::LETS_ENCRYPT);
        assert_eq!(
            a.challenges,
            [acme::ChallengeKind::TlsAlpn01, acme::ChallengeKind::Http01]
        );
        assert!(!a.keep_key && a.contact.is_empty() && a.ca_file.is_none());
        let c = parse(
            "hostname = \"mail.example.org\"\n[acme]\nenabled = true\ndirectory = \"letsencrypt-staging\"\ncontact = \"admin@example.org\"\nca_file = \"ca.pem\"\nkeep_key = true\nchallenges = [\"http-01\"]\nresolver = \"127.0.0.1:53\"\n",
        )
        .expect("valid");
        let a = c.acme.expect("enabled");
        assert_eq!(a.directory_url, acme::LETS_ENCRYPT_STAGING);
        assert_eq!(a.contact, ["admin@example.org"]);
        assert_eq!(a.ca_file, Some(PathBuf::from("/etc/tessera/ca.pem")));
        assert!(a.keep_key);
        assert_eq!(a.challenges, [acme::ChallengeKind::Http01]);
        let c = parse(
            "hostname = \"mail.example.org\"\n[acme]\nenabled = true\ndirectory = \"https://ca.test/dir\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.acme.expect("enabled").directory_url,
            "https://ca.test/dir"
        );
        for bad in [
            "directory = \"http://ca.test/dir\"",
            "directory = \"zerossl\"",
            "contact = \"not an address\"",
            "challenges = []",
            "challenges = [\"dns-01\"]",
            "challenges = [\"http-01\", \"http-01\"]",
            "renew = 0.5",
        ] {
            let e = parse(&format!(
                "hostname = \"mail.example.org\"\n[acme]\nenabled = true\n{bad}\n"
            ))
            .expect_err(bad);
            assert!(
                format!("{e:#}").contains("acme") || format!("{e:#}").contains("renew"),
                "{bad}: {e:#}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_file() {
        let e = parse("hostname = \"mail.example.org\"\nbogus = 1\n").expect_err("unknown key");
        let text = format!("{e:#}");
        assert!(
            text.contains("/etc/tessera/tessera.toml") && text.contains("bogus"),
            "{text}"
        );

        let e = parse("hostname = \"mail.example.org\"\n[listen]\nimap = \"nowhere\"\n")
            .expect_err("bad");
        let text = format!("{e:#}");
        assert!(text.contains("imap") && text.contains("nowhere"), "{text}");

        let e = parse("hostname = \"not a host\"\n").expect_err("bad host");
        assert!(format!("{e:#}").contains("hostname"));

        let e = parse("[listen]\nimap = \"127.0.0.1:1\"\n").expect_err("missing hostname");
        assert!(format!("{e:#}").contains("hostname"));

        let e = parse("hostname = \"mail.example.org\"\n[listen]\nimap = \"127.0.0.1:1\"\npop3 = \"127.0.0.1:1\"\n")
            .expect_err("duplicate address");
        assert!(format!("{e:#}").contains("listen.pop3"));
    }
}
