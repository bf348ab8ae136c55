//! Real TLS handshakes over loopback TCP against a `CertStore`'s server configuration, checked
//! by rustls clients and by external verifiers (OpenSSL's `s_client`, Python's `ssl`).

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use tls::{CertSource, CertStore, PemPair, TlsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

const MAIL_HOST: &str = "mail.example.test";

/// Accepts TLS connections on 127.0.0.1:0 until the test ends; each is read until EOF.
async fn serve(store: &Arc<CertStore>) -> Result<SocketAddr, std::io::Error> {
    serve_alpn(store, vec![b"imap".to_vec()]).await
}

/// [`serve`] with the ALPN protocols `alpn`.
async fn serve_alpn(
    store: &Arc<CertStore>,
    alpn: Vec<Vec<u8>>,
) -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(store.server_config(alpn));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut sink = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut sink))
                            .await;
                }
            });
        }
    });
    Ok(addr)
}

/// What the client saw: the negotiated version and the server's certificate chain.
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<(ProtocolVersion, Vec<CertificateDer<'static>>), Box<dyn Error + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_string())?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let version = conn.protocol_version().ok_or("no protocol version")?;
    let chain = conn
        .peer_certificates()
        .ok_or("no peer certificates")?
        .to_vec();
    tls.shutdown().await?;
    Ok((version, chain))
}

/// The leaf certificate the server presents for `sni`.
async fn leaf_for(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<CertificateDer<'static>, Box<dyn Error + Send + Sync>> {
    let (_, chain) = handshake(addr, Arc::clone(config), sni).await?;
    Ok(chain.into_iter().next().ok_or("empty chain")?)
}

fn san_names(der: &CertificateDer<'_>) -> Result<Vec<String>, Box<dyn Error + Send + Sync>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    let san = cert
        .subject_alternative_name()?
        .ok_or("no subjectAltName")?;
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(s) => Some(s.to_string()),
            _ => None,
        })
        .collect())
}

fn local_store(dir: &Path, domains: &[&str]) -> Result<Arc<CertStore>, TlsError> {
    let store = CertStore::new(CertSource::LocalCa {
        dir: dir.to_owned(),
    })?;
    let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    store.ensure_local_names(&CertStore::name_groups(MAIL_HOST, &domains))?;
    Ok(store)
}

fn ca_path(store: &CertStore) -> Result<PathBuf, &'static str> {
    store.ca_path().ok_or("local CA mode has a CA path")
}

/// Accepts any certificate (signatures are still checked), to see what a server presents for
/// names it has no certificate for.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accept_any_client() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(tls::provider())))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[tokio::test]
async fn sni_selects_the_certificate_of_each_domain_and_verifies_against_the_local_ca() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let store = local_store(dir.path(), &["example.org", "example.net"])?;
    let addr = serve(&store).await?;
    let client = tls::client_config_trusting(&ca_path(&store)?)?;
    for (sni, expected) in [
        ("autoconfig.example.org", "example.org"),
        ("mta-sts.example.net", "example.net"),
        ("mail.example.test", "mail.example.test"),
    ] {
        let names = san_names(&leaf_for(addr, &client, sni).await?)?;
        assert_eq!(
            names.first().map(String::as_str),
            Some(expected),
            "SNI {sni} got {names:?}"
        );
        assert!(names.iter().any(|n| n == sni));
    }
    let status = store.status();
    assert_eq!(status.len(), 3);
    assert!(status.iter().all(|c| c.issuer.contains("Tessera local CA")));
    Ok(())
}

