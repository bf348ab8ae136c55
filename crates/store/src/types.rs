//! Validated values of the data model: domains, addresses, identifiers, flags.
//!
//! Every type that holds protocol or user input is built through `TryFrom`/`parse`
//! with its grammar in the doc comment, so a value that exists is a valid value.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::StoreError;

/// A DNS domain name hosted (or referred to) by Tessera, stored in lower case.
///
/// Grammar (RFC 1035 §2.3.1 preferred name syntax, as relaxed by RFC 1123 §2.1):
/// `label *("." label)` with at least two labels, each label 1–63 characters of
/// `[a-z0-9-]` not starting or ending with `-`; at most 253 characters in all.
/// Internationalised names must be given in their `xn--` (A-label) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Validates and lower-cases `input`; a trailing dot is accepted and removed.
    pub fn parse(input: &str) -> Result<Domain, StoreError> {
        let bad = |why: &str| StoreError::Invalid(format!("malformed domain {input:?}: {why}"));
        let name = input.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > 253 {
            return Err(bad("longer than 253 characters"));
        }
        if !name.is_ascii() {
            return Err(bad("use the xn-- (punycode) form for international names"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("every label must be 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad("only letters, digits, '-' and '.' are allowed"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label may not start or end with '-'"));
            }
        }
        if labels.len() < 2 {
            return Err(bad("needs at least two labels, like example.org"));
        }
        Ok(Domain(name))
    }

    /// The lower-case name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address `local@domain`, compared case-insensitively (stored lower-case).
///
/// Grammar: a local part of 1–64 octets made of RFC 5322 `atext` characters and dots
/// (no leading, trailing or doubled dot; UTF-8 letters allowed for RFC 6531), `@`,
/// and a [`Domain`]. Quoted local parts are not accepted for hosted addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    local: String,
    domain: Domain,
}

/// RFC 5322 §3.2.3 `atext` specials besides letters and digits.
const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

impl Address {
    /// Validates `input` and lower-cases it.
    pub fn parse(input: &str) -> Result<Address, StoreError> {
        let input = input.trim();
        let bad = |why: &str| StoreError::Invalid(format!("malformed address {input:?}: {why}"));
        let (local, domain) = input
            .rsplit_once('@')
            .ok_or_else(|| bad("expected local@domain"))?;
        let domain = Domain::parse(domain).map_err(|_| bad("the domain part is not valid"))?;
        let local = validate_local_part(local).map_err(|why| bad(&why))?;
        Ok(Address { local, domain })
    }

    /// The lower-case local part.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain part.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

fn validate_local_part(local: &str) -> Result<String, String> {
    if local.is_empty() {
        return Err("empty local part".into());
    }
    if local.len() > 64 {
        return Err("local part longer than 64 octets".into());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("misplaced '.' in the local part".into());
    }
    for c in local.chars() {
        let ok = if c.is_ascii() {
            c.is_ascii_alphanumeric() || c == '.' || ATEXT_SPECIALS.contains(&(c as u8))
        } else {
            !c.is_control() && !c.is_whitespace()
        };
        if !ok {
            return Err(format!("character {c:?} is not allowed in the local part"));
        }
    }
    // Lower-casing can lengthen a character (U+0130 `İ` becomes `i` + U+0307): the stored
    // form must still be within 64 octets, or it would not parse back (fuzz/store_address).
    let lower = local.to_lowercase();
    if lower.len() > 64 {
        return Err("local part longer than 64 octets in lower case".into());
    }
    Ok(lower)
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The source side of an alias: one address, or a whole domain (catch-all, written `@example.org`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AliasSource {
    /// Mail to exactly this address.
    Address(Address),
    /// Mail to any address of this domain that matches no account and no other alias.
    CatchAll(Domain),
}

impl AliasSource {
    /// Parses `user@example.org` or the catch-all form `@example.org`.
    pub fn parse(input: &str) -> Result<AliasSource, StoreError> {
        let input = input.trim();
        match input.strip_prefix('@') {
            Some(domain) => Ok(AliasSource::CatchAll(Domain::parse(domain)?)),
            None => Ok(AliasSource::Address(Address::parse(input)?)),
        }
    }

    /// The domain the alias belongs to.
    pub fn domain(&self) -> &Domain {
        match self {
            AliasSource::Address(a) => a.domain(),
            AliasSource::CatchAll(d) => d,
        }
    }

    /// The stored form: the address, or `@domain` for a catch-all.
    pub fn key(&self) -> String {
        match self {
            AliasSource::Address(a) => a.to_string(),
            AliasSource::CatchAll(d) => format!("@{d}"),
        }
    }
}

impl fmt::Display for AliasSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $inner);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Row identifier of a domain.
    DomainId(i64)
);
id_type!(
    /// Row identifier of an account.
    AccountId(i64)
);
id_type!(
    /// Row identifier of a mailbox.
    MailboxId(i64)
);
id_type!(
    /// Row identifier of a stored message (one per delivered body; shared by copies).
    MessageId(i64)
);
id_type!(
    /// IMAP unique identifier within one mailbox (RFC 3501 §2.3.1.1): non-zero, strictly ascending.
    Uid(u32)
);
id_type!(
    /// IMAP UIDVALIDITY of a mailbox (RFC 3501 §2.3.1.1).
    UidValidity(u32)
);
id_type!(
    /// Modification sequence (RFC 7162 §3.1.1): grows with every change in a mailbox.
    ModSeq(u64)
);

/// RFC 6154 special-use attributes for the mailboxes every account gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    /// `\All`
    All,
    /// `\Archive`
    Archive,
    /// `\Drafts`
    Drafts,
    /// `\Flagged`
    Flagged,
    /// `\Junk`
    Junk,
    /// `\Sent`
    Sent,
    /// `\Trash`
    Trash,
}

