//! End-to-end tests: both listeners on 127.0.0.1:0 through `net::bind`/`net::serve`, a real
//! SQLite store and a local CA in a temporary directory, and real clients: curl (with
//! `--resolve` and `--cacert`, never `-k`), OpenSSL (`openssl cms -verify`), Python's plistlib
//! and headless Chromium. A missing tool fails the test; it never skips.
//!
//! Debian packages: curl, openssl, python3, chromium, libnss3-tools.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use net::{ListenerSpec, Shutdown, TlsMode};
use store::{Domain, SqliteStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use web::{ClientPorts, WebConfig, WebServer};

/// The mail host. Its base domain `hoster.test` is not hosted, so `autoconfig.hoster.test`
/// exercises Thunderbird's MX-based look-up.
const MAIL_HOST: &str = "mx.hoster.test";
const DOMAINS: [&str; 2] = ["example.org", "example.net"];
/// The password a client sends in `Authorization` to Autodiscover; must never be logged.
const SECRET: &str = "Tr0ub4dor-never-log-me";
/// Bound on every external command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

// ---- log capture (for "Authorization is never logged") ----

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("set subscriber");
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

// ---- the server under test ----

struct Server {
    dir: tempfile::TempDir,
    http: SocketAddr,
    https: SocketAddr,
    ca: PathBuf,
    web: Arc<WebServer>,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn start() -> Server {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("data")).await.unwrap();
    let mut names = Vec::new();
    for domain in DOMAINS {
        store
            .add_domain(&Domain::parse(domain).unwrap())
            .await
            .unwrap();
        names.push(domain.to_owned());
    }
    let certs = tls::CertStore::new(tls::CertSource::LocalCa {
        dir: dir.path().join("ca"),
    })
    .unwrap();
    let mut groups = tls::CertStore::name_groups(MAIL_HOST, &names);
    groups.push(web::extra_certificate_names(MAIL_HOST));
    certs.ensure_local_names(&groups).unwrap();
    let ca = certs.ca_path().unwrap();

    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut http_spec = ListenerSpec::new("http", loopback, TlsMode::None);
    let mut https_spec = ListenerSpec::new("https", loopback, TlsMode::Implicit);
    for spec in [&mut http_spec, &mut https_spec] {
        spec.handshake_timeout = Duration::from_secs(5);
    }
    let http_listener = net::bind(&http_spec).await.unwrap();
    let https_listener = net::bind(&https_spec).await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let https = https_listener.local_addr().unwrap();

    let config = WebConfig {
        hostname: MAIL_HOST.to_owned(),
        ports: ClientPorts::offset(10000),
        https_port: https.port(),
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        ..WebConfig::default()
    };
    let store: Arc<dyn Store> = store;
    let web = Arc::new(WebServer::new(store, Arc::clone(&certs), config));
    let shutdown = Shutdown::new();
    let tls_config = certs.server_config(vec![b"http/1.1".to_vec()]);
    tokio::spawn(net::serve(
        http_listener,
        http_spec,
        None,
        Arc::clone(&web),
        shutdown.clone(),
    ));
    tokio::spawn(net::serve(
        https_listener,
        https_spec,
        Some(tls_config),
        Arc::clone(&web),
        shutdown.clone(),
    ));
    Server {
        dir,
        http,
        https,
        ca,
        web,
        shutdown,
    }
}

/// One HTTP exchange as curl saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header names lowercased; the last value of each.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Runs a tool to completion within [`TOOL_TIMEOUT`]; a missing tool fails the test with the
/// Debian package to install.
async fn run(
    program: &str,
    package: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): install the Debian package {package}")
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish within {TOOL_TIMEOUT:?}"))
        .unwrap()
}

