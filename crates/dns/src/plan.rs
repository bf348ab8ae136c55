//! The records a hosted domain needs: MX, the mail host's addresses, SPF, DKIM, DMARC,
//! MTA-STS, TLS-RPT, SRV, the discovery names, CAA and (as a note) PTR.
//!
//! Standards: RFC 5321 §5.1 (MX), RFC 7208 (SPF), RFC 6376 and RFC 8463 (DKIM), RFC 7489
//! (DMARC), RFC 8461 (MTA-STS), RFC 8460 (TLS-RPT), RFC 6186 and RFC 8314 §5.1 (SRV for mail
//! clients), RFC 2782 (SRV targets are host names, never aliases), RFC 8659 (CAA).

use std::fmt::Write;
use std::net::IpAddr;

use serde::Serialize;
use store::{DkimKey, Domain};

use crate::dkim;
use crate::resolver::{Txt, reverse_name};

/// The TTL of every planned record: an hour, short enough to fix mistakes quickly.
pub const DEFAULT_TTL: u32 = 3600;

/// The suggested SPF record (RFC 7208 §5.4: the MX hosts may send, nobody else).
pub const SPF_RECORD: &str = "v=spf1 mx -all";

/// The ports mail clients are told to use; 0 = not offered (published as `0 0 0 .`,
/// RFC 6186 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPorts {
    /// IMAP over TLS (993).
    pub imaps: u16,
    /// IMAP with STARTTLS (143).
    pub imap: u16,
    /// Submission over TLS (465).
    pub submissions: u16,
    /// Submission with STARTTLS (587).
    pub submission: u16,
    /// POP3 over TLS (995).
    pub pop3s: u16,
    /// POP3 with STLS (110).
    pub pop3: u16,
    /// HTTPS, for Autodiscover (443).
    pub https: u16,
}

impl Default for ClientPorts {
    fn default() -> Self {
        ClientPorts {
            imaps: 993,
            imap: 143,
            submissions: 465,
            submission: 587,
            pop3s: 995,
            pop3: 110,
            https: 443,
        }
    }
}

/// The MTA-STS policy this server serves (RFC 8461 §3.2) and the `id` of its TXT record
/// (§3.1), which must change whenever the text does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaStsPolicy {
    /// The policy file's text (CRLF lines).
    pub text: String,
    /// The TXT record's id: 1–32 alphanumerics.
    pub id: String,
}

/// Everything the plan is made from.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The hosted domain.
    pub domain: Domain,
    /// The mail host name (MX target, EHLO name).
    pub mail_host: String,
    /// The mail host's public addresses; empty = unknown (the plan says so in a note).
    pub addresses: Vec<IpAddr>,
    /// The addresses were detected, not configured (the plan notes it).
    pub addresses_detected: bool,
    /// The domain's stored DKIM keys (active and retired; all are published).
    pub dkim_keys: Vec<DkimKey>,
    /// The MTA-STS policy.
    pub mta_sts: MtaStsPolicy,
    /// Client ports for SRV.
    pub ports: ClientPorts,
    /// The ACME CA's CAA issuer domain (`letsencrypt.org`); `None` = no CAA record.
    pub caa_issuer: Option<String>,
}

/// What a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// MX of the domain.
    Mx,
    /// A/AAAA of the mail host.
    Address,
    /// SPF.
    Spf,
    /// A DKIM key.
    Dkim,
    /// DMARC policy.
    Dmarc,
    /// MTA-STS TXT.
    MtaSts,
    /// TLS-RPT.
    TlsRpt,
    /// Client SRV.
    Srv,
    /// A discovery or convenience name.
    Cname,
    /// CAA.
    Caa,
    /// Reverse DNS of a mail host address (set by whoever owns the address).
    Ptr,
}

