//! Delivery status notifications (RFC 3464 in a RFC 6522 `multipart/report`): "failed" when
//! recipients failed permanently or expired, "delayed" for the optional delay notice.
//!
//! The DSN is sent with the null reverse-path (RFC 5321 §4.5.5) and `Auto-Submitted:
//! auto-replied` (RFC 3834), so it never causes another bounce.

use std::fmt::Write;

use store::{Address, DsnRet, QueueEntry};
use time::format_description::well_known::Rfc2822;

/// Which notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// RFC 3464 §2.3.3 `failed`.
    Failed,
    /// RFC 3464 §2.3.3 `delayed`.
    Delayed,
}

/// One recipient in a report.
#[derive(Debug, Clone)]
pub struct ReportedRecipient {
    /// The forward-path.
    pub address: Address,
    /// RFC 3461 ORCPT as given.
    pub orcpt: Option<String>,
    /// The last error: usually the remote's reply, quoted.
    pub error: String,
}

/// The RFC 3463 status code in `error` (`5.1.1`), else a generic one for the action.
pub fn status_of(error: &str, action: Action) -> String {
    let found = error.split_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match (found, action) {
        (Some(s), Action::Failed) if s.starts_with('5') => s.to_string(),
        (Some(s), Action::Delayed) if s.starts_with('4') => s.to_string(),
        (_, Action::Failed) => "5.0.0".into(),
        (_, Action::Delayed) => "4.0.0".into(),
    }
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc2822).ok())
        .unwrap_or_default()
}

/// Keeps a header field value on one line (DSN fields are header-like, RFC 3464 §2.1.1).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// Builds the DSN to the entry's sender (the caller makes sure there is one).
pub fn build(
    hostname: &str,
    entry: &QueueEntry,
    original: &[u8],
    action: Action,
    recipients: &[ReportedRecipient],
    now: i64,
) -> Vec<u8> {
    let sender = entry
        .sender
        .as_ref()
        .map(Address::to_string)
        .unwrap_or_default();
    let boundary = format!("tessera-dsn-{:016x}", rand::random::<u64>());
    let subject = match action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delivery Delayed (still trying)",
    };
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {}\r\n\
         Message-ID: <dsn-{:016x}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n",
        date(now),
        rand::random::<u64>(),
    );
    match action {
        Action::Failed => {
            let _ = write!(
                m,
                "This is the mail system at {hostname}.\r\n\r\n\
                 Your message could not be delivered to one or more recipients.\r\n\
                 It has been given up on. The remote server's reply is quoted below.\r\n\r\n"
            );
        }
        Action::Delayed => {
            let _ = write!(
                m,
                "This is the mail system at {hostname}.\r\n\r\n\
                 Your message has not been delivered yet to the recipients below.\r\n\
                 Delivery is still being tried until {}; no action is needed.\r\n\r\n",
                date(entry.expires_at)
            );
        }
    }
    for r in recipients {
        let _ = write!(m, "<{}>: {}\r\n", r.address, one_line(&r.error));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; {hostname}\r\n"
    );
    if let Some(envid) = &entry.dsn_envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(m, "Arrival-Date: {}\r\n", date(entry.created_at));
    for r in recipients {
        let _ = write!(m, "\r\nFinal-Recipient: rfc822; {}\r\n", r.address);
        if let Some(orcpt) = &r.orcpt {
            let _ = write!(m, "Original-Recipient: {}\r\n", one_line(orcpt));
        }
        let (word, status) = match action {
            Action::Failed => ("failed", status_of(&r.error, action)),
            Action::Delayed => ("delayed", status_of(&r.error, action)),
        };
        let _ = write!(
            m,
            "Action: {word}\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {}\r\n",
            one_line(&r.error),
            date(now)
        );
        if action == Action::Delayed {
            let _ = write!(m, "Will-Retry-Until: {}\r\n", date(entry.expires_at));
        }
    }
    let headers_only = entry.dsn_ret == Some(DsnRet::Headers) || action == Action::Delayed;
    let mut out = m.into_bytes();
    if headers_only {
        let end = original
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(original.len(), |p| p + 2);
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(&original[..end]);
    } else {
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(original);
        if !original.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_from_the_reply() {
        assert_eq!(
            status_of("mx.b.test said: 550 5.1.1 no such user", Action::Failed),
            "5.1.1"
        );
        assert_eq!(status_of("connection refused", Action::Failed), "5.0.0");
        assert_eq!(status_of("451 4.7.1 later", Action::Delayed), "4.7.1");
    }
}