impl SpecialUse {
    /// The attribute as written in LIST responses, e.g. `\Sent`.
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::All => "\\All",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Flagged => "\\Flagged",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
        }
    }

    /// Parses an attribute such as `\Sent` (case-insensitive).
    pub fn from_attribute(s: &str) -> Option<SpecialUse> {
        let all = [
            SpecialUse::All,
            SpecialUse::Archive,
            SpecialUse::Drafts,
            SpecialUse::Flagged,
            SpecialUse::Junk,
            SpecialUse::Sent,
            SpecialUse::Trash,
        ];
        all.into_iter()
            .find(|u| u.attribute().eq_ignore_ascii_case(s))
    }
}

/// The mailboxes created with every account, with their RFC 6154 attributes.
pub const DEFAULT_MAILBOXES: &[(&str, Option<SpecialUse>)] = &[
    ("INBOX", None),
    ("Drafts", Some(SpecialUse::Drafts)),
    ("Sent", Some(SpecialUse::Sent)),
    ("Trash", Some(SpecialUse::Trash)),
    ("Junk", Some(SpecialUse::Junk)),
    ("Archive", Some(SpecialUse::Archive)),
];

/// IMAP system flags (RFC 3501 §2.3.2), stored as a bit set. `\Recent` is per session and not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SystemFlags(pub u8);

impl SystemFlags {
    /// `\Seen`
    pub const SEEN: u8 = 1;
    /// `\Answered`
    pub const ANSWERED: u8 = 2;
    /// `\Flagged`
    pub const FLAGGED: u8 = 4;
    /// `\Deleted`
    pub const DELETED: u8 = 8;
    /// `\Draft`
    pub const DRAFT: u8 = 16;

    const NAMES: [(u8, &'static str); 5] = [
        (Self::SEEN, "\\Seen"),
        (Self::ANSWERED, "\\Answered"),
        (Self::FLAGGED, "\\Flagged"),
        (Self::DELETED, "\\Deleted"),
        (Self::DRAFT, "\\Draft"),
    ];

    /// Whether every bit of `bit` is set.
    pub fn contains(self, bit: u8) -> bool {
        self.0 & bit == bit
    }

    /// The bit for a system flag name such as `\Seen` (case-insensitive).
    pub fn bit_for(name: &str) -> Option<u8> {
        Self::NAMES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(b, _)| *b)
    }

    /// The names of the set flags, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(b, _)| self.0 & b != 0)
            .map(|(_, n)| n)
    }
}

/// The flags of one message in one mailbox: system flags and keywords.
///
/// Keywords follow RFC 3501's `flag-keyword = atom`; they are kept in their given case
/// and compared case-insensitively by the protocol layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Flags {
    /// System flags.
    pub system: SystemFlags,
    /// Keywords such as `$Forwarded` or `$Junk`.
    pub keywords: BTreeSet<String>,
}

/// Maximum number of keywords on one message, and the longest keyword accepted.
pub const MAX_KEYWORDS: usize = 64;
/// Longest keyword accepted, in octets.
pub const MAX_KEYWORD_LEN: usize = 128;

