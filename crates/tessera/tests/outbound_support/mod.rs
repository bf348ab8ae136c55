//! Shared by the outbound end-to-end tests: `tessera serve` instances on their own loopback
//! addresses, driven through the real binary and Python's smtplib/imaplib.
#![allow(dead_code)] // each test file uses a different part

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::nsd::zone_header;

#[path = "../common/mod.rs"]
mod common;
pub use common::Guard;

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// Longest wait for a listener to open.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn py(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// A TCP port free on every one of `ips` (loopback addresses).
pub fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((ips[0], 0)).expect("bind a loopback address");
        let port = first.local_addr().expect("addr").port();
        if ips[1..]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

pub fn run(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tessera");
    // A command that rejects its arguments exits before reading stdin; the closed pipe is
    // then not an error of the test.
    if let Err(e) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("wait for tessera")
}

pub fn ok(config: &Path, args: &[&str], stdin: &str) -> String {
    let out = run(config, args, stdin);
    assert!(
        out.status.success(),
        "tessera {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One Tessera instance: its directory, config and listener ports on its own address.
pub struct Instance {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ip: Ipv4Addr,
    pub hostname: String,
    pub submission: u16,
    pub imap: u16,
    /// SMTP (MX) port, the same for every instance of a test.
    pub smtp: u16,
}

impl Instance {
    /// Writes the config, adds `domain` and `user`. The config names a resolver nobody
    /// answers on until the test rewrites it with nsd's address (`domain add` and `dns
    /// records` query nothing; nsd needs their output before it can start).
    pub fn new(root: &Path, domain: &str, ip: Ipv4Addr, smtp: u16, user: (&str, &str)) -> Instance {
        let dir = root.join(domain);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let instance = Instance {
            config: dir.join("tessera.toml"),
            dir,
            ip,
            hostname: format!("mail.{domain}"),
            submission: free_port_on(&[ip]),
            imap: free_port_on(&[ip]),
            smtp,
        };
        instance.write_config(SocketAddr::from(([127, 0, 0, 1], 9)), "");
        ok(&instance.config, &["domain", "add", domain], "");
        ok(
            &instance.config,
            &["user", "add", user.0, "--password-stdin"],
            &format!("{}\n", user.1),
        );
        instance
    }

    pub fn write_config(&self, resolver: SocketAddr, outbound_extra: &str) {
        let ip = self.ip;
        let off: String = ["submissions", "imaps", "pop3", "pop3s", "http", "https"]
            .iter()
            .map(|k| format!("{k} = \"off\"\n"))
            .collect();
        std::fs::write(
            &self.config,
            format!(
                "hostname = \"{host}\"\ndata_dir = \"data\"\n\
                 [listen]\nsmtp = \"{ip}:{smtp}\"\nsubmission = \"{ip}:{sub}\"\nimap = \"{ip}:{imap}\"\n{off}\
                 [smtp]\nresolver = \"{resolver}\"\n\
                 [auth]\nbase_delay_secs = 0\n\
                 [dns]\naddresses = [\"{ip}\"]\n\
                 [outbound]\nport = {smtp}\nsource_ip = \"{ip}\"\nretry_schedule_secs = [1]\nmax_lifetime_hours = 1\nlease_secs = 8\n{outbound_extra}",
                host = self.hostname,
                smtp = self.smtp,
                sub = self.submission,
                imap = self.imap,
            ),
        )
        .expect("write config");
    }

    /// The zone `tessera dns records` prints for `domain`, minus the MTA-STS TXT record (no
    /// policy server runs here; its absence keeps the worker from fetching one).
    pub fn zone(&self, domain: &str) -> String {
        let records = ok(&self.config, &["dns", "records", domain], "");
        let records: String = records
            .lines()
            .filter(|l| !l.starts_with("_mta-sts."))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{}{records}", zone_header(domain))
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("data/tls/ca.pem")
    }

    /// Starts `tessera serve` and waits until its listeners accept.
    pub fn serve(&self) -> Guard {
        let n = self.log_files().len() + 1;
        let log = std::fs::File::create(self.dir.join(format!("serve-{n}.log"))).expect("log file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tessera serve");
        let mut guard = Guard(child);
        let started = Instant::now();
        for port in [self.smtp, self.submission, self.imap] {
            while TcpStream::connect((self.ip, port)).is_err() {
                if let Ok(Some(status)) = guard.0.try_wait() {
                    panic!("tessera serve exited ({status}): {}", self.logs());
                }
                assert!(
                    started.elapsed() < START_TIMEOUT,
                    "{}:{port} never opened: {}",
                    self.ip,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        guard
    }

    /// The `serve-N.log` files, oldest first.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("serve-") && n.ends_with(".log"))
        });
        names.sort();
        names
    }

    /// Every `serve` log of this instance, for failure messages.
    pub fn logs(&self) -> String {
        self.log_files()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Submits `message` over 587 with STARTTLS (trusting this instance's CA) and AUTH.
    pub fn submit(&self, user: (&str, &str), to: &str, message: &[u8]) {
        let file = self.dir.join("outgoing.eml");
        std::fs::write(&file, message).expect("write message");
        let out = Command::new("python3")
            .arg(py("outbound_clients.py"))
            .arg("submit")
            .arg(self.ca())
            .arg(&self.hostname)
            .arg(self.ip.to_string())
            .arg(self.submission.to_string())
            .args([user.0, user.1, user.0, to])
            .arg(&file)
            .output()
            .expect("run python3 (is it installed?)");
        assert!(
            out.status.success(),
            "submission failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The user's INBOX messages, byte-exact, read over IMAP with STARTTLS.
    pub fn inbox(&self, user: (&str, &str)) -> Vec<Vec<u8>> {
        let out_dir = tempfile::tempdir_in(&self.dir).expect("tempdir");
        let out = Command::new("python3")
            .arg(py("outbound_clients.py"))
            .arg("fetch")
            .arg(self.ca())
            .arg(&self.hostname)
            .arg(self.ip.to_string())
            .arg(self.imap.to_string())
            .args([user.0, user.1])
            .arg(out_dir.path())
            .output()
            .expect("run python3 (is it installed?)");
        assert!(
            out.status.success(),
            "IMAP fetch failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let n: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("message count");
        (1..=n)
            .map(|i| std::fs::read(out_dir.path().join(format!("{i}.eml"))).expect("read message"))
            .collect()
    }

    pub fn queue_list(&self) -> String {
        ok(&self.config, &["queue", "list"], "")
    }
}
