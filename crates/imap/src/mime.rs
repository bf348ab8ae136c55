//! MIME structure for FETCH and SEARCH: ENVELOPE, BODY/BODYSTRUCTURE, body sections and BINARY
//! (RFC 3501 §6.4.5 and §7.4.2, RFC 3516).
//!
//! mail-parser 0.11 supplies the part tree and each part's header/body offsets. Everything a
//! client sees is then taken from the raw bytes at those offsets: header values unfolded but
//! not decoded (RFC 3501 §7.4.2: ENVELOPE strings are as in the message), Content-Type
//! parameters as written, sizes and line counts of the encoded body. An encapsulated
//! `message/rfc822` body is parsed as a message of its own, so offsets are always relative to
//! the bytes of the message a part belongs to.

use std::ops::Range;

use base64::Engine as _;

use crate::wire::{Lossy, push_nstring, push_string};
use std::fmt::Write as _;

/// Deepest nesting of encapsulated messages we descend into.
const MAX_DEPTH: usize = 8;

/// A parsed message: its bytes and its root part.
#[derive(Debug)]
pub struct MimeMessage {
    /// The message's bytes.
    pub bytes: Vec<u8>,
    /// The root part (its header is the message header).
    pub root: Part,
}

/// One MIME part.
#[derive(Debug)]
pub struct Part {
    /// The header block, blank line included, within the message's bytes.
    pub header: Range<usize>,
    /// The body, within the message's bytes.
    pub body: Range<usize>,
    /// What kind of part it is.
    pub kind: PartKind,
}

/// A part's kind.
#[derive(Debug)]
pub enum PartKind {
    /// `multipart/*` with its children.
    Multipart(Vec<Part>),
    /// `message/rfc822` with the encapsulated message.
    Message(Box<MimeMessage>),
    /// Anything else.
    Leaf,
}

/// A header field: name and raw value (after the colon, still folded).
pub struct Field<'a> {
    /// Field name as written.
    pub name: &'a [u8],
    /// The whole field, CRLF included.
    pub raw: &'a [u8],
    /// The value after the colon.
    pub value: &'a [u8],
}

/// Splits a header block into fields. Lines before the first field or without a colon are
/// skipped; continuation lines belong to the field above.
pub fn fields(header: &[u8]) -> Vec<Field<'_>> {
    let mut out: Vec<Field<'_>> = Vec::new();
    let mut start = 0;
    let mut lines = Vec::new();
    while start < header.len() {
        let end = header[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| start + p + 1);
        lines.push(start..end);
        start = end;
    }
    let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // (start, colon, end)
    let mut current: Option<(usize, usize, usize)> = None;
    for line in lines {
        let l = &header[line.clone()];
        if l == b"\r\n" || l == b"\n" {
            break;
        }
        if l.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some(c) = current.as_mut() {
                c.2 = line.end;
            }
            continue;
        }
        spans.extend(current.take());
        if let Some(colon) = l.iter().position(|&b| b == b':') {
            current = Some((line.start, line.start + colon, line.end));
        }
    }
    spans.extend(current);
    for (s, colon, e) in spans {
        out.push(Field {
            name: header[s..colon].trim_ascii_end(),
            raw: &header[s..e],
            value: &header[colon + 1..e],
        });
    }
    out
}

/// A field's value unfolded (CRLF removed), with surrounding whitespace trimmed.
pub fn unfold(value: &[u8]) -> Vec<u8> {
    let v: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    v.trim_ascii().to_vec()
}

/// The first field named `name` (case-insensitive), unfolded.
pub fn header_value(header: &[u8], name: &str) -> Option<Vec<u8>> {
    fields(header)
        .into_iter()
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| unfold(f.value))
}

impl MimeMessage {
    /// Parses `bytes` (never fails: anything is at least a one-part message).
    pub fn parse(bytes: Vec<u8>) -> MimeMessage {
        MimeMessage::parse_depth(bytes, 0)
    }

