//! End to end with a real sync client: mbsync (Debian package `isync`) syncs a local Maildir
//! with the server over implicit TLS (trusting the test's local CA), both ways. Checks that
//! messages arrive byte-exact on each side (mbsync stores LF line endings in Maildir and sends
//! CRLF over IMAP, so the comparison is modulo that documented conversion), that flags
//! propagate both ways, and that deletions propagate with `Expunge Both`. mbsync inserts its
//! own `X-TUID:` tracking header into each message it copies; the comparison removes that one
//! line and nothing else.
//!
//! A missing `mbsync` fails the test: the point is to run the real client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use imap::{ImapConfig, ImapServer};
use net::{ListenerSpec, LoginThrottle, Shutdown, ThrottleConfig, TlsMode};
use store::{
    AccountId, Address, Domain, FlagOp, Flags, MailboxId, NewAccount, NewMessage, SqliteStore,
    Store,
};

const USER: &str = "alice@example.test";
const PASS: &str = "correct horse battery";
/// Upper bound on one mbsync run.
const MBSYNC_LIMIT: Duration = Duration::from_secs(60);

struct Server {
    dir: tempfile::TempDir,
    implicit: SocketAddr,
    ca: PathBuf,
    store: Arc<dyn Store>,
    account: AccountId,
    inbox: MailboxId,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("data")).await.unwrap();
    sqlite
        .add_domain(&Domain::parse("example.test").unwrap())
        .await
        .unwrap();
    let account = sqlite
        .add_account(NewAccount {
            address: Address::parse(USER).unwrap(),
            password_hash: store::password::hash_password(PASS).unwrap(),
            display_name: "Alice".into(),
            quota_bytes: 0,
        })
        .await
        .unwrap();
    let certs = tls::CertStore::new(tls::CertSource::LocalCa {
        dir: dir.path().join("tls"),
    })
    .unwrap();
    certs
        .ensure_local_names(&[vec!["localhost".to_string()]])
        .unwrap();
    let ca = certs.ca_path().unwrap();
    let tls_config = certs.server_config(vec![b"imap".to_vec()]);
    let store: Arc<dyn Store> = sqlite;
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap().id;
    let throttle = Arc::new(LoginThrottle::new(ThrottleConfig::disabled()));
    let server = Arc::new(ImapServer::new(
        store.clone(),
        throttle,
        ImapConfig {
            hostname: "localhost".into(),
            ..ImapConfig::default()
        },
    ));
    let shutdown = Shutdown::new();
    let spec = ListenerSpec::new("imap", "127.0.0.1:0".parse().unwrap(), TlsMode::Implicit);
    let listener = net::bind(&spec).await.unwrap();
    let implicit = listener.local_addr().unwrap();
    tokio::spawn(net::serve(
        listener,
        spec,
        Some(tls_config),
        server,
        shutdown.clone(),
    ));
    Server {
        dir,
        implicit,
        ca,
        store,
        account,
        inbox,
        shutdown,
    }
}

/// Writes the mbsync configuration and returns its path.
fn write_config(s: &Server, maildir: &Path) -> PathBuf {
    let conf = format!(
        "IMAPAccount tessera\n\
         Host localhost\n\
         Port {port}\n\
         User {USER}\n\
         Pass \"{PASS}\"\n\
         SSLType IMAPS\n\
         CertificateFile {ca}\n\
         \n\
         IMAPStore remote\n\
         Account tessera\n\
         \n\
         MaildirStore local\n\
         Path {md}/\n\
         Inbox {md}/INBOX\n\
         SubFolders Verbatim\n\
         \n\
         Channel inbox\n\
         Far :remote:INBOX\n\
         Near :local:INBOX\n\
         Sync All\n\
         Create Both\n\
         Expunge Both\n\
         SyncState *\n",
        port = s.implicit.port(),
        ca = s.ca.display(),
        md = maildir.display(),
    );
    let path = s.dir.path().join("mbsyncrc");
    std::fs::write(&path, conf).unwrap();
    path
}

