//! Semantics: what MAIL, RCPT and the end of DATA/BDAT mean for the store. Sits between the
//! session (which owns the socket) and the store (which owns durability). No I/O on the
//! connection here.
//!
//! - Recipients: hosted addresses resolve through [`Store::route_recipient`] (accounts,
//!   aliases, catch-alls); unknown hosted addresses are refused at RCPT time (RFC 5321
//!   §3.3: never accept-then-bounce); other domains are relaying, refused on the MX port
//!   (RFC 5321 §3.6.2) and queued after AUTH on submission (RFC 6409 §4).
//! - Trace headers: `Return-Path` at final delivery (RFC 5321 §4.4), `Received` with the TLS
//!   version and cipher (RFC 5321 §4.4, RFC 3848 `with` keywords), and on the MX port
//!   `Authentication-Results` (RFC 8601).
//! - Submission fixes (RFC 6409 §8): `Message-ID` and `Date` are added when missing.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use store::{
    AccountId, Address, AliasSource, DEFAULT_QUEUE_LIFETIME_SECS, DsnNotify, DsnRet, NewMessage,
    QueuedMessage, QueuedRecipient, Store, StoreError, unix_now,
};

use crate::reply::{self, Reply};

/// Why a command or a message failed: the client's fault (a reply) or ours (logged in full,
/// answered with a generic 451 and a correlation id).
#[derive(Debug)]
pub enum Failure {
    /// Reply with this.
    Client(Reply),
    /// An internal failure; the text goes to the log only.
    Internal(String),
}

impl From<Reply> for Failure {
    fn from(r: Reply) -> Failure {
        Failure::Client(r)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Internal(format!("store: {e}"))
    }
}

/// Where one accepted recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Hosted: the INBOX of each of these accounts.
    Local(Vec<AccountId>),
    /// Elsewhere: the outbound queue (submission only).
    Remote,
}

/// One accepted RCPT.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The forward-path.
    pub address: Address,
    /// Where it goes.
    pub target: Target,
    /// RFC 3461 NOTIFY.
    pub notify: DsnNotify,
    /// RFC 3461 ORCPT.
    pub orcpt: Option<String>,
}

/// One mail transaction (RFC 5321 §3.3): from MAIL to the end of DATA/BDAT or RSET.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// The reverse-path; `None` is `<>`.
    pub sender: Option<Address>,
    /// RFC 6531 SMTPUTF8 was given.
    pub smtputf8: bool,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// RFC 3461 RET.
    pub ret: Option<DsnRet>,
    /// Accepted recipients in order, each address once.
    pub recipients: Vec<Recipient>,
    /// BDAT chunks received so far (RFC 3030), when the message comes by BDAT.
    pub chunks: Option<Vec<u8>>,
}

/// Whether `address` is one the account may use as envelope sender or `From:` (RFC 6409
/// §6.1): its own address or an alias of it. Catch-alls do not count: owning `@domain`'s
/// leftovers must not let a user write as another account of the domain.
pub fn may_send_as(allowed: &[AliasSource], address: &Address) -> bool {
    allowed
        .iter()
        .any(|a| matches!(a, AliasSource::Address(own) if own == address))
}

/// Decides where a recipient goes, or why it is refused.
pub async fn route_recipient(
    store: &dyn Store,
    address: &Address,
    submission: bool,
) -> Result<Target, Failure> {
    if let Some(accounts) = store.route_recipient(address).await? {
        if accounts.is_empty() {
            return Err(reply::NO_SUCH_USER.into());
        }
        if accounts.iter().all(|a| a.full) {
            // Refused before DATA, so the sender keeps the message and retries; when only
            // some of an alias's accounts are full, the others still get it. A message that
            // fits the room left at RCPT may still be refused at DATA when it is larger.
            return Err(reply::MAILBOX_FULL_TRY_LATER.into());
        }
        Ok(Target::Local(accounts.iter().map(|a| a.id).collect()))
    } else if submission {
        Ok(Target::Remote)
    } else {
        // RFC 5321 §3.6.2 / DESIGN §6: no open relay, ever.
        Err(reply::RELAY_DENIED.into())
    }
}