impl Server {
    /// curl `scheme://host:port/path` with `host` resolved to the listener, trusting only the
    /// local CA. `extra` goes before the URL.
    async fn curl(&self, scheme: &str, host: &str, path: &str, extra: &[&str]) -> Reply {
        let port = if scheme == "https" {
            self.https.port()
        } else {
            self.http.port()
        };
        let out_dir = tempfile::tempdir_in(self.dir.path()).unwrap();
        let (head, body) = (out_dir.path().join("head"), out_dir.path().join("body"));
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("{scheme}://{host}:{port}{path}");
        let ca = self.ca.to_str().unwrap();
        let mut args = vec![
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-D",
            head.to_str().unwrap(),
            "-o",
            body.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = run("curl", "curl", &args, None).await;
        assert!(
            out.status.success(),
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = std::fs::read_to_string(head).unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: std::fs::read(body).unwrap_or_default(),
        }
    }
}

// ---- checks ----

/// Thunderbird for Android's strict rules (CLIENTS.md A) plus the entry order.
fn check_autoconfig(xml: &str, domain: &str) {
    let doc = roxmltree::Document::parse(xml).expect("autoconfig is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "clientConfig");
    assert_eq!(root.attribute("version"), Some("1.1"));
    let provider = root
        .children()
        .find(|n| n.has_tag_name("emailProvider"))
        .expect("emailProvider");
    let id = provider.attribute("id").expect("emailProvider/@id");
    assert!(
        !id.is_empty()
            && id.split('.').all(|l| !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
        "emailProvider/@id {id:?} is not a host name"
    );
    let domains: Vec<&str> = provider
        .children()
        .filter(|n| n.has_tag_name("domain"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(domains, [domain]);
    let child = |n: roxmltree::Node<'_, '_>, name: &str| -> String {
        n.children()
            .find(|c| c.has_tag_name(name))
            .and_then(|c| c.text())
            .unwrap_or_else(|| panic!("server entry lacks <{name}>"))
            .to_owned()
    };
    let mut entries = Vec::new();
    for server in provider
        .children()
        .filter(|n| n.has_tag_name("incomingServer") || n.has_tag_name("outgoingServer"))
    {
        let socket = child(server, "socketType");
        assert_ne!(
            socket.to_ascii_lowercase(),
            "plain",
            "plain is never published"
        );
        assert!(
            ["SSL", "STARTTLS"].contains(&socket.as_str()),
            "socketType {socket}"
        );
        assert_eq!(child(server, "hostname"), MAIL_HOST);
        assert_eq!(child(server, "username"), "%EMAILADDRESS%");
        let auth = child(server, "authentication");
        assert!(
            ["password-cleartext", "password-encrypted", "OAuth2"].contains(&auth.as_str()),
            "authentication {auth}"
        );
        let port: u16 = child(server, "port").parse().expect("numeric port");
        entries.push((
            server.tag_name().name().to_owned(),
            server.attribute("type").unwrap_or_default().to_owned(),
            port,
            socket,
        ));
    }
    let expected = [
        ("incomingServer", "imap", 10993, "SSL"),
        ("incomingServer", "imap", 10143, "STARTTLS"),
        ("incomingServer", "pop3", 10995, "SSL"),
        ("incomingServer", "pop3", 10110, "STARTTLS"),
        ("outgoingServer", "smtp", 10465, "SSL"),
        ("outgoingServer", "smtp", 10587, "STARTTLS"),
    ]
    .map(|(a, b, c, d)| (a.to_owned(), b.to_owned(), c, d.to_owned()));
    assert_eq!(entries, expected);
}

const OUTLOOK_REQUEST: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\">\n\
  <Request>\n    <EMailAddress>Alice@Example.ORG</EMailAddress>\n\
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>\n\
  </Request>\n</Autodiscover>\n";

/// CLIENTS.md B.2's shape, with implicit-TLS ports only.
fn check_autodiscover(xml: &str, login: &str) {
    let doc = roxmltree::Document::parse(xml).expect("autodiscover response is XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "Autodiscover");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006")
    );
    let response = root.first_element_child().expect("Response");
    assert_eq!(
        response.tag_name().namespace(),
        Some("http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a")
    );
    let account = response.first_element_child().expect("Account");
    assert_eq!(account.tag_name().name(), "Account");
    let text_of = |n: roxmltree::Node<'_, '_>, name: &str| -> Option<String> {
        n.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::to_owned)
    };
    assert_eq!(text_of(account, "AccountType").as_deref(), Some("email"));
    assert_eq!(text_of(account, "Action").as_deref(), Some("settings"));
    let protocols: Vec<_> = account
        .children()
        .filter(|c| c.tag_name().name() == "Protocol")
        .collect();
    let summary: Vec<(String, String)> = protocols
        .iter()
        .map(|p| (text_of(*p, "Type").unwrap(), text_of(*p, "Port").unwrap()))
        .collect();
    assert_eq!(
        summary,
        [("IMAP", "10993"), ("POP3", "10995"), ("SMTP", "10465")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    for p in &protocols {
        assert_eq!(text_of(*p, "Server").as_deref(), Some(MAIL_HOST));
        assert_eq!(text_of(*p, "LoginName").as_deref(), Some(login));
        assert_eq!(
            text_of(*p, "SPA").as_deref(),
            Some("off"),
            "SPA must be sent as off"
        );
        assert_eq!(text_of(*p, "SSL").as_deref(), Some("on"));
        assert_eq!(text_of(*p, "AuthRequired").as_deref(), Some("on"));
    }
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoconfig_on_every_path_and_host_over_http_and_https() {
    let server = start().await;
    let paths = [
        "/mail/config-v1.1.xml",
        "/.well-known/autoconfig/mail/config-v1.1.xml",
    ];
    for scheme in ["https", "http"] {
        for path in paths {
            // Per-domain names, with and without emailaddress (`@` arrives as %40).
            for (host, domain) in [
                ("autoconfig.example.org", "example.org"),
                ("example.org", "example.org"),
                ("autoconfig.example.net", "example.net"),
                ("example.net", "example.net"),
            ] {
                for query in ["", "?emailaddress=someone%40"] {
                    let query = if query.is_empty() {
                        String::new()
                    } else {
                        format!("{query}{domain}")
                    };
                    let reply = server
                        .curl(scheme, host, &format!("{path}{query}"), &[])
                        .await;
                    assert_eq!(reply.status, 200, "{scheme}://{host}{path}{query}");
                    assert!(reply.header("content-type").starts_with("application/xml"));
                    check_autoconfig(&reply.text(), domain);
                }
            }
            // MX-based look-up: the mail host's base domain serves every hosted domain.
            for host in ["autoconfig.hoster.test", MAIL_HOST] {
                let reply = server
                    .curl(
                        scheme,
                        host,
                        &format!("{path}?emailaddress=bob%40example.net"),
                        &[],
                    )
                    .await;
                assert_eq!(reply.status, 200);
                check_autoconfig(&reply.text(), "example.net");
                // ... but without an address it cannot know the domain.
                assert_eq!(server.curl(scheme, host, path, &[]).await.status, 404);
            }
        }
    }
    // Letter case of the path does not matter; unknown domains are 404.
    let reply = server
        .curl(
            "https",
            "autoconfig.example.org",
            "/Mail/Config-v1.1.XML",
            &[],
        )
        .await;
    assert_eq!(reply.status, 200);
    let reply = server
        .curl(
            "https",
            "autoconfig.example.org",
            "/mail/config-v1.1.xml?emailaddress=x%40elsewhere.test",
            &[],
        )
        .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_pox_any_case_ignores_and_never_logs_authorization() {
    let server = start().await;
    let credentials = format!("alice@example.org:{SECRET}");
    let user = ["--user", credentials.as_str()];
    for (host, path) in [
        ("autodiscover.example.org", "/autodiscover/autodiscover.xml"),
        ("example.org", "/Autodiscover/Autodiscover.xml"),
        ("autodiscover.example.org", "/AUTODISCOVER/AUTODISCOVER.XML"),
    ] {
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: text/xml; charset=utf-8",
            "--data-binary",
            OUTLOOK_REQUEST,
        ];
        args.extend_from_slice(&user);
        let reply = server.curl("https", host, path, &args).await;
        assert_eq!(reply.status, 200, "{host}{path}: {}", reply.text());
        assert!(reply.header("content-type").starts_with("text/xml"));
        check_autodiscover(&reply.text(), "alice@example.org");
    }
    // GET with the address in the query.
    let reply = server
        .curl(
            "https",
            "autodiscover.example.net",
            "/autodiscover/autodiscover.xml?Email=bob%40example.net",
            &user,
        )
        .await;
    assert_eq!(reply.status, 200);
    check_autodiscover(&reply.text(), "bob@example.net");
    // A domain not hosted here.
    let other = OUTLOOK_REQUEST.replace("Example.ORG", "elsewhere.test");
    let reply = server
        .curl(
            "https",
            "autodiscover.example.org",
            "/autodiscover/autodiscover.xml",
            &["--data-binary", &other],
        )
        .await;
    assert_eq!(reply.status, 404);

    // The logs saw the requests, but never the password (plain or base64).
    let logs = logs();
    assert!(logs.contains("http request"), "request logging is captured");
    let basic = "YWxpY2VAZXhhbXBsZS5vcmc6VHIwdWI0ZG9yLW5ldmVyLWxvZy1tZQ";
    assert!(
        !logs.contains(SECRET) && !logs.contains(basic),
        "Authorization leaked into logs"
    );
    assert!(!logs.to_ascii_lowercase().contains("authorization"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_activesync_malformed_and_http_redirect() {
    let server = start().await;
    let path = "/autodiscover/autodiscover.xml";
    let activesync = OUTLOOK_REQUEST
        .replace("outlook/requestschema", "mobilesync/requestschema")
        .replace(
            "outlook/responseschema/2006a",
            "mobilesync/responseschema/2006",
        );
    let reply = server
        .curl(
            "https",
            "autodiscover.example.org",
            path,
            &["--data-binary", &activesync],
        )
        .await;
    assert_eq!(reply.status, 200);
    let doc_text = reply.text();
    let doc = roxmltree::Document::parse(&doc_text).unwrap();
    let code = doc
        .descendants()
        .find(|n| n.has_tag_name("ErrorCode"))
        .and_then(|n| n.text());
    assert_eq!(code, Some("601"), "{doc_text}");
    assert!(doc.descendants().all(|n| !n.has_tag_name("Protocol")));

    for bad in ["<Autodiscover><Request>", "not xml at all", "<x/>"] {
        let reply = server
            .curl(
                "https",
                "autodiscover.example.org",
                path,
                &["--data-binary", bad],
            )
            .await;
        assert_eq!(reply.status, 400, "{bad}");
        assert!(reply.text().len() < 200 && !reply.text().is_empty());
    }
    let reply = server
        .curl(
            "https",
            "autodiscover.example.org",
            path,
            &["--data-binary", "<Autodiscover"],
        )
        .await;
    assert!(
        reply.text().starts_with("malformed XML"),
        "{}",
        reply.text()
    );

    // CLIENTS.md B.3: http GET of autodiscover.<domain> -> 302 to the https URL.
    let reply = server
        .curl(
            "http",
            "autodiscover.example.org",
            "/Autodiscover/Autodiscover.xml",
            &[],
        )
        .await;
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.header("location"),
        format!(
            "https://autodiscover.example.org:{}/autodiscover/autodiscover.xml",
            server.https.port()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autodiscover_json_both_forms() {
    let server = start().await;
    let expected_url = format!(
        "https://autodiscover.example.org:{}/Autodiscover/Autodiscover.xml",
        server.https.port()
    );
    for path in [
        "/autodiscover/autodiscover.json?Email=alice%40example.org&Protocol=AutodiscoverV1",
        "/autodiscover/autodiscover.json/v1.0/alice@example.org?Protocol=Autodiscoverv1",
        "/Autodiscover/Autodiscover.json/v1.0/Alice@Example.org?protocol=autodiscoverv1",
    ] {
        let reply = server
            .curl("https", "autodiscover.example.org", path, &[])
            .await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.header("content-type").starts_with("application/json"));
        let value: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(value["Protocol"], "AutodiscoverV1");
        assert_eq!(value["Url"], expected_url.as_str());
    }
    let reply = server
        .curl(
            "https",
            "example.org",
            "/autodiscover/autodiscover.json?Email=alice%40example.org&Protocol=ActiveSync",
            &[],
        )
        .await;
    assert_eq!(reply.status, 400);
    let value: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(value["ErrorCode"], "InvalidProtocol");
    assert!(value["ErrorMessage"].is_string());
}

/// Verifies a profile with `openssl cms -verify` against the CA and returns the content.
async fn verify_profile(server: &Server, der: &[u8]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir_in(server.dir.path()).unwrap();
    let (input, output) = (
        dir.path().join("profile.der"),
        dir.path().join("content.plist"),
    );
    std::fs::write(&input, der).unwrap();
    // `-purpose any`: the profile is signed with the host's TLS server certificate (serverAuth
    // EKU), as Apple expects and as every mobileconfig signer does; OpenSSL's default purpose
    // for `cms -verify` would demand an S/MIME (emailProtection) certificate.
    let out = run(
        "openssl",
        "openssl",
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            input.to_str().unwrap(),
            "-CAfile",
            server.ca.to_str().unwrap(),
            "-purpose",
            "any",
            "-out",
            output.to_str().unwrap(),
        ],
        None,
    )
    .await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(std::fs::read(output).unwrap())
}

/// Parses a plist with Python's plistlib and returns it as JSON.
async fn plistlib(plist: &[u8]) -> serde_json::Value {
    let script = "import json, plistlib, sys\n\
                  print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))";
    let out = run("python3", "python3", &["-c", script], Some(plist)).await;
    assert!(
        out.status.success(),
        "plistlib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_profile_is_signed_by_the_host_and_parses() {
    let server = start().await;
    let path = "/apple/alice@example.org.mobileconfig";
    let reply = server.curl("https", MAIL_HOST, path, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        "application/x-apple-aspen-config"
    );
    assert_eq!(
        reply.header("content-disposition"),
        "attachment; filename=\"alice@example.org.mobileconfig\""
    );
    let content = verify_profile(&server, &reply.body)
        .await
        .expect("signature verifies");
    let profile = plistlib(&content).await;
    assert_eq!(profile["PayloadType"], "Configuration");
    assert_eq!(profile["PayloadVersion"], 1);
    assert_eq!(profile["PayloadDisplayName"], "alice@example.org");
    let account = &profile["PayloadContent"][0];
    let expected = serde_json::json!({
        "PayloadType": "com.apple.mail.managed",
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": "alice@example.org",
        "IncomingMailServerHostName": MAIL_HOST,
        "IncomingMailServerPortNumber": 10993,
        "IncomingMailServerUseSSL": true,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": "alice@example.org",
        "OutgoingMailServerHostName": MAIL_HOST,
        "OutgoingMailServerPortNumber": 10465,
        "OutgoingMailServerUseSSL": true,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": "alice@example.org",
        "OutgoingPasswordSameAsIncomingPassword": true,
    });
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&account[key], value, "{key}");
    }
    assert!(
        account.get("IncomingPassword").is_none(),
        "no password in an unencrypted profile"
    );

    // The signer is the mail host's certificate.
    let dir = tempfile::tempdir_in(server.dir.path()).unwrap();
    let (der, certs) = (dir.path().join("p.der"), dir.path().join("signer.pem"));
    std::fs::write(&der, &reply.body).unwrap();
    let out = run(
        "openssl",
        "openssl",
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
            "-noverify",
            "-signer",
            certs.to_str().unwrap(),
            "-out",
            "/dev/null",
        ],
        None,
    )
    .await;
    assert!(out.status.success());
    let out = run(
        "openssl",
        "openssl",
        &[
            "x509",
            "-in",
            certs.to_str().unwrap(),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        None,
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("DNS:{MAIL_HOST}")));

    // Deterministic UUIDs: the same address gives the same UUIDs (a reinstall replaces).
    let again = server
        .curl(
            "https",
            MAIL_HOST,
            "/apple/ALICE@example.org.mobileconfig",
            &[],
        )
        .await;
    let again = plistlib(&verify_profile(&server, &again.body).await.unwrap()).await;
    assert_eq!(again["PayloadUUID"], profile["PayloadUUID"]);
    assert_eq!(
        again["PayloadContent"][0]["PayloadUUID"],
        account["PayloadUUID"]
    );
    let other = server
        .curl(
            "https",
            MAIL_HOST,
            "/apple/bob@example.org.mobileconfig",
            &[],
        )
        .await;
    let other = plistlib(&verify_profile(&server, &other.body).await.unwrap()).await;
    assert_ne!(other["PayloadUUID"], profile["PayloadUUID"]);

    // A tampered profile fails verification: the check above is real.
    let mut tampered = reply.body.clone();
    let at = tampered
        .windows(b"10993".len())
        .position(|w| w == b"10993")
        .unwrap();
    tampered[at] = b'2';
    assert!(verify_profile(&server, &tampered).await.is_err());

    // POP3 variant.
    let pop = server
        .curl(
            "https",
            MAIL_HOST,
            "/apple/alice@example.org.mobileconfig?protocol=pop3",
            &[],
        )
        .await;
    let pop = plistlib(&verify_profile(&server, &pop.body).await.unwrap()).await;
    assert_eq!(pop["PayloadContent"][0]["EmailAccountType"], "EmailTypePOP");
    assert_eq!(
        pop["PayloadContent"][0]["IncomingMailServerPortNumber"],
        10995
    );
    assert_ne!(pop["PayloadUUID"], profile["PayloadUUID"]);

    // Unknown domain, bad address.
    assert_eq!(
        server
            .curl(
                "https",
                MAIL_HOST,
                "/apple/x@elsewhere.test.mobileconfig",
                &[]
            )
            .await
            .status,
        404
    );
    assert_eq!(
        server
            .curl(
                "https",
                MAIL_HOST,
                "/apple/not-an-address.mobileconfig",
                &[]
            )
            .await
            .status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_policy_is_exact_crlf_text_and_never_redirected() {
    let server = start().await;
    let expected =
        format!("version: STSv1\r\nmode: testing\r\nmx: {MAIL_HOST}\r\nmax_age: 604800\r\n");
    for (scheme, domain) in [
        ("https", "example.org"),
        ("https", "example.net"),
        ("http", "example.org"),
    ] {
        let reply = server
            .curl(
                scheme,
                &format!("mta-sts.{domain}"),
                "/.well-known/mta-sts.txt",
                &[],
            )
            .await;
        assert_eq!(reply.status, 200, "{scheme} {domain}");
        assert_eq!(reply.text(), expected);
        assert!(reply.header("content-type").starts_with("text/plain"));
        assert!(!reply.headers.contains_key("location"));
    }
    // Only on mta-sts.<domain>; nothing else there.
    assert_eq!(
        server
            .curl("https", "example.org", "/.well-known/mta-sts.txt", &[])
            .await
            .status,
        404
    );
    assert_eq!(
        server
            .curl("https", "mta-sts.example.org", "/setup", &[])
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_except_excluded_paths() {
    let server = start().await;
    let port = server.https.port();
    let reply = server
        .curl("http", MAIL_HOST, "/setup?address=a%40example.org", &[])
        .await;
    assert_eq!(reply.status, 301);
    assert_eq!(
        reply.header("location"),
        format!("https://{MAIL_HOST}:{port}/setup?address=a%40example.org")
    );
    let reply = server
        .curl("http", "autoconfig.example.org", "/", &[])
        .await;
    assert_eq!(reply.status, 301);
    let reply = server
        .curl("http", "example.org", "/anything", &["--data-binary", "x"])
        .await;
    assert_eq!(reply.status, 308, "a POST keeps its method");
    // Excluded: autoconfig (tested elsewhere), MTA-STS (above), ACME challenges.
    server
        .web
        .http01_challenges()
        .insert("tok-123", "tok-123.thumbprint");
    let reply = server
        .curl(
            "http",
            "example.org",
            "/.well-known/acme-challenge/tok-123",
            &[],
        )
        .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "tok-123.thumbprint")
    );
    let reply = server
        .curl(
            "http",
            "new-name.example.com",
            "/.well-known/acme-challenge/tok-123",
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "ACME validates names not yet hosted");
    let reply = server
        .curl(
            "http",
            "example.org",
            "/.well-known/acme-challenge/other",
            &[],
        )
        .await;
    assert_eq!(reply.status, 404);
    server.web.http01_challenges().remove("tok-123");
    let reply = server
        .curl(
            "http",
            "example.org",
            "/.well-known/acme-challenge/tok-123",
            &[],
        )
        .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_on_both_ports() {
    let server = start().await;
    let reply = server
        .curl("http", "unknown.example.com", "/setup", &[])
        .await;
    assert_eq!(reply.status, 404);
    let reply = server
        .curl("http", "unknown.example.com", "/mail/config-v1.1.xml", &[])
        .await;
    assert_eq!(reply.status, 404);
    // TLS with a served name, but a Host header naming something else.
    let reply = server
        .curl(
            "https",
            MAIL_HOST,
            "/setup",
            &["-H", "Host: unknown.example.com"],
        )
        .await;
    assert_eq!(reply.status, 404);
    // A known host still works on the same server.
    assert_eq!(
        server.curl("https", MAIL_HOST, "/setup", &[]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let server = start().await;
    let dir = tempfile::tempdir_in(server.dir.path()).unwrap();
    let big = dir.path().join("big.xml");
    // Just over the 64 KiB limit: small enough that the whole request fits the socket
    // buffers, so the client is never cut off mid-send before it reads the 413.
    std::fs::write(&big, vec![b'x'; 80 * 1024]).unwrap();
    let data = format!("@{}", big.display());
    let path = "/autodiscover/autodiscover.xml";
    let reply = server
        .curl(
            "https",
            "autodiscover.example.org",
            path,
            // With Expect the server answers before the body is sent at all.
            &["--data-binary", &data, "-H", "Expect: 100-continue"],
        )
        .await;
    assert_eq!(reply.status, 413);
    let reply = server
        .curl(
            "https",
            "autodiscover.example.org",
            path,
            &["--data-binary", &data, "-H", "Transfer-Encoding: chunked"],
        )
        .await;
    assert_eq!(reply.status, 413, "chunked bodies are limited too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_time_out() {
    let server = start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    tcp.write_all(b"GET /setup HTTP/1.1\r\nHost: mx.hoster.test\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // header_timeout is 1 s: the server must close (possibly after a 408) well within 5 s.
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_page_has_per_client_settings_and_a_qr_code() {
    let server = start().await;
    let reply = server
        .curl(
            "https",
            MAIL_HOST,
            "/setup?address=Carol%40Example.net",
            &[],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").starts_with("text/html"));
    let page = reply.text();
    for needle in [
        "carol@example.net",
        MAIL_HOST,
        "10993",
        "10143",
        "10995",
        "10110",
        "10465",
        "10587",
        "Thunderbird",
        "Outlook",
        "Apple Mail",
        "Gmail",
        "K-9",
        "Windows Mail",
        "Claws Mail",
        "The Bat",
        "Any other",
        "<svg",
    ] {
        assert!(page.contains(needle), "setup page lacks {needle:?}");
    }
    let profile = format!(
        "https://{MAIL_HOST}:{}/apple/carol@example.net.mobileconfig",
        server.https.port()
    );
    assert!(page.contains(&profile));
    // No external assets: every src/href is relative, a fragment, or our own host.
    for attr in ["src=\"", "href=\""] {
        for part in page.split(attr).skip(1) {
            let target = part.split('"').next().unwrap();
            assert!(
                target.starts_with('/')
                    || target.starts_with('#')
                    || target.starts_with(&format!("https://{MAIL_HOST}")),
                "external asset {target}"
            );
        }
    }
    // Escaping of what the user typed.
    let reply = server
        .curl(
            "https",
            MAIL_HOST,
            "/setup?address=%3Cscript%3E@example.net",
            &[],
        )
        .await;
    assert!(!reply.text().contains("<script>"));
    // A domain not hosted here is explained, not served.
    let reply = server
        .curl(
            "https",
            "autoconfig.example.org",
            "/?address=x%40elsewhere.test",
            &[],
        )
        .await;
    assert!(reply.text().contains("not a domain hosted on this server"));
}

/// Runs headless Chromium (flags from the environment notes) with a fresh profile whose NSS
/// database trusts the local CA, so the page loads with full certificate verification.
async fn chromium(server: &Server, home: &Path, args: &[&str]) -> std::process::Output {
    let profile = home.join("profile");
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let mut all = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * 127.0.0.1",
        "--window-size=420,1400",
        profile_arg.as_str(),
    ];
    all.extend_from_slice(args);
    let _ = server;
    let mut command = Command::new("chromium");
    command
        .args(&all)
        .env("HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot run chromium ({e}): install the Debian package chromium")
    });
    tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("chromium finished within 40 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_page_renders_in_headless_chromium() {
    let server = start().await;
    let home = server.dir.path().join("chromium-home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let out = run(
        "certutil",
        "libnss3-tools",
        &["-d", &db, "-N", "--empty-password"],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "certutil -N: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = server.ca.to_str().unwrap();
    let out = run(
        "certutil",
        "libnss3-tools",
        &[
            "-d",
            &db,
            "-A",
            "-n",
            "tessera-test-ca",
            "-t",
            "C,,",
            "-i",
            ca,
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "certutil -A: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let url = format!(
        "https://{MAIL_HOST}:{}/setup?address=dave%40example.org",
        server.https.port()
    );
    let out = chromium(&server, &home, &["--dump-dom", &url]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "dave@example.org",
        MAIL_HOST,
        "10993",
        "10465",
        "Thunderbird",
        "Outlook",
        "<svg",
    ] {
        assert!(
            dom.contains(needle),
            "rendered DOM lacks {needle:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let shot = server.dir.path().join("setup.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    let out = chromium(&server, &home, &[&shot_arg, &url]).await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "screenshot suspiciously small: {} bytes",
        png.len()
    );
    // Keep a copy for people to look at (tests' temp dirs vanish).
    let keep = std::env::temp_dir().join("tessera-web-setup.png");
    let _ = std::fs::write(&keep, &png);
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "setup page screenshot: {}", keep.display());
}
