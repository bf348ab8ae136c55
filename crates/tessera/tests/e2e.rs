//! End to end through the real binary: `tessera serve` with every listener on loopback,
//! a DNS server on loopback for the sender checks, and Python's smtplib, imaplib and
//! poplib as the clients (tests/py/e2e_clients.py).

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Guard, SERVICES};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn py(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

fn tessera(config: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tessera");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "tessera {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_with_real_clients() {
    let dir = tempfile::tempdir().expect("tempdir");

    // A DNS server on loopback that says "no such name" to everything.
    let port_file = dir.path().join("dns-port");
    let dns = Guard(
        Command::new("python3")
            .arg(py("nxdns.py"))
            .arg(&port_file)
            .spawn()
            .expect("start the test DNS server (python3)"),
    );
    let started = Instant::now();
    let dns_port = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "DNS server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let ports: Vec<u16> = SERVICES.iter().map(|_| free_port()).collect();
    let listen: String = SERVICES
        .iter()
        .zip(&ports)
        .map(|(s, p)| format!("{s} = \"127.0.0.1:{p}\"\n"))
        .collect();
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mail.example.org\"\ndata_dir = \"data\"\n[listen]\n{listen}\n[smtp]\nresolver = \"127.0.0.1:{dns_port}\"\n[auth]\nbase_delay_secs = 0\n"
        ),
    )
    .expect("write config");
    tessera(&config, &["domain", "add", "example.org"], "");
    tessera(
        &config,
        &["user", "add", "alice@example.org", "--password-stdin"],
        "alice password\n",
    );
    tessera(
        &config,
        &["user", "add", "bob@example.org", "--password-stdin"],
        "bob password\n",
    );

    let mut server = Guard(
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start tessera serve"),
    );
    let started = Instant::now();
    for port in &ports {
        while TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "port {port} never opened"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let ca = dir.path().join("data/tls/ca.pem");
    let out = Command::new("python3")
        .arg(py("e2e_clients.py"))
        .arg(&ca)
        .args(ports.iter().map(u16::to_string))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clients failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all end-to-end checks passed"), "{stdout}");

    // The remote recipient waits in the outbound queue, visible to the operator.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["queue", "list"])
        .output()
        .expect("queue list");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains("from alice@example.org")
            && listing.contains("to carol@remote.example\tpending"),
        "{listing}"
    );

    // Graceful shutdown on SIGTERM.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status();
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = server.0.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "serve exited with {status}");
    drop(dns);
}
