//! The live check: resolve every record of a [`Plan`], plus what only the live DNS can tell
//! (forward-confirmed reverse DNS, SPF's look-up count, the served MTA-STS policy), and say
//! for each: OK, MISSING, WRONG (found vs expected), WARN, TIMEOUT or SERVFAIL, with the
//! exact record to add or change.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::parse::TxtRecordParser;
use serde::Serialize;

use crate::dkim;
use crate::https::{self, FetchError};
use crate::plan::{Plan, PlannedRecord, Purpose, SPF_RECORD};
use crate::resolver::{Lookup, Resolver, normalize};
use crate::spf;

/// What each finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The domain's MX points at the mail host.
    Mx,
    /// An MX host resolves to an address.
    MxHost,
    /// The mail host's A records.
    A,
    /// The mail host's AAAA records.
    Aaaa,
    /// A mail host address has forward-confirmed reverse DNS.
    Ptr,
    /// SPF is present, parses and stays within 10 DNS look-ups.
    Spf,
    /// A stored DKIM key is published as stored.
    Dkim,
    /// DMARC is present and parses.
    Dmarc,
    /// The `_mta-sts` TXT record carries the current policy id.
    MtaSts,
    /// The policy served over HTTPS is the current one.
    MtaStsPolicy,
    /// TLS-RPT is present and parses.
    TlsRpt,
    /// A client SRV record.
    Srv,
    /// A discovery name points at the mail host and resolves.
    Cname,
    /// CAA lets the ACME CA issue.
    Caa,
}

impl Check {
    /// The label in text output.
    pub fn label(self) -> &'static str {
        match self {
            Check::Mx => "MX",
            Check::MxHost => "MX host",
            Check::A => "A",
            Check::Aaaa => "AAAA",
            Check::Ptr => "PTR",
            Check::Spf => "SPF",
            Check::Dkim => "DKIM",
            Check::Dmarc => "DMARC",
            Check::MtaSts => "MTA-STS",
            Check::MtaStsPolicy => "MTA-STS policy",
            Check::TlsRpt => "TLS-RPT",
            Check::Srv => "SRV",
            Check::Cname => "CNAME",
            Check::Caa => "CAA",
        }
    }
}

/// A finding's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// As it should be.
    Ok,
    /// The DNS says there is no such record (NXDOMAIN or NODATA).
    Missing,
    /// There is a record with the wrong value.
    Wrong {
        /// What the DNS (or the web server) has.
        found: String,
        /// What it should have.
        expected: String,
    },
    /// Works, but something deserves attention.
    Warn {
        /// What.
        message: String,
    },
    /// The server did not answer in time: nothing is known.
    Timeout,
    /// The server answered with an error code: nothing is known.
    Servfail {
        /// The code, e.g. `SERVFAIL` or `REFUSED`.
        rcode: String,
    },
}

impl Status {
    /// The word printed for it.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Missing => "MISSING",
            Status::Wrong { .. } => "WRONG",
            Status::Warn { .. } => "WARN",
            Status::Timeout => "TIMEOUT",
            Status::Servfail { .. } => "SERVFAIL",
        }
    }
}

/// One line of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: Check,
    /// The DNS name (absolute) or URL checked.
    pub name: String,
    /// Whether it counts for the exit status.
    pub required: bool,
    /// The verdict.
    #[serde(flatten)]
    pub status: Status,
    /// More explanation, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The exact record to add or change (zone-file line), or what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The domain, absolute.
    pub domain: String,
    /// The resolver asked.
    pub resolver: String,
    /// Whether nothing required is missing or wrong.
    pub passed: bool,
    /// Whether some look-up timed out or failed (those records are unverified).
    pub incomplete: bool,
    /// The findings in check order.
    pub findings: Vec<Finding>,
}

impl Report {
    fn new(domain: String, resolver: String, findings: Vec<Finding>) -> Report {
        let passed = !findings
            .iter()
            .any(|f| f.required && matches!(f.status, Status::Missing | Status::Wrong { .. }));
        let incomplete = findings
            .iter()
            .any(|f| matches!(f.status, Status::Timeout | Status::Servfail { .. }));
        Report {
            domain,
            resolver,
            passed,
            incomplete,
            findings,
        }
    }