    fn parse_depth(bytes: Vec<u8>, depth: usize) -> MimeMessage {
        let root = {
            let parsed = mail_parser::MessageParser::new().parse(&bytes);
            match parsed {
                Some(m) if !m.parts.is_empty() => convert(&m, 0, &bytes, depth, 0, false),
                _ => fallback_part(&bytes),
            }
        };
        MimeMessage { bytes, root }
    }

    /// The message header block.
    pub fn header(&self) -> &[u8] {
        &self.bytes[self.root.header.clone()]
    }
}

fn fallback_part(bytes: &[u8]) -> Part {
    let split = find_header_end(bytes);
    Part {
        header: 0..split,
        body: split..bytes.len(),
        kind: PartKind::Leaf,
    }
}

/// The offset just past the blank line that ends the header (or the end).
fn find_header_end(bytes: &[u8]) -> usize {
    if bytes.starts_with(b"\r\n") {
        return 2;
    }
    if bytes.starts_with(b"\n") {
        return 1;
    }
    let mut i = 0;
    while let Some(p) = bytes[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &bytes[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return nl + 3;
        }
        if rest.starts_with(b"\n") {
            return nl + 2;
        }
        i = nl + 1;
    }
    bytes.len()
}

fn convert(
    m: &mail_parser::Message<'_>,
    idx: usize,
    bytes: &[u8],
    depth: usize,
    guard: usize,
    in_digest: bool,
) -> Part {
    let Some(p) = m.parts.get(idx) else {
        return fallback_part(bytes);
    };
    let clamp = |x: u32| usize::try_from(x).unwrap_or(usize::MAX).min(bytes.len());
    let hs = clamp(p.offset_header);
    let bs = clamp(p.offset_body).max(hs);
    let be = clamp(p.offset_end).max(bs);
    let header = hs..bs;
    let body = bs..be;
    let ct = ContentType::of(&bytes[header.clone()], in_digest);
    let digest = ct.is("multipart", "digest");
    let kind = match &p.body {
        mail_parser::PartType::Multipart(ids) if guard < 64 && !ids.is_empty() => {
            PartKind::Multipart(
                ids.iter()
                    .filter_map(|&id| usize::try_from(id).ok())
                    .filter(|&id| id != idx)
                    .map(|id| convert(m, id, bytes, depth, guard + 1, digest))
                    .collect(),
            )
        }
        // A multipart whose boundary never appears: one empty part, as Dovecot answers.
        _ if ct.ty.eq_ignore_ascii_case(b"multipart") => PartKind::Multipart(vec![Part {
            header: be..be,
            body: be..be,
            kind: PartKind::Leaf,
        }]),
        _ if ct.is_message_rfc822() && depth < MAX_DEPTH => PartKind::Message(Box::new(
            MimeMessage::parse_depth(bytes[body.clone()].to_vec(), depth + 1),
        )),
        _ => PartKind::Leaf,
    };
    Part { header, body, kind }
}

/// A Content-Type (or Content-Disposition) value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// Media type as written (`text`).
    pub ty: Vec<u8>,
    /// Subtype as written (`plain`).
    pub sub: Vec<u8>,
    /// Parameters in order, names and values as written (quotes removed).
    pub params: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the header was present.
    pub present: bool,
}

