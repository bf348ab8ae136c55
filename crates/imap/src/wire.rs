//! The IMAP wire: command grammar (RFC 3501 §9, RFC 9051 §9 where it clarifies) and response
//! encoding helpers. No I/O and no store knowledge: [`parse_command`] takes one complete command
//! (its line plus any literals, as assembled by the session) and returns a typed [`Command`] or a
//! [`ParseError`] the session answers with BAD.
//!
//! A literal appears in the assembled bytes exactly as on the wire: `{n}\r\n` or `{n+}\r\n`
//! (RFC 7888) followed by its `n` octets, so the parser is a pure function of those bytes.

use std::fmt::Write as _;

use net::sasl::Secret;

use crate::seqset::SeqSet;

/// Why a command could not be parsed. Always answered with `BAD` (RFC 3501 §7.1.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line has no valid tag; answered with an untagged `* BAD`.
    #[error("missing or invalid tag")]
    NoTag,
    /// The command name is not one we know.
    #[error("unknown command")]
    UnknownCommand(String),
    /// The arguments do not follow the grammar; the text says where.
    #[error("{1}")]
    Syntax(String, &'static str),
}

impl ParseError {
    /// The tag to answer with, when there was one.
    pub fn tag(&self) -> Option<&str> {
        match self {
            ParseError::NoTag => None,
            ParseError::UnknownCommand(tag) | ParseError::Syntax(tag, _) => Some(tag),
        }
    }
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The client's tag: `1*<any ASTRING-CHAR except "+">`.
    pub tag: String,
    /// What it asks for.
    pub body: CommandBody,
}

/// A STATUS data item (RFC 3501 §6.3.10, RFC 8438 SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// MESSAGES
    Messages,
    /// RECENT
    Recent,
    /// UIDNEXT
    UidNext,
    /// UIDVALIDITY
    UidValidity,
    /// UNSEEN
    Unseen,
    /// SIZE (RFC 8438)
    Size,
    /// HIGHESTMODSEQ (RFC 7162), answered from the store
    HighestModSeq,
}

impl StatusItem {
    /// The item's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            StatusItem::Messages => "MESSAGES",
            StatusItem::Recent => "RECENT",
            StatusItem::UidNext => "UIDNEXT",
            StatusItem::UidValidity => "UIDVALIDITY",
            StatusItem::Unseen => "UNSEEN",
            StatusItem::Size => "SIZE",
            StatusItem::HighestModSeq => "HIGHESTMODSEQ",
        }
    }
}

/// LIST-EXTENDED selection and return options (RFC 5258 §3, RFC 6154 §5, RFC 5819).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `SUBSCRIBED` selection option.
    pub subscribed: bool,
    /// `RECURSIVEMATCH` selection option.
    pub recursive_match: bool,
    /// `SPECIAL-USE` selection option: only special-use mailboxes.
    pub special_use_only: bool,
    /// `RETURN (CHILDREN)`.
    pub return_children: bool,
    /// `RETURN (SUBSCRIBED)`.
    pub return_subscribed: bool,
    /// `RETURN (SPECIAL-USE)`.
    pub return_special_use: bool,
    /// `RETURN (STATUS (...))` (RFC 5819).
    pub return_status: Option<Vec<StatusItem>>,
    /// Whether the extended syntax was used at all (selection options or RETURN).
    pub extended: bool,
}

/// A section of a message (RFC 3501 §6.4.5 `section-spec`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    /// The part path, e.g. `[1, 2]` for `1.2`; empty for the whole message.
    pub path: Vec<u32>,
    /// What of that part.
    pub text: SectionText,
}

/// The `section-text` of a section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SectionText {
    /// The part's content (or the whole message for an empty path).
    #[default]
    Full,
    /// `HEADER`
    Header,
    /// `HEADER.FIELDS (...)`
    HeaderFields(Vec<String>),
    /// `HEADER.FIELDS.NOT (...)`
    HeaderFieldsNot(Vec<String>),
    /// `TEXT`
    Text,
    /// `MIME`
    Mime,
}

/// One FETCH attribute (RFC 3501 §6.4.5, RFC 3516 BINARY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAttr {
    /// FLAGS
    Flags,
    /// INTERNALDATE
    InternalDate,
    /// RFC822.SIZE
    Rfc822Size,
    /// UID
    Uid,
    /// ENVELOPE
    Envelope,
    /// BODYSTRUCTURE
    BodyStructure,
    /// BODY (non-extensible BODYSTRUCTURE)
    Body,
    /// RFC822 (= BODY[])
    Rfc822,
    /// RFC822.HEADER (= BODY.PEEK[HEADER])
    Rfc822Header,
    /// RFC822.TEXT (= BODY[TEXT])
    Rfc822Text,
    /// BODY[section]<partial> / BODY.PEEK[...]
    BodySection {
        /// The section.
        section: Section,
        /// `<origin.count>`
        partial: Option<(u32, u32)>,
        /// `.PEEK`: do not set `\Seen`.
        peek: bool,
    },
    /// BINARY[part]<partial> / BINARY.PEEK (RFC 3516)
    Binary {
        /// The part path.
        path: Vec<u32>,
        /// `<origin.count>`
        partial: Option<(u32, u32)>,
        /// `.PEEK`
        peek: bool,
    },
    /// BINARY.SIZE[part]
    BinarySize {
        /// The part path.
        path: Vec<u32>,
    },
    /// MODSEQ (RFC 7162)
    ModSeq,
}

/// How STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// `FLAGS`
    Replace,
    /// `+FLAGS`
    Add,
    /// `-FLAGS`
    Remove,
}

/// A SEARCH key (RFC 3501 §6.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// All of these (a parenthesised list, or the top-level key list).
    And(Vec<SearchKey>),
    /// `OR a b`
    Or(Box<SearchKey>, Box<SearchKey>),
    /// `NOT a`
    Not(Box<SearchKey>),
    /// `ALL`
    All,
    /// A sequence set.
    Seq(SeqSet),
    /// `UID set`
    Uid(SeqSet),
    /// A flag must be set (`ANSWERED`, `KEYWORD x`, ...). `\Recent` is handled apart.
    Flag(String),
    /// A flag must not be set (`UNANSWERED`, `UNKEYWORD x`, ...).
    NoFlag(String),
    /// `RECENT`
    Recent,
    /// `NEW` = RECENT UNSEEN
    New,
    /// `OLD` = NOT RECENT
    Old,
    /// `BEFORE`/`ON`/`SINCE` internal date (days since the epoch, compared by date).
    Date(DateCmp, i64),
    /// `SENTBEFORE`/`SENTON`/`SENTSINCE` on the Date header.
    SentDate(DateCmp, i64),
    /// `HEADER name value`, `FROM`, `TO`, `CC`, `BCC`, `SUBJECT`
    Header(String, String),
    /// `BODY text`
    Body(String),
    /// `TEXT text`
    Text(String),
    /// `LARGER n`
    Larger(u64),
    /// `SMALLER n`
    Smaller(u64),
    /// `MODSEQ n` (RFC 7162)
    ModSeq(u64),
}

