//! MIME structure for FETCH and SEARCH: ENVELOPE, BODY/BODYSTRUCTURE, body sections and BINARY
//! (RFC 3501 §6.4.5 and §7.4.2, RFC 2045/2046, RFC 2231, RFC 3516).
//!
//! The part tree is found by our own boundary scanner rather than mail-parser's, because the
//! answers clients compare against are Dovecot's (the imap-oracle corpus), and malformed MIME
//! is where parsers disagree. The scanner follows RFC 2046 §5.1.1 the way Dovecot 2.3 reads it:
//!
//! - A boundary line is `--` + a boundary of any enclosing multipart still open; only the line's
//!   *prefix* has to match (RFC 2046 §5.1.1 allows trailing junk). When several open boundaries
//!   match, the longest wins, and among equal ones the innermost.
//! - The CRLF before a boundary line belongs to the boundary, not to the part above it.
//! - A boundary of an outer multipart closes every part nested inside it, headers included: a
//!   part's header stops at such a line even without a blank line.
//! - After a closing `--boundary--`, that boundary is forgotten: text after it (even lines that
//!   look like further parts) is epilogue of the multipart.
//! - A multipart whose Content-Type has no usable `boundary` (or whose header ends without a
//!   blank line) has no children; it is reported as one empty text/plain part.
//! - A part without Content-Type is text/plain, or message/rfc822 inside multipart/digest
//!   (RFC 2046 §5.1.5). Content-* fields only count in a MIME part: one with MIME-Version or a
//!   Content-Type field, or any child of a multipart.
//!
//! Everything a client sees is then taken from the raw bytes: header values unfolded but not
//! decoded (RFC 3501 §7.4.2: ENVELOPE strings are as in the message), parameters as written
//! (RFC 2231 continuations are joined, not decoded), sizes and line counts of the encoded body.
//! An encapsulated `message/rfc822` body is kept as a message of its own, so offsets are
//! always relative to the bytes of the message a part belongs to.

use std::ops::Range;

use base64::Engine as _;

use crate::wire::{Lossy, push_nstring, push_string};
use std::fmt::Write as _;

/// Longest boundary we keep (RFC 2046 §5.1.1 allows 70; longer ones are truncated).
const BOUNDARY_MAX: usize = 80;
/// Longest boundary line we look at when it has no line end.
const BOUNDARY_LINE_MAX: usize = BOUNDARY_MAX + 4;
/// Most parts in one message; further boundaries are treated as text.
const MAX_PARTS: usize = 10_000;
/// Deepest nesting of multiparts and encapsulated messages; deeper ones are leaves.
const MAX_DEPTH: usize = 100;

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
    /// The header block (blank line included when there is one), within the message's bytes.
    pub header: Range<usize>,
    /// The body, within the message's bytes.
    pub body: Range<usize>,
    /// What kind of part it is.
    pub kind: PartKind,
    /// Whether the part is text for SEARCH BODY/TEXT (text/*, message/*, or no Content-Type).
    pub searchable: bool,
    /// The Content-* data of the part, as BODYSTRUCTURE reports it.
    pub info: PartInfo,
}

/// A part's kind.
#[derive(Debug)]
pub enum PartKind {
    /// `multipart/*` with its children (at least one).
    Multipart(Vec<Part>),
    /// `message/rfc822` with the encapsulated message.
    Message(Box<MimeMessage>),
    /// Anything else.
    Leaf,
}

/// MIME parameters as (attribute, value) pairs, as written.
pub type Params = Vec<Param>;

/// One MIME parameter: attribute and value, as written.
pub type Param = (Vec<u8>, Vec<u8>);

/// The Content-* fields of a part (RFC 2045 §5, §6; RFC 2183; RFC 3066; RFC 2557), the first
/// of each kind, as BODYSTRUCTURE reports them. All `None` for a part that is not MIME.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Type and subtype as written; both empty when the field does not parse.
    pub content_type: Option<(Vec<u8>, Vec<u8>)>,
    /// Content-Type parameters (RFC 2231 continuations joined).
    pub params: Params,
    /// Content-ID.
    pub id: Option<Vec<u8>>,
    /// Content-Description.
    pub description: Option<Vec<u8>>,
    /// Content-Transfer-Encoding token.
    pub encoding: Option<Vec<u8>>,
    /// Content-MD5.
    pub md5: Option<Vec<u8>>,
    /// Content-Disposition value and parameters.
    pub disposition: Option<(Vec<u8>, Params)>,
    /// Content-Language tags.
    pub language: Option<Vec<Vec<u8>>>,
    /// Content-Location.
    pub location: Option<Vec<u8>>,
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
    Fields::new(header).collect()
}

/// The fields of a header block one at a time, as [`fields`] lists them.
struct Fields<'a> {
    header: &'a [u8],
    /// Where the next line starts.
    start: usize,
    /// The field being read: (start, colon, end).
    current: Option<(usize, usize, usize)>,
    /// The empty line (or the end) was reached.
    done: bool,
}

impl<'a> Fields<'a> {
    fn new(header: &'a [u8]) -> Self {
        Fields {
            header,
            start: 0,
            current: None,
            done: false,
        }
    }