impl ContentType {
    /// The part's Content-Type; `text/plain; charset=us-ascii` when absent
    /// (`message/rfc822` in a multipart/digest, RFC 2046 §5.1.5).
    pub fn of(header: &[u8], in_digest: bool) -> ContentType {
        match header_value(header, "Content-Type") {
            Some(v) => {
                let (ty_sub, params) = parse_params(&v);
                let (ty, sub) = match ty_sub.iter().position(|&b| b == b'/') {
                    Some(i) => (
                        ty_sub[..i].trim_ascii().to_vec(),
                        ty_sub[i + 1..].trim_ascii().to_vec(),
                    ),
                    None => (Vec::new(), Vec::new()),
                };
                let mut params = params;
                // A text part without a charset is us-ascii (RFC 2045 §5.2), said explicitly.
                if ty.eq_ignore_ascii_case(b"text")
                    && !params
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case(b"charset"))
                {
                    params.push((b"charset".to_vec(), b"us-ascii".to_vec()));
                }
                ContentType {
                    ty,
                    sub,
                    params,
                    present: true,
                }
            }
            None if in_digest => ContentType {
                ty: b"message".to_vec(),
                sub: b"rfc822".to_vec(),
                params: Vec::new(),
                present: false,
            },
            None => ContentType {
                ty: b"text".to_vec(),
                sub: b"plain".to_vec(),
                params: vec![(b"charset".to_vec(), b"us-ascii".to_vec())],
                present: false,
            },
        }
    }

    fn is(&self, ty: &str, sub: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty.as_bytes()) && self.sub.eq_ignore_ascii_case(sub.as_bytes())
    }

    /// `message/rfc822` (or `message/global`, RFC 6532).
    pub fn is_message_rfc822(&self) -> bool {
        self.is("message", "rfc822") || self.is("message", "global")
    }

    fn is_text(&self) -> bool {
        self.ty.eq_ignore_ascii_case(b"text")
    }
}

/// Parameters as (name, value) pairs, as written.
type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// Skips a comment starting at `i` (which is `(`); returns the index after it.
fn skip_comment(v: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Parses `value *(";" name "=" value)` into the leading token and the parameters.
fn parse_params(v: &[u8]) -> (Vec<u8>, Params) {
    let mut i = 0;
    let mut first = Vec::new();
    while i < v.len() && v[i] != b';' {
        if v[i] == b'(' {
            i = skip_comment(v, i);
            continue;
        }
        if !v[i].is_ascii_whitespace() {
            first.push(v[i]);
        }
        i += 1;
    }
    let mut params = Vec::new();
    while i < v.len() {
        // at ';'
        i += 1;
        while i < v.len() && (v[i].is_ascii_whitespace() || v[i] == b';') {
            i += 1;
        }
        let mut name = Vec::new();
        while i < v.len() && v[i] != b'=' && v[i] != b';' {
            if v[i] == b'(' {
                i = skip_comment(v, i);
                continue;
            }
            if !v[i].is_ascii_whitespace() {
                name.push(v[i]);
            }
            i += 1;
        }
        if i >= v.len() || v[i] == b';' {
            continue;
        }
        i += 1; // '='
        while i < v.len() && v[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < v.len() && v[i] == b'"' {
            i += 1;
            while i < v.len() && v[i] != b'"' {
                if v[i] == b'\\' && i + 1 < v.len() {
                    i += 1;
                }
                value.push(v[i]);
                i += 1;
            }
            i += 1;
            while i < v.len() && v[i] != b';' {
                i += 1;
            }
        } else {
            while i < v.len() && v[i] != b';' {
                if v[i] == b'(' {
                    i = skip_comment(v, i);
                    continue;
                }
                value.push(v[i]);
                i += 1;
            }
            let t = value.trim_ascii().to_vec();
            value = t;
        }
        if !name.is_empty() {
            params.push((name, value));
        }
    }
    (first, params)
}

fn push_params(out: &mut Vec<u8>, params: &[(Vec<u8>, Vec<u8>)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (n, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        push_string(out, n);
        out.push(b' ');
        push_string(out, v);
    }
    out.push(b')');
}

fn count_lines(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b'\n').count()
}

/// Appends BODYSTRUCTURE (`extended`) or BODY of `part` in `msg_bytes`.
pub fn push_body_structure(
    out: &mut Vec<u8>,
    bytes: &[u8],
    part: &Part,
    extended: bool,
    in_digest: bool,
) {
    let header = &bytes[part.header.clone()];
    let ct = ContentType::of(header, in_digest);
    out.push(b'(');
    match &part.kind {
        PartKind::Multipart(children) => {
            let digest = ct.is("multipart", "digest");
            if children.is_empty() {
                // RFC 3501 requires at least one body; describe an empty text part.
                out.extend_from_slice(
                    b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)",
                );
            }
            for child in children {
                push_body_structure(out, bytes, child, extended, digest);
            }
            out.push(b' ');
            push_string(out, &ct.sub);
            if extended {
                out.push(b' ');
                push_params(out, &ct.params);
                push_ext(out, header);
            }
        }
        kind => {
            push_string(out, &ct.ty);
            out.push(b' ');
            push_string(out, &ct.sub);
            out.push(b' ');
            push_params(out, &ct.params);
            out.push(b' ');
            push_nstring(out, header_value(header, "Content-ID").as_deref());
            out.push(b' ');
            push_nstring(out, header_value(header, "Content-Description").as_deref());
            out.push(b' ');
            // CLIENTS.md §F.16: never NIL for the encoding.
            let cte = header_value(header, "Content-Transfer-Encoding")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| b"7bit".to_vec());
            push_string(out, &cte);
            let body = &bytes[part.body.clone()];
            let _ = write!(Lossy(out), " {}", body.len());
            if let PartKind::Message(inner) = kind {
                out.push(b' ');
                push_envelope(out, inner.header());
                out.push(b' ');
                push_body_structure(out, &inner.bytes, &inner.root, extended, false);
                let _ = write!(Lossy(out), " {}", count_lines(body));
            } else if ct.is_text() {
                let _ = write!(Lossy(out), " {}", count_lines(body));
            }
            if extended {
                out.push(b' ');
                push_nstring(out, header_value(header, "Content-MD5").as_deref());
                push_ext(out, header);
            }
        }
    }
    out.push(b')');
}