#[tokio::test]
async fn acme_tls_1_hellos_get_the_challenge_certificate_or_none() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(dir.path(), &[])?;
    let addr = serve_alpn(
        &store,
        vec![b"http/1.1".to_vec(), tls::ACME_TLS_ALPN.to_vec()],
    )
    .await?;
    let with_alpn = |protocol: &[u8]| -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let mut config = (*accept_any_client()?).clone();
        config.alpn_protocols = vec![protocol.to_vec()];
        Ok(Arc::new(config))
    };
    let validator = with_alpn(tls::ACME_TLS_ALPN)?;
    let browser = with_alpn(b"http/1.1")?;
    let served = leaf_for(addr, &browser, MAIL_HOST).await?;
    // RFC 8737 §3: no challenge published, no certificate: never the served one.
    assert!(
        handshake(addr, Arc::clone(&validator), MAIL_HOST)
            .await
            .is_err()
    );

    let other = tempfile::tempdir()?;
    let challenge = local_store(other.path(), &[])?
        .certified_key(MAIL_HOST)
        .ok_or("no certificate")?;
    store.set_alpn_challenge(MAIL_HOST, Arc::clone(&challenge));
    let leaf = leaf_for(addr, &validator, MAIL_HOST).await?;
    assert_eq!(Some(&leaf), challenge.cert.first());
    assert_ne!(leaf, served);
    // Everyone else still gets the served certificate; other names get no challenge.
    assert_eq!(leaf_for(addr, &browser, MAIL_HOST).await?, served);
    assert!(
        handshake(addr, Arc::clone(&validator), "other.example.test")
            .await
            .is_err()
    );

    store.remove_alpn_challenge(MAIL_HOST);
    assert!(handshake(addr, validator, MAIL_HOST).await.is_err());
    Ok(())
}

#[tokio::test]
async fn unknown_sni_gets_the_default_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(dir.path(), &["example.org"])?;
    let addr = serve(&store).await?;
    let leaf = leaf_for(addr, &accept_any_client()?, "unknown.example.com").await?;
    assert_eq!(san_names(&leaf)?, [MAIL_HOST]);
    // A verifying client refuses it: the default certificate does not cover that name.
    let client = tls::client_config_trusting(&ca_path(&store)?)?;
    assert!(
        handshake(addr, client, "unknown.example.com")
            .await
            .is_err()
    );
    Ok(())
}

/// Sends a minimal ClientHello with `legacy_version` and returns the first 7 bytes of the reply.
async fn raw_hello_reply(
    addr: SocketAddr,
    legacy_version: [u8; 2],
) -> Result<[u8; 7], Box<dyn Error + Send + Sync>> {
    let mut hello = legacy_version.to_vec();
    hello.extend([0x42; 32]); // random
    hello.push(0); // empty session id
    hello.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x09]); // ECDHE_ECDSA with AES_128_GCM / AES_128_CBC
    hello.extend([0x01, 0x00]); // null compression
    let extensions: &[&[u8]] = &[
        &[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03], // signature_algorithms: ecdsa_secp256r1_sha256
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17], // supported_groups: secp256r1
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00],             // ec_point_formats: uncompressed
        &[0x00, 0x17, 0x00, 0x00],                         // extended_master_secret
    ];
    let extensions = extensions.concat();
    hello.extend(u16::try_from(extensions.len())?.to_be_bytes());
    hello.extend(extensions);
    let mut message = vec![0x01, 0x00]; // client_hello, 24-bit length
    message.extend(u16::try_from(hello.len())?.to_be_bytes());
    message.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(message.len())?.to_be_bytes());
    record.extend(message);
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(&record).await?;
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut reply)).await??;
    Ok(reply)
}

#[tokio::test]
async fn only_tls_1_3_and_1_2_are_negotiated() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(dir.path(), &[])?;
    let addr = serve(&store).await?;
    let ca = ca_path(&store)?;

    let (version, _) = handshake(addr, tls::client_config_trusting(&ca)?, MAIL_HOST).await?;
    assert_eq!(version, ProtocolVersion::TLSv1_3);

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca)? {
        roots.add(cert?)?;
    }
    let tls12_only = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (version, _) = handshake(addr, Arc::new(tls12_only), MAIL_HOST).await?;
    assert_eq!(version, ProtocolVersion::TLSv1_2);

    // The same hand-made ClientHello (no supported_versions extension) gets a ServerHello as
    // TLS 1.2, and a fatal protocol_version alert (RFC 8446 §6.2, alert 70) as TLS 1.1.
    assert_eq!(
        raw_hello_reply(addr, [3, 3]).await?[0],
        0x16,
        "TLS 1.2 hello gets a handshake record"
    );
    let reply = raw_hello_reply(addr, [3, 2]).await?;
    assert_eq!(reply[0], 0x15, "an alert record, got {reply:02x?}");
    assert_eq!(
        &reply[5..],
        &[2, 70],
        "fatal protocol_version, got {reply:02x?}"
    );
    Ok(())
}