impl Flags {
    /// Builds flags from names such as `\Seen` or `$Forwarded`. Unknown `\`-flags and
    /// keywords with characters outside RFC 3501 `atom` are refused.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Flags, StoreError> {
        let mut flags = Flags::default();
        for name in names {
            if name.starts_with('\\') {
                if name.eq_ignore_ascii_case("\\Recent") {
                    continue;
                }
                let bit = SystemFlags::bit_for(name)
                    .ok_or_else(|| StoreError::Invalid(format!("unknown system flag {name}")))?;
                flags.system.0 |= bit;
            } else {
                validate_keyword(name)?;
                flags.keywords.insert(name.to_string());
            }
        }
        if flags.keywords.len() > MAX_KEYWORDS {
            return Err(StoreError::Invalid(format!(
                "more than {MAX_KEYWORDS} keywords on one message"
            )));
        }
        Ok(flags)
    }

    /// Every flag name, system flags first.
    pub fn names(&self) -> Vec<String> {
        self.system
            .names()
            .map(str::to_string)
            .chain(self.keywords.iter().cloned())
            .collect()
    }

    /// Keywords in their stored form (space separated).
    pub(crate) fn keywords_text(&self) -> String {
        self.keywords.iter().cloned().collect::<Vec<_>>().join(" ")
    }

    /// Parses the stored keyword text.
    pub(crate) fn from_stored(system: i64, keywords: &str) -> Flags {
        Flags {
            system: SystemFlags(u8::try_from(system & 0x1f).unwrap_or(0)),
            keywords: keywords
                .split(' ')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// RFC 3501 `atom`: 1*ATOM-CHAR, without `(`, `)`, `{`, space, controls, `%`, `*`, `"`, `\`, `]`.
fn validate_keyword(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEYWORD_LEN
        && name
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("invalid keyword {name:?}")))
    }
}

/// How a flag change applies (IMAP STORE FLAGS, +FLAGS, -FLAGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// Replace the flags.
    Replace,
    /// Add these flags.
    Add,
    /// Remove these flags.
    Remove,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seen through the round-trip check of the `store_address` fuzz target: 32 `İ` are 64
    /// octets, but their lower case is 96, so the stored address did not parse back.
    #[test]
    fn stored_address_parses_back_after_lower_casing() {
        let long = format!("{}@example.org", "\u{130}".repeat(32));
        assert!(Address::parse(&long).is_err());
        let ok = format!("{}@example.org", "\u{130}".repeat(21));
        let address = Address::parse(&ok).expect("63 octets in lower case");
        assert_eq!(Address::parse(&address.to_string()), Ok(address));
    }

    #[test]
    fn domains() {
        assert_eq!(
            Domain::parse("Example.ORG.").map(|d| d.0),
            Ok("example.org".into())
        );
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a.org",
            "a-.org",
            "ex ample.org",
            "exämple.org",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad}");
        }
        assert!(Domain::parse(&format!("{}.org", "a".repeat(64))).is_err());
    }

    #[test]
    fn addresses_compare_case_insensitively() {
        let a = Address::parse("Bob.Smith@Example.org").map(|a| a.to_string());
        assert_eq!(a, Ok("bob.smith@example.org".into()));
        assert_eq!(
            Address::parse("bob@example.org"),
            Address::parse("BOB@EXAMPLE.ORG")
        );
        assert!(Address::parse("josé@example.org").is_ok());
        for bad in [
            "bob",
            "@example.org",
            "bob@",
            "bo b@example.org",
            ".bob@example.org",
            "b..b@example.org",
            "bob@localhost",
            "a\"b@example.org",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert!(Address::parse(&format!("{}@example.org", "a".repeat(65))).is_err());
    }

    #[test]
    fn alias_sources() {
        assert_eq!(
            AliasSource::parse("@Example.org").map(|a| a.key()),
            Ok("@example.org".into())
        );
        assert_eq!(
            AliasSource::parse("Info@example.org").map(|a| a.key()),
            Ok("info@example.org".into())
        );
        assert!(AliasSource::parse("@").is_err());
    }

    #[test]
    fn flags() {
        let f =
            Flags::from_names(["\\Seen", "\\flagged", "$Forwarded", "\\Recent"]).expect("valid");
        assert!(f.system.contains(SystemFlags::SEEN));
        assert!(f.system.contains(SystemFlags::FLAGGED));
        assert!(!f.system.contains(SystemFlags::DELETED));
        assert_eq!(f.names(), vec!["\\Seen", "\\Flagged", "$Forwarded"]);
        assert!(Flags::from_names(["\\Bogus"]).is_err());
        assert!(Flags::from_names(["bad(kw"]).is_err());
        let stored = Flags::from_stored(i64::from(f.system.0), &f.keywords_text());
        assert_eq!(stored, f);
    }
}