/// ` disposition language location`
fn push_ext(out: &mut Vec<u8>, header: &[u8]) {
    out.push(b' ');
    match header_value(header, "Content-Disposition") {
        Some(v) if !v.is_empty() => {
            let (d, params) = parse_params(&v);
            out.push(b'(');
            push_string(out, &d);
            out.push(b' ');
            push_params(out, &params);
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match header_value(header, "Content-Language") {
        Some(v) if !v.is_empty() => {
            let langs: Vec<&[u8]> = v
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|l| !l.is_empty())
                .collect();
            if langs.len() == 1 {
                push_string(out, langs[0]);
            } else {
                out.push(b'(');
                for (i, l) in langs.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    push_string(out, l);
                }
                out.push(b')');
            }
        }
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    push_nstring(out, header_value(header, "Content-Location").as_deref());
}

// ------------------------------------------------------------------ envelope

/// Appends the ENVELOPE of a message header block (RFC 3501 §7.4.2).
pub fn push_envelope(out: &mut Vec<u8>, header: &[u8]) {
    let get = |name: &str| header_value(header, name);
    out.push(b'(');
    push_nstring(out, get("Date").filter(|v| !v.is_empty()).as_deref());
    out.push(b' ');
    push_nstring(out, get("Subject").filter(|v| !v.is_empty()).as_deref());
    let from = get("From");
    for (name, fallback) in [
        ("From", None),
        ("Sender", from.as_ref()),
        ("Reply-To", from.as_ref()),
        ("To", None),
        ("Cc", None),
        ("Bcc", None),
    ] {
        out.push(b' ');
        let value = get(name);
        let value = match (&value, fallback) {
            (Some(v), _) if !parse_addresses(v).is_empty() => value.as_ref(),
            (_, Some(f)) => Some(f),
            _ => value.as_ref(),
        };
        push_address_list(out, value.map(|v| parse_addresses(v)).unwrap_or_default());
    }
    out.push(b' ');
    push_nstring(out, get("In-Reply-To").filter(|v| !v.is_empty()).as_deref());
    out.push(b' ');
    push_nstring(out, get("Message-ID").filter(|v| !v.is_empty()).as_deref());
    out.push(b')');
}

/// One ENVELOPE address: (name adl mailbox host); group markers have host NIL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvAddress {
    /// Display name.
    pub name: Option<Vec<u8>>,
    /// Source route.
    pub adl: Option<Vec<u8>>,
    /// Local part, or group name.
    pub mailbox: Option<Vec<u8>>,
    /// Domain; None for group markers.
    pub host: Option<Vec<u8>>,
}