#[tokio::test]
async fn local_leaves_are_reused_across_restarts_and_reissued_when_a_name_is_added() -> TestResult {
    let dir = tempfile::tempdir()?;
    let leaf_file = dir.path().join("certs/example.org.pem");
    let ca_file = dir.path().join("ca.pem");
    let first = local_store(dir.path(), &["example.org"])?;
    let (leaf, ca) = (std::fs::read(&leaf_file)?, std::fs::read(&ca_file)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("certs/example.org.key.pem"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(first);

    let restarted = local_store(dir.path(), &["example.org"])?;
    assert_eq!(
        std::fs::read(&leaf_file)?,
        leaf,
        "leaf re-issued without cause"
    );
    assert_eq!(std::fs::read(&ca_file)?, ca, "CA replaced on restart");
    let addr = serve(&restarted).await?;
    let client = tls::client_config_trusting(&ca_file)?;
    let served = leaf_for(addr, &client, "smtp.example.org").await?;
    assert_eq!(
        served,
        CertificateDer::from_pem_slice(&leaf)?,
        "the reused leaf is served"
    );

    let mut groups = CertStore::name_groups(MAIL_HOST, &["example.org".into()]);
    groups[1].push("webmail.example.org".into());
    restarted.ensure_local_names(&groups)?;
    assert_ne!(
        std::fs::read(&leaf_file)?,
        leaf,
        "a new name must re-issue the leaf"
    );
    let served = leaf_for(addr, &client, "webmail.example.org").await?;
    assert!(san_names(&served)?.contains(&"webmail.example.org".to_string()));
    Ok(())
}

fn pem_pair(dir: &Path, stem: &str) -> PemPair {
    PemPair {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key.pem")),
    }
}

/// Sets a file's mtime `secs` ahead, so a rewrite is visible even with coarse timestamps.
fn bump_mtime(path: &Path, secs: u64) -> std::io::Result<()> {
    let later = SystemTime::now() + Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(later)
}

/// Writes a fresh self-signed certificate for `name` and its key; returns the certificate.
fn write_self_signed(
    pair: &PemPair,
    name: &str,
) -> Result<CertificateDer<'static>, Box<dyn Error + Send + Sync>> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed([name.to_string()])?;
    std::fs::write(&pair.cert, cert.pem())?;
    std::fs::write(&pair.key, signing_key.serialize_pem())?;
    bump_mtime(&pair.cert, name.len() as u64)?;
    bump_mtime(&pair.key, name.len() as u64)?;
    Ok(cert.der().clone())
}

#[tokio::test]
async fn files_mode_serves_a_rewritten_certificate_after_reload() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pair = pem_pair(dir.path(), "cert");
    let first = write_self_signed(&pair, "a.example.test")?;
    let store = CertStore::new(CertSource::Files(vec![pair.clone()]))?;
    assert_eq!(store.ca_path(), None);
    let addr = serve(&store).await?;
    let client = accept_any_client()?;
    assert_eq!(leaf_for(addr, &client, "a.example.test").await?, first);
    assert!(!store.reload_changed()?, "nothing changed yet");

    let second = write_self_signed(&pair, "bb.example.test")?;
    assert!(store.reload_changed()?);
    assert_eq!(leaf_for(addr, &client, "bb.example.test").await?, second);
    let status = store.status();
    assert_eq!(status.len(), 1, "the old certificate is gone");
    assert_eq!(status[0].names, ["bb.example.test"]);

    // A key that no longer matches: an error naming the files, and the old certificate stays.
    std::fs::write(&pair.key, rcgen::KeyPair::generate()?.serialize_pem())?;
    bump_mtime(&pair.key, 60)?;
    let err = store
        .reload_changed()
        .err()
        .ok_or("mismatched key accepted")?;
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert_eq!(leaf_for(addr, &client, "bb.example.test").await?, second);
    Ok(())
}

