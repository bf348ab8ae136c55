//! SEARCH evaluation (RFC 3501 §6.4.4) over a selected mailbox's messages.
//!
//! Text keys match substrings case-insensitively after decoding (RFC 2047 in headers,
//! transfer encodings and charsets in bodies), straight from the stored bytes: there is no
//! index that could lag behind an APPEND.

use crate::mime;
use crate::wire::{DateCmp, SearchKey, days_from_civil};

/// What a key needs besides flags and sizes.
pub fn needs_message(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(keys) => keys.iter().any(needs_message),
        SearchKey::Or(a, b) => needs_message(a) || needs_message(b),
        SearchKey::Not(a) => needs_message(a),
        SearchKey::Header(..)
        | SearchKey::Body(_)
        | SearchKey::Text(_)
        | SearchKey::SentDate(..) => true,
        _ => false,
    }
}

/// Whether a key needs message bodies, not only header blocks (`BODY`, `TEXT`). When
/// [`needs_message`] holds but this does not, [`Candidate::raw`] may be the header block alone.
pub fn needs_body(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(keys) => keys.iter().any(needs_body),
        SearchKey::Or(a, b) => needs_body(a) || needs_body(b),
        SearchKey::Not(a) => needs_body(a),
        SearchKey::Body(_) | SearchKey::Text(_) => true,
        _ => false,
    }
}

/// Whether a key needs sizes or INTERNALDATE (`LARGER`, `SMALLER`, `BEFORE`, `ON`, `SINCE`).
pub fn needs_details(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(keys) => keys.iter().any(needs_details),
        SearchKey::Or(a, b) => needs_details(a) || needs_details(b),
        SearchKey::Not(a) => needs_details(a),
        SearchKey::Larger(_) | SearchKey::Smaller(_) | SearchKey::Date(..) => true,
        _ => false,
    }
}

/// Whether the key uses `MODSEQ` (RFC 7162 §3.1.5: the response then carries the highest
/// MODSEQ of the matches).
pub fn uses_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(keys) => keys.iter().any(uses_modseq),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::Not(a) => uses_modseq(a),
        SearchKey::ModSeq(_) => true,
        _ => false,
    }
}

/// One message as SEARCH sees it.
pub struct Candidate<'a> {
    /// Sequence number.
    pub seq: u32,
    /// UID.
    pub uid: u32,
    /// Highest sequence number in the mailbox (for `*`).
    pub max_seq: u32,
    /// Highest UID in the mailbox (for `*` in UID sets).
    pub max_uid: u32,
    /// Flag names set on the message (system flags with backslash).
    pub flags: &'a store::Flags,
    /// Whether it is \Recent in this session.
    pub recent: bool,
    /// RFC822.SIZE.
    pub size: u64,
    /// INTERNALDATE (Unix seconds) and its zone offset.
    pub internal_date: (i64, i32),
    /// MODSEQ.
    pub modseq: u64,
    /// The raw message, when a key needs it (only its header block when no key needs the
    /// body, see [`needs_body`]).
    pub raw: Option<&'a [u8]>,
}

fn has_flag(flags: &store::Flags, name: &str) -> bool {
    if name.starts_with('\\') {
        store::SystemFlags::bit_for(name).is_some_and(|b| flags.system.contains(b))
    } else {
        flags.keywords.iter().any(|k| k.eq_ignore_ascii_case(name))
    }
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.is_ascii() && needle.is_ascii() {
        // Both ASCII: lowercasing maps ASCII to ASCII byte for byte, so comparing bytes
        // without case is the same test, without two allocations per message.
        return contains_ascii_ci(hay.as_bytes(), needle.as_bytes());
    }
    hay.to_lowercase().contains(&needle.to_lowercase())
}

fn contains_ascii_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let Some(last_start) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    // Candidates are found with memchr on one byte of the needle (the anchor, see `anchor`),
    // then the window around it is compared; a letter is searched for in both cases.
    let k = anchor(needle);
    let a = needle[k];
    let window = |i: usize| {
        i.checked_sub(k)
            .filter(|&start| start <= last_start)
            .is_some_and(|start| hay[start..start + needle.len()].eq_ignore_ascii_case(needle))
    };
    let tail = &hay[k..last_start + k + 1];
    if a.is_ascii_alphabetic() {
        memchr::memchr2_iter(a.to_ascii_lowercase(), a.to_ascii_uppercase(), tail)
            .any(|i| window(i + k))
    } else {
        memchr::memchr_iter(a, tail).any(|i| window(i + k))
    }
}