fn push_address_list(out: &mut Vec<u8>, list: Vec<EnvAddress>) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        push_nstring(out, a.name.as_deref());
        out.push(b' ');
        push_nstring(out, a.adl.as_deref());
        out.push(b' ');
        push_nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        push_nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(Vec<u8>, bool), // text, was quoted
    Special(u8),
    Comment(Vec<u8>),
    DomainLit(Vec<u8>),
}

fn tokenize(v: &[u8]) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => {
                let end = skip_comment(v, i);
                let inner = &v[i + 1..end.saturating_sub(1).max(i + 1)];
                toks.push(Tok::Comment(inner.to_vec()));
                i = end;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    if v[i] == b'\\' && i + 1 < v.len() {
                        i += 1;
                    }
                    s.push(v[i]);
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Word(s, true));
            }
            b'[' => {
                let end = v[i..]
                    .iter()
                    .position(|&c| c == b']')
                    .map_or(v.len(), |p| i + p + 1);
                toks.push(Tok::DomainLit(v[i..end].to_vec()));
                i = end;
            }
            b'<' | b'>' | b',' | b':' | b';' | b'@' => {
                toks.push(Tok::Special(b));
                i += 1;
            }
            _ => {
                let start = i;
                while i < v.len() && !b" \t\r\n()\"[<>,:;@".contains(&v[i]) {
                    i += 1;
                }
                toks.push(Tok::Word(v[start..i].to_vec(), false));
            }
        }
    }
    toks
}

struct AddrParser {
    toks: Vec<Tok>,
    pos: usize,
}