    fn field(&self, (s, colon, e): (usize, usize, usize)) -> Field<'a> {
        let header = self.header;
        Field {
            name: header[s..colon].trim_ascii_end(),
            raw: &header[s..e],
            value: &header[colon + 1..e],
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        let header = self.header;
        while !self.done && self.start < header.len() {
            let start = self.start;
            let end =
                memchr::memchr(b'\n', &header[start..]).map_or(header.len(), |p| start + p + 1);
            let l = &header[start..end];
            if l == b"\r\n" || l == b"\n" {
                self.done = true;
                break;
            }
            self.start = end;
            if l.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                if let Some(c) = self.current.as_mut() {
                    c.2 = end;
                }
            } else {
                let next = memchr::memchr(b':', l).map(|colon| (start, start + colon, end));
                if let Some(done) = std::mem::replace(&mut self.current, next) {
                    return Some(self.field(done));
                }
            }
        }
        self.done = true;
        self.current.take().map(|c| self.field(c))
    }
}

/// Where a message's header block ends (its empty line included), as [`MimeMessage::parse`]
/// ends the root part's header; `None` when `bytes` has no empty line (the whole message is
/// header, or `bytes` is only the start of a message).
pub fn header_end(bytes: &[u8]) -> Option<usize> {
    let mut p = 0;
    while p < bytes.len() {
        let le = line_end(bytes, p);
        let line = &bytes[p..le];
        if line == b"\n" || line == b"\r\n" {
            return Some(le);
        }
        p = le;
    }
    None
}

/// A field's value on one line: line breaks removed, a TAB that starts a continuation line
/// turned into a space, leading whitespace dropped (trailing whitespace is kept, as Dovecot
/// keeps it).
pub fn unfold(value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\r' if value.get(i + 1) == Some(&b'\n') => {}
            b'\n' => {
                if value.get(i + 1) == Some(&b'\t') {
                    v.push(b' ');
                    i += 1;
                }
            }
            c => v.push(c),
        }
        i += 1;
    }
    let lead = v.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    v.drain(..lead);
    while v.last() == Some(&b'\r') {
        v.pop();
    }
    v
}

/// The raw values of every field called `name` (case-insensitive), in order: what
/// [`fields`] gives for that name, without collecting the other fields (SEARCH runs this
/// over every message of a mailbox).
pub fn field_values<'a>(header: &'a [u8], name: &str) -> Vec<&'a [u8]> {
    Fields::new(header)
        .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value)
        .collect()
}

/// The first field named `name` (case-insensitive), unfolded.
pub fn header_value(header: &[u8], name: &str) -> Option<Vec<u8>> {
    fields(header)
        .into_iter()
        .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| unfold(f.value))
}

// ------------------------------------------------------------------ part scanner

/// A part while scanning: absolute offsets in the outermost message.
struct ScanNode {
    parent: Option<usize>,
    start: usize,
    header_end: usize,
    body_start: usize,
    end: usize,
    children: Vec<usize>,
    multipart: bool,
    digest: bool,
    rfc822: bool,
    /// MESSAGE_PART_FLAG_TEXT in Dovecot's terms: text/*, or no Content-Type.
    text: bool,
    is_mime: bool,
    depth: usize,
}

impl ScanNode {
    fn new(parent: Option<usize>, start: usize, is_mime: bool, depth: usize) -> ScanNode {
        ScanNode {
            parent,
            start,
            header_end: start,
            body_start: start,
            end: start,
            children: Vec::new(),
            multipart: false,
            digest: false,
            rfc822: false,
            text: false,
            is_mime,
            depth,
        }
    }
}

/// An open multipart boundary: its text and the multipart that owns it.
struct Bound {
    text: Vec<u8>,
    owner: usize,
}

/// The offset just past the line that starts at `p`.
fn line_end(b: &[u8], p: usize) -> usize {
    memchr::memchr(b'\n', &b[p..]).map_or(b.len(), |i| p + i + 1)
}

/// Length of the line break that ends just before `p` (which follows a `\n`).
fn newline_before(b: &[u8], p: usize) -> usize {
    if p >= 2 && b[p - 2] == b'\r' { 2 } else { 1 }
}

/// Whether the line at `p` is a boundary line of an open boundary (RFC 2046 §5.1.1): returns
/// the boundary's index in `bounds` and whether it is the closing `--boundary--`.
fn boundary_at(b: &[u8], p: usize, bounds: &[Bound]) -> Option<(usize, bool)> {
    let data = b[p..].strip_prefix(b"--")?;
    let (find, trailing_dashes) = match data.iter().position(|&c| c == b'\n') {
        Some(mut n) => {
            if n > 0 && data[n - 1] == b'\r' {
                n -= 1;
            }
            (n, n > 2 && data[n - 2..n] == *b"--")
        }
        None => (data.len().min(BOUNDARY_LINE_MAX), false),
    };
    // Longest matching prefix; among equal ones the innermost. "--foo--" is an exact match
    // for "foo" (its closing line) as much as "--foo" is.
    let mut best: Option<usize> = None;
    for (i, bd) in bounds.iter().enumerate().rev() {
        let len = bd.text.len();
        if len <= find
            && data.starts_with(&bd.text)
            && best.is_none_or(|j| bounds[j].text.len() < len)
        {
            best = Some(i);
            if len == find || (trailing_dashes && len + 2 == find) {
                break;
            }
        }
    }
    let i = best?;
    let len = bounds[i].text.len();
    Some((i, data.get(len..len + 2) == Some(b"--")))
}

