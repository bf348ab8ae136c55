//! A stored message as IMAP FETCH sees it: `imap::mime::MimeMessage::parse` and everything the
//! session renders from it (ENVELOPE, BODY and BODYSTRUCTURE, BODY[section] in every
//! section-text form for every part, BINARY[section] and BINARY.SIZE), plus the decoders
//! SEARCH uses (`decode_transfer`, `decode_qp`) and `parse_addresses`.
//!
//! Invariants: every part's header and body ranges lie within the bytes of the message that
//! holds them; sections other than HEADER.FIELDS are never longer than the message.
#![no_main]

use imap::mime::{self, MimeMessage, Part, PartKind};
use imap::wire::SectionText;
use libfuzzer_sys::fuzz_target;

/// Parts visited per message: a deeply nested input must not make one run take long.
const MAX_PATHS: usize = 64;

/// Checks the ranges of `part` (in `bytes`) and collects the paths of it and its children.
fn walk(bytes: &[u8], part: &Part, path: &mut Vec<u32>, paths: &mut Vec<Vec<u32>>, depth: usize) {
    assert!(
        part.header.start <= part.header.end,
        "header range {:?}",
        part.header
    );
    assert!(
        part.body.start <= part.body.end,
        "body range {:?}",
        part.body
    );
    assert!(
        part.header.end <= bytes.len(),
        "header {:?} of {}",
        part.header,
        bytes.len()
    );
    assert!(
        part.body.end <= bytes.len(),
        "body {:?} of {}",
        part.body,
        bytes.len()
    );
    if paths.len() >= MAX_PATHS || depth > 100 {
        return;
    }
    paths.push(path.clone());
    match &part.kind {
        PartKind::Multipart(children) => {
            assert!(!children.is_empty(), "a multipart has at least one part");
            for (i, child) in children.iter().enumerate() {
                path.push(u32::try_from(i + 1).unwrap_or(u32::MAX));
                walk(bytes, child, path, paths, depth + 1);
                path.pop();
            }
        }
        PartKind::Message(inner) => {
            walk(&inner.bytes, &inner.root, path, paths, depth + 1);
        }
        PartKind::Leaf => {
            let _ = mime::decode_transfer(&bytes[part.header.clone()], &bytes[part.body.clone()]);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let msg = MimeMessage::parse(data.to_vec());
    assert_eq!(msg.bytes, data);

    let mut out = Vec::new();
    mime::push_envelope(&mut out, msg.header());
    out.clear();
    mime::push_body_structure(&mut out, &msg.bytes, &msg.root, true, false);
    out.clear();
    mime::push_body_structure(&mut out, &msg.bytes, &msg.root, false, false);

    let mut paths = Vec::new();
    walk(&msg.bytes, &msg.root, &mut Vec::new(), &mut paths, 0);
    // One past the last child, and a path into a leaf: both must be answered, not panic.
    if let Some(last) = paths.last() {
        let mut past = last.clone();
        past.push(1);
        paths.push(past.clone());
        past.push(2);
        paths.push(past);
    }
    paths.push(vec![0]);
    paths.push(vec![u32::MAX]);

    let texts = [
        SectionText::Full,
        SectionText::Header,
        SectionText::Text,
        SectionText::Mime,
        SectionText::HeaderFields(vec!["From".into(), "subject".into(), "X-Unknown".into()]),
        SectionText::HeaderFieldsNot(vec!["Received".into()]),
    ];
    for path in &paths {
        for text in &texts {
            if let Some(bytes) = mime::section_bytes(&msg, path, text) {
                assert!(!bytes.contains(&0), "a NUL in a literal");
                if !matches!(
                    text,
                    SectionText::HeaderFields(_) | SectionText::HeaderFieldsNot(_)
                ) {
                    assert!(
                        bytes.len() <= data.len(),
                        "section {path:?} {text:?} too long"
                    );
                }
            }
        }
        let _ = mime::binary_bytes(&msg, path);
    }

    let _ = mime::decode_qp(data);
    let _ = mime::parse_addresses(data);
    let header = msg.header();
    for name in ["From", "To", "Cc", "Content-Type"] {
        if let Some(value) = mime::header_value(header, name) {
            let _ = mime::parse_addresses(&value);
        }
    }
    for field in mime::fields(header) {
        let _ = mime::unfold(field.value);
    }
});