/// The header names present in a message's header block (lower-case).
pub fn header_names(message: &[u8]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // end of the header block
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue; // folded continuation
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            names.insert(
                String::from_utf8_lossy(&line[..colon])
                    .trim()
                    .to_ascii_lowercase(),
            );
        }
    }
    names
}

/// The `From:` addresses of a message (RFC 5322 §3.6.2), lower-cased; `None` without a
/// parseable From.
pub fn from_addresses(message: &[u8]) -> Option<Vec<String>> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let from = parsed.from()?;
    let out: Vec<String> = from
        .iter()
        .filter_map(|a| a.address())
        .map(str::to_lowercase)
        .collect();
    (!out.is_empty()).then_some(out)
}

/// RFC 5322 §3.3 date-time of now (UTC).
pub fn rfc5322_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

/// What went into the `Received:` header.
#[derive(Debug, Clone)]
pub struct TraceInfo<'a> {
    /// Our host name.
    pub hostname: &'a str,
    /// The client's EHLO/HELO argument.
    pub helo: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// `(version, cipher)` when TLS is up.
    pub tls: Option<(&'a str, &'a str)>,
    /// Whether the client authenticated (RFC 3848 `A`).
    pub authenticated: bool,
    /// Whether EHLO (ESMTP) rather than HELO was used.
    pub esmtp: bool,
    /// RFC 6531 §3.7.3: SMTPUTF8 transaction.
    pub smtputf8: bool,
    /// Session/transaction id for the operator's log.
    pub id: &'a str,
    /// The single recipient, if exactly one (RFC 5321 §4.4 `for`).
    pub single_recipient: Option<&'a Address>,
}

/// RFC 5321 §4.4 `Received:` header, CRLF-terminated, with the RFC 3848 / RFC 6531 `with`
/// keyword and the TLS parameters in a comment.
pub fn received_header(t: &TraceInfo<'_>) -> String {
    let base = match (t.smtputf8, t.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let with = format!(
        "{base}{}{}",
        if t.tls.is_some() { "S" } else { "" },
        if t.authenticated { "A" } else { "" }
    );
    let tls = match t.tls {
        Some((version, cipher)) => format!(" (version={version} cipher={cipher})"),
        None => String::new(),
    };
    let ip = match t.ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPv6:{v6}"),
        },
    };
    let helo: String = t
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    let recipient = match t.single_recipient {
        Some(a) => format!("\r\n\tfor <{a}>"),
        None => String::new(),
    };
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {host} (Tessera) with {with}{tls}\r\n\tid {id}{recipient};\r\n\t{date}\r\n",
        host = t.hostname,
        id = t.id,
        date = rfc5322_now(),
    )
}

/// RFC 5321 §4.4 `Return-Path:` as written at final delivery.
pub fn return_path_header(sender: Option<&Address>) -> String {
    match sender {
        Some(a) => format!("Return-Path: <{a}>\r\n"),
        None => "Return-Path: <>\r\n".into(),
    }
}

/// Concatenates prepended header text and the message.
pub fn with_headers(headers: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + message.len());
    out.extend_from_slice(headers.as_bytes());
    out.extend_from_slice(message);
    out
}

/// How the accepted message was stored, for the `250` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored {
    /// Copies delivered into INBOXes.
    pub delivered: usize,
    /// The queue row, when any recipient is remote.
    pub queued: Option<store::QueueId>,
}