/// Date comparison of a SEARCH date key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateCmp {
    /// Earlier than the day.
    Before,
    /// On the day.
    On,
    /// On or after the day.
    Since,
}

/// ESEARCH return options (RFC 4731), when `RETURN (...)` was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchReturn {
    /// MIN
    pub min: bool,
    /// MAX
    pub max: bool,
    /// ALL
    pub all: bool,
    /// COUNT
    pub count: bool,
}

/// `SELECT mailbox (QRESYNC (...))` parameters (RFC 7162 §3.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QresyncParams {
    /// The UIDVALIDITY the client last knew; a mismatch turns the resync off.
    pub uid_validity: u32,
    /// The last HIGHESTMODSEQ the client knew.
    pub modseq: u64,
    /// The UIDs the client knows; restricts the resync report when given.
    pub known_uids: Option<SeqSet>,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandBody {
    /// CAPABILITY
    Capability,
    /// NOOP
    Noop,
    /// LOGOUT
    Logout,
    /// ID (RFC 2971): the client's field list, or NIL
    Id(Option<Vec<(String, Option<String>)>>),
    /// STARTTLS
    StartTls,
    /// LOGIN user password
    Login {
        /// The login name.
        user: String,
        /// The password.
        password: Secret<String>,
    },
    /// AUTHENTICATE mechanism [initial-response] (RFC 4959 SASL-IR)
    Authenticate {
        /// Mechanism name, upper-cased.
        mechanism: String,
        /// The base64 initial response, if given.
        initial: Option<Secret<Vec<u8>>>,
    },
    /// ENABLE capabilities (RFC 5161)
    Enable(Vec<String>),
    /// SELECT or EXAMINE
    Select {
        /// Mailbox name as sent (modified UTF-7).
        mailbox: Vec<u8>,
        /// EXAMINE: read-only.
        examine: bool,
        /// `(CONDSTORE)` was given.
        condstore: bool,
        /// `(QRESYNC (...))` was given (RFC 7162 §3.2.5).
        qresync: Option<QresyncParams>,
    },
    /// CREATE
    Create(Vec<u8>),
    /// DELETE
    Delete(Vec<u8>),
    /// RENAME from to
    Rename(Vec<u8>, Vec<u8>),
    /// SUBSCRIBE
    Subscribe(Vec<u8>),
    /// UNSUBSCRIBE
    Unsubscribe(Vec<u8>),
    /// LIST reference patterns (LIST-EXTENDED)
    List {
        /// The reference name.
        reference: Vec<u8>,
        /// One or more patterns.
        patterns: Vec<Vec<u8>>,
        /// Selection and return options.
        options: ListOptions,
    },
    /// LSUB reference pattern
    Lsub {
        /// The reference name.
        reference: Vec<u8>,
        /// The pattern.
        pattern: Vec<u8>,
    },
    /// NAMESPACE (RFC 2342)
    Namespace,
    /// STATUS mailbox (items)
    Status {
        /// The mailbox.
        mailbox: Vec<u8>,
        /// The items.
        items: Vec<StatusItem>,
    },
    /// APPEND mailbox [flags] [date] literal
    Append {
        /// The mailbox.
        mailbox: Vec<u8>,
        /// Flag names.
        flags: Vec<String>,
        /// INTERNALDATE as (Unix seconds, offset minutes).
        date: Option<(i64, i32)>,
        /// The message.
        message: Vec<u8>,
    },
    /// IDLE (RFC 2177)
    Idle,
    /// CHECK
    Check,
    /// CLOSE
    Close,
    /// UNSELECT (RFC 3691)
    Unselect,
    /// EXPUNGE, or UID EXPUNGE set (RFC 4315)
    Expunge(Option<SeqSet>),
    /// SEARCH / UID SEARCH
    Search {
        /// UID SEARCH.
        uid: bool,
        /// RETURN options (ESEARCH), if given.
        ret: Option<SearchReturn>,
        /// The criteria.
        key: SearchKey,
    },
    /// FETCH / UID FETCH
    Fetch {
        /// UID FETCH.
        uid: bool,
        /// The messages.
        set: SeqSet,
        /// The attributes.
        attrs: Vec<FetchAttr>,
        /// `(CHANGEDSINCE n)` (RFC 7162).
        changed_since: Option<u64>,
        /// The `VANISHED` modifier (RFC 7162 §3.2.6).
        vanished: bool,
    },
    /// STORE / UID STORE
    Store {
        /// UID STORE.
        uid: bool,
        /// The messages.
        set: SeqSet,
        /// How.
        mode: StoreMode,
        /// `.SILENT`
        silent: bool,
        /// Flag names.
        flags: Vec<String>,
        /// `(UNCHANGEDSINCE n)` (RFC 7162 §3.1.3).
        unchanged_since: Option<u64>,
    },
    /// COPY / UID COPY
    Copy {
        /// UID COPY.
        uid: bool,
        /// The messages.
        set: SeqSet,
        /// Destination.
        mailbox: Vec<u8>,
    },
    /// MOVE / UID MOVE (RFC 6851)
    Move {
        /// UID MOVE.
        uid: bool,
        /// The messages.
        set: SeqSet,
        /// Destination.
        mailbox: Vec<u8>,
    },
}

impl CommandBody {
    /// The command's name, for logs and "wrong state" replies.
    pub fn name(&self) -> &'static str {
        match self {
            CommandBody::Capability => "CAPABILITY",
            CommandBody::Noop => "NOOP",
            CommandBody::Logout => "LOGOUT",
            CommandBody::Id(_) => "ID",
            CommandBody::StartTls => "STARTTLS",
            CommandBody::Login { .. } => "LOGIN",
            CommandBody::Authenticate { .. } => "AUTHENTICATE",
            CommandBody::Enable(_) => "ENABLE",
            CommandBody::Select { examine: false, .. } => "SELECT",
            CommandBody::Select { examine: true, .. } => "EXAMINE",
            CommandBody::Create(_) => "CREATE",
            CommandBody::Delete(_) => "DELETE",
            CommandBody::Rename(..) => "RENAME",
            CommandBody::Subscribe(_) => "SUBSCRIBE",
            CommandBody::Unsubscribe(_) => "UNSUBSCRIBE",
            CommandBody::List { .. } => "LIST",
            CommandBody::Lsub { .. } => "LSUB",
            CommandBody::Namespace => "NAMESPACE",
            CommandBody::Status { .. } => "STATUS",
            CommandBody::Append { .. } => "APPEND",
            CommandBody::Idle => "IDLE",
            CommandBody::Check => "CHECK",
            CommandBody::Close => "CLOSE",
            CommandBody::Unselect => "UNSELECT",
            CommandBody::Expunge(_) => "EXPUNGE",
            CommandBody::Search { .. } => "SEARCH",
            CommandBody::Fetch { .. } => "FETCH",
            CommandBody::Store { .. } => "STORE",
            CommandBody::Copy { .. } => "COPY",
            CommandBody::Move { .. } => "MOVE",
        }
    }
}