#[tokio::test]
async fn spawn_reloader_picks_up_a_rewritten_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pair = pem_pair(dir.path(), "cert");
    write_self_signed(&pair, "a.example.test")?;
    let store = CertStore::new(CertSource::Files(vec![pair.clone()]))?;
    let reloader = store.spawn_reloader(Duration::from_millis(20));
    write_self_signed(&pair, "bb.example.test")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.status()[0].names != ["bb.example.test"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reloader did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reloader.abort();
    Ok(())
}

#[test]
fn load_errors_name_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (a, b) = (pem_pair(dir.path(), "a"), pem_pair(dir.path(), "b"));
    write_self_signed(&a, "a.example.test")?;
    write_self_signed(&b, "b.example.test")?;
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            &a.cert,
            &b.key,
            format!(
                "certificate {} does not match its key {}",
                a.cert.display(),
                b.key.display()
            ),
        ),
        (
            &missing,
            &a.key,
            format!("cannot read certificate {}: ", missing.display()),
        ),
        (
            &a.cert,
            &missing,
            format!("cannot read private key {}: ", missing.display()),
        ),
        (
            &a.cert,
            &a.cert,
            format!("no private key in {}", a.cert.display()),
        ),
        (
            &a.key,
            &a.key,
            format!("no certificate in {}", a.key.display()),
        ),
    ];
    for (cert, key, expected) in cases {
        let pair = PemPair {
            cert: cert.clone(),
            key: key.clone(),
        };
        let err = CertStore::new(CertSource::Files(vec![pair]))
            .err()
            .ok_or("bad pair accepted")?;
        assert!(
            err.to_string().starts_with(&expected),
            "{err} should start with {expected}"
        );
    }
    Ok(())
}

/// Runs `program args` to completion, or None (with a message) if it is not installed.
async fn run_external(
    program: &str,
    args: &[&str],
) -> Result<Option<std::process::Output>, std::io::Error> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(30), child).await {
        Ok(Ok(output)) => Ok(Some(output)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipping: {program} is not installed");
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{program} timed out"),
        )),
    }
}

#[tokio::test]
async fn openssl_s_client_verifies_the_local_ca_chain() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(dir.path(), &["example.org"])?;
    let addr = serve(&store).await?;
    let ca = ca_path(&store)?;
    let (connect, ca) = (addr.to_string(), ca.to_string_lossy().into_owned());
    for (sni, version) in [
        ("autodiscover.example.org", "-tls1_3"),
        (MAIL_HOST, "-tls1_2"),
    ] {
        #[rustfmt::skip]
        let args = [
            "s_client", "-connect", &connect, "-servername", sni, "-verify_hostname", sni,
            "-CAfile", &ca, "-verify_return_error", version,
        ];
        let Some(output) = run_external("openssl", &args).await? else {
            return Ok(());
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "openssl {version} {sni} failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    }
    Ok(())
}

#[tokio::test]
async fn python_ssl_verifies_strictly_against_the_local_ca() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(dir.path(), &["example.org"])?;
    let addr = serve(&store).await?;
    let ca = ca_path(&store)?;
    // VERIFY_X509_STRICT is the default from Python 3.13 on; ask for it on older versions too.
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
with socket.create_connection(("127.0.0.1", int(sys.argv[2]))) as raw:
    with ctx.wrap_socket(raw, server_hostname=sys.argv[3]) as tls:
        names = [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]
        print(tls.version(), " ".join(names))
"#;
    let (ca, port) = (ca.to_string_lossy().into_owned(), addr.port().to_string());
    let args = ["-c", script, &ca, &port, "imap.example.org"];
    let Some(output) = run_external("python3", &args).await? else {
        return Ok(());
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("TLSv1.3 example.org "), "{stdout}");
    assert!(stdout.contains("imap.example.org"), "{stdout}");
    Ok(())
}
