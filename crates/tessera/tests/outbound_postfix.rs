//! Outbound delivery to a real Postfix (Debian package `postfix`) as the remote server: a
//! private Postfix instance (its own config, queue and data directories in a temp dir,
//! listening on 127.0.0.5 and a free high port, STARTTLS with a throwaway self-signed
//! certificate, virtual maildir delivery for bob@b.test), nsd on loopback publishing
//! `b.test MX mx.b.test` / `mx.b.test A 127.0.0.5`, and `tessera serve` on 127.0.0.2 whose
//! `[outbound] port` is Postfix's port.
//!
//! Postfix stores messages with LF line endings, so the body is compared byte for byte after
//! mapping the submitted CRLFs to LF (the only change Postfix is allowed to make).
//!
//! Must run as root (Postfix's master starts as root). A missing `postfix`, `openssl`, `nsd`
//! or `python3` fails the test; nothing is skipped.

#[path = "../../dns/tests/support/nsd.rs"]
mod nsd;
mod outbound_support;

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nsd::{Nsd, zone_header};
use outbound_support::{Instance, START_TIMEOUT, free_port_on};

const ALICE: (&str, &str) = ("alice@a.test", "alice password");
const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const POSTFIX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const BOB: &str = "bob@b.test";
/// Owner of the maildir Postfix's virtual(8) agent writes (Debian's `nobody`).
const MAIL_UID: u32 = 65534;

/// The `postfix` command (in /usr/sbin, which a non-login PATH may lack).
fn postfix_bin() -> PathBuf {
    let sbin = Path::new("/usr/sbin/postfix");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("postfix")
    }
}

/// A private Postfix instance under `dir`; `postfix -c DIR/etc stop` on drop.
struct Postfix {
    dir: PathBuf,
    port: u16,
}

impl Postfix {
    fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// bob@b.test's delivered messages (maildir `new/`), sorted by file name.
    fn mailbox(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("mail/bob/new"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read(p).expect("read a delivered message"))
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Writes main.cf/master.cf and a self-signed certificate, starts Postfix and waits
    /// until it accepts on `POSTFIX_IP:port`.
    fn start(dir: PathBuf, port: u16) -> Postfix {
        use std::os::unix::fs::{PermissionsExt, chown};
        let postfix = Postfix { dir, port };
        let dir = &postfix.dir;
        let etc = postfix.etc();
        for sub in ["etc", "queue", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        // Postfix's daemons drop root: they must traverse to the queue and the mailbox.
        let mut parent = Some(dir.as_path());
        while let Some(p) = parent {
            if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            }
            parent = p.parent();
        }
        chown(dir.join("mail"), Some(MAIL_UID), Some(MAIL_UID)).expect("chown the mail dir");

        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=mx.b.test",
                "-addext",
                "subjectAltName=DNS:mx.b.test",
            ])
            .arg("-keyout")
            .arg(etc.join("key.pem"))
            .arg("-out")
            .arg(etc.join("cert.pem"))
            .output()
            .expect("run openssl (is it installed?)");
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             meta_directory = /etc/postfix\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             myhostname = mx.b.test\n\
             mydomain = b.test\n\
             myorigin = b.test\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             mydestination =\n\
             relay_domains =\n\
             mynetworks = 127.0.0.1/32\n\
             alias_maps =\n\
             alias_database =\n\
             smtpd_peername_lookup = no\n\
             smtp_dns_support_level = disabled\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_chain_files = {d}/etc/key.pem, {d}/etc/cert.pem\n\
             smtpd_tls_loglevel = 1\n\
             smtpd_tls_received_header = yes\n\
             virtual_mailbox_domains = b.test\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = inline:{{ {BOB}=bob/ }}\n\
             virtual_uid_maps = static:{MAIL_UID}\n\
             virtual_gid_maps = static:{MAIL_UID}\n\
             virtual_minimum_uid = 1\n"
        );
        std::fs::write(etc.join("main.cf"), main_cf).expect("write main.cf");
        // No chroot anywhere: the paths are absolute temp paths.
        let services = [
            (format!("{POSTFIX_IP}:{port}"), "inet", "n", "-", "smtpd"),
            ("pickup".into(), "unix", "n", "1", "pickup"),
            ("cleanup".into(), "unix", "n", "0", "cleanup"),
            ("qmgr".into(), "unix", "n", "1", "qmgr"),
            ("rewrite".into(), "unix", "-", "-", "trivial-rewrite"),
            ("bounce".into(), "unix", "-", "0", "bounce"),
            ("defer".into(), "unix", "-", "0", "bounce"),
            ("trace".into(), "unix", "-", "0", "bounce"),
            ("verify".into(), "unix", "-", "1", "verify"),
            ("proxymap".into(), "unix", "-", "-", "proxymap"),
            ("smtp".into(), "unix", "-", "-", "smtp"),
            ("showq".into(), "unix", "n", "-", "showq"),
            ("error".into(), "unix", "-", "-", "error"),
            ("retry".into(), "unix", "-", "-", "error"),
            ("discard".into(), "unix", "-", "-", "discard"),
            ("virtual".into(), "unix", "-", "-", "virtual"),
            ("anvil".into(), "unix", "-", "1", "anvil"),
            ("scache".into(), "unix", "-", "1", "scache"),
            ("tlsmgr".into(), "unix", "-", "1", "tlsmgr"),
            ("postlog".into(), "unix-dgram", "n", "1", "postlogd"),
        ];
        let master_cf: String = services
            .iter()
            .map(|(name, kind, private, limit, command)| {
                // virtual(8) runs as root until it switches to the mailbox owner.
                let unpriv = if *command == "virtual" { "n" } else { "-" };
                let wakeup = match *command {
                    "pickup" => "60",
                    "qmgr" => "300",
                    _ => "-",
                };
                format!("{name} {kind} {private} {unpriv} n {wakeup} {limit} {command}\n")
            })
            .collect();
        std::fs::write(etc.join("master.cf"), master_cf).expect("write master.cf");

        let out = Command::new(postfix_bin())
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .expect("run postfix (is the Debian package `postfix` installed?)");
        assert!(
            out.status.success(),
            "postfix start failed ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            postfix.log()
        );
        let started = Instant::now();
        while TcpStream::connect((POSTFIX_IP, port)).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "Postfix never listened on {POSTFIX_IP}:{port}: {}",
                postfix.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        postfix
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(postfix_bin())
            .arg("-c")
            .arg(self.etc())
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // `stop` only signals the master: wait (bounded) until the port is released.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect((POSTFIX_IP, self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Splits a message at its first empty line (`sep` is the blank-line byte sequence).
fn split_at<'m>(message: &'m [u8], sep: &[u8]) -> (&'m [u8], &'m [u8]) {
    let at = message
        .windows(sep.len())
        .position(|w| w == sep)
        .expect("a header/body separator");
    (&message[..at + sep.len() / 2], &message[at + sep.len()..])
}

fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8(bytes.to_vec())
        .expect("UTF-8 test message")
        .replace("\r\n", "\n")
        .into_bytes()
}

#[test]
fn delivers_to_postfix_as_the_remote_server() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port_on(&[A_IP, POSTFIX_IP]);
    let a = Instance::new(root.path(), "a.test", A_IP, port, ALICE);
    let b_zone = format!(
        "{}@ IN MX 10 mx.b.test.\nmx IN A {POSTFIX_IP}\n",
        zone_header("b.test")
    );
    let nsd = Nsd::start(&[
        ("a.test", a.zone("a.test")),
        ("b.test", b_zone),
        ("test", zone_header("test")),
    ]);
    a.write_config(nsd.addr, "");

    let postfix = Postfix::start(root.path().join("postfix"), port);
    let _a_server = a.serve();

    let tag = format!("p{:x}", std::process::id());
    let message = format!(
        "From: Alice <{from}>\r\nTo: Bob <{BOB}>\r\nSubject: to postfix {tag}\r\n\
         Message-ID: <{tag}@a.test>\r\nDate: Sun, 29 Nov 2026 03:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello Bob,\r\n.a line that starts with a dot\r\n..two dots\r\n\r\n\
         trailing  spaces  \r\nnon-ASCII: Grüße\r\nend {tag}\r\n",
        from = ALICE.0
    )
    .into_bytes();
    a.submit(ALICE, BOB, &message);

    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let mut mailbox = postfix.mailbox();
        if !mailbox.is_empty() {
            // Let a (wrong) second copy land before counting.
            std::thread::sleep(Duration::from_millis(500));
            mailbox = postfix.mailbox();
            assert_eq!(mailbox.len(), 1, "delivered exactly once");
            break mailbox.remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "not delivered to Postfix within 20 s.\nA's queue:\n{}\nA's log:\n{}\nPostfix:\n{}\nnsd:\n{}",
            a.queue_list(),
            a.logs(),
            postfix.log(),
            nsd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let (header, body) = split_at(&delivered, b"\n\n");
    let (sent_header, sent_body) = split_at(&message, b"\r\n\r\n");
    assert_eq!(
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&crlf_to_lf(sent_body)),
        "body byte-exact (CRLF stored as LF)"
    );
    assert_eq!(body, crlf_to_lf(sent_body).as_slice());
    let header = String::from_utf8_lossy(header);
    for line in String::from_utf8_lossy(sent_header).lines() {
        assert!(header.contains(line), "header line {line:?} kept: {header}");
    }
    assert!(
        header.contains("Return-Path: <alice@a.test>")
            && header.contains("Delivered-To: bob@b.test"),
        "Postfix's delivery headers: {header}"
    );
    let unfolded = header.replace("\n\t", " ").replace("\n ", " ");
    assert!(
        unfolded.contains("from mail.a.test (unknown [127.0.0.2])")
            && unfolded.contains("by mx.b.test (Postfix) with ESMTPS"),
        "Postfix's Received: Tessera's EHLO name, source address, STARTTLS: {header}"
    );
    let dkim: Vec<&str> = unfolded
        .lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .collect();
    assert_eq!(dkim.len(), 2, "RSA and Ed25519 signatures: {header}");
    assert!(
        dkim.iter().all(|s| s.contains("d=a.test")),
        "signed for a.test: {dkim:?}"
    );
    let log = postfix.log();
    assert!(
        log.contains("TLS connection established from unknown[127.0.0.2]"),
        "STARTTLS with Postfix: {log}"
    );
    assert!(
        log.contains(&format!("to=<{BOB}>, relay=virtual"))
            && log.contains("status=sent (delivered to maildir)"),
        "{log}"
    );

    // Delivered: gone from A's queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = a.queue_list();
        if list.contains("the queue is empty") {
            break;
        }
        assert!(Instant::now() < deadline, "still queued: {list}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