/// The part-relevant facts of one header block.
struct HeaderFacts {
    mime_version: bool,
    content_type: Option<Vec<u8>>,
}

fn header_facts(header: &[u8]) -> HeaderFacts {
    let mut facts = HeaderFacts {
        mime_version: false,
        content_type: None,
    };
    for f in fields(header) {
        if f.name.eq_ignore_ascii_case(b"MIME-Version") {
            facts.mime_version = true;
        } else if f.name.eq_ignore_ascii_case(b"Content-Type") && facts.content_type.is_none() {
            facts.content_type = Some(unfold(f.value));
        }
    }
    facts
}

/// Finds the part tree of `b`.
fn scan(b: &[u8]) -> Vec<ScanNode> {
    enum State {
        Header,
        Body,
    }
    let mut nodes = vec![ScanNode::new(None, 0, false, 0)];
    let mut bounds: Vec<Bound> = Vec::new();
    let mut cur = 0;
    let mut pos = 0;
    let mut state = State::Header;
    let finish_all = |nodes: &mut Vec<ScanNode>, mut cur: usize, end: usize| {
        loop {
            nodes[cur].end = end;
            match nodes[cur].parent {
                Some(p) => cur = p,
                None => break,
            }
        }
    };
    loop {
        match state {
            State::Header => {
                let start = pos;
                let mut p = pos;
                let mut eoh = false;
                let mut cut = false;
                while p < b.len() {
                    if !bounds.is_empty()
                        && nodes.len() < MAX_PARTS
                        && let Some((i, _)) = boundary_at(b, p, &bounds)
                        && bounds[i].owner != cur
                    {
                        cut = true;
                        break;
                    }
                    let le = line_end(b, p);
                    let line = &b[p..le];
                    p = le;
                    if line == b"\n" || line == b"\r\n" {
                        eoh = true;
                        break;
                    }
                }
                // A header cut by a boundary: its last line break belongs to the boundary.
                let header_end = if cut && p > start {
                    p - newline_before(b, p)
                } else {
                    p
                };
                let facts = header_facts(&b[start..header_end]);
                let depth = nodes[cur].depth;
                let parent_digest = nodes[cur].parent.is_some_and(|q| nodes[q].digest);
                let node = &mut nodes[cur];
                node.header_end = header_end;
                node.body_start = p;
                node.is_mime |= facts.mime_version || facts.content_type.is_some();
                let mut boundary = None;
                match &facts.content_type {
                    Some(v) => {
                        let mut parser = Rfc822::new(v);
                        let (ty, sub, ok) = parser.content_type();
                        if ty.eq_ignore_ascii_case(b"message")
                            && sub.eq_ignore_ascii_case(b"rfc822")
                        {
                            node.rfc822 = true;
                        } else if ty.eq_ignore_ascii_case(b"text") {
                            node.text = true;
                        } else if ty.eq_ignore_ascii_case(b"multipart") && ok.is_some() {
                            node.multipart = true;
                            node.digest = sub.eq_ignore_ascii_case(b"digest");
                            if ok == Some(true) {
                                boundary = rfc2231_params(&mut parser)
                                    .into_iter()
                                    .find(|(n, _)| n.eq_ignore_ascii_case(b"boundary"))
                                    .map(|(_, mut v)| {
                                        v.truncate(BOUNDARY_MAX);
                                        v
                                    });
                            }
                        }
                    }
                    None if parent_digest => node.rfc822 = true,
                    None => node.text = true,
                }
                if depth >= MAX_DEPTH {
                    node.rfc822 = false;
                    if node.multipart {
                        boundary = None;
                    }
                }
                pos = p;
                if node.multipart
                    && eoh
                    && let Some(text) = boundary
                {
                    bounds.push(Bound { text, owner: cur });
                    state = State::Body;
                } else if node.rfc822 {
                    let child = nodes.len();
                    nodes.push(ScanNode::new(Some(cur), p, false, depth + 1));
                    nodes[cur].children.push(child);
                    cur = child;
                    state = State::Header;
                } else {
                    state = State::Body;
                }
            }
            State::Body => {
                let scan_start = pos;
                let mut p = pos;
                loop {
                    if bounds.is_empty() || nodes.len() >= MAX_PARTS || p >= b.len() {
                        finish_all(&mut nodes, cur, b.len());
                        return nodes;
                    }
                    if let Some((i, closing)) = boundary_at(b, p, &bounds) {
                        let end = if p == scan_start {
                            p
                        } else {
                            p - newline_before(b, p)
                        };
                        let owner = bounds[i].owner;
                        while cur != owner {
                            nodes[cur].end = end;
                            match nodes[cur].parent {
                                Some(q) => cur = q,
                                None => break,
                            }
                        }
                        bounds.truncate(if closing { i } else { i + 1 });
                        let le = line_end(b, p);
                        if b[le - 1] != b'\n' {
                            finish_all(&mut nodes, cur, b.len());
                            return nodes;
                        }
                        pos = le;
                        if bounds.last().is_some_and(|x| x.owner == cur) {
                            let child = nodes.len();
                            let depth = nodes[cur].depth + 1;
                            nodes.push(ScanNode::new(Some(cur), pos, true, depth));
                            nodes[cur].children.push(child);
                            cur = child;
                            state = State::Header;
                        } else {
                            state = State::Body; // the epilogue
                        }
                        break;
                    }
                    p = line_end(b, p);
                }
            }
        }
    }
}