/// RFC 3501 §9 `ATOM-CHAR`: any CHAR except atom-specials.
fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b)
}

/// `ASTRING-CHAR = ATOM-CHAR / resp-specials` (`]` is allowed).
fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

/// `list-char = ATOM-CHAR / list-wildcards / resp-specials`.
fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

/// If `line` (without its CRLF) ends with a literal announcement `{n}` or `{n+}`, returns
/// `(n, synchronising)`. RFC 3501 §4.3, RFC 7888 §3.
pub fn literal_suffix(line: &[u8]) -> Option<(u64, bool)> {
    let rest = line.strip_suffix(b"}")?;
    let open = rest.iter().rposition(|&b| b == b'{')?;
    let mut digits = &rest[open + 1..];
    let mut sync = true;
    if let Some(d) = digits.strip_suffix(b"+") {
        digits = d;
        sync = false;
    }
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((n, sync))
}

/// A cursor over one assembled command.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    tag: String,
}

type PResult<T> = Result<T, ParseError>;

impl<'a> Parser<'a> {
    fn err<T>(&self, why: &'static str) -> PResult<T> {
        Err(ParseError::Syntax(self.tag.clone(), why))
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, why: &'static str) -> PResult<()> {
        if self.eat(b) { Ok(()) } else { self.err(why) }
    }

    fn sp(&mut self) -> PResult<()> {
        self.expect(b' ', "expected a space")
    }

    fn end(&self) -> PResult<()> {
        if self.at_end() {
            Ok(())
        } else {
            self.err("unexpected characters at the end of the command")
        }
    }

    /// Case-insensitive keyword match, consuming it when followed by a non-atom char.
    fn keyword(&mut self, kw: &str) -> bool {
        let end = self.pos + kw.len();
        if end <= self.input.len()
            && self.input[self.pos..end].eq_ignore_ascii_case(kw.as_bytes())
            && self.input.get(end).is_none_or(|&b| !is_atom_char(b))
        {
            self.pos = end;
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.input[start..self.pos]
    }

    fn atom(&mut self) -> PResult<String> {
        let a = self.take_while(is_atom_char);
        if a.is_empty() {
            return self.err("expected an atom");
        }
        Ok(String::from_utf8_lossy(a).into_owned())
    }

    fn number(&mut self) -> PResult<u64> {
        let d = self.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 19 {
            return self.err("expected a number");
        }
        std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or_else(|| self.err("expected a number"), Ok)
    }

    fn number32(&mut self) -> PResult<u32> {
        let n = self.number()?;
        u32::try_from(n).map_or_else(|_| self.err("number too large"), Ok)
    }

    fn quoted(&mut self) -> PResult<Vec<u8>> {
        self.expect(b'"', "expected a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') => return self.err("unterminated quoted string"),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.pos += 1;
                        }
                        _ => return self.err("bad escape in quoted string"),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> PResult<Vec<u8>> {
        self.expect(b'{', "expected a literal")?;
        let n = self.number()?;
        self.eat(b'+');
        self.expect(b'}', "bad literal")?;
        if !(self.eat(b'\r') && self.eat(b'\n')) {
            return self.err("literal must end its line");
        }
        let n = usize::try_from(n).map_or_else(|_| self.err("literal too large"), Ok)?;
        if self.input.len() - self.pos < n {
            return self.err("literal shorter than announced");
        }
        let v = self.input[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(v)
    }

    fn string(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => self.err("expected a string"),
        }
    }

    fn astring(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    return self.err("expected an atom or string");
                }
                Ok(a.to_vec())
            }
        }
    }

    fn astring_utf8(&mut self) -> PResult<String> {
        let v = self.astring()?;
        String::from_utf8(v).map_or_else(|_| self.err("string is not UTF-8"), Ok)
    }

    fn nstring(&mut self) -> PResult<Option<Vec<u8>>> {
        if self.keyword("NIL") {
            Ok(None)
        } else {
            self.string().map(Some)
        }
    }

    /// `list-mailbox = 1*list-char / string`
    fn list_mailbox(&mut self) -> PResult<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let a = self.take_while(is_list_char);
                if a.is_empty() {
                    return self.err("expected a mailbox pattern");
                }
                Ok(a.to_vec())
            }
        }
    }

    fn flag(&mut self) -> PResult<String> {
        if self.eat(b'\\') {
            if self.eat(b'*') {
                return Ok("\\*".into());
            }
            let a = self.atom()?;
            Ok(format!("\\{a}"))
        } else {
            self.atom()
        }
    }

    fn flag_list(&mut self) -> PResult<Vec<String>> {
        self.expect(b'(', "expected a flag list")?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
    }

    fn seq_set(&mut self) -> PResult<SeqSet> {
        let raw = self.take_while(|b| b.is_ascii_digit() || b == b':' || b == b',' || b == b'*');
        match std::str::from_utf8(raw).ok().and_then(SeqSet::parse) {
            Some(s) => Ok(s),
            None => self.err("invalid sequence set"),
        }
    }

    /// `date = date-text / DQUOTE date-text DQUOTE`, date-text = `d-MMM-yyyy`
    fn search_date(&mut self) -> PResult<i64> {
        let quoted = self.eat(b'"');
        let raw = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
        if quoted {
            self.expect(b'"', "bad date")?;
        }
        match std::str::from_utf8(raw).ok().and_then(parse_date_text) {
            Some(days) => Ok(days),
            None => self.err("invalid date, expected d-Mon-yyyy"),
        }
    }

    fn mailbox(&mut self) -> PResult<Vec<u8>> {
        self.astring()
    }
}

