//! One destination domain of one message: route, TLS policy, then one SMTP conversation that
//! carries all of the domain's recipients (RFC 5321 §4.5.4, §5).

use std::net::SocketAddr;
use std::sync::Arc;

use store::Address;
use tls::rustls;
use tls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpSocket;

use super::Shared;
use super::client::{Capabilities, Client, ClientError, Reply, dot_stuff};
use super::mta_sts::{self, Mode, Policy};
use super::route::{self, Route, RouteError};

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Accepted by the remote.
    Delivered,
    /// Retry later, with the reason.
    Temporary(String),
    /// Give up, with the reason.
    Permanent(String),
}

/// The work for one domain.
pub(crate) struct Job {
    pub(crate) domain: String,
    pub(crate) sender: Option<Address>,
    pub(crate) recipients: Vec<Address>,
    pub(crate) body: Arc<Vec<u8>>,
}

fn all(job: &Job, outcome: Outcome) -> Vec<(Address, Outcome)> {
    job.recipients
        .iter()
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// A failure of one host before the transaction started: the next host is tried.
#[derive(Debug)]
enum HostError {
    /// The TLS handshake failed (opportunistic TLS retries the host in plaintext).
    Tls(String),
    /// Anything else.
    Other(String),
}

/// Delivers `job` and returns each recipient's outcome.
pub(crate) async fn deliver_domain(shared: &Shared, job: &Job) -> Vec<(Address, Outcome)> {
    let hosts = match route::route(&shared.resolver, &job.domain).await {
        Ok(Route::Hosts(hosts)) => hosts,
        Ok(Route::NullMx) => {
            return all(
                job,
                Outcome::Permanent(format!(
                    "556 5.1.10 {} accepts no mail (null MX, RFC 7505)",
                    job.domain
                )),
            );
        }
        Err(RouteError::Permanent(e)) => return all(job, Outcome::Permanent(format!("5.1.2 {e}"))),
        Err(RouteError::Temporary(e)) => return all(job, Outcome::Temporary(format!("4.4.3 {e}"))),
    };
    let policy = policy_for(shared, &job.domain).await;
    let enforce = policy.as_ref().is_some_and(|p| p.mode == Mode::Enforce);
    let mut last_error = format!("4.4.1 no MX host of {} could be reached", job.domain);
    for host in hosts.iter().take(10) {
        if enforce && !policy.as_ref().is_some_and(|p| p.matches(host)) {
            last_error = format!(
                "4.7.5 MTA-STS enforce: MX host {host} does not match the policy of {}",
                job.domain
            );
            tracing::warn!(domain = %job.domain, host, "MX host refused by MTA-STS policy");
            continue;
        }
        let ips = match route::addresses(&shared.resolver, host).await {
            Ok(ips) => ips,
            Err(e) => {
                last_error = format!("4.4.3 {e}");
                continue;
            }
        };
        for ip in ips {
            let addr = SocketAddr::new(ip, shared.config.smtp_port);
            let mut plaintext = false;
            loop {
                match try_host(shared, job, host, addr, enforce, plaintext).await {
                    Ok(results) => return results,
                    Err(HostError::Tls(e)) if !enforce && !plaintext => {
                        tracing::info!(host, %addr, error = %e, "TLS failed; retrying in plaintext");
                        plaintext = true;
                    }
                    Err(HostError::Tls(e) | HostError::Other(e)) => {
                        tracing::info!(host, %addr, error = %e, "host failed");
                        last_error = e;
                        break;
                    }
                }
            }
        }
    }
    all(job, Outcome::Temporary(last_error))
}

/// The MTA-STS policy in force for `domain` (RFC 8461 §5.1), fetching when the TXT id changed.
async fn policy_for(shared: &Shared, domain: &str) -> Option<Policy> {
    let cached = shared.policies.get(domain);
    let Some(id) = route::mta_sts_id(&shared.resolver, domain).await else {
        return cached.map(|(_, p)| p);
    };
    if let Some((cached_id, policy)) = &cached
        && *cached_id == id
    {
        return Some(policy.clone());
    }
    let host = format!("mta-sts.{domain}");
    let fetched = match route::addresses(&shared.resolver, &host).await {
        Ok(ips) => {
            let mut result = Err(format!("{host} has no address"));
            for ip in ips {
                let addr = SocketAddr::new(ip, shared.config.mta_sts_port);
                result = mta_sts::fetch(
                    domain,
                    addr,
                    shared.tls_verified.clone(),
                    shared.config.connect_timeout,
                )
                .await;
                if result.is_ok() {
                    break;
                }
            }
            result
        }
        Err(e) => Err(e),
    };
    match fetched.and_then(|text| Policy::parse(&text)) {
        Ok(policy) => {
            shared.policies.put(domain, id, policy.clone());
            Some(policy)
        }
        Err(e) => {
            tracing::warn!(domain, error = %e, "cannot fetch the MTA-STS policy");
            cached.map(|(_, p)| p)
        }
    }
}

async fn connect(shared: &Shared, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = shared.config.source_ip
        && source.is_ipv4() == addr.is_ipv4()
    {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(addr).await
}

fn io(host: &str, e: ClientError) -> HostError {
    HostError::Other(format!("4.4.2 {host}: {e}"))
}

/// One conversation with one address of one host.
async fn try_host(
    shared: &Shared,
    job: &Job,
    host: &str,
    addr: SocketAddr,
    tls_required: bool,
    plaintext: bool,
) -> Result<Vec<(Address, Outcome)>, HostError> {
    let cfg = &shared.config;
    let tcp = tokio::time::timeout(cfg.connect_timeout, connect(shared, addr))
        .await
        .map_err(|_| HostError::Other(format!("4.4.1 {host} [{addr}]: connection timed out")))?
        .map_err(|e| HostError::Other(format!("4.4.1 {host} [{addr}]: {e}")))?;
    let mut client = Client::new(Box::new(tcp), cfg.command_timeout);
    let greeting = client
        .read_reply("greeting")
        .await
        .map_err(|e| io(host, e))?;
    if !greeting.is_positive() {
        // RFC 5321 §3.1: a 554 greeting; try another host.
        return Err(HostError::Other(format!("{host} greeted with: {greeting}")));
    }
    let mut caps = ehlo(&mut client, &cfg.hostname, host).await?;
    if caps.starttls && !plaintext {
        let reply = client
            .command("STARTTLS", "STARTTLS")
            .await
            .map_err(|e| io(host, e))?;
        if reply.code != 220 {
            if tls_required {
                return Err(HostError::Other(format!(
                    "4.7.5 MTA-STS enforce: {host} refused STARTTLS: {reply}"
                )));
            }
            return Err(HostError::Tls(format!("{host} refused STARTTLS: {reply}")));
        }
        if client.has_buffered_input() {
            // RFC 3207 §4.2 / STARTTLS injection: nothing may follow the 220 in plaintext.
            return Err(HostError::Other(format!(
                "4.7.0 {host} sent data after its STARTTLS reply"
            )));
        }
        let config = if tls_required {
            shared.tls_verified.clone()
        } else {
            shared.tls_any.clone()
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| HostError::Other(format!("4.4.0 bad host name {host}: {e}")))?;
        let stream = client.stream;
        let tls = tokio::time::timeout(
            cfg.command_timeout,
            tls::tokio_rustls::TlsConnector::from(config).connect(name, stream),
        )
        .await
        .map_err(|_| HostError::Tls(format!("TLS handshake with {host} timed out")))?
        .map_err(|e| {
            let why = format!("TLS with {host} failed: {e}");
            if tls_required {
                HostError::Other(format!("4.7.5 MTA-STS enforce: {why}"))
            } else {
                HostError::Tls(why)
            }
        })?;
        client = Client::new(Box::new(tls), cfg.command_timeout);
        caps = ehlo(&mut client, &cfg.hostname, host).await?;
    } else if tls_required {
        return Err(HostError::Other(format!(
            "4.7.5 MTA-STS enforce: {host} does not offer STARTTLS"
        )));
    }
    let results = transaction(&mut client, job, host, &caps).await;
    let _ = client.command("QUIT", "QUIT").await;
    Ok(results)
}

async fn ehlo(client: &mut Client, ours: &str, host: &str) -> Result<Capabilities, HostError> {
    let reply = client
        .command(&format!("EHLO {ours}"), "EHLO")
        .await
        .map_err(|e| io(host, e))?;
    if reply.is_positive() {
        return Ok(Capabilities::from_ehlo(&reply));
    }
    // RFC 5321 §4.1.4: fall back to HELO (no extensions).
    let reply = client
        .command(&format!("HELO {ours}"), "HELO")
        .await
        .map_err(|e| io(host, e))?;
    if reply.is_positive() {
        Ok(Capabilities::default())
    } else {
        Err(HostError::Other(format!(
            "{host} refused EHLO and HELO: {reply}"
        )))
    }
}

/// Whether the message needs SMTPUTF8 (RFC 6531 §3.4): a non-ASCII envelope address or header.
fn needs_smtputf8(job: &Job) -> bool {
    let header_end = job
        .body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(job.body.len());
    job.sender
        .as_ref()
        .is_some_and(|s| !s.to_string().is_ascii())
        || job.recipients.iter().any(|r| !r.to_string().is_ascii())
        || !job.body[..header_end].is_ascii()
}

/// `said` text of a remote reply, for `queue show` and DSNs.
fn said(host: &str, reply: &Reply) -> String {
    format!("{host} said: {reply}")
}

/// MAIL, RCPT for each recipient, DATA: pipelined (RFC 2920) when offered.
async fn transaction(
    client: &mut Client,
    job: &Job,
    host: &str,
    caps: &Capabilities,
) -> Vec<(Address, Outcome)> {
    let utf8 = needs_smtputf8(job);
    if utf8 && !caps.smtputf8 {
        return all(
            job,
            Outcome::Permanent(format!(
                "553 5.6.7 {host} does not support SMTPUTF8 (RFC 6531), which this message needs (non-ASCII address or header)"
            )),
        );
    }
    let eight_bit = !job.body.is_ascii();
    if eight_bit && !utf8 && !caps.eight_bit_mime {
        return all(
            job,
            Outcome::Permanent(format!(
                "554 5.6.3 {host} does not support 8BITMIME (RFC 6152), which this 8-bit message needs"
            )),
        );
    }
    let size = job.body.len() as u64;
    if let Some(limit) = caps.size
        && limit > 0
        && size > limit
    {
        return all(
            job,
            Outcome::Permanent(format!(
                "552 5.3.4 message of {size} bytes exceeds {host}'s size limit of {limit} (RFC 1870)"
            )),
        );
    }
    let mut mail = format!(
        "MAIL FROM:<{}>",
        job.sender
            .as_ref()
            .map(Address::to_string)
            .unwrap_or_default()
    );
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={size}"));
    }
    if eight_bit && caps.eight_bit_mime {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        mail.push_str(" SMTPUTF8");
    }
    let rcpts: Vec<String> = job
        .recipients
        .iter()
        .map(|r| format!("RCPT TO:<{r}>"))
        .collect();
    match exchange(client, job, host, caps, &mail, &rcpts).await {
        Ok(results) => results,
        Err(e) => all(job, Outcome::Temporary(format!("4.4.2 {host}: {e}"))),
    }
}

async fn exchange(
    client: &mut Client,
    job: &Job,
    host: &str,
    caps: &Capabilities,
    mail: &str,
    rcpts: &[String],
) -> Result<Vec<(Address, Outcome)>, ClientError> {
    let mut rcpt_replies = Vec::with_capacity(rcpts.len());
    let mail_reply;
    let mut data_reply = None;
    if caps.pipelining {
        // RFC 2920 §3.1: MAIL, RCPTs and DATA in one write; replies in order.
        let mut batch = format!("{mail}\r\n");
        for r in rcpts {
            batch.push_str(r);
            batch.push_str("\r\n");
        }
        batch.push_str("DATA\r\n");
        client.write(batch.as_bytes()).await?;
        mail_reply = client.read_reply("MAIL").await?;
        for _ in rcpts {
            rcpt_replies.push(client.read_reply("RCPT").await?);
        }
        data_reply = Some(client.read_reply("DATA").await?);
    } else {
        mail_reply = client.command(mail, "MAIL").await?;
        if mail_reply.is_positive() {
            for r in rcpts {
                rcpt_replies.push(client.command(r, "RCPT").await?);
            }
        }
    }
    if !mail_reply.is_positive() {
        let text = said(host, &mail_reply);
        let outcome = if mail_reply.is_permanent() {
            Outcome::Permanent(text)
        } else {
            Outcome::Temporary(text)
        };
        let _ = client.command("RSET", "RSET").await;
        return Ok(all(job, outcome));
    }
    let mut results: Vec<(Address, Outcome)> = Vec::new();
    let mut accepted = Vec::new();
    for (rcpt, reply) in job.recipients.iter().zip(&rcpt_replies) {
        if reply.is_positive() {
            accepted.push(rcpt.clone());
        } else if reply.is_permanent() {
            results.push((rcpt.clone(), Outcome::Permanent(said(host, reply))));
        } else {
            results.push((rcpt.clone(), Outcome::Temporary(said(host, reply))));
        }
    }
    if accepted.is_empty() {
        let _ = client.command("RSET", "RSET").await;
        return Ok(results);
    }
    let data_reply = match data_reply {
        Some(r) => r,
        None => client.command("DATA", "DATA").await?,
    };
    if data_reply.code != 354 {
        let text = said(host, &data_reply);
        for r in accepted {
            let o = if data_reply.is_permanent() {
                Outcome::Permanent(text.clone())
            } else {
                Outcome::Temporary(text.clone())
            };
            results.push((r, o));
        }
        return Ok(results);
    }
    client.write(&dot_stuff(&job.body)).await?;
    let end = client.read_reply("end of data").await?;
    for r in accepted {
        let o = if end.is_positive() {
            Outcome::Delivered
        } else if end.is_permanent() {
            Outcome::Permanent(said(host, &end))
        } else {
            Outcome::Temporary(said(host, &end))
        };
        results.push((r, o));
    }
    tracing::info!(host, code = end.code, "message data sent");
    Ok(results)
}

/// Opportunistic TLS (RFC 7435): any certificate is accepted, handshake signatures are still
/// verified. Used only when no policy demands validation.
#[derive(Debug)]
pub(crate) struct AnyCertificate(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
