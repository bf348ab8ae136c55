//! A real authoritative DNS server for tests: NLnet Labs' `nsd` (Debian package `nsd`), run in
//! the foreground from a temporary directory on 127.0.0.1 and a free port, with zone files
//! the test writes. Shared by the `dns` and `tessera` test suites.
//!
//! A missing `nsd` fails the test (it never skips).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nsd; killed on drop.
pub struct Nsd {
    child: Child,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The SOA/NS header of a test zone; `ns.<zone>` is 127.0.0.1.
pub fn zone_header(zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    format!(
        "$ORIGIN {zone}.\n$TTL 3600\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n@ IN NS ns.{zone}.\n"
    )
}

fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 for nsd");
}

fn nsd_binary() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/sbin"] {
        let p = PathBuf::from(dir).join("nsd");
        if p.exists() {
            return p;
        }
    }
    panic!("nsd is not installed: these tests need a real DNS server (apt-get install nsd)");
}

impl Nsd {
    /// Starts nsd serving `zones` (zone name, zone-file text) and waits until it answers.
    pub fn start(zones: &[(&str, String)]) -> Nsd {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display().to_string();
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n  hide-version: yes\nremote-control:\n  control-enable: no\n"
        );
        for (name, text) in zones {
            let name = name.trim_end_matches('.');
            let file = format!("{name}.zone");
            std::fs::write(dir.path().join(&file), text).expect("write zone");
            conf.push_str(&format!(
                "zone:\n  name: \"{name}\"\n  zonefile: \"{file}\"\n"
            ));
        }
        let conf_path = dir.path().join("nsd.conf");
        std::fs::write(&conf_path, conf).expect("write nsd.conf");
        let checkconf = Command::new(nsd_binary().with_file_name("nsd-checkconf"))
            .arg(&conf_path)
            .output();
        if let Ok(out) = checkconf {
            assert!(
                out.status.success(),
                "nsd-checkconf: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let child = Command::new(nsd_binary())
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nsd");
        let mut nsd = Nsd {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        nsd.wait_ready(zones.first().map(|z| z.0).unwrap_or("."));
        nsd
    }

    /// nsd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nsd.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, zone: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let query = soa_query(zone);
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nsd exited ({status}): {}", self.log());
            }
            let _ = sock.send_to(&query, self.addr);
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                // An authoritative answer (AA bit) with RCODE 0 means the zone is loaded.
                if n > 3 && buf[2] & 0x04 != 0 && buf[3] & 0x0f == 0 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nsd did not answer for {zone} within 15 s: {}",
                self.log()
            );
        }
    }
}

/// A DNS query for the SOA of `zone` (RFC 1035 §4.1).
fn soa_query(zone: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        q.push(u8::try_from(label.len()).expect("label length"));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 6, 0, 1]);
    q
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