    /// One line per finding (`STATUS  CHECK  name[: found … expected …]`), then the fix
    /// indented below it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let optional = if f.required || f.status == Status::Ok {
                ""
            } else {
                " (optional)"
            };
            let _ = write!(
                out,
                "{:<8} {:<14} {}",
                f.status.word(),
                f.check.label(),
                f.name
            );
            match &f.status {
                Status::Wrong { found, expected } => {
                    let _ = write!(out, ": found {found:?}, expected {expected:?}");
                }
                Status::Warn { message } => {
                    let _ = write!(out, ": {message}");
                }
                Status::Servfail { rcode } => {
                    let _ = write!(out, ": the server answered {rcode}");
                }
                Status::Timeout => out.push_str(": no answer in time"),
                Status::Ok | Status::Missing => {}
            }
            out.push_str(optional);
            out.push('\n');
            if let Some(d) = &f.detail {
                let _ = writeln!(out, "         {d}");
            }
            if let Some(fix) = &f.fix {
                for line in fix.lines() {
                    let _ = writeln!(out, "         fix: {line}");
                }
            }
        }
        let (bad, warn) = self
            .findings
            .iter()
            .fold((0, 0), |(b, w), f| match f.status {
                Status::Missing | Status::Wrong { .. } if f.required => (b + 1, w),
                Status::Ok => (b, w),
                _ => (b, w + 1),
            });
        let _ = writeln!(
            out,
            "{} checks: {} required record(s) missing or wrong, {} warning(s) or unverified",
            self.findings.len(),
            bad,
            warn
        );
        out
    }
}

/// How the check reaches the web.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Port of the MTA-STS policy host (443 in production).
    pub https_port: u16,
    /// Fetch the policy from this address instead of the one `mta-sts.<domain>` resolves to
    /// (to test a server before the DNS points at it; the certificate is still checked for
    /// the `mta-sts.` name). Overrides `https_port`.
    pub https_connect: Option<std::net::SocketAddr>,
    /// TLS client configuration for the policy fetch (the system roots in production).
    pub tls: Arc<rustls::ClientConfig>,
    /// Bound on the policy fetch.
    pub http_timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            https_port: 443,
            https_connect: None,
            tls: https::system_tls_config(),
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// The check could not run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The resolver did not answer the first query.
    #[error("cannot reach the DNS resolver at {server}: {reason}")]
    Unreachable {
        /// The address tried.
        server: String,
        /// What happened.
        reason: String,
    },
}

/// Runs every check of `plan` against `resolver`.
///
/// Fails only when the resolver cannot be reached at all (the first query gets no answer);
/// later timeouts and SERVFAILs become findings.
pub async fn check(
    resolver: &dyn Resolver,
    plan: &Plan,
    options: &CheckOptions,
) -> Result<Report, CheckError> {
    let mut c = Checker {
        resolver,
        plan,
        findings: Vec::new(),
    };
    let mx = resolver.mx(&plan.domain).await;
    match &mx {
        Lookup::Unreachable(reason) => {
            return Err(CheckError::Unreachable {
                server: resolver.server(),
                reason: reason.clone(),
            });
        }
        Lookup::Timeout => {
            return Err(CheckError::Unreachable {
                server: resolver.server(),
                reason: "no answer (timeout)".into(),
            });
        }
        _ => {}
    }
    c.mx(mx).await;
    let host_addresses = c.addresses().await;
    c.ptr(&host_addresses).await;
    c.spf().await;
    c.dkim().await;
    c.dmarc().await;
    c.mta_sts(options).await;
    c.tls_rpt().await;
    c.srv().await;
    c.cnames(&host_addresses).await;
    c.caa().await;
    Ok(Report::new(
        plan.domain.clone(),
        resolver.server(),
        c.findings,
    ))
}