/// How rare each byte is likely to be in header text, higher for rarer: letters by their
/// frequency in English, digits above them, the punctuation common in headers
/// (`-.:@<>,;=/"` and space) below them, every other byte highest.
const RARITY: [u8; 256] = {
    const BY_FREQUENCY: &[u8] = b"etaoinsrhldcumfpgwybvkxjqz";
    let mut t = [40u8; 256];
    let mut i = 0;
    while i < BY_FREQUENCY.len() {
        let b = BY_FREQUENCY[i];
        t[b as usize] = 1 + i as u8;
        t[b.to_ascii_uppercase() as usize] = 1 + i as u8;
        i += 1;
    }
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = 30;
        d += 1;
    }
    let common = b" -.:@<>,;=/\"";
    let mut j = 0;
    while j < common.len() {
        t[common[j] as usize] = 0;
        j += 1;
    }
    t
};

/// The byte of `needle` to search for first: its rarest (see [`RARITY`]), the first of equals.
fn anchor(needle: &[u8]) -> usize {
    let mut best = 0;
    for (i, &b) in needle.iter().enumerate() {
        if RARITY[usize::from(b)] > RARITY[usize::from(needle[best])] {
            best = i;
        }
    }
    best
}

fn date_cmp(cmp: DateCmp, day: i64, want: i64) -> bool {
    match cmp {
        DateCmp::Before => day < want,
        DateCmp::On => day == want,
        DateCmp::Since => day >= want,
    }
}

/// Decodes a header value (RFC 2047 words, unfolded).
fn decode_header(value: &[u8]) -> String {
    let mut v = value.to_vec();
    v.extend_from_slice(b"\r\n");
    let mut stream = mail_parser::parsers::MessageStream::new(&v);
    match stream.parse_unstructured() {
        mail_parser::HeaderValue::Text(t) => t.into_owned(),
        mail_parser::HeaderValue::TextList(l) => l.join(" "),
        _ => String::from_utf8_lossy(&mime::unfold(value)).into_owned(),
    }
}

/// False only when no field of the header block `head` can contain `needle`: for a needle of
/// printable ASCII without white space, in a header of 7-bit text without an RFC 2047 word,
/// a field's unfolded text is its raw text less line breaks, each followed by white space,
/// so a match there is a match in the raw block. One scan of the block then settles the
/// messages (most, in a SEARCH) whose header does not have the text anywhere.
fn header_may_contain(head: &[u8], needle: &str) -> bool {
    let simple = needle.bytes().all(|b| b.is_ascii_graphic());
    let encoded_word = || memchr::memchr_iter(b'=', head).any(|i| head.get(i + 1) == Some(&b'?'));
    if !simple || !head.is_ascii() || encoded_word() {
        return true;
    }
    contains_ascii_ci(head, needle.as_bytes())
}

fn header_matches(raw: &[u8], name: &str, needle: &str) -> bool {
    // The whole of `raw` is scanned (SEARCH passes header blocks; finding where a header
    // ends costs a scan of its own): text past the header only lets more messages through.
    if !needle.is_empty() && !header_may_contain(raw, needle) {
        return false;
    }
    header_fields_match(raw, name, needle)
}

/// HEADER's test proper, field by field.
fn header_fields_match(raw: &[u8], name: &str, needle: &str) -> bool {
    // `field_values` stops at the end of the header block.
    for value in mime::field_values(raw, name) {
        // RFC 3501: HEADER with an empty string matches every message with the field.
        if needle.is_empty() {
            return true;
        }
        let unfolded = mime::unfold(value);
        let raw_text = String::from_utf8_lossy(&unfolded);
        if contains_ci(&raw_text, needle) {
            return true;
        }
        // Decoding only changes a value with an RFC 2047 word or 8-bit bytes; otherwise it
        // just trims the unfolded text, which the test above already covered.
        let plain = unfolded.is_ascii() && !unfolded.windows(2).any(|w| w == b"=?");
        if !plain && contains_ci(&decode_header(&unfolded), needle) {
            return true;
        }
    }
    false
}

fn header_len(raw: &[u8]) -> usize {
    mime::header_end(raw).unwrap_or(raw.len())
}

/// The decoded text of every part SEARCH BODY looks at: text/* and message/* leaves, and parts
/// without a Content-Type (as Dovecot does without a full-text index), plus the headers of
/// encapsulated messages.
fn body_texts(raw: &[u8]) -> Vec<String> {
    let m = mime::MimeMessage::parse(raw.to_vec());
    let mut out = Vec::new();
    collect_texts(&m.bytes, &m.root, &mut out, 0);
    out
}