/// Parses `d-Mon-yyyy` into days since 1970-01-01.
pub fn parse_date_text(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let day: u32 = it.next()?.parse().ok()?;
    let mon = month_number(it.next()?)?;
    let year: i32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=31).contains(&day) || !(1..=9999).contains(&year) {
        return None;
    }
    Some(days_from_civil(year, mon, day))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn month_number(s: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses RFC 3501 `date-time`: `"dd-Mon-yyyy hh:mm:ss +zzzz"` (day may be space-padded).
pub fn parse_date_time(s: &[u8]) -> Option<(i64, i32)> {
    let s = std::str::from_utf8(s).ok()?;
    let s = s.trim_start();
    let (date, rest) = s.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    let days = parse_date_text(date)?;
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let se: i64 = t.next()?.parse().ok()?;
    if t.next().is_some() || h > 23 || mi > 59 || se > 60 || time.len() != 8 {
        return None;
    }
    // RFC 3501 `zone = ("+" / "-") 4DIGIT`, hhmm: minutes above 59 would format back as a
    // five-digit zone (found by the `imap_command` fuzz target), and a non-ASCII byte would
    // make the slices below split a character.
    let zb = zone.as_bytes();
    if zb.len() != 5 || !(zb[0] == b'+' || zb[0] == b'-') || !zb[1..].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let zh: i32 = zone[1..3].parse().ok()?;
    let zm: i32 = zone[3..5].parse().ok()?;
    if zm > 59 {
        return None;
    }
    let mut off = zh * 60 + zm;
    if zb[0] == b'-' {
        off = -off;
    }
    let local = days * 86_400 + h * 3600 + mi * 60 + se;
    Some((local - i64::from(off) * 60, off))
}

/// Formats an INTERNALDATE: `"dd-Mon-yyyy hh:mm:ss +zzzz"`.
pub fn format_date_time(unix: i64, offset_minutes: i32) -> String {
    let local = unix + i64::from(offset_minutes) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    format!(
        "{d:02}-{}-{y:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        MONTHS[usize::try_from(m - 1).unwrap_or(0)],
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        off / 60,
        off % 60
    )
}

/// Parses one assembled command (line and literals, final CRLF included or not).
pub fn parse_command(input: &[u8]) -> Result<Command, ParseError> {
    let input = input
        .strip_suffix(b"\r\n")
        .or_else(|| input.strip_suffix(b"\n"))
        .unwrap_or(input);
    let mut p = Parser {
        input,
        pos: 0,
        tag: String::new(),
    };
    let tag = p.take_while(|b| is_astring_char(b) && b != b'+');
    if tag.is_empty() || p.peek() != Some(b' ') {
        return Err(ParseError::NoTag);
    }
    p.tag = String::from_utf8_lossy(tag).into_owned();
    p.sp()?;
    let name = p.take_while(|b| b.is_ascii_alphanumeric() || b == b'-');
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let body = parse_body(&mut p, &name, false)?;
    p.end()?;
    Ok(Command { tag: p.tag, body })
}

fn unknown(p: &Parser<'_>) -> ParseError {
    ParseError::UnknownCommand(p.tag.clone())
}

fn parse_body(p: &mut Parser<'_>, name: &str, uid: bool) -> PResult<CommandBody> {
    use CommandBody as C;
    if uid {
        return match name {
            "FETCH" | "STORE" | "COPY" | "MOVE" | "SEARCH" | "EXPUNGE" => {
                parse_selected(p, name, true)
            }
            _ => p.err("UID must be followed by FETCH, STORE, COPY, MOVE, SEARCH or EXPUNGE"),
        };
    }
    Ok(match name {
        "CAPABILITY" => C::Capability,
        "NOOP" => C::Noop,
        "LOGOUT" => C::Logout,
        "STARTTLS" => C::StartTls,
        "NAMESPACE" => C::Namespace,
        "IDLE" => C::Idle,
        "CHECK" => C::Check,
        "CLOSE" => C::Close,
        "UNSELECT" => C::Unselect,
        "ID" => {
            p.sp()?;
            if p.keyword("NIL") {
                C::Id(None)
            } else {
                p.expect(b'(', "expected ( or NIL")?;
                let mut fields = Vec::new();
                if !p.eat(b')') {
                    loop {
                        let k = p.string()?;
                        p.sp()?;
                        let v = p.nstring()?;
                        fields.push((
                            String::from_utf8_lossy(&k).into_owned(),
                            v.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        ));
                        if fields.len() > 30 {
                            return p.err("too many ID fields");
                        }
                        if p.eat(b')') {
                            break;
                        }
                        p.sp()?;
                    }
                }
                C::Id(Some(fields))
            }
        }
        "LOGIN" => {
            p.sp()?;
            let user = p.astring_utf8()?;
            p.sp()?;
            let password = Secret::new(p.astring_utf8()?);
            C::Login { user, password }
        }
        "AUTHENTICATE" => {
            p.sp()?;
            let mechanism = p.atom()?.to_ascii_uppercase();
            let initial = if p.eat(b' ') {
                let ir = p.take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                if ir.is_empty() {
                    return p.err("bad initial response");
                }
                Some(Secret::new(ir.to_vec()))
            } else {
                None
            };
            C::Authenticate { mechanism, initial }
        }
        "ENABLE" => {
            let mut caps = Vec::new();
            while p.eat(b' ') {
                caps.push(p.atom()?.to_ascii_uppercase());
            }
            if caps.is_empty() {
                return p.err("ENABLE needs at least one capability");
            }
            C::Enable(caps)
        }
        "SELECT" | "EXAMINE" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            let mut condstore = false;
            let mut qresync = None;
            if p.eat(b' ') {
                // RFC 4466 select-params; CLIENTS.md §F.7: several parameters, QRESYNC lists.
                p.expect(b'(', "expected select parameters")?;
                loop {
                    let param = p.atom()?.to_ascii_uppercase();
                    if param == "CONDSTORE" {
                        condstore = true;
                    }
                    if param == "QRESYNC" {
                        p.sp()?;
                        qresync = Some(qresync_params(p)?);
                        if p.eat(b')') {
                            break;
                        }
                        p.sp()?;
                        continue;
                    }
                    if p.eat(b' ') && p.peek() == Some(b'(') {
                        skip_parenthesised(p)?;
                        if !p.eat(b' ') {
                            p.expect(b')', "expected )")?;
                            break;
                        }
                        continue;
                    }
                    if p.eat(b')') {
                        break;
                    }
                    if p.pos > 0 && p.input[p.pos - 1] != b' ' {
                        return p.err("bad select parameters");
                    }
                }
            }
            C::Select {
                mailbox,
                examine: name == "EXAMINE",
                condstore,
                qresync,
            }
        }
        "CREATE" => {
            p.sp()?;
            let m = p.mailbox()?;
            if p.eat(b' ') {
                skip_parenthesised(p)?; // RFC 4466 create-params (e.g. USE)
            }
            C::Create(m)
        }
        "DELETE" => {
            p.sp()?;
            C::Delete(p.mailbox()?)
        }
        "RENAME" => {
            p.sp()?;
            let a = p.mailbox()?;
            p.sp()?;
            C::Rename(a, p.mailbox()?)
        }
        "SUBSCRIBE" => {
            p.sp()?;
            C::Subscribe(p.mailbox()?)
        }
        "UNSUBSCRIBE" => {
            p.sp()?;
            C::Unsubscribe(p.mailbox()?)
        }
        "LIST" => parse_list(p)?,
        "LSUB" => {
            p.sp()?;
            let reference = p.mailbox()?;
            p.sp()?;
            let pattern = p.list_mailbox()?;
            C::Lsub { reference, pattern }
        }
        "STATUS" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            p.sp()?;
            C::Status {
                mailbox,
                items: status_items(p)?,
            }
        }
        "APPEND" => {
            p.sp()?;
            let mailbox = p.mailbox()?;
            p.sp()?;
            let mut flags = Vec::new();
            if p.peek() == Some(b'(') {
                flags = p.flag_list()?;
                p.sp()?;
            }
            let mut date = None;
            if p.peek() == Some(b'"') {
                let d = p.quoted()?;
                date = Some(parse_date_time(&d).map_or_else(|| p.err("invalid date-time"), Ok)?);
                p.sp()?;
            }
            let message = p.literal()?;
            C::Append {
                mailbox,
                flags,
                date,
                message,
            }
        }
        "UID" => {
            p.sp()?;
            let sub = p.take_while(|b| b.is_ascii_alphabetic());
            let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
            return parse_body(p, &sub, true);
        }
        "FETCH" | "STORE" | "COPY" | "MOVE" | "SEARCH" | "EXPUNGE" => {
            return parse_selected(p, name, false);
        }
        _ => return Err(unknown(p)),
    })
}