struct Checker<'a> {
    resolver: &'a dyn Resolver,
    plan: &'a Plan,
    findings: Vec<Finding>,
}

/// The status for a failed look-up (never "missing" for a timeout or an error).
fn failure<T>(l: &Lookup<T>) -> Status {
    match l {
        Lookup::Timeout => Status::Timeout,
        Lookup::ServFail(c) => Status::Servfail { rcode: c.clone() },
        Lookup::Unreachable(e) => Status::Servfail { rcode: e.clone() },
        _ => Status::Missing,
    }
}

fn lines(records: &[PlannedRecord]) -> Option<String> {
    if records.is_empty() {
        None
    } else {
        Some(
            records
                .iter()
                .map(|r| r.zone_line())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }
}

impl Checker<'_> {
    fn push(
        &mut self,
        check: Check,
        name: &str,
        required: bool,
        status: Status,
        detail: Option<String>,
        fix: Option<String>,
    ) {
        let fix = if status == Status::Ok { None } else { fix };
        self.findings.push(Finding {
            check,
            name: name.to_owned(),
            required,
            status,
            detail,
            fix,
        });
    }

    fn planned(&self, purpose: Purpose) -> Vec<PlannedRecord> {
        self.plan.of(purpose).cloned().collect()
    }

    fn host(&self) -> String {
        normalize(&self.plan.mail_host)
    }

    /// TXT texts at `name` that start with `prefix` (case-insensitive), or the failure.
    async fn txt_with(&self, name: &str, prefix: &str) -> Result<Vec<String>, Status> {
        match self.resolver.txt(name).await {
            Lookup::Found(t) => Ok(t
                .iter()
                .map(|t| t.text())
                .filter(|t| {
                    t.to_ascii_lowercase()
                        .starts_with(&prefix.to_ascii_lowercase())
                })
                .collect()),
            l if l.is_missing() => Ok(Vec::new()),
            l => Err(failure(&l)),
        }
    }

    async fn mx(&mut self, mx: Lookup<crate::resolver::Mx>) {
        let planned = self.planned(Purpose::Mx);
        let fix = lines(&planned);
        let name = self.plan.domain.clone();
        let host = self.host();
        let records = mx.records().to_vec();
        let status = match &mx {
            Lookup::Found(r) if r.iter().any(|m| m.exchange == host) => Status::Ok,
            Lookup::Found(r) => Status::Wrong {
                found: show_mx(r),
                expected: format!("10 {host}."),
            },
            l => failure(l),
        };
        let detail = match &mx {
            Lookup::Found(r) if r.len() > 1 && status == Status::Ok => {
                Some(format!("other MX hosts: {}", show_mx(r)))
            }
            _ => None,
        };
        self.push(Check::Mx, &name, true, status, detail, fix);
        // Each MX host must resolve (RFC 5321 §5.1), whichever it is.
        for m in records {
            let l = self.resolver.addresses(&m.exchange).await;
            let status = match &l {
                Lookup::Found(_) => Status::Ok,
                l => failure(l),
            };
            let fix = if m.exchange == host {
                lines(&self.planned(Purpose::Address))
                    .or_else(|| Some(format!("add A/AAAA records for {host}.")))
            } else {
                Some(format!(
                    "add A/AAAA records for {}. or remove the MX",
                    m.exchange
                ))
            };
            self.push(
                Check::MxHost,
                &format!("{}.", m.exchange),
                true,
                status,
                None,
                fix,
            );
        }
    }

    /// Checks A/AAAA of the mail host; returns the addresses to check PTR for (configured and
    /// live).
    async fn addresses(&mut self) -> Vec<IpAddr> {
        let host = self.host();
        let name = format!("{host}.");
        let planned = self.planned(Purpose::Address);
        let mut all: BTreeSet<IpAddr> = planned
            .iter()
            .filter_map(|r| r.value.parse::<IpAddr>().ok())
            .collect();
        let (a, aaaa) = tokio::join!(self.resolver.a(&host), self.resolver.aaaa(&host));
        let a = a.map(IpAddr::V4);
        let aaaa = aaaa.map(IpAddr::V6);
        all.extend(a.records());
        all.extend(aaaa.records());
        if planned.is_empty() {
            // Addresses unknown to the configuration: they must simply exist.
            let found: Vec<IpAddr> = a.records().iter().chain(aaaa.records()).copied().collect();
            let status = if !found.is_empty() {
                Status::Ok
            } else if !a.is_missing() {
                failure(&a)
            } else if !aaaa.is_missing() {
                failure(&aaaa)
            } else {
                Status::Missing
            };
            let detail = (!found.is_empty()).then(|| {
                format!(
                    "{} (not in the configuration; set [dns] addresses to compare)",
                    show_ips(&found)
                )
            });
            self.push(
                Check::A,
                &name,
                true,
                status,
                detail,
                Some(format!("add A and/or AAAA records for {name}")),
            );
            return all.into_iter().collect();
        }
        for (check, rtype, lookup) in [(Check::A, "A", &a), (Check::Aaaa, "AAAA", &aaaa)] {
            let wanted: Vec<PlannedRecord> = planned
                .iter()
                .filter(|r| r.rtype == rtype)
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let expected: BTreeSet<IpAddr> =
                wanted.iter().filter_map(|r| r.value.parse().ok()).collect();
            let status = match lookup {
                Lookup::Found(r) => {
                    let found: BTreeSet<IpAddr> = r.iter().copied().collect();
                    if found == expected {
                        Status::Ok
                    } else {
                        Status::Wrong {
                            found: show_ips(&found.into_iter().collect::<Vec<_>>()),
                            expected: show_ips(&expected.iter().copied().collect::<Vec<_>>()),
                        }
                    }
                }
                l => failure(l),
            };
            self.push(check, &name, true, status, None, lines(&wanted));
        }
        all.into_iter().collect()
    }

    /// RFC 8601 §3 (iprev): the PTR name of each address must resolve back to it.
    async fn ptr(&mut self, addresses: &[IpAddr]) {
        let host = self.host();
        for ip in addresses {
            let rev = crate::resolver::reverse_name(*ip);
            let fix = Some(format!(
                "ask the provider of {ip} to set: {rev} PTR {host}."
            ));
            let l = self.resolver.ptr(*ip).await;
            let names = match &l {
                Lookup::Found(n) => n.clone(),
                l => {
                    let status = failure(l);
                    self.push(Check::Ptr, &rev, true, status, None, fix);
                    continue;
                }
            };
            let mut confirmed = Vec::new();
            for n in &names {
                if self.resolver.addresses(n).await.records().contains(ip) {
                    confirmed.push(n.clone());
                }
            }
            let status = if confirmed.contains(&host) {
                Status::Ok
            } else if let Some(n) = confirmed.first() {
                Status::Warn {
                    message: format!(
                        "{ip} has forward-confirmed reverse DNS {n}., not the mail host {host}. (receivers compare it with the EHLO name)"
                    ),
                }
            } else {
                Status::Wrong {
                    found: names
                        .iter()
                        .map(|n| format!("{n}."))
                        .collect::<Vec<_>>()
                        .join(", "),
                    expected: format!("{host}."),
                }
            };
            let detail = matches!(status, Status::Wrong { .. })
                .then(|| "the PTR name does not resolve back to the address".to_owned());
            self.push(Check::Ptr, &rev, true, status, detail, fix);
        }
    }

    async fn spf(&mut self) {
        let name = self.plan.domain.clone();
        let fix = lines(&self.planned(Purpose::Spf));
        let records = match self.resolver.txt(&name).await {
            Lookup::Found(t) => t.iter().map(|t| t.text()).collect::<Vec<_>>(),
            l if l.is_missing() => Vec::new(),
            l => {
                self.push(Check::Spf, &name, true, failure(&l), None, fix);
                return;
            }
        };
        let spf_texts: Vec<String> = spf::spf_records(&records).into_iter().cloned().collect();
        let (status, detail) = match spf_texts.as_slice() {
            [] => (Status::Missing, None),
            [text] => match spf::parse(text) {
                Err(e) => (
                    Status::Wrong {
                        found: text.clone(),
                        expected: SPF_RECORD.into(),
                    },
                    Some(format!("the record does not parse: {e}")),
                ),
                Ok(parsed) => {
                    let count = spf::count_lookups(self.resolver, &parsed).await;
                    let problems = (!count.problems.is_empty())
                        .then(|| count.problems.join("; "));
                    if count.lookups > spf::MAX_LOOKUPS {
                        (
                            Status::Wrong {
                                found: text.clone(),
                                expected: SPF_RECORD.into(),
                            },
                            Some(format!(
                                "the record needs {} DNS look-ups; RFC 7208 §4.6.4 allows {} (receivers answer permerror)",
                                count.lookups,
                                spf::MAX_LOOKUPS
                            )),
                        )
                    } else if text == SPF_RECORD {
                        (Status::Ok, problems)
                    } else if spf::authorizes_mx(&parsed) {
                        (
                            Status::Ok,
                            Some(format!(
                                "differs from the suggested {SPF_RECORD:?} but authorizes the MX hosts ({} look-ups)",
                                count.lookups
                            )),
                        )
                    } else {
                        (
                            Status::Wrong {
                                found: text.clone(),
                                expected: SPF_RECORD.into(),
                            },
                            Some("the record does not authorize the MX hosts (no `mx`)".into()),
                        )
                    }
                }
            },
            _ => (
                Status::Wrong {
                    found: spf_texts.join(" | "),
                    expected: SPF_RECORD.into(),
                },
                Some("more than one SPF record: receivers answer permerror (RFC 7208 §4.5); keep one".into()),
            ),
        };
        self.push(Check::Spf, &name, true, status, detail, fix);
    }

    async fn dkim(&mut self) {
        for r in self.planned(Purpose::Dkim) {
            let expected_text = r.text.clone().unwrap_or_default();
            let Some(expected) = dkim::parse_record(&expected_text) else {
                continue;
            };
            let (status, detail) = match self.txt_with(&r.name, "").await {
                Err(s) => (s, None),
                Ok(texts) if texts.is_empty() => (Status::Missing, None),
                Ok(texts) => {
                    let parsed: Vec<(String, Option<dkim::PublishedKey>)> = texts
                        .into_iter()
                        .map(|t| {
                            let p = dkim::parse_record(&t);
                            (t, p)
                        })
                        .collect();
                    if parsed.iter().any(|(_, p)| p.as_ref() == Some(&expected)) {
                        (Status::Ok, None)
                    } else {
                        let found = parsed
                            .iter()
                            .map(|(t, _)| t.clone())
                            .collect::<Vec<_>>()
                            .join(" | ");
                        let detail = if parsed.iter().all(|(_, p)| p.is_none()) {
                            "the published record is not a DKIM key record"
                        } else {
                            "the published key is not the stored one (an old key?)"
                        };
                        (
                            Status::Wrong {
                                found,
                                expected: expected_text.clone(),
                            },
                            Some(detail.into()),
                        )
                    }
                }
            };
            self.push(
                Check::Dkim,
                &r.name,
                true,
                status,
                detail,
                Some(r.zone_line()),
            );
        }
    }

    async fn dmarc(&mut self) {
        let Some(r) = self.planned(Purpose::Dmarc).into_iter().next() else {
            return;
        };
        let expected = r.text.clone().unwrap_or_default();
        let (status, detail) = match self.txt_with(&r.name, "v=DMARC1").await {
            Err(s) => (s, None),
            Ok(t) if t.is_empty() => (Status::Missing, None),
            Ok(t) if t.len() > 1 => (
                Status::Wrong {
                    found: t.join(" | "),
                    expected: expected.clone(),
                },
                Some(
                    "more than one DMARC record: receivers ignore them all (RFC 7489 §6.6.3)"
                        .into(),
                ),
            ),
            Ok(t) => match mail_auth::dmarc::Dmarc::parse(t[0].as_bytes()) {
                Err(e) => (
                    Status::Wrong {
                        found: t[0].clone(),
                        expected: expected.clone(),
                    },
                    Some(format!("the record does not parse: {e}")),
                ),
                Ok(_) if t[0] == expected => (Status::Ok, None),
                Ok(d) if d.p == mail_auth::dmarc::Policy::None => (
                    Status::Warn {
                        message: "p=none: receivers take no action on failing mail".into(),
                    },
                    None,
                ),
                Ok(_) => (
                    Status::Ok,
                    Some(format!(
                        "differs from the suggested {expected:?} but is valid"
                    )),
                ),
            },
        };
        self.push(
            Check::Dmarc,
            &r.name,
            true,
            status,
            detail,
            Some(r.zone_line()),
        );
    }

    async fn mta_sts(&mut self, options: &CheckOptions) {
        let Some(r) = self.planned(Purpose::MtaSts).into_iter().next() else {
            return;
        };
        let expected = r.text.clone().unwrap_or_default();
        let (status, detail) = match self.txt_with(&r.name, "v=STSv1").await {
            Err(s) => (s, None),
            Ok(t) if t.is_empty() => (Status::Missing, None),
            Ok(t) if t.len() > 1 => (
                Status::Wrong {
                    found: t.join(" | "),
                    expected: expected.clone(),
                },
                Some("more than one MTA-STS record: senders ignore them (RFC 8461 §3.1)".into()),
            ),
            Ok(t) => {
                let found_id = mail_auth::mta_sts::MtaSts::parse(t[0].as_bytes())
                    .ok()
                    .map(|m| m.id);
                let expected_id = mail_auth::mta_sts::MtaSts::parse(expected.as_bytes())
                    .ok()
                    .map(|m| m.id);
                match found_id {
                    None => (
                        Status::Wrong {
                            found: t[0].clone(),
                            expected: expected.clone(),
                        },
                        Some("the record does not parse".into()),
                    ),
                    Some(id) if Some(&id) == expected_id.as_ref() => (Status::Ok, None),
                    Some(_) => (
                        Status::Wrong {
                            found: t[0].clone(),
                            expected: expected.clone(),
                        },
                        Some(
                            "stale id: the policy changed, so senders must be told by a new id"
                                .into(),
                        ),
                    ),
                }
            }
        };
        self.push(
            Check::MtaSts,
            &r.name,
            true,
            status,
            detail,
            Some(r.zone_line()),
        );

        // The policy itself, as senders fetch it.
        let domain = normalize(&self.plan.domain);
        let host = format!("mta-sts.{domain}");
        let url = if options.https_port == 443 || options.https_connect.is_some() {
            format!("https://{host}{}", https::POLICY_PATH)
        } else {
            format!(
                "https://{host}:{}{}",
                options.https_port,
                https::POLICY_PATH
            )
        };
        let expected_policy = self.plan_policy_text();
        let fetched = https::fetch_policy(
            self.resolver,
            &host,
            options.https_port,
            options.https_connect,
            options.tls.clone(),
            options.http_timeout,
        )
        .await;
        let via = options
            .https_connect
            .map(|a| format!("fetched from {a} instead of the address of {host}"));
        let (status, detail) = match fetched {
            Ok(text) if Some(&text) == expected_policy.as_ref() => (Status::Ok, via),
            Ok(text) => (
                Status::Wrong {
                    found: text,
                    expected: expected_policy.unwrap_or_default(),
                },
                Some("the served policy is not the one this server would serve".into()),
            ),
            Err(FetchError::Timeout(_)) => (Status::Timeout, None),
            Err(e) => (
                Status::Wrong {
                    found: format!("error: {e}"),
                    expected: "the policy, served with a valid certificate".into(),
                },
                None,
            ),
        };
        let fix = Some(format!(
            "serve the policy at {url} (Tessera does on its HTTPS listener; {host}. needs the CNAME above and a certificate)"
        ));
        self.push(Check::MtaStsPolicy, &url, true, status, detail, fix);
    }

    fn plan_policy_text(&self) -> Option<String> {
        Some(self.plan.mta_sts_policy.clone())
    }

    async fn tls_rpt(&mut self) {
        let Some(r) = self.planned(Purpose::TlsRpt).into_iter().next() else {
            return;
        };
        let expected = r.text.clone().unwrap_or_default();
        let (status, detail) = match self.txt_with(&r.name, "v=TLSRPTv1").await {
            Err(s) => (s, None),
            Ok(t) if t.is_empty() => (Status::Missing, None),
            Ok(t) if t.len() > 1 => (
                Status::Wrong {
                    found: t.join(" | "),
                    expected: expected.clone(),
                },
                Some("more than one TLS-RPT record (RFC 8460 §3)".into()),
            ),
            Ok(t) => match mail_auth::mta_sts::TlsRpt::parse(t[0].as_bytes()) {
                Err(e) => (
                    Status::Wrong {
                        found: t[0].clone(),
                        expected: expected.clone(),
                    },
                    Some(format!("the record does not parse: {e}")),
                ),
                Ok(_) if t[0] == expected => (Status::Ok, None),
                Ok(_) => (
                    Status::Ok,
                    Some(format!(
                        "differs from the suggested {expected:?} but is valid"
                    )),
                ),
            },
        };
        self.push(
            Check::TlsRpt,
            &r.name,
            true,
            status,
            detail,
            Some(r.zone_line()),
        );
    }

    async fn srv(&mut self) {
        for r in self.planned(Purpose::Srv) {
            let status = match self.resolver.srv(&r.name).await {
                Lookup::Found(found) => {
                    let want: Vec<&str> = r.value.split(' ').collect();
                    let matches = found.iter().any(|s| {
                        let target = if s.target.is_empty() {
                            ".".to_owned()
                        } else {
                            format!("{}.", s.target)
                        };
                        want.get(2) == Some(&s.port.to_string().as_str())
                            && want.get(3) == Some(&target.as_str())
                    });
                    if matches {
                        Status::Ok
                    } else {
                        Status::Wrong {
                            found: found
                                .iter()
                                .map(|s| {
                                    format!("{} {} {} {}.", s.priority, s.weight, s.port, s.target)
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                            expected: r.value.clone(),
                        }
                    }
                }
                l => failure(&l),
            };
            self.push(
                Check::Srv,
                &r.name,
                r.required,
                status,
                None,
                Some(r.zone_line()),
            );
        }
    }

    async fn cnames(&mut self, host_addresses: &[IpAddr]) {
        let host = self.host();
        for r in self.planned(Purpose::Cname) {
            let (status, detail) = match self.resolver.cname(&r.name).await {
                Lookup::Found(targets) => {
                    let target = targets.first().cloned().unwrap_or_default();
                    let resolves =
                        matches!(self.resolver.addresses(&target).await, Lookup::Found(_));
                    if target == host && resolves {
                        (Status::Ok, None)
                    } else if target == host {
                        (
                            Status::Wrong {
                                found: format!("{target}."),
                                expected: format!("{host}."),
                            },
                            Some(format!("the target {host}. does not resolve")),
                        )
                    } else {
                        (
                            Status::Wrong {
                                found: format!("{target}."),
                                expected: format!("{host}."),
                            },
                            Some(if resolves {
                                "points at another host".to_owned()
                            } else {
                                format!("points at another host, and {target}. does not resolve")
                            }),
                        )
                    }
                }
                Lookup::NoData | Lookup::NxDomain => {
                    // No CNAME: A/AAAA records with the mail host's addresses do as well.
                    match self.resolver.addresses(&r.name).await {
                        Lookup::Found(ips) => {
                            if !host_addresses.is_empty()
                                && ips.iter().all(|ip| host_addresses.contains(ip))
                            {
                                (
                                    Status::Ok,
                                    Some("A/AAAA records with the mail host's addresses".into()),
                                )
                            } else {
                                (
                                    Status::Wrong {
                                        found: show_ips(&ips),
                                        expected: format!("{host}."),
                                    },
                                    Some("addresses that are not the mail host's".into()),
                                )
                            }
                        }
                        l if l.is_missing() => (Status::Missing, None),
                        l => (failure(&l), None),
                    }
                }
                l => (failure(&l), None),
            };
            self.push(
                Check::Cname,
                &r.name,
                r.required,
                status,
                detail,
                Some(r.zone_line()),
            );
        }
    }

    async fn caa(&mut self) {
        let Some(r) = self.planned(Purpose::Caa).into_iter().next() else {
            return;
        };
        let issuer = r
            .value
            .split('"')
            .nth(1)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let status = match self.resolver.caa(&r.name).await {
            Lookup::Found(found) => {
                let issue: Vec<&crate::resolver::Caa> =
                    found.iter().filter(|c| c.tag == "issue").collect();
                // RFC 8659 §4.2: without an issue property any CA may issue.
                let allowed = issue.is_empty()
                    || issue.iter().any(|c| {
                        c.value
                            .split(';')
                            .next()
                            .map(|v| v.trim().to_ascii_lowercase())
                            == Some(issuer.clone())
                    });
                if allowed {
                    Status::Ok
                } else {
                    Status::Wrong {
                        found: issue
                            .iter()
                            .map(|c| format!("{} {} \"{}\"", c.flags, c.tag, c.value))
                            .collect::<Vec<_>>()
                            .join(", "),
                        expected: r.value.clone(),
                    }
                }
            }
            l => failure(&l),
        };
        self.push(
            Check::Caa,
            &r.name,
            r.required,
            status,
            None,
            Some(r.zone_line()),
        );
    }
}

fn show_mx(r: &[crate::resolver::Mx]) -> String {
    r.iter()
        .map(|m| format!("{} {}.", m.preference, m.exchange))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ClientPorts, MtaStsPolicy, PlanInput};
    use crate::resolver::{MemoryRecord, MemoryResolver, Mx};

    fn plan() -> Plan {
        Plan::new(&PlanInput {
            domain: store::Domain::parse("example.org").expect("domain"),
            mail_host: "mail.example.org".into(),
            addresses: Vec::new(),
            addresses_detected: false,
            dkim_keys: Vec::new(),
            mta_sts: MtaStsPolicy {
                text: "version: STSv1\r\n".into(),
                id: "1".into(),
            },
            ports: ClientPorts::default(),
            caa_issuer: None,
        })
    }

    #[tokio::test]
    async fn timeouts_and_servfail_are_never_missing() {
        let z = MemoryResolver::new();
        z.add(
            "example.org",
            MemoryRecord::Mx(Mx {
                preference: 10,
                exchange: "mail.example.org".into(),
            }),
        )
        .time_out("_dmarc.example.org")
        .fail("_mta-sts.example.org");
        let report = check(&z, &plan(), &CheckOptions::default())
            .await
            .expect("runs");
        let status = |check: Check| {
            report
                .findings
                .iter()
                .find(|f| f.check == check)
                .map(|f| f.status.clone())
                .expect("finding")
        };
        assert_eq!(status(Check::Dmarc), Status::Timeout);
        assert_eq!(
            status(Check::MtaSts),
            Status::Servfail {
                rcode: "SERVFAIL".into()
            }
        );
        assert_eq!(status(Check::Spf), Status::Missing);
        assert!(report.incomplete && !report.passed);
        assert!(report.to_text().contains("TIMEOUT  DMARC"));
    }

    #[tokio::test]
    async fn no_answer_to_the_first_query_is_an_error() {
        let z = MemoryResolver::new();
        z.time_out("example.org");
        let e = check(&z, &plan(), &CheckOptions::default())
            .await
            .expect_err("unreachable");
        assert!(
            e.to_string()
                .starts_with("cannot reach the DNS resolver at"),
            "{e}"
        );
    }
}