fn collect_texts(bytes: &[u8], part: &mime::Part, out: &mut Vec<String>, depth: usize) {
    match &part.kind {
        mime::PartKind::Multipart(children) => {
            for c in children {
                collect_texts(bytes, c, out, depth);
            }
        }
        mime::PartKind::Message(inner) if depth < 8 => {
            out.push(decode_header(inner.header()));
            collect_texts(&inner.bytes, &inner.root, out, depth + 1);
        }
        mime::PartKind::Message(_) => {}
        mime::PartKind::Leaf if part.searchable => {
            // An unknown transfer encoding cannot be read as text: the part is skipped.
            let Some(decoded) =
                mime::decode_transfer(&bytes[part.header.clone()], &bytes[part.body.clone()])
            else {
                return;
            };
            let charset = part
                .info
                .params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(b"charset"))
                .map(|(_, v)| v.as_slice());
            let text = charset
                .and_then(mail_parser::decoders::charsets::map::charset_decoder)
                .map_or_else(
                    || String::from_utf8_lossy(&decoded).into_owned(),
                    |f| f(&decoded),
                );
            out.push(text);
        }
        mime::PartKind::Leaf => {}
    }
}

fn sent_day(raw: &[u8]) -> Option<i64> {
    let m = mail_parser::MessageParser::new().parse_headers(raw)?;
    let d = m.date()?;
    Some(days_from_civil(
        i32::from(d.year),
        u32::from(d.month),
        u32::from(d.day),
    ))
}