/// One planned record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRecord {
    /// What it is for.
    pub purpose: Purpose,
    /// Owner name, absolute (final dot).
    pub name: String,
    /// TTL in seconds.
    pub ttl: u32,
    /// Record type: `MX`, `A`, `AAAA`, `TXT`, `SRV`, `CNAME`, `CAA`, `PTR`.
    #[serde(rename = "type")]
    pub rtype: &'static str,
    /// RDATA in zone-file syntax (TXT as quoted strings of at most 255 bytes each).
    pub value: String,
    /// For TXT: the logical text (the strings joined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What the record is for, in a sentence.
    pub comment: String,
    /// Whether mail or client set-up breaks without it (the check's exit status counts only
    /// these).
    pub required: bool,
    /// Not part of the domain's zone: the hosting provider (address owner) sets it.
    pub provider_sets: bool,
}

impl PlannedRecord {
    /// The zone-file line: `name TTL IN TYPE value`.
    pub fn zone_line(&self) -> String {
        format!(
            "{} {} IN {} {}",
            self.name, self.ttl, self.rtype, self.value
        )
    }
}

/// The plan for one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The domain, absolute.
    pub domain: String,
    /// The mail host, absolute.
    pub mail_host: String,
    /// The records, in the order they are printed.
    pub records: Vec<PlannedRecord>,
    /// Things to know that are not records.
    pub notes: Vec<String>,
    /// The MTA-STS policy text the `_mta-sts` id belongs to (what the check expects to be
    /// served).
    pub mta_sts_policy: String,
}

/// `name` with exactly one final dot, lower-case.
pub fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