impl AddrParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn special(&self) -> Option<u8> {
        match self.peek() {
            Some(Tok::Special(c)) => Some(*c),
            _ => None,
        }
    }

    /// Words until a special; comments collected apart.
    fn phrase(&mut self, comments: &mut Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut words = Vec::new();
        while let Some(t) = self.peek() {
            match t {
                Tok::Word(w, _) => words.push(w.clone()),
                Tok::DomainLit(w) => words.push(w.clone()),
                Tok::Comment(c) => comments.push(c.clone()),
                Tok::Special(_) => break,
            }
            self.pos += 1;
        }
        words
    }

    /// local "@" domain, starting at a word; stops at `,`, `;`, `>` or end.
    fn addr_spec(
        &mut self,
        stop_angle: bool,
        comments: &mut Vec<Vec<u8>>,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut local = Vec::new();
        let mut domain: Option<Vec<u8>> = None;
        while let Some(t) = self.peek().cloned() {
            match t {
                Tok::Special(b'@') if domain.is_none() => domain = Some(Vec::new()),
                Tok::Special(b'>') if stop_angle => break,
                Tok::Special(b',' | b';') if !stop_angle => break,
                Tok::Special(b'<') if !stop_angle => break,
                Tok::Special(c) => {
                    if let Some(d) = domain.as_mut() {
                        d.push(c);
                    } else {
                        local.push(c);
                    }
                }
                Tok::Word(w, quoted) => match domain.as_mut() {
                    Some(d) => d.extend_from_slice(&w),
                    None => {
                        if quoted {
                            local.push(b'"');
                            local.extend_from_slice(&w);
                            local.push(b'"');
                        } else {
                            local.extend_from_slice(&w);
                        }
                    }
                },
                Tok::DomainLit(w) => match domain.as_mut() {
                    Some(d) => d.extend_from_slice(&w),
                    None => local.extend_from_slice(&w),
                },
                Tok::Comment(c) => comments.push(c),
            }
            self.pos += 1;
        }
        (local, domain)
    }

    fn mailbox(&mut self, out: &mut Vec<EnvAddress>, in_group: bool) {
        let start = self.pos;
        let mut comments = Vec::new();
        let words = self.phrase(&mut comments);
        match self.special() {
            Some(b'<') => {
                self.pos += 1;
                // Optional route: @a,@b:
                let mut adl = None;
                if self.special() == Some(b'@') {
                    let rs = self.pos;
                    while let Some(t) = self.peek() {
                        if matches!(t, Tok::Special(b':') | Tok::Special(b'>')) {
                            break;
                        }
                        self.pos += 1;
                    }
                    if self.special() == Some(b':') {
                        let mut r = Vec::new();
                        for t in &self.toks[rs..self.pos] {
                            match t {
                                Tok::Word(w, _) | Tok::DomainLit(w) => r.extend_from_slice(w),
                                Tok::Special(c) => r.push(*c),
                                Tok::Comment(_) => {}
                            }
                        }
                        adl = Some(r);
                        self.pos += 1;
                    } else {
                        self.pos = rs;
                    }
                }
                let mut c2 = Vec::new();
                let (local, domain) = self.addr_spec(true, &mut c2);
                if self.special() == Some(b'>') {
                    self.pos += 1;
                }
                // trailing comments / junk up to the separator
                let mut trailing = Vec::new();
                let _ = self.phrase(&mut trailing);
                let name = if words.is_empty() {
                    None
                } else {
                    Some(words.join(&b' '))
                };
                out.push(make_addr(name, adl, local, domain));
            }
            _ => {
                self.pos = start;
                let mut comments = Vec::new();
                let (local, domain) = self.addr_spec(false, &mut comments);
                if local.is_empty() && domain.is_none() && comments.is_empty() {
                    return;
                }
                let name = comments
                    .last()
                    .map(|c| c.trim_ascii().to_vec())
                    .filter(|c| !c.is_empty());
                if local.is_empty() && domain.is_none() {
                    return;
                }
                let _ = in_group;
                out.push(make_addr(name, None, local, domain));
            }
        }
    }

    fn list(&mut self) -> Vec<EnvAddress> {
        let mut out = Vec::new();
        while self.pos < self.toks.len() {
            if matches!(self.special(), Some(b',' | b';' | b'>')) {
                self.pos += 1;
                continue;
            }
            // group?  phrase ":"
            let save = self.pos;
            let mut comments = Vec::new();
            let words = self.phrase(&mut comments);
            if self.special() == Some(b':') && !words.is_empty() {
                self.pos += 1;
                out.push(EnvAddress {
                    name: None,
                    adl: None,
                    mailbox: Some(words.join(&b' ')),
                    host: None,
                });
                loop {
                    match self.special() {
                        Some(b';') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b',') => {
                            self.pos += 1;
                            continue;
                        }
                        _ => {}
                    }
                    if self.pos >= self.toks.len() {
                        break;
                    }
                    let before = self.pos;
                    self.mailbox(&mut out, true);
                    if self.pos == before {
                        self.pos += 1;
                    }
                }
                out.push(EnvAddress {
                    name: None,
                    adl: None,
                    mailbox: None,
                    host: None,
                });
                continue;
            }
            self.pos = save;
            let before = self.pos;
            self.mailbox(&mut out, false);
            if self.pos == before {
                self.pos += 1;
            }
        }
        out
    }
}

fn make_addr(
    name: Option<Vec<u8>>,
    adl: Option<Vec<u8>>,
    local: Vec<u8>,
    domain: Option<Vec<u8>>,
) -> EnvAddress {
    // Dovecot's placeholders for missing parts (imap-oracle README).
    let mailbox = if local.is_empty() {
        b"MISSING_MAILBOX".to_vec()
    } else {
        local
    };
    let host = match domain {
        Some(d) if !d.is_empty() => d,
        _ => b"MISSING_DOMAIN".to_vec(),
    };
    EnvAddress {
        name,
        adl,
        mailbox: Some(mailbox),
        host: Some(host),
    }
}