/// Whether `c` matches `key`.
pub fn matches(key: &SearchKey, c: &Candidate<'_>) -> bool {
    use SearchKey as K;
    match key {
        K::And(keys) => keys.iter().all(|k| matches(k, c)),
        K::Or(a, b) => matches(a, c) || matches(b, c),
        K::Not(a) => !matches(a, c),
        K::All => true,
        K::Seq(set) => set.contains(c.seq, c.max_seq),
        K::Uid(set) => set.contains(c.uid, c.max_uid),
        K::Flag(f) => has_flag(c.flags, f),
        K::NoFlag(f) => !has_flag(c.flags, f),
        K::Recent => c.recent,
        K::New => c.recent && !has_flag(c.flags, "\\Seen"),
        K::Old => !c.recent,
        K::Larger(n) => c.size > *n,
        K::Smaller(n) => c.size < *n,
        K::ModSeq(n) => c.modseq >= *n,
        K::Date(cmp, want) => {
            let local = c.internal_date.0 + i64::from(c.internal_date.1) * 60;
            date_cmp(*cmp, local.div_euclid(86_400), *want)
        }
        K::SentDate(cmp, want) => c
            .raw
            .and_then(sent_day)
            .is_some_and(|d| date_cmp(*cmp, d, *want)),
        K::Header(name, needle) => c.raw.is_some_and(|raw| header_matches(raw, name, needle)),
        K::Body(needle) => c
            .raw
            .is_some_and(|raw| body_texts(raw).iter().any(|t| contains_ci(t, needle))),
        K::Text(needle) => c.raw.is_some_and(|raw| {
            let hl = header_len(raw);
            contains_ci(&decode_header(&raw[..hl]), needle)
                || contains_ci(&String::from_utf8_lossy(&raw[..hl]), needle)
                || body_texts(raw).iter().any(|t| contains_ci(t, needle))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqset::SeqSet;

    #[test]
    fn contains_ci_ascii_and_unicode() {
        for (hay, needle, want) in [
            ("Hello World", "o w", true),
            ("Hello World", "WORLD", true),
            ("Hello World", "worlds", false),
            ("Hello", "", true),
            ("", "a", false),
            ("ab", "abc", false),
            ("xxAB", "ab", true),
            // Not ASCII: Unicode lowercasing (the Kelvin sign lowercases to `k`).
            ("\u{212A}elvin", "kelvin", true),
            ("J\u{d6}RG", "j\u{f6}rg", true),
        ] {
            assert_eq!(contains_ci(hay, needle), want, "{hay:?} / {needle:?}");
        }
        // A header field with an encoded word is decoded; a plain one is matched as is.
        let raw = b"Subject: =?utf-8?q?caf=C3=A9?= menu\r\nTo: plain  spaced\r\n\r\n";
        assert!(header_matches(raw, "subject", "CAF\u{c9} m"));
        assert!(header_matches(raw, "to", "plain  sp"));
        assert!(!header_matches(raw, "to", "plain sp"));
    }

    /// The anchored search finds exactly what a window-by-window comparison finds, with the
    /// anchor at the start, middle or end of the needle and matches at either end of the text.
    #[test]
    fn anchored_ascii_search_agrees_with_the_naive_one() {
        let naive = |hay: &[u8], needle: &[u8]| {
            needle.is_empty()
                || hay
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle))
        };
        let hays: &[&[u8]] = &[
            b"",
            b"z",
            b"Topic-42 and topic-7",
            b"xx-TOPIC-42",
            b"QUIZ quiz QuIz",
            b"a-b-c-d",
            b"zzzzzq",
            b"The quick brown fox jumps",
        ];
        let needles: &[&[u8]] = &[
            b"",
            b"z",
            b"Z",
            b"topic-42",
            b"-42",
            b"42",
            b"topic-7",
            b"quiz",
            b"QUIZ q",
            b"b-c",
            b"-d",
            b"zq",
            b"fox jumps",
            b"jumpsx",
            b"the",
            b"zzzzzzq",
        ];
        for hay in hays {
            for needle in needles {
                assert_eq!(
                    contains_ascii_ci(hay, needle),
                    naive(hay, needle),
                    "{:?} in {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(hay)
                );
            }
        }
    }

    /// The one-scan prefilter never changes an answer: HEADER with it and without it agree,
    /// across folds, case, other fields, encoded words, 8-bit text and white space.
    #[test]
    fn header_prefilter_agrees_with_the_field_test() {
        let heads: &[&[u8]] = &[
            b"Subject: topic-42 news\r\nFrom: a@example.org\r\n\r\nbody topic-7\r\n",
            b"Subject: a long\r\n folded TOPIC-42\r\n\tsubject\r\nTo: topic-7@x\r\n\r\n",
            b"Subject: split topic-\r\n 42 here\r\n\r\n",
            b"Subject: =?utf-8?q?topic-42?=\r\n\r\n",
            b"Subject: caf\xc3\xa9 topic-42\r\n\r\n",
            b"X-Other: topic-42\r\nSubject: none\r\n\r\n",
            b"Subject: lf only\n\ttopic-42\n\n",
        ];
        let needles = [
            "topic-42",
            "TOPIC-4",
            "topic-7",
            "topic- 42",
            "long folded",
            "long  folded",
            "caf\u{e9}",
            "none",
            "news",
            "x",
            "subject",
        ];
        for head in heads {
            for needle in needles {
                for name in ["subject", "to", "x-other"] {
                    assert_eq!(
                        header_matches(head, name, needle),
                        header_fields_match(head, name, needle),
                        "{name}: {needle:?} in {:?}",
                        String::from_utf8_lossy(head)
                    );
                }
            }
        }
        // And it does reject: a needle in no field at all.
        assert!(!header_may_contain(heads[0], "topic-9"));
        assert!(header_may_contain(heads[0], "TOPIC-42"));
    }

    #[test]
    fn keys_table() {
        let raw = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\nSubject: Hello World\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n\r\nThe quick brown fox\r\n";
        let flags = store::Flags::from_names(["\\Seen", "$Work"]).expect("flags");
        let c = Candidate {
            seq: 2,
            uid: 10,
            max_seq: 3,
            max_uid: 12,
            flags: &flags,
            recent: false,
            size: 500,
            internal_date: (1_704_189_600, 0),
            modseq: 5,
            raw: Some(raw),
        };
        let table: &[(SearchKey, bool)] = &[
            (SearchKey::All, true),
            (SearchKey::Header("SUBJECT".into(), "hello".into()), true),
            (SearchKey::Header("FROM".into(), "jörg".into()), true),
            (SearchKey::Header("FROM".into(), "example.org".into()), true),
            (SearchKey::Header("TO".into(), "".into()), false),
            (SearchKey::Body("QUICK".into()), true),
            (SearchKey::Body("Subject".into()), false),
            (SearchKey::Text("subject".into()), true),
            (SearchKey::Flag("\\Seen".into()), true),
            (SearchKey::Flag("$work".into()), true),
            (SearchKey::NoFlag("\\Deleted".into()), true),
            (SearchKey::Larger(499), true),
            (SearchKey::Smaller(500), false),
            (SearchKey::Seq(SeqSet::parse("*").expect("set")), false),
            (SearchKey::Uid(SeqSet::parse("10").expect("set")), true),
            (
                SearchKey::SentDate(DateCmp::On, days_from_civil(2024, 1, 2)),
                true,
            ),
            (
                SearchKey::Date(DateCmp::Before, days_from_civil(2024, 1, 2)),
                false,
            ),
            (
                SearchKey::Date(DateCmp::Since, days_from_civil(2024, 1, 2)),
                true,
            ),
            (SearchKey::Not(Box::new(SearchKey::Old)), false),
            (
                SearchKey::Or(Box::new(SearchKey::Recent), Box::new(SearchKey::Larger(1))),
                true,
            ),
        ];
        for (key, want) in table {
            assert_eq!(matches(key, &c), *want, "{key:?}");
        }
    }
}