/// A TXT value in zone-file syntax: quoted strings of at most 255 bytes (RFC 1035 §3.3.14),
/// with `"` and `\` escaped.
pub fn txt_value(text: &str) -> String {
    Txt::from_text(text)
        .0
        .iter()
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Plan {
    /// Builds the plan.
    pub fn new(input: &PlanInput) -> Plan {
        let d = absolute(input.domain.as_str());
        let host = absolute(&input.mail_host);
        let bare_domain = input.domain.as_str().to_owned();
        let ttl = DEFAULT_TTL;
        let mut records = Vec::new();
        let mut notes = Vec::new();
        let mut add = |purpose, name: &str, rtype, value: String, comment: String, required| {
            records.push(PlannedRecord {
                purpose,
                name: name.to_owned(),
                ttl,
                rtype,
                value,
                text: None,
                comment,
                required,
                provider_sets: purpose == Purpose::Ptr,
            });
        };

        add(
            Purpose::Mx,
            &d,
            "MX",
            format!("10 {host}"),
            format!("mail for {bare_domain} is delivered to {host} (RFC 5321 §5.1)"),
            true,
        );

        let host_in_zone = host == d || host.ends_with(&format!(".{d}"));
        let zone_note = if host_in_zone {
            String::new()
        } else {
            format!(" (in the zone of {host}, not {d})")
        };
        for ip in &input.addresses {
            let (rtype, family) = match ip {
                IpAddr::V4(_) => ("A", "IPv4"),
                IpAddr::V6(_) => ("AAAA", "IPv6"),
            };
            let how = if input.addresses_detected {
                "detected"
            } else {
                "configured"
            };
            add(
                Purpose::Address,
                &host,
                rtype,
                ip.to_string(),
                format!("the mail host's {family} address ({how}){zone_note}"),
                true,
            );
        }
        if input.addresses.is_empty() {
            notes.push(format!(
                "the addresses of {host} are unknown: set `[dns] addresses = [\"<IPv4>\", \"<IPv6>\"]` in tessera.toml to get its A/AAAA and PTR records"
            ));
        } else if input.addresses_detected {
            notes.push(format!(
                "the addresses of {host} were detected from this machine; set `[dns] addresses` in tessera.toml if they are not the public ones"
            ));
        }

        add(
            Purpose::Spf,
            &d,
            "TXT",
            txt_value(SPF_RECORD),
            "SPF: only the MX hosts send mail for the domain (RFC 7208)".into(),
            true,
        );
        for key in &input.dkim_keys {
            let text = dkim::record_text(key.algorithm, &key.public_key);
            let state = if key.is_active() {
                "signing"
            } else {
                "retired, still published for mail in transit; remove with `tessera dkim remove`"
            };
            add(
                Purpose::Dkim,
                &format!("{}._domainkey.{d}", key.selector),
                "TXT",
                txt_value(&text),
                format!(
                    "DKIM {} key, selector {} ({state}; RFC {})",
                    key.algorithm,
                    key.selector,
                    match key.algorithm {
                        store::DkimAlgorithm::RsaSha256 => "6376",
                        store::DkimAlgorithm::Ed25519Sha256 => "8463",
                    }
                ),
                true,
            );
        }
        if input.dkim_keys.is_empty() {
            notes.push(format!(
                "{bare_domain} has no DKIM keys: create them with `tessera dkim rotate {bare_domain}`"
            ));
        }
        add(
            Purpose::Dmarc,
            &format!("_dmarc.{d}"),
            "TXT",
            txt_value(&dmarc_record(&bare_domain)),
            "DMARC: quarantine mail failing SPF and DKIM alignment, reports to dmarc@ (RFC 7489)"
                .into(),
            true,
        );
        add(
            Purpose::MtaSts,
            &format!("_mta-sts.{d}"),
            "TXT",
            txt_value(&mta_sts_record(&input.mta_sts.id)),
            format!(
                "MTA-STS: senders fetch the policy from https://mta-sts.{bare_domain}/.well-known/mta-sts.txt; the id changes with the policy (RFC 8461 §3.1)"
            ),
            true,
        );
        add(
            Purpose::TlsRpt,
            &format!("_smtp._tls.{d}"),
            "TXT",
            txt_value(&tls_rpt_record(&bare_domain)),
            "TLS-RPT: where senders report TLS failures (RFC 8460)".into(),
            true,
        );

        let p = &input.ports;
        let srv = [
            ("_imaps", p.imaps, 0, "IMAP over TLS (RFC 6186, RFC 8314)"),
            ("_imap", p.imap, 10, "IMAP with STARTTLS (RFC 6186)"),
            (
                "_submissions",
                p.submissions,
                0,
                "submission over TLS (RFC 8314)",
            ),
            (
                "_submission",
                p.submission,
                10,
                "submission with STARTTLS (RFC 6186)",
            ),
            ("_pop3s", p.pop3s, 0, "POP3 over TLS (RFC 6186, RFC 8314)"),
            ("_pop3", p.pop3, 10, "POP3 with STLS (RFC 6186)"),
            ("_autodiscover", p.https, 0, "Outlook Autodiscover"),
        ];
        for (service, port, priority, what) in srv {
            let (value, comment) = if port == 0 {
                (
                    "0 0 0 .".to_owned(),
                    format!("{what}: not offered (RFC 6186 §4)"),
                )
            } else {
                (
                    format!("{priority} 1 {port} {host}"),
                    format!("{what}: clients find the server here"),
                )
            };
            add(
                Purpose::Srv,
                &format!("{service}._tcp.{d}"),
                "SRV",
                value,
                comment,
                false,
            );
        }

        for (prefix, required, what) in [
            ("autoconfig", true, "Thunderbird autoconfiguration"),
            ("autodiscover", true, "Outlook Autodiscover"),
            ("mta-sts", true, "the MTA-STS policy host"),
            ("mail", false, "a familiar name for the mail server"),
            ("imap", false, "a familiar name for IMAP"),
            ("smtp", false, "a familiar name for SMTP"),
        ] {
            let name = format!("{prefix}.{d}");
            if name == host {
                continue;
            }
            add(
                Purpose::Cname,
                &name,
                "CNAME",
                host.clone(),
                format!("{what} (the server has a certificate for this name)"),
                required,
            );
        }

        if let Some(issuer) = &input.caa_issuer {
            add(
                Purpose::Caa,
                &d,
                "CAA",
                format!("0 issue \"{issuer}\""),
                format!("only {issuer} may issue certificates for the domain (RFC 8659)"),
                false,
            );
        }

        for ip in &input.addresses {
            add(
                Purpose::Ptr,
                &reverse_name(*ip),
                "PTR",
                host.clone(),
                format!(
                    "reverse DNS of {ip}: set by your hosting provider, not in your zone; receivers check it"
                ),
                true,
            );
        }

        for r in &mut records {
            if r.rtype == "TXT" {
                r.text = Some(unquote_txt(&r.value));
            }
        }
        Plan {
            domain: d,
            mail_host: host,
            records,
            notes,
            mta_sts_policy: input.mta_sts.text.clone(),
        }
    }

    /// Records of one purpose.
    pub fn of(&self, purpose: Purpose) -> impl Iterator<Item = &PlannedRecord> {
        self.records.iter().filter(move |r| r.purpose == purpose)
    }

    /// The zone-file fragment: a comment line then the record for each; PTR records (which
    /// belong to the address owner's zone) as comments; notes at the end.
    pub fn zone_file(&self) -> String {
        let mut out = format!(
            "; DNS records for {} (mail host {}), generated by Tessera\n",
            self.domain, self.mail_host
        );
        for r in &self.records {
            let _ = writeln!(out, "\n; {}", r.comment);
            if r.provider_sets {
                let _ = writeln!(out, "; {}", r.zone_line());
            } else {
                let _ = writeln!(out, "{}", r.zone_line());
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n; NOTE: {n}");
        }
        out
    }
}

/// The suggested DMARC record (RFC 7489 §6.3: `v` first, `p` required).
pub fn dmarc_record(domain: &str) -> String {
    format!("v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}")
}

/// The MTA-STS TXT record (RFC 8461 §3.1).
pub fn mta_sts_record(id: &str) -> String {
    format!("v=STSv1; id={id}")
}

/// The TLS-RPT record (RFC 8460 §3).
pub fn tls_rpt_record(domain: &str) -> String {
    format!("v=TLSRPTv1; rua=mailto:tlsrpt@{domain}")
}

/// The text of a zone-file TXT value made by [`txt_value`].
fn unquote_txt(value: &str) -> String {
    let mut out = String::new();
    let mut in_quote = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => in_quote = !in_quote,
            '\\' if in_quote => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c if in_quote => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PlanInput {
        let domain = Domain::parse("example.org").expect("domain");
        let [rsa, ed] = dkim::generate_pair(&domain, 1_794_700_800, &[]).expect("keys");
        let keys = [rsa, ed]
            .into_iter()
            .map(|k| DkimKey {
                domain: k.domain,
                selector: k.selector,
                algorithm: k.algorithm,
                private_key: k.private_key,
                public_key: k.public_key,
                created_at: 0,
                retired_at: None,
            })
            .collect();
        PlanInput {
            domain,
            mail_host: "mail.example.org".into(),
            addresses: vec![
                "203.0.113.5".parse().expect("ip"),
                "2001:db8::5".parse().expect("ip"),
            ],
            addresses_detected: false,
            dkim_keys: keys,
            mta_sts: MtaStsPolicy {
                text:
                    "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
                        .into(),
                id: "abc123".into(),
            },
            ports: ClientPorts {
                pop3: 0,
                ..ClientPorts::default()
            },
            caa_issuer: Some("letsencrypt.org".into()),
        }
    }

    #[test]
    fn plan_has_every_record_with_absolute_names() {
        let plan = Plan::new(&input());
        let lines: Vec<String> = plan
            .records
            .iter()
            .filter(|r| r.purpose != Purpose::Dkim)
            .map(PlannedRecord::zone_line)
            .collect();
        assert_eq!(
            lines,
            vec![
                "example.org. 3600 IN MX 10 mail.example.org.",
                "mail.example.org. 3600 IN A 203.0.113.5",
                "mail.example.org. 3600 IN AAAA 2001:db8::5",
                "example.org. 3600 IN TXT \"v=spf1 mx -all\"",
                "_dmarc.example.org. 3600 IN TXT \"v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org\"",
                "_mta-sts.example.org. 3600 IN TXT \"v=STSv1; id=abc123\"",
                "_smtp._tls.example.org. 3600 IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.org\"",
                "_imaps._tcp.example.org. 3600 IN SRV 0 1 993 mail.example.org.",
                "_imap._tcp.example.org. 3600 IN SRV 10 1 143 mail.example.org.",
                "_submissions._tcp.example.org. 3600 IN SRV 0 1 465 mail.example.org.",
                "_submission._tcp.example.org. 3600 IN SRV 10 1 587 mail.example.org.",
                "_pop3s._tcp.example.org. 3600 IN SRV 0 1 995 mail.example.org.",
                "_pop3._tcp.example.org. 3600 IN SRV 0 0 0 .",
                "_autodiscover._tcp.example.org. 3600 IN SRV 0 1 443 mail.example.org.",
                "autoconfig.example.org. 3600 IN CNAME mail.example.org.",
                "autodiscover.example.org. 3600 IN CNAME mail.example.org.",
                "mta-sts.example.org. 3600 IN CNAME mail.example.org.",
                "imap.example.org. 3600 IN CNAME mail.example.org.",
                "smtp.example.org. 3600 IN CNAME mail.example.org.",
                "example.org. 3600 IN CAA 0 issue \"letsencrypt.org\"",
                "5.113.0.203.in-addr.arpa. 3600 IN PTR mail.example.org.",
                "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 3600 IN PTR mail.example.org.",
            ]
        );
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    }

    #[test]
    fn dkim_records_are_split_into_255_byte_strings() {
        let plan = Plan::new(&input());
        let dkim: Vec<&PlannedRecord> = plan.of(Purpose::Dkim).collect();
        assert_eq!(dkim.len(), 2);
        assert_eq!(dkim[0].name, "ts2026-11r._domainkey.example.org.");
        assert_eq!(dkim[1].name, "ts2026-11e._domainkey.example.org.");
        // RSA-2048: 392 base64 characters + tags -> two strings.
        let strings: Vec<&str> = dkim[0].value.split("\" \"").collect();
        assert_eq!(strings.len(), 2, "{}", dkim[0].value);
        assert_eq!(strings[0].trim_start_matches('"').len(), 255);
        assert!(
            dkim[0]
                .text
                .as_deref()
                .is_some_and(|t| t.starts_with("v=DKIM1; k=rsa; p="))
        );
        assert!(
            !dkim[1].value.contains("\" \""),
            "ed25519 fits in one string"
        );
    }

    #[test]
    fn zone_file_has_a_comment_per_record_and_ptr_as_comment() {
        let plan = Plan::new(&input());
        let text = plan.zone_file();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("; ")).count(),
            plan.records.len() + 1 + 2,
            "{text}"
        );
        assert!(text.contains("\n; 5.113.0.203.in-addr.arpa. 3600 IN PTR mail.example.org.\n"));
        assert!(!text.contains("\n5.113.0.203"));
    }

    #[test]
    fn unknown_addresses_give_a_note_and_no_records() {
        let mut i = input();
        i.addresses.clear();
        let plan = Plan::new(&i);
        assert_eq!(plan.of(Purpose::Address).count(), 0);
        assert_eq!(plan.of(Purpose::Ptr).count(), 0);
        assert!(
            plan.notes[0].contains("[dns] addresses"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn json_shape() {
        let plan = Plan::new(&input());
        let v = serde_json::to_value(&plan).expect("json");
        assert_eq!(v["domain"], "example.org.");
        assert_eq!(v["records"][0]["purpose"], "mx");
        assert_eq!(v["records"][0]["type"], "MX");
        assert_eq!(v["records"][0]["value"], "10 mail.example.org.");
        assert_eq!(v["records"][0]["required"], true);
        assert_eq!(v["records"][3]["text"], "v=spf1 mx -all");
    }
}
