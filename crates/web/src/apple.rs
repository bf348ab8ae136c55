//! Apple configuration profiles (`.mobileconfig`) for one mail account, CLIENTS.md section C.
//!
//! No password goes into the profile (it is not encrypted), so the device asks for it. UUIDs
//! and identifiers are derived from (address, mail host, protocol), so installing the profile
//! again replaces the earlier one instead of adding a second account.

use sha2::{Digest, Sha256};

use crate::ClientPorts;

/// Which incoming protocol the profile configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// IMAP on the implicit-TLS port (the default).
    Imap,
    /// POP3 on the implicit-TLS port (on request).
    Pop3,
}

impl Incoming {
    fn label(self) -> &'static str {
        match self {
            Incoming::Imap => "imap",
            Incoming::Pop3 => "pop3",
        }
    }
}

/// A UUID (RFC 9562 §5.8, version 8) made from SHA-256 of `parts`: stable for equal inputs.
pub(crate) fn stable_uuid(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The reverse-DNS payload identifier prefix for `host`: `mail.example.org` -> `org.example.mail`.
fn reverse_dns(host: &str) -> String {
    host.split('.').rev().collect::<Vec<_>>().join(".")
}

/// The unsigned profile (an XML property list) for `address` on `host`.
pub(crate) fn profile(
    address: &str,
    host: &str,
    ports: &ClientPorts,
    incoming: Incoming,
) -> Result<Vec<u8>, plist::Error> {
    use plist::{Dictionary, Value};

    let id = format!(
        "{}.tessera.{}.{}",
        reverse_dns(host),
        incoming.label(),
        &stable_uuid(&["id", address, host, incoming.label()])[..8].to_ascii_lowercase()
    );
    let domain = address.rsplit_once('@').map_or(address, |(_, d)| d);
    let (account_type, port) = match incoming {
        Incoming::Imap => ("EmailTypeIMAP", ports.imaps),
        Incoming::Pop3 => ("EmailTypePOP", ports.pop3s),
    };
    let s = |v: &str| Value::String(v.to_owned());
    let int = |v: u16| Value::Integer(u64::from(v).into());

    let mut account = Dictionary::new();
    account.insert("PayloadType".into(), s("com.apple.mail.managed"));
    account.insert("PayloadVersion".into(), int(1));
    account.insert("PayloadIdentifier".into(), s(&format!("{id}.account")));
    account.insert(
        "PayloadUUID".into(),
        s(&stable_uuid(&["account", address, host, incoming.label()])),
    );
    account.insert("PayloadDisplayName".into(), s(&format!("{domain} mail")));
    account.insert("EmailAccountType".into(), s(account_type));
    account.insert(
        "EmailAccountDescription".into(),
        s(&format!("{domain} mail")),
    );
    account.insert("EmailAddress".into(), s(address));
    account.insert("IncomingMailServerHostName".into(), s(host));
    account.insert("IncomingMailServerPortNumber".into(), int(port));
    account.insert("IncomingMailServerUseSSL".into(), Value::Boolean(true));
    account.insert(
        "IncomingMailServerAuthentication".into(),
        s("EmailAuthPassword"),
    );
    account.insert("IncomingMailServerUsername".into(), s(address));
    account.insert("OutgoingMailServerHostName".into(), s(host));
    account.insert(
        "OutgoingMailServerPortNumber".into(),
        int(ports.submissions),
    );
    account.insert("OutgoingMailServerUseSSL".into(), Value::Boolean(true));
    account.insert(
        "OutgoingMailServerAuthentication".into(),
        s("EmailAuthPassword"),
    );
    account.insert("OutgoingMailServerUsername".into(), s(address));
    account.insert(
        "OutgoingPasswordSameAsIncomingPassword".into(),
        Value::Boolean(true),
    );

    let mut root = Dictionary::new();
    root.insert("PayloadType".into(), s("Configuration"));
    root.insert("PayloadVersion".into(), int(1));
    root.insert("PayloadIdentifier".into(), s(&id));
    root.insert(
        "PayloadUUID".into(),
        s(&stable_uuid(&["profile", address, host, incoming.label()])),
    );
    root.insert("PayloadDisplayName".into(), s(address));
    root.insert(
        "PayloadDescription".into(),
        s(&format!("Mail settings for {address} on {host}")),
    );
    root.insert(
        "PayloadContent".into(),
        Value::Array(vec![Value::Dictionary(account)]),
    );

    let mut out = Vec::with_capacity(4096);
    Value::Dictionary(root).to_writer_xml(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_distinct_and_version_8() {
        let a = stable_uuid(&["profile", "u@example.org", "mail.example.org"]);
        assert_eq!(
            a,
            stable_uuid(&["profile", "u@example.org", "mail.example.org"])
        );
        assert_ne!(
            a,
            stable_uuid(&["profile", "v@example.org", "mail.example.org"])
        );
        // Length-prefixed parts: moving a boundary changes the UUID.
        assert_ne!(stable_uuid(&["ab", "c"]), stable_uuid(&["a", "bc"]));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }
}
