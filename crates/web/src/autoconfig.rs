//! Thunderbird autoconfig documents (`clientConfig version="1.1"`), CLIENTS.md section A.
//!
//! Entry order is the client's preference order: the first valid incoming and outgoing entries
//! are the defaults, and Thunderbird for Android uses only the first IMAP and first SMTP entry.
//! No entry ever says `plain`: Thunderbird for Android rejects the whole file if one does.

use std::fmt::Write;

use crate::ClientPorts;
use crate::xml::escape;

/// `socketType` values (CLIENTS.md A); `plain` deliberately has no variant.
#[derive(Debug, Clone, Copy)]
enum SocketType {
    /// Implicit TLS (RFC 8314).
    Ssl,
    /// STARTTLS upgrade.
    StartTls,
}

impl SocketType {
    fn as_str(self) -> &'static str {
        match self {
            SocketType::Ssl => "SSL",
            SocketType::StartTls => "STARTTLS",
        }
    }
}

/// The autoconfig document for `domain`, whose mail is served by `host` on `ports`.
/// Usernames use the `%EMAILADDRESS%` placeholder, so one document fits every user (and the
/// request's `emailaddress` parameter is never required: Thunderbird for Android omits it).
pub(crate) fn document(domain: &str, host: &str, ports: &ClientPorts) -> String {
    let incoming = [
        ("imap", ports.imaps, SocketType::Ssl),
        ("imap", ports.imap, SocketType::StartTls),
        ("pop3", ports.pop3s, SocketType::Ssl),
        ("pop3", ports.pop3, SocketType::StartTls),
    ];
    let outgoing = [
        ("smtp", ports.submissions, SocketType::Ssl),
        ("smtp", ports.submission, SocketType::StartTls),
    ];
    let (domain, host) = (escape(domain), escape(host));
    let short = domain.split('.').next().unwrap_or(&domain).to_owned();
    let mut out = String::with_capacity(2048);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n");
    let _ = writeln!(out, "  <emailProvider id=\"{domain}\">");
    let _ = writeln!(out, "    <domain>{domain}</domain>");
    let _ = writeln!(out, "    <displayName>{domain} mail</displayName>");
    let _ = writeln!(out, "    <displayShortName>{short}</displayShortName>");
    let servers = incoming
        .iter()
        .map(|s| ("incomingServer", s))
        .chain(outgoing.iter().map(|s| ("outgoingServer", s)));
    for (element, (kind, port, socket)) in servers {
        if *port == 0 {
            continue;
        }
        let _ = write!(
            out,
            "    <{element} type=\"{kind}\">\n      <hostname>{host}</hostname>\n      \
             <port>{port}</port>\n      <socketType>{}</socketType>\n      \
             <username>%EMAILADDRESS%</username>\n      \
             <authentication>password-cleartext</authentication>\n    </{element}>\n",
            socket.as_str()
        );
    }
    out.push_str("  </emailProvider>\n</clientConfig>\n");
    out
}