/// Skips a balanced parenthesised list (parameters we accept and ignore).
/// RFC 7162 §3.2.5 / §7: `"(" uidvalidity SP mod-sequence-value [SP known-uids]
/// [SP seq-match-data] ")"`, seq-match-data = `"(" known-sequence-set SP known-uid-set ")"`.
/// The sequence match data is parsed and dropped: the store keeps every expunged UID, so
/// VANISHED (EARLIER) is always exact without it.
fn qresync_params(p: &mut Parser<'_>) -> PResult<QresyncParams> {
    p.expect(b'(', "expected QRESYNC parameters")?;
    let Ok(uid_validity) = u32::try_from(p.number()?) else {
        return p.err("bad UIDVALIDITY");
    };
    p.sp()?;
    let modseq = p.number()?;
    let mut known_uids = None;
    while p.eat(b' ') {
        if p.peek() == Some(b'(') {
            skip_parenthesised(p)?;
        } else {
            known_uids = Some(p.seq_set()?);
        }
    }
    p.expect(b')', "expected )")?;
    if uid_validity == 0 || modseq == 0 {
        return p.err("QRESYNC UIDVALIDITY and MODSEQ must be non-zero");
    }
    Ok(QresyncParams {
        uid_validity,
        modseq,
        known_uids,
    })
}

fn skip_parenthesised(p: &mut Parser<'_>) -> PResult<()> {
    p.expect(b'(', "expected (")?;
    let mut depth = 1usize;
    while depth > 0 {
        match p.peek() {
            None => return p.err("unbalanced parentheses"),
            Some(b'(') => {
                depth += 1;
                p.pos += 1;
            }
            Some(b')') => {
                depth -= 1;
                p.pos += 1;
            }
            Some(b'"') => {
                p.quoted()?;
            }
            Some(b'{') => {
                p.literal()?;
            }
            Some(_) => p.pos += 1,
        }
    }
    Ok(())
}

fn status_items(p: &mut Parser<'_>) -> PResult<Vec<StatusItem>> {
    p.expect(b'(', "expected status items")?;
    let mut items = Vec::new();
    loop {
        let a = p.atom()?.to_ascii_uppercase();
        items.push(match a.as_str() {
            "MESSAGES" => StatusItem::Messages,
            "RECENT" => StatusItem::Recent,
            "UIDNEXT" => StatusItem::UidNext,
            "UIDVALIDITY" => StatusItem::UidValidity,
            "UNSEEN" => StatusItem::Unseen,
            "SIZE" => StatusItem::Size,
            "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
            _ => return p.err("unknown STATUS item"),
        });
        if p.eat(b')') {
            return Ok(items);
        }
        p.sp()?;
    }
}

fn parse_list(p: &mut Parser<'_>) -> PResult<CommandBody> {
    let mut options = ListOptions::default();
    p.sp()?;
    if p.eat(b'(') {
        options.extended = true;
        while !p.eat(b')') {
            p.eat(b' ');
            let o = p.atom()?.to_ascii_uppercase();
            match o.as_str() {
                "SUBSCRIBED" => options.subscribed = true,
                "RECURSIVEMATCH" => options.recursive_match = true,
                "SPECIAL-USE" => options.special_use_only = true,
                "REMOTE" => {}
                _ => return p.err("unknown LIST selection option"),
            }
        }
        if options.recursive_match && !options.subscribed && !options.special_use_only {
            return p.err("RECURSIVEMATCH needs another selection option");
        }
        p.sp()?;
    }
    let reference = p.mailbox()?;
    p.sp()?;
    let mut patterns = Vec::new();
    if p.eat(b'(') {
        options.extended = true;
        loop {
            patterns.push(p.list_mailbox()?);
            if p.eat(b')') {
                break;
            }
            p.sp()?;
        }
    } else {
        patterns.push(p.list_mailbox()?);
    }
    if p.eat(b' ') {
        if !p.keyword("RETURN") {
            return p.err("expected RETURN");
        }
        options.extended = true;
        p.sp()?;
        p.expect(b'(', "expected return options")?;
        while !p.eat(b')') {
            p.eat(b' ');
            let o = p.atom()?.to_ascii_uppercase();
            match o.as_str() {
                "CHILDREN" => options.return_children = true,
                "SUBSCRIBED" => options.return_subscribed = true,
                "SPECIAL-USE" => options.return_special_use = true,
                "STATUS" => {
                    p.sp()?;
                    options.return_status = Some(status_items(p)?);
                }
                _ => return p.err("unknown LIST return option"),
            }
        }
    }
    Ok(CommandBody::List {
        reference,
        patterns,
        options,
    })
}