/// Parses an address-list header value into ENVELOPE addresses.
pub fn parse_addresses(value: &[u8]) -> Vec<EnvAddress> {
    let mut p = AddrParser {
        toks: tokenize(value),
        pos: 0,
    };
    p.list()
}

// ------------------------------------------------------------------ sections

/// A resolved part: the bytes of the message it lives in and the part.
pub struct Node<'a> {
    /// Bytes of the containing message.
    pub bytes: &'a [u8],
    /// The part.
    pub part: &'a Part,
}

impl MimeMessage {
    /// Resolves a part path (RFC 3501 §6.4.5). Empty path: the root.
    pub fn resolve(&self, path: &[u32]) -> Option<Node<'_>> {
        let mut bytes: &[u8] = &self.bytes;
        let mut part: &Part = &self.root;
        let mut in_message = true; // the current node stands for a whole message
        for &n in path {
            let idx = usize::try_from(n).ok()?.checked_sub(1)?;
            // Descend from a message/rfc822 part into its message.
            if !in_message && let PartKind::Message(inner) = &part.kind {
                bytes = &inner.bytes;
                part = &inner.root;
                in_message = true;
            }
            match &part.kind {
                PartKind::Multipart(children) => {
                    part = children.get(idx)?;
                }
                _ if in_message && idx == 0 => {}
                _ => return None,
            }
            in_message = false;
        }
        Some(Node { bytes, part })
    }
}