/// Builds the [`Part`] for node `idx`, with offsets relative to `base`.
fn build(b: &[u8], nodes: &[ScanNode], idx: usize, base: usize) -> Part {
    let n = &nodes[idx];
    let header = n.start - base..n.header_end - base;
    let body = n.body_start - base..n.end.max(n.body_start) - base;
    let info = if n.is_mime {
        PartInfo::of(&b[n.start..n.header_end])
    } else {
        PartInfo::default()
    };
    let searchable = match &info.content_type {
        None => true,
        Some((ty, _)) => ty.eq_ignore_ascii_case(b"text") || ty.eq_ignore_ascii_case(b"message"),
    };
    let kind = if n.multipart {
        let mut children: Vec<Part> = n
            .children
            .iter()
            .map(|&c| build(b, nodes, c, base))
            .collect();
        if children.is_empty() {
            // RFC 3501 wants at least one part: an empty text/plain, as Dovecot answers.
            children.push(Part {
                header: body.end..body.end,
                body: body.end..body.end,
                kind: PartKind::Leaf,
                searchable: true,
                info: PartInfo::default(),
            });
        }
        PartKind::Multipart(children)
    } else if n.rfc822
        && let Some(&child) = n.children.first()
    {
        let bytes = b[n.body_start..n.end.max(n.body_start)].to_vec();
        let root = build(b, nodes, child, n.body_start);
        PartKind::Message(Box::new(MimeMessage { bytes, root }))
    } else {
        PartKind::Leaf
    };
    Part {
        header,
        body,
        kind,
        searchable,
        info,
    }
}

impl MimeMessage {
    /// Parses `bytes` (never fails: anything is at least a one-part message).
    pub fn parse(bytes: Vec<u8>) -> MimeMessage {
        let nodes = scan(&bytes);
        let root = build(&bytes, &nodes, 0, 0);
        MimeMessage { bytes, root }
    }

    /// The message header block.
    pub fn header(&self) -> &[u8] {
        &self.bytes[self.root.header.clone()]
    }
}

// ------------------------------------------------------------------ Content-* fields

/// MIME `token` characters (RFC 2045 §5.1), plus `.` and 8-bit bytes as Dovecot accepts.
fn is_token_char(c: u8) -> bool {
    c >= 0x80 || c.is_ascii_alphanumeric() || b"!#$%&'*+-^_`{|}~.".contains(&c)
}

/// RFC 5322 `atext`, plus 8-bit bytes.
fn is_atext(c: u8) -> bool {
    c >= 0x80 || c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c)
}

/// A cursor over a structured field value (RFC 5322 §3.2 lexical tokens, RFC 2045 §5.1).
struct Rfc822<'a> {
    v: &'a [u8],
    i: usize,
}

/// Result of a step: `Some(true)` more input follows, `Some(false)` at the end, `None` broken.
type Step = Option<bool>;