fn parse_selected(p: &mut Parser<'_>, name: &str, uid: bool) -> PResult<CommandBody> {
    use CommandBody as C;
    Ok(match name {
        "EXPUNGE" => {
            if uid {
                p.sp()?;
                C::Expunge(Some(p.seq_set()?))
            } else {
                C::Expunge(None)
            }
        }
        "FETCH" => {
            p.sp()?;
            let set = p.seq_set()?;
            p.sp()?;
            let attrs = fetch_attrs(p)?;
            let mut changed_since = None;
            let mut vanished = false;
            if p.eat(b' ') {
                p.expect(b'(', "expected fetch modifiers")?;
                loop {
                    if p.keyword("CHANGEDSINCE") {
                        p.sp()?;
                        changed_since = Some(p.number()?);
                    } else if p.keyword("VANISHED") {
                        vanished = true;
                    } else {
                        return p.err("unknown FETCH modifier");
                    }
                    if p.eat(b')') {
                        break;
                    }
                    p.sp()?;
                }
            }
            C::Fetch {
                uid,
                set,
                attrs,
                changed_since,
                vanished,
            }
        }
        "STORE" => {
            p.sp()?;
            let set = p.seq_set()?;
            p.sp()?;
            let mut unchanged_since = None;
            if p.eat(b'(') {
                // RFC 7162 §3.1.3: store-modifier UNCHANGEDSINCE mod-sequence-valzer.
                if !p.keyword("UNCHANGEDSINCE") {
                    return p.err("unknown STORE modifier");
                }
                p.sp()?;
                unchanged_since = Some(p.number()?);
                p.expect(b')', "expected )")?;
                p.sp()?;
            }
            let mode = if p.eat(b'+') {
                StoreMode::Add
            } else if p.eat(b'-') {
                StoreMode::Remove
            } else {
                StoreMode::Replace
            };
            if !p.keyword("FLAGS") && !p.keyword("FLAGS.SILENT") {
                return p.err("expected FLAGS, +FLAGS or -FLAGS");
            }
            let silent = p.input[..p.pos].ends_with(b".SILENT")
                || p.input[..p.pos].to_ascii_uppercase().ends_with(b".SILENT");
            p.sp()?;
            let flags = if p.peek() == Some(b'(') {
                p.flag_list()?
            } else {
                let mut f = vec![p.flag()?];
                while p.eat(b' ') {
                    f.push(p.flag()?);
                }
                f
            };
            C::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            }
        }
        "COPY" | "MOVE" => {
            p.sp()?;
            let set = p.seq_set()?;
            p.sp()?;
            let mailbox = p.mailbox()?;
            if name == "COPY" {
                C::Copy { uid, set, mailbox }
            } else {
                C::Move { uid, set, mailbox }
            }
        }
        "SEARCH" => {
            p.sp()?;
            let mut ret = None;
            if p.keyword("RETURN") {
                p.sp()?;
                p.expect(b'(', "expected return options")?;
                let mut r = SearchReturn::default();
                while !p.eat(b')') {
                    p.eat(b' ');
                    match p.atom()?.to_ascii_uppercase().as_str() {
                        "MIN" => r.min = true,
                        "MAX" => r.max = true,
                        "ALL" => r.all = true,
                        "COUNT" => r.count = true,
                        "SAVE" => return p.err("SEARCHRES is not supported"),
                        _ => return p.err("unknown SEARCH return option"),
                    }
                }
                if !(r.min || r.max || r.count) {
                    r.all = true;
                }
                ret = Some(r);
                p.sp()?;
            }
            if p.keyword("CHARSET") {
                p.sp()?;
                let cs = p.astring()?;
                if !(cs.eq_ignore_ascii_case(b"UTF-8") || cs.eq_ignore_ascii_case(b"US-ASCII")) {
                    return Err(ParseError::Syntax(
                        p.tag.clone(),
                        "[BADCHARSET (UTF-8 US-ASCII)] charset not supported",
                    ));
                }
                p.sp()?;
            }
            let mut keys = vec![search_key(p, 0)?];
            while p.eat(b' ') {
                keys.push(search_key(p, 0)?);
            }
            let key = if keys.len() == 1 {
                keys.pop().unwrap_or(SearchKey::All)
            } else {
                SearchKey::And(keys)
            };
            C::Search { uid, ret, key }
        }
        _ => return Err(unknown(p)),
    })
}

const MAX_SEARCH_DEPTH: usize = 64;

fn search_string(p: &mut Parser<'_>) -> PResult<String> {
    let v = p.astring()?;
    String::from_utf8(v).map_or_else(|_| p.err("search string is not UTF-8"), Ok)
}

fn search_key(p: &mut Parser<'_>, depth: usize) -> PResult<SearchKey> {
    use SearchKey as K;
    if depth > MAX_SEARCH_DEPTH {
        return p.err("search criteria nested too deeply");
    }
    if p.eat(b'(') {
        let mut keys = vec![search_key(p, depth + 1)?];
        while p.eat(b' ') {
            keys.push(search_key(p, depth + 1)?);
        }
        p.expect(b')', "expected )")?;
        return Ok(K::And(keys));
    }
    if p.peek().is_some_and(|b| b.is_ascii_digit() || b == b'*') {
        return Ok(K::Seq(p.seq_set()?));
    }
    let word = p.atom()?.to_ascii_uppercase();
    let flag = |f: &str| Ok(K::Flag(f.to_string()));
    let noflag = |f: &str| Ok(K::NoFlag(f.to_string()));
    match word.as_str() {
        "ALL" => Ok(K::All),
        "ANSWERED" => flag("\\Answered"),
        "DELETED" => flag("\\Deleted"),
        "DRAFT" => flag("\\Draft"),
        "FLAGGED" => flag("\\Flagged"),
        "SEEN" => flag("\\Seen"),
        "UNANSWERED" => noflag("\\Answered"),
        "UNDELETED" => noflag("\\Deleted"),
        "UNDRAFT" => noflag("\\Draft"),
        "UNFLAGGED" => noflag("\\Flagged"),
        "UNSEEN" => noflag("\\Seen"),
        "RECENT" => Ok(K::Recent),
        "NEW" => Ok(K::New),
        "OLD" => Ok(K::Old),
        "KEYWORD" | "UNKEYWORD" => {
            p.sp()?;
            let kw = p.flag()?;
            Ok(if word == "KEYWORD" {
                K::Flag(kw)
            } else {
                K::NoFlag(kw)
            })
        }
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
            p.sp()?;
            let d = p.search_date()?;
            let cmp = match word.trim_start_matches("SENT") {
                "BEFORE" => DateCmp::Before,
                "ON" => DateCmp::On,
                _ => DateCmp::Since,
            };
            Ok(if word.starts_with("SENT") {
                K::SentDate(cmp, d)
            } else {
                K::Date(cmp, d)
            })
        }
        "FROM" | "TO" | "CC" | "BCC" | "SUBJECT" => {
            p.sp()?;
            Ok(K::Header(word.clone(), search_string(p)?))
        }
        "HEADER" => {
            p.sp()?;
            let name = search_string(p)?;
            p.sp()?;
            Ok(K::Header(name, search_string(p)?))
        }
        "BODY" => {
            p.sp()?;
            Ok(K::Body(search_string(p)?))
        }
        "TEXT" => {
            p.sp()?;
            Ok(K::Text(search_string(p)?))
        }
        "LARGER" => {
            p.sp()?;
            Ok(K::Larger(p.number()?))
        }
        "SMALLER" => {
            p.sp()?;
            Ok(K::Smaller(p.number()?))
        }
        "MODSEQ" => {
            p.sp()?;
            if p.peek() == Some(b'"') {
                p.quoted()?;
                p.sp()?;
                p.atom()?;
                p.sp()?;
            }
            Ok(K::ModSeq(p.number()?))
        }
        "UID" => {
            p.sp()?;
            Ok(K::Uid(p.seq_set()?))
        }
        "NOT" => {
            p.sp()?;
            Ok(K::Not(Box::new(search_key(p, depth + 1)?)))
        }
        "OR" => {
            p.sp()?;
            let a = search_key(p, depth + 1)?;
            p.sp()?;
            let b = search_key(p, depth + 1)?;
            Ok(K::Or(Box::new(a), Box::new(b)))
        }
        _ => p.err("unknown search key"),
    }
}

fn fetch_attrs(p: &mut Parser<'_>) -> PResult<Vec<FetchAttr>> {
    use FetchAttr as F;
    if p.keyword("ALL") {
        return Ok(vec![F::Flags, F::InternalDate, F::Rfc822Size, F::Envelope]);
    }
    if p.keyword("FAST") {
        return Ok(vec![F::Flags, F::InternalDate, F::Rfc822Size]);
    }
    if p.keyword("FULL") {
        return Ok(vec![
            F::Flags,
            F::InternalDate,
            F::Rfc822Size,
            F::Envelope,
            F::Body,
        ]);
    }
    if p.eat(b'(') {
        let mut attrs = Vec::new();
        loop {
            attrs.push(fetch_attr(p)?);
            if p.eat(b')') {
                return Ok(attrs);
            }
            p.sp()?;
        }
    }
    Ok(vec![fetch_attr(p)?])
}