/// The bytes of a BODY[section], or None when the section does not exist.
pub fn section_bytes(
    msg: &MimeMessage,
    path: &[u32],
    text: &crate::wire::SectionText,
) -> Option<Vec<u8>> {
    use crate::wire::SectionText as T;
    let node = msg.resolve(path)?;
    // The header/text of the message the section refers to.
    let message_of = |node: &Node<'_>| -> Option<(Vec<u8>, Vec<u8>)> {
        if path.is_empty() {
            return Some((
                msg.bytes[msg.root.header.clone()].to_vec(),
                msg.bytes[msg.root.body.clone()].to_vec(),
            ));
        }
        match &node.part.kind {
            PartKind::Message(inner) => Some((
                inner.bytes[inner.root.header.clone()].to_vec(),
                inner.bytes[inner.root.body.clone()].to_vec(),
            )),
            _ => None,
        }
    };
    Some(match text {
        T::Full if path.is_empty() => msg.bytes.clone(),
        T::Full => node.bytes[node.part.body.clone()].to_vec(),
        T::Mime => node.bytes[node.part.header.clone()].to_vec(),
        T::Header => message_of(&node)?.0,
        T::Text => message_of(&node)?.1,
        T::HeaderFields(names) | T::HeaderFieldsNot(names) => {
            let header = message_of(&node)?.0;
            let not = matches!(text, T::HeaderFieldsNot(_));
            let mut out = Vec::new();
            for f in fields(&header) {
                let hit = names
                    .iter()
                    .any(|n| f.name.eq_ignore_ascii_case(n.as_bytes()));
                if hit != not {
                    out.extend_from_slice(f.raw);
                    if !f.raw.ends_with(b"\n") {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
            out
        }
    })
}

/// Why BINARY could not decode a part (RFC 3516 §4.3 response codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryError {
    /// `[UNKNOWN-CTE]`
    UnknownCte,
    /// `[PARSE]`: the encoded data is broken.
    Broken,
    /// No such part.
    NoPart,
}

/// The decoded content of a part for BINARY[path].
pub fn binary_bytes(msg: &MimeMessage, path: &[u32]) -> Result<Vec<u8>, BinaryError> {
    if path.is_empty() {
        return Ok(msg.bytes.clone());
    }
    let node = msg.resolve(path).ok_or(BinaryError::NoPart)?;
    let body = &node.bytes[node.part.body.clone()];
    if let PartKind::Multipart(_) = node.part.kind {
        return Ok(body.to_vec());
    }
    let header = &node.bytes[node.part.header.clone()];
    let cte = header_value(header, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    match cte.as_slice() {
        b"" | b"7bit" | b"8bit" | b"binary" => Ok(body.to_vec()),
        b"base64" => decode_base64(body).ok_or(BinaryError::Broken),
        b"quoted-printable" => Ok(decode_qp(body)),
        _ => Err(BinaryError::UnknownCte),
    }
}

fn decode_base64(body: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    lenient.decode(&clean).ok()
}

/// Quoted-printable (RFC 2045 §6.7), leniently: a bad escape is kept as is.
pub fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < body.len() {
        let b = body[i];
        if b == b'=' {
            if body[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if body[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (
                body.get(i + 1).and_then(|&c| hex(c)),
                body.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
            // soft line break with trailing whitespace
            let rest = &body[i + 1..];
            let ws = rest
                .iter()
                .take_while(|&&c| c == b' ' || c == b'\t')
                .count();
            if rest[ws..].starts_with(b"\r\n") {
                i += 1 + ws + 2;
                continue;
            }
            out.push(b);
            i += 1;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(h: &str) -> String {
        let mut out = Vec::new();
        push_envelope(&mut out, h.as_bytes());
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn envelope_table() {
        let table = [
            (
                "From: Barry Warsaw <barry@python.org>\r\nSubject: Lyrics\r\n\r\n",
                "(NIL \"Lyrics\" ((\"Barry Warsaw\" NIL \"barry\" \"python.org\")) ((\"Barry Warsaw\" NIL \"barry\" \"python.org\")) ((\"Barry Warsaw\" NIL \"barry\" \"python.org\")) NIL NIL NIL NIL NIL)",
            ),
            (
                "To: undisclosed-recipients:;\r\n\r\n",
                "(NIL NIL NIL NIL NIL ((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL)",
            ),
            (
                "To: a@b.c, \"Q, R\" <q@r.s>\r\nCc: x@y (Comment Name)\r\n\r\n",
                "(NIL NIL NIL NIL NIL ((NIL NIL \"a\" \"b.c\")(\"Q, R\" NIL \"q\" \"r.s\")) ((\"Comment Name\" NIL \"x\" \"y\")) NIL NIL NIL)",
            ),
        ];
        for (h, want) in table {
            assert_eq!(env(h), want, "{h}");
        }
    }

    #[test]
    fn sections_of_a_multipart() {
        let raw = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\npre\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b--\r\n";
        let m = MimeMessage::parse(raw.to_vec());
        use crate::wire::SectionText as T;
        assert_eq!(
            section_bytes(&m, &[1], &T::Full).as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            section_bytes(&m, &[1], &T::Mime).as_deref(),
            Some(&b"Content-Type: text/plain\r\n\r\n"[..])
        );
        assert_eq!(
            section_bytes(&m, &[2], &T::Header).as_deref(),
            Some(&b"Subject: inner\r\n\r\n"[..])
        );
        assert_eq!(
            section_bytes(&m, &[2, 1], &T::Full).as_deref(),
            Some(&b"inner body"[..])
        );
        assert_eq!(
            section_bytes(&m, &[], &T::HeaderFields(vec!["subject".into()])).as_deref(),
            Some(&b"Subject: x\r\n\r\n"[..])
        );
        assert!(section_bytes(&m, &[3], &T::Full).is_none());
        let mut bs = Vec::new();
        push_body_structure(&mut bs, &m.bytes, &m.root, true, false);
        let bs = String::from_utf8(bs).expect("utf8");
        assert!(bs.starts_with("((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 5 0 NIL NIL NIL NIL)(\"message\" \"rfc822\""), "{bs}");
        assert!(
            bs.ends_with(" \"mixed\" (\"boundary\" \"b\") NIL NIL NIL)"),
            "{bs}"
        );
    }

    #[test]
    fn quoted_printable() {
        assert_eq!(decode_qp(b"a=3Db=\r\nc=ZZ"), b"a=bc=ZZ");
    }
}