impl<'a> Rfc822<'a> {
    fn new(v: &'a [u8]) -> Self {
        Rfc822 { v, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.v.get(self.i).copied()
    }

    /// Skips whitespace and comments.
    fn skip_lwsp(&mut self) -> Step {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' | b'\n' => self.i += 1,
                b'(' => {
                    let mut level = 0usize;
                    let mut closed = false;
                    while let Some(c) = self.peek() {
                        self.i += 1;
                        match c {
                            b'(' => level += 1,
                            b')' => {
                                level -= 1;
                                if level == 0 {
                                    closed = true;
                                    break;
                                }
                            }
                            b'\\' => {
                                self.peek()?;
                                self.i += 1;
                            }
                            _ => {}
                        }
                    }
                    if !closed {
                        return None;
                    }
                }
                _ => break,
            }
        }
        Some(self.i < self.v.len())
    }

    fn token(&mut self, out: &mut Vec<u8>) -> Step {
        let start = self.i;
        while self.peek().is_some_and(is_token_char) {
            self.i += 1;
        }
        out.extend_from_slice(&self.v[start..self.i]);
        self.skip_lwsp()
    }

    fn atom(&mut self, out: &mut Vec<u8>) -> Step {
        if !self.peek().is_some_and(is_atext) {
            return None;
        }
        let start = self.i;
        while self.peek().is_some_and(is_atext) {
            self.i += 1;
        }
        out.extend_from_slice(&self.v[start..self.i]);
        self.skip_lwsp()
    }

    fn quoted(&mut self, out: &mut Vec<u8>) -> Step {
        self.i += 1; // the opening quote
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return self.skip_lwsp(),
                b'\\' => {
                    out.push(self.peek()?);
                    self.i += 1;
                }
                b'\r' | b'\n' => {}
                c => out.push(c),
            }
        }
        None
    }

    /// `type "/" subtype`; both empty when it does not parse. The step says what follows.
    fn content_type(&mut self) -> (Vec<u8>, Vec<u8>, Step) {
        let fail = (Vec::new(), Vec::new(), None);
        if self.skip_lwsp() != Some(true) {
            return fail;
        }
        let mut ty = Vec::new();
        if self.token(&mut ty) != Some(true) || ty.is_empty() || self.peek() != Some(b'/') {
            return fail;
        }
        self.i += 1;
        if self.skip_lwsp() != Some(true) {
            return fail;
        }
        let mut sub = Vec::new();
        let step = self.token(&mut sub);
        // Anything but parameters after the subtype makes the whole field invalid.
        if step.is_none() || sub.is_empty() || (step == Some(true) && self.peek() != Some(b';')) {
            return fail;
        }
        (ty, sub, step)
    }

    /// One `";" attribute "=" value`: `Ok(None)` at the end, `Err(())` when broken.
    fn param(&mut self) -> Result<Option<Param>, ()> {
        match self.peek() {
            None => return Ok(None),
            Some(b';') => self.i += 1,
            Some(_) => return Err(()),
        }
        if self.skip_lwsp() != Some(true) {
            return Err(());
        }
        let mut key = Vec::new();
        if self.token(&mut key) != Some(true) || self.peek() != Some(b'=') {
            return Err(());
        }
        self.i += 1;
        let mut value = Vec::new();
        let step = match self.skip_lwsp() {
            s @ (None | Some(false)) => s,
            Some(true) if self.peek() == Some(b'"') => self.quoted(&mut value),
            Some(true) if self.peek() == Some(b'=') => {
                // Broken input seen in the wild: name==?utf-8?b?...?=
                while let Some(c) = self.peek() {
                    if matches!(c, b';' | b' ' | b'\t' | b'\r' | b'\n') {
                        break;
                    }
                    value.push(c);
                    self.i += 1;
                }
                Some(true)
            }
            Some(true) => self.token(&mut value),
        };
        match step {
            None => Err(()),
            Some(_) => Ok(Some((key, value))),
        }
    }
}

/// The parameters after a Content-Type or Content-Disposition value, with RFC 2231
/// continuations (`name*0*`, `name*1`, ...) joined into one `name*` (or `name`) parameter,
/// still encoded. Plain parameters come first, in order; joined ones follow, sorted by name.
/// Parameters with missing continuation numbers are kept as written.
fn rfc2231_params(p: &mut Rfc822<'_>) -> Params {
    struct Piece {
        key: Vec<u8>,
        idx: u32,
        extended: bool,
        value: Vec<u8>,
    }
    let mut plain: Params = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut idx = 0u32; // carried over from the previous `name*n` like Dovecot does
    loop {
        match p.param() {
            Ok(None) => break,
            Err(()) => {
                if p.peek().is_none() {
                    break;
                }
                p.i += 1;
                continue;
            }
            Ok(Some((key, value))) => {
                let Some(star) = key.iter().position(|&c| c == b'*') else {
                    plain.push((key, value));
                    continue;
                };
                let mut j = star;
                if star + 1 < key.len() {
                    j = star + 1;
                    idx = 0;
                    while let Some(d) = key.get(j).filter(|d| d.is_ascii_digit()) {
                        idx = idx.saturating_mul(10).saturating_add(u32::from(d - b'0'));
                        j += 1;
                    }
                }
                let extended = key.get(j) == Some(&b'*');
                if extended {
                    j += 1;
                }
                if j != key.len() {
                    plain.push((key, value));
                    continue;
                }
                pieces.push(Piece {
                    key: key[..star].to_vec(),
                    idx,
                    extended,
                    value,
                });
            }
        }
    }
    pieces.sort_by(|a, b| a.key.cmp(&b.key).then(a.idx.cmp(&b.idx)));
    let mut i = 0;
    while i < pieces.len() {
        let mut j = i;
        let mut ok = true;
        let mut any_extended = false;
        while j < pieces.len() && pieces[j].key.eq_ignore_ascii_case(&pieces[i].key) {
            ok &= pieces[j].idx as usize == j - i;
            any_extended |= pieces[j].extended;
            j += 1;
        }
        if ok {
            let mut value = Vec::new();
            if !pieces[i].extended && any_extended {
                value.extend_from_slice(b"''");
            }
            for piece in &pieces[i..j] {
                if !piece.extended && any_extended {
                    for &c in &piece.value {
                        if c == b'%' {
                            value.extend_from_slice(b"%25");
                        } else {
                            value.push(c);
                        }
                    }
                } else {
                    value.extend_from_slice(&piece.value);
                }
            }
            let mut key = pieces[i].key.clone();
            if any_extended {
                key.push(b'*');
            }
            plain.push((key, value));
        } else {
            for piece in &pieces[i..j] {
                let mut key = piece.key.clone();
                let _ = write!(Lossy(&mut key), "*{}", piece.idx);
                if piece.extended {
                    key.push(b'*');
                }
                plain.push((key, piece.value.clone()));
            }
        }
        i = j;
    }
    plain
}

