//! The live check against a real authoritative DNS server (nsd on loopback) with zone files
//! written here, and the MTA-STS policy served over real HTTPS (a tokio-rustls server with a
//! test CA the check's client trusts).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dns::{
    Check, CheckError, CheckOptions, ClientPorts, HickoryResolver, MtaStsPolicy, Plan, PlanInput,
    Purpose, Report, Status,
};
use store::{DkimAlgorithm, DkimKey, Domain};
use support::nsd::{Nsd, zone_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOMAIN: &str = "example.test";
const HOST: &str = "mail.example.test";
const POLICY: &str =
    "version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\nmax_age: 604800\r\n";
const POLICY_ID: &str = "20261101a";
const V6_PTR: &str = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.";

fn keys(domain: &Domain, time: i64) -> Vec<DkimKey> {
    dns::dkim::generate_pair(domain, time, &[])
        .expect("keys")
        .into_iter()
        .map(|k| DkimKey {
            domain: k.domain,
            selector: k.selector,
            algorithm: k.algorithm,
            private_key: k.private_key,
            public_key: k.public_key,
            created_at: time,
            retired_at: None,
        })
        .collect()
}

fn plan() -> Plan {
    let domain = Domain::parse(DOMAIN).expect("domain");
    Plan::new(&PlanInput {
        dkim_keys: keys(&domain, 1_794_700_800),
        domain,
        mail_host: HOST.into(),
        addresses: vec![
            "192.0.2.10".parse().expect("ip"),
            "2001:db8::10".parse().expect("ip"),
        ],
        addresses_detected: false,
        mta_sts: MtaStsPolicy {
            text: POLICY.into(),
            id: POLICY_ID.into(),
        },
        ports: ClientPorts::default(),
        caa_issuer: Some("letsencrypt.org".into()),
    })
}

/// The zones for a plan: the domain (every non-PTR record, minus `skip`, plus `extra` lines)
/// and the two reverse zones with the PTRs (minus `skip`).
fn zones(plan: &Plan, skip: &[&str], extra: &str) -> Vec<(&'static str, String)> {
    let keep = |line: &String| !skip.iter().any(|s| line.starts_with(s));
    let mut forward = zone_header(DOMAIN);
    let mut v4 = zone_header("2.0.192.in-addr.arpa");
    let mut v6 = zone_header("8.b.d.0.1.0.0.2.ip6.arpa");
    for r in &plan.records {
        let line = r.zone_line();
        if !keep(&line) {
            continue;
        }
        let target = match r.purpose {
            Purpose::Ptr if r.name.ends_with("in-addr.arpa.") => &mut v4,
            Purpose::Ptr => &mut v6,
            _ => &mut forward,
        };
        target.push_str(&line);
        target.push('\n');
    }
    forward.push_str(extra);
    vec![
        (DOMAIN, forward),
        ("2.0.192.in-addr.arpa", v4),
        ("8.b.d.0.1.0.0.2.ip6.arpa", v6),
    ]
}

/// A one-shot-per-connection HTTPS server answering every request with `body`, for
/// `mta-sts.example.test`, with a certificate from a fresh CA. Returns its port and a client
/// configuration trusting the CA.
async fn policy_server(body: &'static str) -> (u16, Arc<rustls::ClientConfig>) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec![format!("mta-sts.{DOMAIN}")])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key der"),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    (port, dns::https::tls_config_with(roots))
}

async fn run_check(nsd: &Nsd, plan: &Plan, policy: &'static str) -> Report {
    let (port, tls) = policy_server(policy).await;
    let resolver = HickoryResolver::new(Some(nsd.addr), Duration::from_secs(2)).expect("resolver");
    dns::check(
        &resolver,
        plan,
        &CheckOptions {
            https_port: 443,
            https_connect: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            tls,
            http_timeout: Duration::from_secs(5),
        },
    )
    .await
    .expect("check runs")
}

fn not_ok(report: &Report) -> Vec<(Check, String, Status)> {
    report
        .findings
        .iter()
        .filter(|f| f.status != Status::Ok)
        .map(|f| (f.check, f.name.clone(), f.status.clone()))
        .collect()
}

fn planned_text(plan: &Plan, purpose: Purpose, nth: usize) -> String {
    plan.of(purpose)
        .nth(nth)
        .and_then(|r| r.text.clone())
        .expect("planned TXT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_zone_is_all_ok() {
    let plan = plan();
    let nsd = Nsd::start(&zones(&plan, &[], ""));
    let report = run_check(&nsd, &plan, POLICY).await;
    assert_eq!(not_ok(&report), vec![], "{}", report.to_text());
    assert!(report.passed && !report.incomplete);
    let checks: Vec<(Check, &str)> = report
        .findings
        .iter()
        .map(|f| (f.check, f.name.as_str()))
        .collect();
    assert_eq!(
        checks,
        vec![
            (Check::Mx, "example.test."),
            (Check::MxHost, "mail.example.test."),
            (Check::A, "mail.example.test."),
            (Check::Aaaa, "mail.example.test."),
            (Check::Ptr, "10.2.0.192.in-addr.arpa."),
            (Check::Ptr, V6_PTR),
            (Check::Spf, "example.test."),
            (Check::Dkim, "ts2026-11r._domainkey.example.test."),
            (Check::Dkim, "ts2026-11e._domainkey.example.test."),
            (Check::Dmarc, "_dmarc.example.test."),
            (Check::MtaSts, "_mta-sts.example.test."),
            (
                Check::MtaStsPolicy,
                "https://mta-sts.example.test/.well-known/mta-sts.txt"
            ),
            (Check::TlsRpt, "_smtp._tls.example.test."),
            (Check::Srv, "_imaps._tcp.example.test."),
            (Check::Srv, "_imap._tcp.example.test."),
            (Check::Srv, "_submissions._tcp.example.test."),
            (Check::Srv, "_submission._tcp.example.test."),
            (Check::Srv, "_pop3s._tcp.example.test."),
            (Check::Srv, "_pop3._tcp.example.test."),
            (Check::Srv, "_autodiscover._tcp.example.test."),
            (Check::Cname, "autoconfig.example.test."),
            (Check::Cname, "autodiscover.example.test."),
            (Check::Cname, "mta-sts.example.test."),
            (Check::Cname, "imap.example.test."),
            (Check::Cname, "smtp.example.test."),
            (Check::Caa, "example.test."),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_records_are_missing_with_the_record_to_add() {
    let plan = plan();
    let ed = "ts2026-11e._domainkey.example.test.";
    let v6_ptr = V6_PTR;
    let nsd = Nsd::start(&zones(
        &plan,
        &[
            ed,
            "_dmarc.",
            "_mta-sts.",
            "_imaps._tcp.",
            "autoconfig.",
            "example.test. 3600 IN CAA",
            v6_ptr,
        ],
        "",
    ));
    let report = run_check(&nsd, &plan, POLICY).await;
    assert_eq!(
        not_ok(&report),
        vec![
            (Check::Ptr, v6_ptr.into(), Status::Missing),
            (Check::Dkim, ed.into(), Status::Missing),
            (Check::Dmarc, "_dmarc.example.test.".into(), Status::Missing),
            (
                Check::MtaSts,
                "_mta-sts.example.test.".into(),
                Status::Missing
            ),
            (
                Check::Srv,
                "_imaps._tcp.example.test.".into(),
                Status::Missing
            ),
            (
                Check::Cname,
                "autoconfig.example.test.".into(),
                Status::Missing
            ),
            (Check::Caa, "example.test.".into(), Status::Missing),
        ],
        "{}",
        report.to_text()
    );
    assert!(!report.passed && !report.incomplete);
    let fix = |name: &str| {
        report
            .findings
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.fix.clone())
            .expect("fix")
    };
    let dkim_line = plan
        .records
        .iter()
        .find(|r| r.name == ed)
        .map(|r| r.zone_line())
        .expect("planned");
    assert_eq!(fix(ed), dkim_line);
    assert_eq!(
        fix("_dmarc.example.test."),
        "_dmarc.example.test. 3600 IN TXT \"v=DMARC1; p=quarantine; rua=mailto:dmarc@example.test\""
    );
    assert_eq!(
        fix(v6_ptr),
        format!("ask the provider of 2001:db8::10 to set: {v6_ptr} PTR mail.example.test.")
    );
    // SRV and CAA are optional; the required ones decide.
    let required: Vec<bool> = report
        .findings
        .iter()
        .filter(|f| f.status == Status::Missing)
        .map(|f| f.required)
        .collect();
    assert_eq!(required, vec![true, true, true, true, false, true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_values_are_wrong_with_found_and_expected() {
    let plan = plan();
    let domain = Domain::parse(DOMAIN).expect("domain");
    // An old RSA key under the current selector.
    let old = keys(&domain, 1_700_000_000)
        .into_iter()
        .find(|k| k.algorithm == DkimAlgorithm::RsaSha256)
        .expect("old key");
    let old_text = dns::dkim::record_text(old.algorithm, &old.public_key);
    let rsa = "ts2026-11r._domainkey.example.test.";
    // 1 (mx) + 1 + 5 (_spf1) + 1 + 3 (_spf2) = 11 look-ups.
    let spf = "v=spf1 mx include:_spf1.example.test include:_spf2.example.test -all";
    let extra = format!(
        "{rsa} 3600 IN TXT {}\n\
         example.test. 3600 IN TXT \"{spf}\"\n\
         _spf1.example.test. 3600 IN TXT \"v=spf1 a mx ptr exists:x.example.test a:b.example.test -all\"\n\
         _spf2.example.test. 3600 IN TXT \"v=spf1 a mx a:c.example.test -all\"\n\
         example.test. 3600 IN MX 10 other.example.test.\n\
         other.example.test. 3600 IN A 192.0.2.99\n\
         _mta-sts.example.test. 3600 IN TXT \"v=STSv1; id=stale1\"\n",
        dns::plan::txt_value(&old_text)
    );
    let nsd = Nsd::start(&zones(
        &plan,
        &[
            rsa,
            "example.test. 3600 IN TXT \"v=spf1",
            "example.test. 3600 IN MX",
            "_mta-sts.",
        ],
        &extra,
    ));
    let report = run_check(&nsd, &plan, POLICY).await;
    assert_eq!(
        not_ok(&report),
        vec![
            (
                Check::Mx,
                "example.test.".into(),
                Status::Wrong {
                    found: "10 other.example.test.".into(),
                    expected: "10 mail.example.test.".into()
                }
            ),
            (
                Check::Spf,
                "example.test.".into(),
                Status::Wrong {
                    found: spf.into(),
                    expected: "v=spf1 mx -all".into()
                }
            ),
            (
                Check::Dkim,
                rsa.into(),
                Status::Wrong {
                    found: old_text,
                    expected: planned_text(&plan, Purpose::Dkim, 0)
                }
            ),
            (
                Check::MtaSts,
                "_mta-sts.example.test.".into(),
                Status::Wrong {
                    found: "v=STSv1; id=stale1".into(),
                    expected: format!("v=STSv1; id={POLICY_ID}")
                }
            ),
        ],
        "{}",
        report.to_text()
    );
    let spf_detail = report
        .findings
        .iter()
        .find(|f| f.check == Check::Spf)
        .and_then(|f| f.detail.clone())
        .expect("detail");
    assert!(spf_detail.contains("needs 11 DNS look-ups"), "{spf_detail}");
    // The other MX host resolves, so only the MX itself is wrong.
    assert!(report.findings.iter().any(|f| f.check == Check::MxHost
        && f.name == "other.example.test."
        && f.status == Status::Ok));
    assert!(!report.passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_served_over_https_is_wrong() {
    let plan = plan();
    let nsd = Nsd::start(&zones(&plan, &[], ""));
    let stale = "version: STSv1\r\nmode: testing\r\nmx: old.example.test\r\nmax_age: 604800\r\n";
    let report = run_check(&nsd, &plan, stale).await;
    let bad = not_ok(&report);
    assert_eq!(bad.len(), 1, "{}", report.to_text());
    assert_eq!(bad[0].0, Check::MtaStsPolicy);
    assert_eq!(
        bad[0].2,
        Status::Wrong {
            found: stale.into(),
            expected: POLICY.into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_answers_are_servfail_not_missing() {
    // The mail host lives in a zone this server does not serve: it answers REFUSED.
    let domain = Domain::parse(DOMAIN).expect("domain");
    let plan = Plan::new(&PlanInput {
        dkim_keys: Vec::new(),
        domain,
        mail_host: "mail.elsewhere.test".into(),
        addresses: vec!["192.0.2.10".parse().expect("ip")],
        addresses_detected: false,
        mta_sts: MtaStsPolicy {
            text: POLICY.into(),
            id: POLICY_ID.into(),
        },
        ports: ClientPorts::default(),
        caa_issuer: None,
    });
    let forward: String = zone_header(DOMAIN)
        + &plan
            .records
            .iter()
            .filter(|r| r.purpose != Purpose::Ptr && r.purpose != Purpose::Address)
            .map(|r| r.zone_line() + "\n")
            .collect::<String>();
    let nsd = Nsd::start(&[(DOMAIN, forward)]);
    let report = run_check(&nsd, &plan, POLICY).await;
    let a = report
        .findings
        .iter()
        .find(|f| f.check == Check::A)
        .expect("A finding");
    assert_eq!(
        a.status,
        Status::Servfail {
            rcode: "REFUSED".into()
        },
        "{}",
        report.to_text()
    );
    assert!(report.incomplete);
    assert!(report.to_text().contains("SERVFAIL"));
}

#[tokio::test]
async fn an_unreachable_resolver_is_an_error_naming_the_address() {
    // A port nobody listens on.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = sock.local_addr().expect("addr");
    drop(sock);
    let resolver = HickoryResolver::new(Some(addr), Duration::from_millis(500)).expect("resolver");
    let e = dns::check(&resolver, &plan(), &CheckOptions::default())
        .await
        .expect_err("unreachable");
    let CheckError::Unreachable { server, .. } = &e;
    assert_eq!(server, &addr.to_string());
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    let _: IpAddr = addr.ip();
}