async fn mbsync(config: &Path) {
    let child = tokio::process::Command::new("mbsync")
        .arg("-c")
        .arg(config)
        .arg("-a")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mbsync must be installed (Debian package isync)");
    let out = tokio::time::timeout(MBSYNC_LIMIT, child.wait_with_output())
        .await
        .expect("mbsync timed out")
        .expect("mbsync ran");
    assert!(
        out.status.success(),
        "mbsync failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test message with CRLF line endings, identified by `id`.
fn message(id: &str, extra: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.test>\r\n\
         To: Alice <alice@example.test>\r\n\
         Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= {id}\r\n\
         Message-ID: <{id}@example.test>\r\n\
         Date: Mon, 6 May 2024 10:00:00 +0200\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Body of {id}: caf\u{e9} \u{2713}\r\n\
         {extra}\r\n\
         A line with trailing spaces   \r\n\
         .\r\n\
         -- \r\n\
         end\r\n"
    )
    .into_bytes()
}

fn to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Removes the `X-TUID:` header line mbsync inserts into every message it propagates (isync
/// tracks a copy by it until it learns the new UID; it is the client's addition, not ours).
/// Everything else must be byte-identical.
fn without_tuid(b: &[u8]) -> Vec<u8> {
    let header_end = [find(b, b"\r\n\r\n"), find(b, b"\n\n")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(b.len());
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut removed = 0;
    while i < b.len() {
        let line_end = find(&b[i..], b"\n").map_or(b.len(), |p| i + p + 1);
        if i <= header_end && b[i..].starts_with(b"X-TUID: ") {
            removed += 1;
        } else {
            out.extend_from_slice(&b[i..line_end]);
        }
        i = line_end;
    }
    assert!(removed <= 1, "more than one X-TUID line");
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The Message-ID local part of a message (`<id@...>`).
fn id_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.find("Message-ID: <").expect("Message-ID") + "Message-ID: <".len();
    let end = text[start..].find('@').unwrap() + start;
    text[start..end].to_string()
}

/// Server INBOX: id -> (bytes, flag names).
async fn server_state(s: &Server) -> BTreeMap<String, (Vec<u8>, Vec<String>)> {
    let mut map = BTreeMap::new();
    for m in s.store.messages(s.account, s.inbox).await.unwrap() {
        let bytes = s.store.read_message(s.account, m.message).await.unwrap();
        let mut names = m.flags.names();
        names.sort();
        map.insert(id_of(&bytes), (without_tuid(&bytes), names));
    }
    map
}

/// Local Maildir INBOX: id -> (bytes, Maildir flag letters, path).
fn local_state(maildir: &Path) -> BTreeMap<String, (Vec<u8>, String, PathBuf)> {
    let mut map = BTreeMap::new();
    for sub in ["new", "cur"] {
        let dir = maildir.join("INBOX").join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let flags = name
                .rsplit_once(":2,")
                .map(|(_, f)| f.to_string())
                .unwrap_or_default();
            map.insert(id_of(&bytes), (without_tuid(&bytes), flags, path));
        }
    }
    map
}

fn flags(names: &[&str]) -> Flags {
    Flags::from_names(names.iter().copied()).unwrap()
}

async fn append(s: &Server, bytes: Vec<u8>, names: &[&str]) {
    let mut m = NewMessage::now(bytes);
    m.flags = flags(names);
    s.store.append(s.account, s.inbox, m).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_syncs_maildir_and_server_both_ways_byte_exact_with_flags_and_expunge() {
    let s = start().await;
    let maildir = s.dir.path().join("Mail");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join("INBOX").join(sub)).unwrap();
    }
    let config = write_config(&s, &maildir);

    // Server side: three messages with different flags.
    let srv_a = message("srv-a", "short");
    let srv_b = message("srv-b", &"x".repeat(900));
    let srv_c = message("srv-c", "to be expunged on the server");
    append(&s, srv_a.clone(), &["\\Seen"]).await;
    append(&s, srv_b.clone(), &["\\Flagged"]).await;
    append(&s, srv_c.clone(), &[]).await;
    // Local side: two messages (Maildir stores LF line endings).
    let loc_d = to_lf(&message("loc-d", "written locally"));
    let loc_e = to_lf(&message("loc-e", "trashed locally later"));
    let inbox = maildir.join("INBOX");
    std::fs::write(inbox.join("new/1700000000.1.testhost"), &loc_d).unwrap();
    std::fs::write(inbox.join("cur/1700000000.2.testhost:2,S"), &loc_e).unwrap();

    // ---- first sync: new messages both ways
    mbsync(&config).await;
    let server = server_state(&s).await;
    let local = local_state(&maildir);
    let ids: Vec<&String> = server.keys().collect();
    assert_eq!(ids, ["loc-d", "loc-e", "srv-a", "srv-b", "srv-c"]);
    assert_eq!(local.keys().collect::<Vec<_>>(), ids);
    // Local -> server: the server holds exactly the local bytes (with CRLF line endings).
    assert_eq!(server["loc-d"].0, message("loc-d", "written locally"));
    assert_eq!(server["loc-e"].0, message("loc-e", "trashed locally later"));
    // Server -> local: the Maildir holds exactly the server bytes (with LF line endings).
    assert_eq!(local["srv-a"].0, to_lf(&srv_a));
    assert_eq!(local["srv-b"].0, to_lf(&srv_b));
    assert_eq!(local["srv-c"].0, to_lf(&srv_c));
    // Flags both ways.
    assert_eq!(server["loc-d"].1, Vec::<String>::new());
    assert_eq!(server["loc-e"].1, ["\\Seen"]);
    assert_eq!(local["srv-a"].1, "S");
    assert_eq!(local["srv-b"].1, "F");
    assert_eq!(local["srv-c"].1, "");

    // ---- changes on both sides
    let uids = s.store.messages(s.account, s.inbox).await.unwrap();
    let mut by_id = BTreeMap::new();
    for m in &uids {
        let bytes = s.store.read_message(s.account, m.message).await.unwrap();
        by_id.insert(id_of(&bytes), m.uid);
    }
    // Server: answer srv-a, expunge srv-c.
    s.store
        .store_flags(
            s.account,
            s.inbox,
            &[by_id["srv-a"]],
            FlagOp::Add,
            &flags(&["\\Answered"]),
        )
        .await
        .unwrap();
    s.store
        .store_flags(
            s.account,
            s.inbox,
            &[by_id["srv-c"]],
            FlagOp::Add,
            &flags(&["\\Deleted"]),
        )
        .await
        .unwrap();
    s.store
        .expunge(s.account, s.inbox, None, false)
        .await
        .unwrap();
    // Local: flag loc-d, trash loc-e (Maildir T = \Deleted), flag and read srv-b.
    let rename_flags = |path: &Path, letters: &str| {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let base = name.split_once(":2,").map_or(name.as_str(), |(b, _)| b);
        let target = inbox.join("cur").join(format!("{base}:2,{letters}"));
        std::fs::rename(path, target).unwrap();
    };
    rename_flags(&local["loc-d"].2, "F");
    rename_flags(&local["loc-e"].2, "ST");
    rename_flags(&local["srv-b"].2, "FS");

    // ---- second sync: flags and deletions both ways
    mbsync(&config).await;
    let server = server_state(&s).await;
    let local = local_state(&maildir);
    assert_eq!(
        server.keys().collect::<Vec<_>>(),
        ["loc-d", "srv-a", "srv-b"],
        "expunged on the server: srv-c; trashed locally and expunged: loc-e"
    );
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        ["loc-d", "srv-a", "srv-b"]
    );
    assert_eq!(server["loc-d"].1, ["\\Flagged"]);
    assert_eq!(server["srv-b"].1, ["\\Flagged", "\\Seen"]);
    assert_eq!(local["srv-a"].1, "RS");
    // Still byte-exact after the second round.
    assert_eq!(server["loc-d"].0, message("loc-d", "written locally"));
    assert_eq!(local["srv-a"].0, to_lf(&srv_a));

    // ---- a third sync changes nothing
    mbsync(&config).await;
    assert_eq!(server_state(&s).await, server);
    let again = local_state(&maildir);
    assert_eq!(again.len(), 3);
    for (id, (bytes, letters, _)) in &local {
        assert_eq!(&again[id].0, bytes);
        assert_eq!(&again[id].1, letters);
    }
}