impl PartInfo {
    /// The Content-* data of a MIME part's header (the first field of each kind counts).
    pub fn of(header: &[u8]) -> PartInfo {
        let mut info = PartInfo::default();
        let mut seen_disposition = false;
        for f in fields(header) {
            let Some(name) = f
                .name
                .get(..8)
                .filter(|p| p.eq_ignore_ascii_case(b"Content-"))
                .map(|_| &f.name[8..])
            else {
                continue;
            };
            let value = unfold(f.value);
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("Type") && info.content_type.is_none() {
                let mut p = Rfc822::new(&value);
                let (ty, sub, step) = p.content_type();
                info.content_type = Some((ty, sub));
                if step.is_some() {
                    info.params = rfc2231_params(&mut p);
                }
            } else if is("Transfer-Encoding") && info.encoding.is_none() {
                let mut p = Rfc822::new(&value);
                let mut tok = Vec::new();
                p.skip_lwsp();
                if p.token(&mut tok) == Some(false) && !tok.is_empty() {
                    info.encoding = Some(tok);
                }
            } else if is("ID") && info.id.is_none() {
                info.id = Some(value);
            } else if is("MD5") && info.md5.is_none() {
                info.md5 = Some(value);
            } else if is("Description") && info.description.is_none() {
                info.description = Some(value);
            } else if is("Location") && info.location.is_none() {
                info.location = Some(value);
            } else if is("Disposition") && !seen_disposition {
                let mut p = Rfc822::new(&value);
                let mut tok = Vec::new();
                p.skip_lwsp();
                if p.token(&mut tok).is_some() {
                    let params = rfc2231_params(&mut p);
                    seen_disposition = !params.is_empty();
                    info.disposition = Some((tok, params));
                }
            } else if is("Language") && info.language.is_none() {
                let mut p = Rfc822::new(&value);
                let mut langs = Vec::new();
                p.skip_lwsp();
                loop {
                    let mut tag = Vec::new();
                    if p.atom(&mut tag).is_none() {
                        break;
                    }
                    langs.push(tag);
                    if p.peek() != Some(b',') {
                        break;
                    }
                    p.i += 1;
                    p.skip_lwsp();
                }
                if !langs.is_empty() {
                    info.language = Some(langs);
                }
            }
        }
        info
    }
}

