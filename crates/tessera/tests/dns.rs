//! `tessera dns records|check` and `tessera dkim` through the real binary, against a real
//! authoritative DNS server (nsd on loopback) serving the zone that `dns records` printed, and
//! the MTA-STS policy served by a real `tessera serve` over HTTPS (local CA).

#[path = "../../dns/tests/support/nsd.rs"]
mod nsd;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nsd::{Nsd, zone_header};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A config with only HTTPS on (for the MTA-STS policy) and the mail host's address set.
fn setup(https_port: u16) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tessera.toml");
    let listen: String = [
        "smtp",
        "submission",
        "submissions",
        "imap",
        "imaps",
        "pop3",
        "pop3s",
        "http",
    ]
    .iter()
    .map(|k| format!("{k} = \"off\"\n"))
    .collect();
    std::fs::write(
        &config,
        format!(
            "hostname = \"mail.example.test\"\ndata_dir = \"data\"\n[listen]\n{listen}https = \"127.0.0.1:{https_port}\"\n[dns]\naddresses = [\"192.0.2.10\"]\n"
        ),
    )
    .expect("write config");
    (dir, config)
}

fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tessera")
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = run(config, args);
    assert!(
        out.status.success(),
        "tessera {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command that fails with one line of error text containing `needle`.
fn fails(config: &Path, args: &[&str], needle: &str) -> String {
    let out = run(config, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tessera {args:?} should fail");
    assert!(
        err.contains(needle),
        "tessera {args:?}: expected {needle:?} in {err:?}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one clear line, got {err:?}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(config: &Path, https_port: u16) -> Server {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tessera serve");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", https_port)).is_err() {
        assert!(Instant::now() < deadline, "tessera serve did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// The zones nsd serves: the domain from `dns records` (text, as printed) plus `extra`, and
/// the reverse zone with the PTR records from `dns records --format json`.
fn zones(
    records_text: &str,
    plan_json: &serde_json::Value,
    extra: &str,
) -> Vec<(&'static str, String)> {
    let forward = format!("{}{records_text}{extra}", zone_header("example.test"));
    let mut reverse = zone_header("2.0.192.in-addr.arpa");
    for r in plan_json["records"].as_array().expect("records") {
        if r["type"] == "PTR" {
            reverse.push_str(&format!(
                "{} {} IN PTR {}\n",
                r["name"].as_str().expect("name"),
                r["ttl"],
                r["value"].as_str().expect("value")
            ));
        }
    }
    vec![("example.test", forward), ("2.0.192.in-addr.arpa", reverse)]
}

/// `(STATUS, CHECK, name)` of every line that is not OK (the summary line excluded).
fn problems(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("OK ") && !l.contains(" checks: "))
        .map(|l| {
            l.split(':')
                .next()
                .unwrap_or(l)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn records_and_live_check_through_the_binary() {
    let https_port = free_tcp_port();
    let (dir, config) = setup(https_port);

    // domain add makes both DKIM keys.
    let added = ok(&config, &["domain", "add", "example.test"]);
    assert!(
        added.contains("added domain example.test (DKIM keys ts"),
        "{added}"
    );
    let keys = ok(&config, &["dkim", "list", "example.test"]);
    let selectors: Vec<String> = keys
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(keys.lines().all(|l| l.ends_with("\tactive")), "{keys}");
    assert!(keys.contains("\trsa-sha256\t") && keys.contains("\ted25519-sha256\t"));

    let text = ok(&config, &["dns", "records", "example.test"]);
    let json: serde_json::Value = serde_json::from_str(&ok(
        &config,
        &["dns", "records", "example.test", "--format", "json"],
    ))
    .expect("json");
    assert!(
        text.contains("\nexample.test. 3600 IN MX 10 mail.example.test.\n"),
        "{text}"
    );
    assert!(
        text.contains("\nmail.example.test. 3600 IN A 192.0.2.10\n"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "\n{}._domainkey.example.test. 3600 IN TXT \"v=DKIM1; k=rsa; p=",
        selectors[0]
    )));
    assert!(text.contains(&format!(
        "\n_autodiscover._tcp.example.test. 3600 IN SRV 0 1 {https_port} mail.example.test.\n"
    )));
    assert!(
        text.contains("\n_imaps._tcp.example.test. 3600 IN SRV 0 0 0 .\n"),
        "listener off: {text}"
    );
    assert!(text.contains("\n; 10.2.0.192.in-addr.arpa. 3600 IN PTR mail.example.test.\n"));
    assert_eq!(json["mail_host"], "mail.example.test.");
    assert_eq!(
        json["records"].as_array().expect("records").len(),
        text.lines().filter(|l| l.starts_with("; ")).count() - 2,
        "one comment per record, plus the title and the PTR line (a comment: not in this zone)"
    );

    let _server = serve(&config, https_port);
    let ca = dir.path().join("data/tls/ca.pem");
    let ca = ca.to_str().expect("path");
    let connect = format!("127.0.0.1:{https_port}");

    // The zone exactly as printed: every check passes, exit 0.
    {
        let nsd = Nsd::start(&zones(&text, &json, ""));
        let resolver = nsd.addr.to_string();
        let out = ok(
            &config,
            &[
                "dns",
                "check",
                "example.test",
                "--resolver",
                &resolver,
                "--https-connect",
                &connect,
                "--trust-ca",
                ca,
            ],
        );
        assert_eq!(problems(&out), Vec::<String>::new(), "{out}");
        assert!(
            out.contains(
                "OK       MTA-STS policy https://mta-sts.example.test/.well-known/mta-sts.txt"
            ),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "OK       DKIM           {}._domainkey.example.test.",
                selectors[1]
            )),
            "{out}"
        );
    }

    // Rotate: the new keys are not published yet; the old ones stay (and still check OK).
    let rotated = ok(&config, &["dkim", "rotate", "example.test"]);
    assert!(rotated.contains("retired (still published"), "{rotated}");
    let keys = ok(&config, &["dkim", "list", "example.test"]);
    let new: Vec<String> = keys
        .lines()
        .filter(|l| l.ends_with("\tactive"))
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(new.len(), 2, "{keys}");
    assert_eq!(
        keys.lines().filter(|l| l.contains("\tretired ")).count(),
        2,
        "{keys}"
    );

    // The old zone with the MX moved away and a stale MTA-STS id: exit 1, each finding named.
    {
        let wrong_text: String = text
            .lines()
            .filter(|l| !l.starts_with("example.test. 3600 IN MX") && !l.starts_with("_mta-sts."))
            .map(|l| format!("{l}\n"))
            .collect();
        let extra = "example.test. 3600 IN MX 10 mx.elsewhere.test.\n_mta-sts.example.test. 3600 IN TXT \"v=STSv1; id=stale1\"\n";
        let nsd = Nsd::start(&zones(&wrong_text, &json, extra));
        let resolver = nsd.addr.to_string();
        let args = [
            "dns",
            "check",
            "example.test",
            "--resolver",
            &resolver,
            "--https-connect",
            &connect,
            "--trust-ca",
            ca,
        ];
        let out = fails(&config, &args, "required DNS records are missing or wrong");
        assert_eq!(
            problems(&out),
            vec![
                "WRONG MX example.test.".to_owned(),
                // The other MX host is in a zone nsd does not serve: REFUSED, not "missing".
                "SERVFAIL MX host mx.elsewhere.test.".to_owned(),
                format!("MISSING DKIM {}._domainkey.example.test.", new[0]),
                format!("MISSING DKIM {}._domainkey.example.test.", new[1]),
                "WRONG MTA-STS _mta-sts.example.test.".to_owned(),
            ],
            "{out}"
        );
        assert!(out.contains("WRONG    MX             example.test.: found \"10 mx.elsewhere.test.\", expected \"10 mail.example.test.\"\n         fix: example.test. 3600 IN MX 10 mail.example.test.\n"), "{out}");
        let policy_id = json["records"]
            .as_array()
            .expect("records")
            .iter()
            .find(|r| r["purpose"] == "mta_sts")
            .and_then(|r| r["text"].as_str())
            .expect("mta-sts text")
            .to_owned();
        assert!(
            out.contains(&format!(
                "found \"v=STSv1; id=stale1\", expected \"{policy_id}\""
            )),
            "{out}"
        );

        let mut json_args = args.to_vec();
        json_args.extend(["--format", "json"]);
        let out = run(&config, &json_args);
        assert!(!out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
        assert_eq!(report["passed"], false);
        assert_eq!(report["incomplete"], true);
        let mx = &report["findings"][0];
        assert_eq!(mx["check"], "mx");
        assert_eq!(mx["status"], "wrong");
        assert_eq!(mx["found"], "10 mx.elsewhere.test.");
        assert_eq!(mx["fix"], "example.test. 3600 IN MX 10 mail.example.test.");
    }

    // Retired keys can go; signing keys cannot.
    fails(
        &config,
        &["dkim", "remove", "example.test", &new[0]],
        "still signs",
    );
    ok(&config, &["dkim", "remove", "example.test", &selectors[0]]);
    assert_eq!(
        ok(&config, &["dkim", "list", "example.test"])
            .lines()
            .count(),
        3
    );
}

#[test]
fn bad_input_is_one_clear_error() {
    let (_dir, config) = setup(free_tcp_port());
    ok(&config, &["domain", "add", "example.test"]);
    fails(
        &config,
        &["dns", "records", "example.net"],
        "domain example.net is not hosted here",
    );
    fails(
        &config,
        &["dns", "check", "example.net", "--resolver", "127.0.0.1:9"],
        "domain example.net is not hosted here",
    );
    fails(
        &config,
        &["dkim", "rotate", "example.net"],
        "not hosted here",
    );

    // Nothing answers on this port.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead: SocketAddr = sock.local_addr().expect("addr");
    drop(sock);
    let dead = dead.to_string();
    fails(
        &config,
        &["dns", "check", "example.test", "--resolver", &dead],
        &format!("cannot reach the DNS resolver at {dead}"),
    );
}