fn fetch_attr(p: &mut Parser<'_>) -> PResult<FetchAttr> {
    use FetchAttr as F;
    let name = p.take_while(|b| b.is_ascii_alphanumeric() || b == b'.');
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    Ok(match name.as_str() {
        "FLAGS" => F::Flags,
        "INTERNALDATE" => F::InternalDate,
        "RFC822.SIZE" => F::Rfc822Size,
        "UID" => F::Uid,
        "ENVELOPE" => F::Envelope,
        "BODYSTRUCTURE" => F::BodyStructure,
        "RFC822" => F::Rfc822,
        "RFC822.HEADER" => F::Rfc822Header,
        "RFC822.TEXT" => F::Rfc822Text,
        "MODSEQ" => F::ModSeq,
        "BODY" if p.peek() != Some(b'[') => F::Body,
        "BODY" | "BODY.PEEK" => {
            let section = section(p)?;
            F::BodySection {
                section,
                partial: partial(p)?,
                peek: name == "BODY.PEEK",
            }
        }
        "BINARY" | "BINARY.PEEK" | "BINARY.SIZE" => {
            p.expect(b'[', "expected [")?;
            let path = part_path(p)?;
            p.expect(b']', "expected ]")?;
            if name == "BINARY.SIZE" {
                F::BinarySize { path }
            } else {
                F::Binary {
                    path,
                    partial: partial(p)?,
                    peek: name == "BINARY.PEEK",
                }
            }
        }
        _ => return p.err("unknown FETCH attribute"),
    })
}

fn part_path(p: &mut Parser<'_>) -> PResult<Vec<u32>> {
    let mut path = Vec::new();
    while p.peek().is_some_and(|b| b.is_ascii_digit()) {
        let n = p.number32()?;
        if n == 0 {
            return p.err("part numbers start at 1");
        }
        path.push(n);
        if !(p.peek() == Some(b'.') && p.input.get(p.pos + 1).is_some_and(u8::is_ascii_digit)) {
            break;
        }
        p.pos += 1;
    }
    Ok(path)
}

fn section(p: &mut Parser<'_>) -> PResult<Section> {
    p.expect(b'[', "expected [")?;
    let path = part_path(p)?;
    if !path.is_empty() && !p.eat(b'.') {
        p.expect(b']', "expected ]")?;
        return Ok(Section {
            path,
            text: SectionText::Full,
        });
    }
    let word = p.take_while(|b| b.is_ascii_alphabetic() || b == b'.');
    let word = String::from_utf8_lossy(word).to_ascii_uppercase();
    let text = match word.as_str() {
        "" if path.is_empty() => SectionText::Full,
        "HEADER" => SectionText::Header,
        "TEXT" => SectionText::Text,
        "MIME" if !path.is_empty() => SectionText::Mime,
        "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
            p.sp()?;
            p.expect(b'(', "expected header list")?;
            let mut names = Vec::new();
            loop {
                names.push(String::from_utf8_lossy(&p.astring()?).into_owned());
                if p.eat(b')') {
                    break;
                }
                p.sp()?;
            }
            if word == "HEADER.FIELDS" {
                SectionText::HeaderFields(names)
            } else {
                SectionText::HeaderFieldsNot(names)
            }
        }
        _ => return p.err("invalid section"),
    };
    p.expect(b']', "expected ]")?;
    Ok(Section { path, text })
}

fn partial(p: &mut Parser<'_>) -> PResult<Option<(u32, u32)>> {
    if !p.eat(b'<') {
        return Ok(None);
    }
    let origin = p.number32()?;
    p.expect(b'.', "expected .")?;
    let count = p.number32()?;
    if count == 0 {
        return p.err("partial count must be positive");
    }
    p.expect(b'>', "expected >")?;
    Ok(Some((origin, count)))
}

// ------------------------------------------------------------------ encoding

/// Appends `s` as an IMAP string: quoted when every byte allows it, else a literal
/// (RFC 3501 §4.3; CLIENTS.md §F.14: CR, LF, `"`, `\` or 8-bit bytes go as literals).
pub fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() < 1024
        && s.iter()
            .all(|&b| b != b'\r' && b != b'\n' && b != 0 && b < 0x80);
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        push_literal(out, s);
    }
}

/// Appends `s` as a literal `{n}\r\n...`.
pub fn push_literal(out: &mut Vec<u8>, s: &[u8]) {
    let _ = write!(Lossy(out), "{{{}}}\r\n", s.len());
    out.extend_from_slice(s);
}

/// Appends an nstring: NIL or a string.
pub fn push_nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => push_string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends an astring for a mailbox name: an atom when possible, else a string.
pub fn push_astring(out: &mut Vec<u8>, s: &[u8]) {
    if !s.is_empty() && s.iter().all(|&b| is_astring_char(b)) && !s.eq_ignore_ascii_case(b"NIL") {
        out.extend_from_slice(s);
    } else {
        push_string(out, s);
    }
}