fn push_params(out: &mut Vec<u8>, params: &[(Vec<u8>, Vec<u8>)], default_charset: bool) {
    if params.is_empty() && !default_charset {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    let mut seen_charset = false;
    for (i, (n, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        seen_charset |= n.eq_ignore_ascii_case(b"charset");
        push_string(out, n);
        out.push(b' ');
        push_string(out, v);
    }
    // A text part without a charset is us-ascii (RFC 2045 §5.2), said explicitly.
    if default_charset && !seen_charset {
        if !params.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(b"\"charset\" \"us-ascii\"");
    }
    out.push(b')');
}

/// Lines and size of a body as BODYSTRUCTURE counts them: a bare LF counts as CRLF.
fn body_counts(bytes: &[u8], range: Range<usize>) -> (usize, usize) {
    let mut lines = 0;
    let mut bare = 0;
    for i in range.clone() {
        if bytes[i] == b'\n' {
            lines += 1;
            if i == 0 || bytes[i - 1] != b'\r' {
                bare += 1;
            }
        }
    }
    (range.len() + bare, lines)
}

/// Appends BODYSTRUCTURE (`extended`) or BODY of `part` in `bytes` (RFC 3501 §7.4.2).
pub fn push_body_structure(
    out: &mut Vec<u8>,
    bytes: &[u8],
    part: &Part,
    extended: bool,
    _in_digest: bool,
) {
    let info = &part.info;
    out.push(b'(');
    match &part.kind {
        PartKind::Multipart(children) => {
            for child in children {
                push_body_structure(out, bytes, child, extended, false);
            }
            out.push(b' ');
            push_string(out, info.content_type.as_ref().map_or(&b""[..], |(_, s)| s));
            if extended {
                out.push(b' ');
                push_params(out, &info.params, false);
                push_ext(out, info);
            }
        }
        kind => {
            let text = match kind {
                PartKind::Message(_) => {
                    out.extend_from_slice(b"\"message\" \"rfc822\"");
                    false
                }
                _ => match &info.content_type {
                    None => {
                        out.extend_from_slice(b"\"text\" \"plain\"");
                        true
                    }
                    Some((ty, sub)) => {
                        push_string(out, ty);
                        out.push(b' ');
                        push_string(out, sub);
                        ty.eq_ignore_ascii_case(b"text")
                    }
                },
            };
            out.push(b' ');
            push_params(out, &info.params, text);
            out.push(b' ');
            push_nstring(out, info.id.as_deref());
            out.push(b' ');
            push_nstring(out, info.description.as_deref());
            out.push(b' ');
            // CLIENTS.md §F.16: never NIL for the encoding.
            push_string(out, info.encoding.as_deref().unwrap_or(b"7bit"));
            let (size, lines) = body_counts(bytes, part.body.clone());
            let _ = write!(Lossy(out), " {size}");
            if let PartKind::Message(inner) = kind {
                out.push(b' ');
                push_envelope(out, inner.header());
                out.push(b' ');
                push_body_structure(out, &inner.bytes, &inner.root, extended, false);
                let _ = write!(Lossy(out), " {lines}");
            } else if text {
                let _ = write!(Lossy(out), " {lines}");
            }
            if extended {
                out.push(b' ');
                push_nstring(out, info.md5.as_deref());
                push_ext(out, info);
            }
        }
    }
    out.push(b')');
}

/// ` disposition language location` (RFC 3501 §7.4.2 body extensions).
fn push_ext(out: &mut Vec<u8>, info: &PartInfo) {
    out.push(b' ');
    match &info.disposition {
        Some((d, params)) => {
            out.push(b'(');
            push_string(out, d);
            out.push(b' ');
            push_params(out, params, false);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match &info.language {
        Some(langs) => {
            out.push(b'(');
            for (i, l) in langs.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                push_string(out, l);
            }
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    push_nstring(out, info.location.as_deref());
}

// ------------------------------------------------------------------ envelope

/// Appends the ENVELOPE of a message header block (RFC 3501 §7.4.2).
pub fn push_envelope(out: &mut Vec<u8>, header: &[u8]) {
    // The header is split once; every envelope field is looked up in that list.
    let fs = fields(header);
    let get = |name: &str| {
        fs.iter()
            .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| unfold(f.value))
    };
    out.push(b'(');
    push_nstring(out, get("Date").filter(|v| !v.is_empty()).as_deref());
    out.push(b' ');
    push_nstring(out, get("Subject").filter(|v| !v.is_empty()).as_deref());
    // Repeated address fields add up (Dovecot merges them; RFC 5322 allows one of each).
    let all = |name: &str| -> Option<Vec<EnvAddress>> {
        let mut found = false;
        let mut list = Vec::new();
        for f in &fs {
            if f.name.eq_ignore_ascii_case(name.as_bytes()) {
                found = true;
                list.extend(parse_addresses(&unfold(f.value)));
            }
        }
        found.then_some(list)
    };
    let from = all("From");
    for (name, fallback) in [
        ("From", None),
        ("Sender", from.as_ref()),
        ("Reply-To", from.as_ref()),
        ("To", None),
        ("Cc", None),
        ("Bcc", None),
    ] {
        out.push(b' ');
        let value = all(name);
        let value = match (&value, fallback) {
            (Some(v), _) if !v.is_empty() => value,
            (_, Some(f)) => Some(f.clone()),
            _ => value,
        };
        push_address_list(out, value.unwrap_or_default());
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
            // A `)` without its `(`: skipped. (The word arm below stops at it without
            // advancing: found by the `imap_mime` fuzz target as an endless loop filling memory.)
            b')' => i += 1,
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
    let mut out = section_bytes_raw(msg, path, text)?;
    // A NUL cannot travel in an IMAP literal (RFC 3501 §4.3); like Dovecot, send 0x80 instead
    // (BINARY, RFC 3516, is how a client gets the real bytes).
    for b in &mut out {
        if *b == 0 {
            *b = 0x80;
        }
    }
    Some(out)
}

fn section_bytes_raw(
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
    // Dovecot decodes a message's parts together and refuses BINARY on every part of a
    // message with a part in an unknown encoding; the oracle answers follow that.
    if has_unknown_cte(&msg.bytes, &msg.root) {
        return Err(BinaryError::UnknownCte);
    }
    if let PartKind::Multipart(_) = node.part.kind {
        return Ok(body.to_vec());
    }
    let header = &node.bytes[node.part.header.clone()];
    match Cte::of(header) {
        Cte::Identity => Ok(body.to_vec()),
        Cte::Base64 => decode_base64(body).ok_or(BinaryError::Broken),
        Cte::QuotedPrintable => Ok(decode_qp(body)),
        Cte::Unknown => Err(BinaryError::UnknownCte),
    }
}

/// A leaf's body with its Content-Transfer-Encoding undone, leniently (for SEARCH): broken or
/// unknown encodings give the bytes as they are.
pub fn decode_transfer(header: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    match Cte::of(header) {
        Cte::Identity => Some(body.to_vec()),
        Cte::Base64 => Some(decode_base64(body).unwrap_or_else(|| body.to_vec())),
        Cte::QuotedPrintable => Some(decode_qp(body)),
        Cte::Unknown => None,
    }
}

/// A Content-Transfer-Encoding (RFC 2045 §6.1), judged by its leading token only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cte {
    /// None given, `7bit`, `8bit` or `binary`.
    Identity,
    /// `base64`
    Base64,
    /// `quoted-printable`
    QuotedPrintable,
    /// Anything else (`x-uuencode`, `8 bit`, `7bits`, ...).
    Unknown,
}

impl Cte {
    /// The encoding named by the first Content-Transfer-Encoding field of `header`.
    pub fn of(header: &[u8]) -> Cte {
        let Some(v) = header_value(header, "Content-Transfer-Encoding") else {
            return Cte::Identity;
        };
        let mut p = Rfc822::new(&v);
        let mut tok = Vec::new();
        p.skip_lwsp();
        let _ = p.token(&mut tok);
        match tok.to_ascii_lowercase().as_slice() {
            b"7bit" | b"8bit" | b"binary" => Cte::Identity,
            b"base64" => Cte::Base64,
            b"quoted-printable" => Cte::QuotedPrintable,
            _ => Cte::Unknown,
        }
    }
}

/// Whether `part` or a part below it (in the same message) has an unknown transfer encoding.
fn has_unknown_cte(bytes: &[u8], part: &Part) -> bool {
    match &part.kind {
        PartKind::Multipart(children) => children.iter().any(|c| has_unknown_cte(bytes, c)),
        PartKind::Message(_) => false,
        PartKind::Leaf => Cte::of(&bytes[part.header.clone()]) == Cte::Unknown,
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

    /// `field_values` finds exactly what `fields` finds for each name.
    #[test]
    fn field_values_agree_with_fields() {
        let headers: &[&[u8]] = &[
            b"Subject: one\r\nsubject : two\r\n continued\r\nX-Subject: no\r\n\r\nSubject: body\r\n",
            b"From: a\n\tfolded\nSubj ect: spaced\n:empty name\nno colon line\nTo: b",
            b" leading continuation\r\nSubject:\r\nSubject:x\r\n",
            b"SUBJECT\t: tabbed\r\nSubjectX: other\r\n",
            b"",
        ];
        let names = [
            "Subject",
            "subject",
            "From",
            "To",
            "Subj ect",
            "",
            "X-Subject",
            "Subject ",
            "a:b",
            "SubjectX",
            "nope",
        ];
        for h in headers {
            for name in names {
                let want: Vec<&[u8]> = fields(h)
                    .into_iter()
                    .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|f| f.value)
                    .collect();
                assert_eq!(
                    field_values(h, name),
                    want,
                    "{name:?} in {:?}",
                    String::from_utf8_lossy(h)
                );
            }
        }
    }

    fn env(h: &str) -> String {
        let mut out = Vec::new();
        push_envelope(&mut out, h.as_bytes());
        String::from_utf8(out).expect("utf8")
    }

    /// Found by the `imap_mime` fuzz target: a `)` with no `(` in an address header made the
    /// tokenizer push empty words forever (FETCH ENVELOPE of such a message exhausted memory).
    #[test]
    fn stray_close_paren_in_address_header_terminates() {
        let out = env("From: a) b <c@d.e>\r\n\r\n");
        assert!(out.contains("\"c\" \"d.e\""), "{out}");
        assert_eq!(parse_addresses(b")").len(), 0);
        let _ = parse_addresses(b"x@y)), (z) <w@v>)");
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

    fn structure(raw: &str) -> String {
        let m = MimeMessage::parse(raw.as_bytes().to_vec());
        let mut out = Vec::new();
        push_body_structure(&mut out, &m.bytes, &m.root, false, false);
        String::from_utf8(out).expect("utf8")
    }

    /// Malformed-MIME regressions, each answered as Dovecot 2.3 answers (imap-oracle 108, 039,
    /// 120, 034, 038).
    #[test]
    fn boundary_scanner_follows_dovecot_on_malformed_mime() {
        let table = [
            // "--a--" opens a part of boundary "a--"; the nested "a----" wins on its lines.
            (
                "Content-Type: multipart/mixed; boundary=\"a--\"\r\n\r\n--a--\r\nContent-Type: multipart/mixed; boundary=\"a----\"\r\n\r\n--a----\r\nContent-Type: text/plain\r\n\r\nbody\r\n--a------\r\n\r\nepilogue\r\n--a--------",
                "(((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 4 0) \"mixed\") \"mixed\")",
            ),
            // After the closing line, a repeated boundary is epilogue, not a new part.
            (
                "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b--\r\n--b\r\n\r\ntwo\r\n",
                "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 3 0) \"mixed\")",
            ),
            // Garbage after the subtype (a missing ';') voids the Content-Type.
            (
                "Content-Type: multipart/mixed\r\n\tboundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
                "(\"\" \"\" NIL NIL NIL \"7bit\" 17)",
            ),
            // An RFC 2231 "boundary*" is not a boundary: one empty part.
            (
                "Content-Type: multipart/mixed; boundary*=us-ascii''b\r\n\r\n--b\r\n\r\nx\r\n",
                "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0) \"mixed\")",
            ),
            // Back-to-back boundary lines make empty parts; the CRLF before a boundary is its own.
            (
                "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n\r\nx\r\n--b--\r\n",
                "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 1 0) \"mixed\")",
            ),
        ];
        for (raw, want) in table {
            assert_eq!(structure(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn rfc2231_continuations_are_joined_not_decoded() {
        let mut p = Rfc822::new(b"; title*0*=us-ascii'en'This%20is; title*1=\" fun%\"; a=b");
        assert_eq!(
            rfc2231_params(&mut p),
            vec![
                (b"a".to_vec(), b"b".to_vec()),
                (b"title*".to_vec(), b"us-ascii'en'This%20is fun%25".to_vec()),
            ]
        );
    }

    #[test]
    fn quoted_printable() {
        assert_eq!(decode_qp(b"a=3Db=\r\nc=ZZ"), b"a=bc=ZZ");
    }
}