/// Stores the message durably: local recipients' accounts (each once) through
/// [`Store::deliver`], remote recipients into the queue. Returns once both committed.
///
/// `local_headers` are prepended only to the local copy (Return-Path belongs to final
/// delivery); `message` already carries the other trace headers.
pub async fn store_message(
    store: &dyn Store,
    tx: &Transaction,
    account: Option<AccountId>,
    local_headers: &str,
    message: &[u8],
) -> Result<Stored, Failure> {
    let mut accounts: Vec<AccountId> = Vec::new();
    let mut remote: Vec<QueuedRecipient> = Vec::new();
    for r in &tx.recipients {
        match &r.target {
            Target::Local(ids) => {
                for id in ids {
                    if !accounts.contains(id) {
                        accounts.push(*id);
                    }
                }
            }
            Target::Remote => remote.push(QueuedRecipient {
                address: r.address.clone(),
                notify: r.notify,
                orcpt: r.orcpt.clone(),
            }),
        }
    }
    let local = async {
        if accounts.is_empty() {
            return Ok(0);
        }
        let bytes = with_headers(local_headers, message);
        let results = store.deliver(&accounts, NewMessage::now(bytes)).await?;
        let mut delivered = 0;
        let mut quota = 0;
        for (account, r) in accounts.iter().zip(&results) {
            match r {
                Ok(_) => delivered += 1,
                Err(StoreError::QuotaExceeded { .. }) => {
                    quota += 1;
                    tracing::warn!(%account, "mailbox over quota; copy not delivered");
                }
                Err(e) => return Err(Failure::Internal(format!("deliver to {account}: {e}"))),
            }
        }
        if delivered == 0 && quota > 0 {
            return Err(Failure::Client(reply::MAILBOX_FULL));
        }
        Ok(delivered)
    };
    let queued = async {
        if remote.is_empty() {
            return Ok(None);
        }
        let id = store
            .enqueue(QueuedMessage {
                sender: tx.sender.clone(),
                recipients: remote.clone(),
                bytes: Arc::new(message.to_vec()),
                account,
                dsn_envid: tx.envid.clone(),
                dsn_ret: tx.ret,
                expires_at: unix_now() + DEFAULT_QUEUE_LIFETIME_SECS,
            })
            .await?;
        Ok::<_, Failure>(Some(id))
    };
    let (delivered, queued) = tokio::join!(local, queued);
    Ok(Stored {
        delivered: delivered?,
        queued: queued?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_stop_at_the_body() {
        let names =
            header_names(b"From: a@b.test\r\nSubject: x\r\n y\r\n\r\nDate: not a header\r\n");
        assert!(names.contains("from") && names.contains("subject"));
        assert!(!names.contains("date"));
    }

    #[test]
    fn from_addresses_are_lower_cased() {
        let got = from_addresses(b"From: Alice <Alice@Example.test>\r\n\r\nhi\r\n");
        assert_eq!(got, Some(vec!["alice@example.test".to_string()]));
        assert_eq!(from_addresses(b"Subject: x\r\n\r\n"), None);
    }

    #[test]
    fn received_names_tls_and_with_keyword() {
        let rcpt = Address::parse("bob@example.test").expect("valid");
        let h = received_header(&TraceInfo {
            hostname: "mx.example.test",
            helo: "client.test",
            ip: "127.0.0.1".parse().expect("ip"),
            tls: Some(("TLSv1.3", "TLS13_AES_256_GCM_SHA384")),
            authenticated: true,
            esmtp: true,
            smtputf8: false,
            id: "abc",
            single_recipient: Some(&rcpt),
        });
        assert!(h.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test (Tessera) with ESMTPSA (version=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384)"), "{h}");
        assert!(h.contains("for <bob@example.test>;"));
        assert!(h.ends_with("\r\n"));
    }

    #[test]
    fn catch_all_does_not_grant_sending() {
        let own = Address::parse("alice@example.test").expect("valid");
        let allowed = vec![
            AliasSource::Address(own.clone()),
            AliasSource::parse("@example.test").expect("valid"),
        ];
        assert!(may_send_as(&allowed, &own));
        let other = Address::parse("ceo@example.test").expect("valid");
        assert!(!may_send_as(&allowed, &other));
    }
}