/// A `fmt::Write` adapter over a byte vector.
pub struct Lossy<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Lossy<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> CommandBody {
        match parse_command(input.as_bytes()) {
            Ok(c) => c.body,
            Err(e) => panic!("{input:?}: {e:?}"),
        }
    }

    #[test]
    fn table_of_valid_commands() {
        let table: &[(&str, &str)] = &[
            ("a CAPABILITY\r\n", "CAPABILITY"),
            ("a noop", "NOOP"),
            ("a LOGIN bob \"pa ss\"", "LOGIN"),
            ("a LOGIN {3}\r\nbob {4+}\r\npass", "LOGIN"),
            ("a AUTHENTICATE PLAIN AGJvYgBwYXNz", "AUTHENTICATE"),
            ("a ID (\"name\" \"x\" \"version\" NIL)", "ID"),
            ("a ID NIL", "ID"),
            ("a ENABLE CONDSTORE IMAP4rev2", "ENABLE"),
            ("a SELECT INBOX", "SELECT"),
            ("a SELECT INBOX (CONDSTORE)", "SELECT"),
            ("a SELECT INBOX (QRESYNC (1 2 1:5) CONDSTORE)", "SELECT"),
            ("a EXAMINE \"Sent\"", "EXAMINE"),
            ("a LIST \"\" *", "LIST"),
            (
                "a LIST (SUBSCRIBED) \"\" (INBOX \"Sent\") RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))",
                "LIST",
            ),
            ("a LSUB \"\" %", "LSUB"),
            (
                "a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE)",
                "STATUS",
            ),
            (
                "a APPEND INBOX (\\Seen) \" 1-Jan-2026 00:00:00 +0000\" {3}\r\nabc",
                "APPEND",
            ),
            ("a APPEND INBOX {3+}\r\nabc", "APPEND"),
            (
                "a UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100>)",
                "FETCH",
            ),
            (
                "a FETCH 1,3:5 (BODY[1.2.MIME] BINARY.PEEK[1] BINARY.SIZE[2] RFC822.SIZE)",
                "FETCH",
            ),
            ("a FETCH 1 ALL", "FETCH"),
            ("a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)", "FETCH"),
            ("a STORE 1 +FLAGS ()", "STORE"),
            ("a UID STORE 1:2 -FLAGS.SILENT (\\Seen $Forwarded)", "STORE"),
            ("a STORE 1 FLAGS \\Seen", "STORE"),
            ("a COPY 1:* Trash", "COPY"),
            ("a UID MOVE 4 \"Archive\"", "MOVE"),
            ("a UID EXPUNGE 1:3", "EXPUNGE"),
            (
                "a SEARCH CHARSET UTF-8 OR FROM bob (SUBJECT \"x y\" NOT SEEN) 1:3",
                "SEARCH",
            ),
            (
                "a UID SEARCH UID 1,3,5:7 SINCE 1-Jan-2020 LARGER 10 HEADER Message-ID \"<a@b>\"",
                "SEARCH",
            ),
            ("a SEARCH RETURN (MIN COUNT) ALL", "SEARCH"),
            ("a IDLE", "IDLE"),
            ("a RENAME a b", "RENAME"),
            ("a NAMESPACE", "NAMESPACE"),
        ];
        for (input, name) in table {
            assert_eq!(ok(input).name(), *name, "{input}");
        }
    }

    #[test]
    fn table_of_malformed_commands() {
        let table: &[&str] = &[
            "",
            "*",
            "+ NOOP",
            "a",
            "a FOO",
            "a LOGIN bob",
            "a SELECT",
            "a FETCH 0 FLAGS",
            "a FETCH 1 (FLAGS",
            "a FETCH 1 BODY[1.0]",
            "a FETCH 1 BODY[]<0.0>",
            "a STORE 1 FLAGS (\\Seen",
            "a SEARCH FOO",
            "a SEARCH CHARSET KOI8-R ALL",
            "a LOGIN {5}\r\nab",
            "a NOOP extra",
            "a UID NOOP",
            "a APPEND INBOX \"bad date\" {1}\r\nx",
            "a LIST (RECURSIVEMATCH) \"\" *",
        ];
        for input in table {
            assert!(parse_command(input.as_bytes()).is_err(), "{input:?}");
        }
        assert_eq!(parse_command(b"* NOOP"), Err(ParseError::NoTag));
        assert_eq!(
            parse_command(b"t1 FROB"),
            Err(ParseError::UnknownCommand("t1".into()))
        );
    }

    #[test]
    fn literal_suffixes() {
        assert_eq!(literal_suffix(b"a LOGIN {5}"), Some((5, true)));
        assert_eq!(literal_suffix(b"a APPEND x {12+}"), Some((12, false)));
        assert_eq!(literal_suffix(b"a LOGIN {}"), None);
        assert_eq!(literal_suffix(b"a LOGIN {x}"), None);
        assert_eq!(literal_suffix(b"a NOOP"), None);
    }

    #[test]
    fn fetch_sections() {
        let CommandBody::Fetch { attrs, .. } =
            ok("a FETCH 1 (BODY.PEEK[2.1.HEADER.FIELDS.NOT (To)]<5.10> BODY[] BODY[TEXT])")
        else {
            panic!()
        };
        assert_eq!(
            attrs[0],
            FetchAttr::BodySection {
                section: Section {
                    path: vec![2, 1],
                    text: SectionText::HeaderFieldsNot(vec!["To".into()])
                },
                partial: Some((5, 10)),
                peek: true
            }
        );
        assert_eq!(
            attrs[2],
            FetchAttr::BodySection {
                section: Section {
                    path: vec![],
                    text: SectionText::Text
                },
                partial: None,
                peek: false
            }
        );
    }

    #[test]
    fn dates_round_trip() {
        let (t, off) = parse_date_time(b"01-Jan-2026 00:00:00 +0000").expect("valid");
        assert_eq!(t, 1_767_225_600);
        assert_eq!(format_date_time(t, off), "01-Jan-2026 00:00:00 +0000");
        let (t, off) = parse_date_time(b" 5-Mar-2024 13:04:05 -0130").expect("valid");
        assert_eq!(format_date_time(t, off), "05-Mar-2024 13:04:05 -0130");
        assert!(parse_date_time(b"32-Jan-2026 00:00:00 +0000").is_none());
    }

    /// Found by the `imap_command` fuzz target: zone minutes of 60..99 were accepted, and the
    /// offset then formatted as a five-digit zone, outside the date-time grammar.
    #[test]
    fn date_time_zone_minutes_above_59_are_refused() {
        assert!(parse_date_time(b"17-Jul-1996 02:44:25 -9971").is_none());
        assert!(parse_date_time(b"17-Jul-1996 02:44:25 +0060").is_none());
        let (t, off) = parse_date_time(b"17-Jul-1996 02:44:25 -9959").expect("valid");
        assert_eq!(format_date_time(t, off), "17-Jul-1996 02:44:25 -9959");
    }

    /// Seen while fixing the above: a zone with a non-ASCII character (five bytes) made
    /// `&zone[1..3]` split the character and panic the session.
    #[test]
    fn date_time_zone_with_non_ascii_does_not_panic() {
        assert!(parse_date_time("17-Jul-1996 02:44:25 +1\u{e9}2".as_bytes()).is_none());
        assert!(parse_date_time(b"17-Jul-1996 02:44:25 -+1+1").is_none());
    }

    #[test]
    fn every_prefix_of_a_literal_command_fails_cleanly() {
        let full = b"a APPEND INBOX (\\Seen) {5}\r\nhello";
        for i in 0..full.len() {
            assert!(parse_command(&full[..i]).is_err(), "prefix {i}");
        }
        assert!(parse_command(full).is_ok());
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        push_string(&mut out, b"a \"b\" \\c");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\c\"");
        out.clear();
        push_string(&mut out, b"line\r\nbreak");
        assert_eq!(out, b"{11}\r\nline\r\nbreak");
        out.clear();
        push_string(&mut out, "caf\u{e9}".as_bytes());
        assert_eq!(out, b"{5}\r\ncaf\xc3\xa9");
    }
}

#[cfg(test)]
mod list_regressions {
    use super::*;

    #[test]
    fn imaplib_list_forms_parse() {
        for input in [
            "a LIST \"\" *",
            "a LIST Projects *",
            "a LIST (SPECIAL-USE) \"\" \"*\" RETURN (STATUS (MESSAGES UIDNEXT SIZE))",
            "a LSUB \"\" *",
        ] {
            assert!(parse_command(input.as_bytes()).is_ok(), "{input}");
        }
    }
}
