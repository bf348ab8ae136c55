//! One IMAP session: the connection, the state machine (RFC 3501 §3) and one function per
//! command. Semantics sit here, between the wire and the store.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use net::{Connection, NetError, ReadEvent};
use store::{AccountInfo, Change, FlagOp, Flags, MailboxId, StoreError, Uid};
use tokio::sync::broadcast;

use crate::ImapServer;
use crate::index::{self, Msg};
use crate::mailbox_name::{self, DELIMITER, NameError};
use crate::mime::{self, MimeMessage};
use crate::search;
use crate::seqset::{SeqSet, compact, format_ranges, missing};
use crate::wire::{
    self, Command, CommandBody, FetchAttr, ListOptions, Lossy, ParseError, SectionText, StatusItem,
    StoreMode, push_literal, push_string,
};

/// Bytes of whole messages SEARCH BODY/TEXT reads per store call.
const BODY_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// Flush the output buffer once it holds this much.
const FLUSH_AT: usize = 64 * 1024;

/// Common alias names clients use for the special-use mailboxes (CLIENTS.md §F.2).
const ALIASES: &[(&str, store::SpecialUse)] = &[
    ("Sent Items", store::SpecialUse::Sent),
    ("Sent Messages", store::SpecialUse::Sent),
    ("Deleted Items", store::SpecialUse::Trash),
    ("Deleted Messages", store::SpecialUse::Trash),
    ("Junk Mail", store::SpecialUse::Junk),
    ("Spam", store::SpecialUse::Junk),
];

/// How a command failed.
#[derive(Debug)]
enum CmdError {
    /// Tagged NO with this text (may start with a response code).
    No(String),
    /// Tagged BAD with this text.
    Bad(String),
    /// An internal failure: logged with a correlation id, generic NO to the client.
    Internal(String),
    /// The connection failed; close it.
    Io(NetError),
    /// End the session now (after LOGOUT's BYE, or a fatal protocol error).
    Close,
    /// The reply was already written (STARTTLS); nothing more to send.
    Silent,
}

impl From<NetError> for CmdError {
    fn from(e: NetError) -> Self {
        CmdError::Io(e)
    }
}

impl From<StoreError> for CmdError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => CmdError::No(format!("[NONEXISTENT] {m}")),
            StoreError::AlreadyExists(m) => CmdError::No(format!("[ALREADYEXISTS] {m}")),
            StoreError::Invalid(m) => CmdError::No(format!("[CANNOT] {m}")),
            StoreError::Conflict(m) => CmdError::No(format!("[CANNOT] {m}")),
            e @ StoreError::QuotaExceeded { .. } => CmdError::No(format!("[OVERQUOTA] {e}")),
            other => CmdError::Internal(other.to_string()),
        }
    }
}

impl From<NameError> for CmdError {
    fn from(e: NameError) -> Self {
        CmdError::No(format!("[CANNOT] {e}"))
    }
}

type CmdResult = Result<String, CmdError>;

/// RFC 3501 §3 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotAuthenticated,
    Authenticated,
    Selected,
}

/// The selected mailbox.
#[derive(Debug)]
struct Selected {
    /// Store id.
    id: MailboxId,
    /// UIDVALIDITY at SELECT (the mailbox index is only shared for the same one).
    uid_validity: u32,
    /// Name (UTF-8).
    name: String,
    /// EXAMINE, or SELECT of a mailbox we may not change.
    read_only: bool,
    /// Messages in sequence order (index = seq - 1). Shared with the mailbox index (and other
    /// sessions) until this session changes something (`Arc::make_mut`).
    msgs: Arc<Vec<Msg>>,
    /// The change feed said something changed here.
    dirty: bool,
    /// Keywords announced in FLAGS.
    keywords: BTreeSet<String>,
    /// A lower bound of the mailbox's HIGHESTMODSEQ (RFC 7162) for `msgs`: every change
    /// with a MODSEQ up to it is reflected there (expunges at least marked). Read from
    /// the store *before* the messages, so a concurrent change is re-read, never missed.
    highest_modseq: u64,
    /// `size`, `date` and `tz` of `msgs` are filled in (SELECT leaves them out; messages
    /// added later always have them).
    details: bool,
    /// The highest UID this session claimed as \Recent here (0: none), written to the store
    /// when it leaves the mailbox (`leave_mailbox`).
    recent_claim: u32,
}

/// What reading a command produced.
enum Input {
    Command(Vec<u8>),
    /// Answered already (line too long, literal refused): read the next command.
    Refused,
    Closed,
}

/// One IMAP connection.
struct Session<'a> {
    /// Shared server state: store, throttle, config.
    server: &'a ImapServer,
    /// The client connection.
    conn: Connection,
    /// Responses not yet written.
    out: Vec<u8>,
    /// RFC 3501 state.
    state: State,
    /// The logged-in account.
    account: Option<AccountInfo>,
    /// The account's change feed, once logged in.
    feed: Option<broadcast::Receiver<Change>>,
    /// The selected mailbox.
    selected: Option<Selected>,
    /// Malformed commands in a row.
    bad_in_row: u32,
    /// Commands handled (for correlation ids).
    commands: u64,
    /// RFC 7162 §3.1: a CONDSTORE-enabling command was seen; FETCH responses carrying
    /// FLAGS also carry MODSEQ from now on.
    condstore: bool,
    /// RFC 7162 §3.2.3: `ENABLE QRESYNC` was seen; expunges are reported as VANISHED and
    /// unsolicited FETCH responses carry UID.
    qresync: bool,
}

/// Runs a session to its end.
pub(crate) async fn run(server: &ImapServer, conn: Connection) {
    let mut s = Session {
        server,
        conn,
        out: Vec::new(),
        state: State::NotAuthenticated,
        account: None,
        feed: None,
        selected: None,
        bad_in_row: 0,
        commands: 0,
        condstore: false,
        qresync: false,
    };
    s.conn.set_idle_timeout(server.config.preauth_idle_timeout);
    let caps = s.capabilities();
    s.untagged(&format!(
        "OK [CAPABILITY {caps}] {} Tessera IMAP ready",
        server.config.hostname
    ));
    if s.flush().await.is_err() {
        return;
    }
    if let Err(e) = s.main_loop().await {
        tracing::debug!(error = ?e, "session ended");
    }
    let _ = s.flush().await;
    s.conn.close().await;
    // After the client has its last answer: nothing waits for this.
    s.leave_mailbox().await;
}

impl Session<'_> {
    /// Deselects the mailbox, writing this session's \Recent claim to the store, so a later
    /// session (also after a restart) does not see those messages as \Recent again (RFC 3501
    /// §2.3.2). A failure to write is logged, not reported: the client asked for something
    /// else, and the cost is only that some messages may show \Recent once more.
    async fn leave_mailbox(&mut self) {
        let Some(sel) = self.selected.take() else {
            return;
        };
        if sel.recent_claim == 0 {
            return;
        }
        let Some(account) = self.account.as_ref().map(|a| a.id) else {
            return;
        };
        if let Err(e) = self
            .server
            .store
            .set_recent_uid(account, sel.id, Uid(sel.recent_claim))
            .await
        {
            tracing::warn!(error = %e, "could not record which messages were \\Recent");
        }
    }

    fn untagged(&mut self, text: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> Result<(), NetError> {
        if !self.out.is_empty() {
            tracing::trace!(bytes = self.out.len(), "S: write");
            let out = std::mem::take(&mut self.out);
            self.conn.write_all(&out).await?;
        }
        self.conn.flush().await
    }

    async fn maybe_flush(&mut self) -> Result<(), NetError> {
        if self.out.len() >= FLUSH_AT {
            // The buffer keeps its capacity for the rest of the command; `flush` at its end
            // gives it back.
            self.conn.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    fn tls_ok(&self) -> bool {
        self.conn.is_tls() || self.server.config.allow_plaintext_auth
    }

    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE");
        match self.state {
            State::NotAuthenticated => {
                if self.conn.starttls_config().is_some() {
                    caps.push_str(" STARTTLS");
                }
                if self.tls_ok() {
                    caps.push_str(" AUTH=PLAIN");
                } else {
                    caps.push_str(" LOGINDISABLED");
                }
            }
            _ => caps.push_str(
                " NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN LIST-EXTENDED LIST-STATUS \
                 SPECIAL-USE BINARY ESEARCH STATUS=SIZE CONDSTORE QRESYNC",
            ),
        }
        caps
    }

    async fn main_loop(&mut self) -> Result<(), CmdError> {
        loop {
            self.flush().await?;
            let raw = match self.read_command().await? {
                Input::Command(raw) => raw,
                Input::Refused => {
                    if self.count_bad() {
                        return Ok(());
                    }
                    continue;
                }
                Input::Closed => return Ok(()),
            };
            let cmd = match wire::parse_command(&raw) {
                Ok(cmd) => cmd,
                Err(e) => {
                    tracing::debug!(error = %e, "malformed command");
                    match e.tag() {
                        Some(tag) => {
                            let msg = match &e {
                                ParseError::UnknownCommand(_) => "Unknown command".to_string(),
                                other => format!("Syntax error: {other}"),
                            };
                            let tag = tag.to_string();
                            self.tagged(&tag, "BAD", &msg);
                        }
                        None => self.untagged("BAD Syntax error: missing or invalid tag"),
                    }
                    if self.count_bad() {
                        return Ok(());
                    }
                    continue;
                }
            };
            self.commands += 1;
            let name = cmd.body.name();
            tracing::trace!(tag = %cmd.tag, command = name, "C: command");
            let tag = cmd.tag.clone();
            let result = self.dispatch(cmd).await;
            match result {
                Ok(text) => {
                    self.bad_in_row = 0;
                    self.tagged(&tag, "OK", &text);
                }
                Err(CmdError::No(text)) => {
                    self.bad_in_row = 0;
                    self.tagged(&tag, "NO", &text);
                }
                Err(CmdError::Bad(text)) => {
                    self.tagged(&tag, "BAD", &text);
                    if self.count_bad() {
                        return Ok(());
                    }
                }
                Err(CmdError::Internal(detail)) => {
                    let id = format!("{}.{}", self.conn.id(), self.commands);
                    tracing::error!(correlation = %id, command = name, %detail, "internal error");
                    self.tagged(&tag, "NO", &format!("[SERVERBUG] Internal error, id {id}"));
                }
                Err(CmdError::Io(e)) => return Err(CmdError::Io(e)),
                Err(CmdError::Silent) => self.bad_in_row = 0,
                Err(CmdError::Close) => {
                    self.flush().await?;
                    return Ok(());
                }
            }
        }
    }

    /// Counts a malformed command; true when the limit is reached (BYE sent).
    fn count_bad(&mut self) -> bool {
        self.bad_in_row += 1;
        if self.bad_in_row >= self.server.config.max_bad_commands {
            self.untagged("BYE Too many invalid commands");
            return true;
        }
        false
    }

    fn tagged(&mut self, tag: &str, status: &str, text: &str) {
        let _ = write!(Lossy(&mut self.out), "{tag} {status} {text}\r\n");
    }

    /// Reads one command: its line and any literals (RFC 3501 §4.3, RFC 7888).
    async fn read_command(&mut self) -> Result<Input, CmdError> {
        let cfg = &self.server.config;
        let (max_line, max_msg, max_cmd) =
            (cfg.max_line, cfg.max_message_size, cfg.max_command_size);
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let line = match self.conn.read_line(max_line).await? {
                ReadEvent::Line(l) => l,
                ReadEvent::TooLong => {
                    self.untagged("BAD [TOOBIG] Command line too long");
                    return Ok(Input::Refused);
                }
                ReadEvent::Eof => return Ok(Input::Closed),
                ReadEvent::Timeout => {
                    self.untagged("BYE Autologout; idle for too long");
                    return Ok(Input::Closed);
                }
                ReadEvent::Shutdown => {
                    self.untagged("BYE Server shutting down");
                    return Ok(Input::Closed);
                }
            };
            let content = line
                .strip_suffix(b"\r\n")
                .or_else(|| line.strip_suffix(b"\n"))
                .unwrap_or(&line);
            buf.extend_from_slice(content);
            buf.extend_from_slice(b"\r\n");
            let Some((n, sync)) = wire::literal_suffix(content) else {
                tracing::trace!(bytes = buf.len(), "C: command read");
                return Ok(Input::Command(buf));
            };
            let is_append = {
                let mut words = buf.split(|&b| b == b' ');
                let _tag = words.next();
                words
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
            };
            let limit = if is_append { max_msg } else { max_cmd };
            let tag = String::from_utf8_lossy(buf.split(|&b| b == b' ').next().unwrap_or(b"*"))
                .into_owned();
            if n > limit || (buf.len() as u64).saturating_add(n) > limit.saturating_add(max_cmd) {
                if sync {
                    // RFC 7888 §4 / RFC 9051 §7.1: refuse instead of sending the continuation;
                    // the client does not send the literal.
                    self.tagged(&tag, "NO", "[TOOBIG] Literal too large");
                    return Ok(Input::Refused);
                }
                // A non-synchronising literal is already on its way: do not read it.
                self.tagged(&tag, "BAD", "[TOOBIG] Literal too large");
                self.untagged("BYE Literal too large");
                return Ok(Input::Closed);
            }
            if sync {
                self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                self.flush().await?;
            }
            let len = usize::try_from(n).map_err(|_| CmdError::Close)?;
            match self.conn.read_exact_bytes(len).await? {
                Some(bytes) => buf.extend_from_slice(&bytes),
                None => return Ok(Input::Closed),
            }
        }
    }

    fn need_auth(&self) -> Result<(), CmdError> {
        match self.state {
            State::NotAuthenticated => Err(CmdError::Bad(
                "Command not valid before login (authenticated state required)".into(),
            )),
            _ => Ok(()),
        }
    }

    fn need_selected(&self) -> Result<(), CmdError> {
        match self.state {
            State::Selected => Ok(()),
            _ => Err(CmdError::Bad(
                "No mailbox selected (selected state required)".into(),
            )),
        }
    }

    fn account_id(&self) -> Result<store::AccountId, CmdError> {
        self.account
            .as_ref()
            .map(|a| a.id)
            .ok_or_else(|| CmdError::Bad("not logged in".into()))
    }

    async fn dispatch(&mut self, cmd: Command) -> CmdResult {
        use CommandBody as C;
        let tag = cmd.tag;
        match cmd.body {
            C::Capability => {
                let caps = self.capabilities();
                self.untagged(&format!("CAPABILITY {caps}"));
                self.sync_if_selected(true).await?;
                Ok("CAPABILITY completed".into())
            }
            C::Noop | C::Check => {
                self.sync_if_selected(true).await?;
                Ok("NOOP completed".into())
            }
            C::Logout => {
                self.untagged("BYE Tessera IMAP logging out");
                self.tagged(&tag, "OK", "LOGOUT completed");
                Err(CmdError::Close)
            }
            C::Id(_) => {
                // CLIENTS.md §F.9: a well-formed ID response before the tagged OK.
                self.untagged(&format!(
                    "ID (\"name\" \"Tessera\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                Ok("ID completed".into())
            }
            C::StartTls => self.cmd_starttls(&tag).await,
            C::Login { user, password } => {
                if self.state != State::NotAuthenticated {
                    return Err(CmdError::Bad("Already logged in".into()));
                }
                if !self.tls_ok() {
                    // RFC 3501 §6.2.3 / LOGINDISABLED: no password in clear.
                    return Err(CmdError::No(
                        "[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS".into(),
                    ));
                }
                self.login(&user, password.expose()).await
            }
            C::Authenticate { mechanism, initial } => {
                self.cmd_authenticate(&mechanism, initial).await
            }
            C::Enable(caps) => {
                self.need_auth()?;
                // CLIENTS.md §F.8: always answer with * ENABLED, listing what this command
                // enabled (RFC 5161 §3.1).
                let mut enabled = String::from("ENABLED");
                for cap in &caps {
                    match cap.as_str() {
                        "CONDSTORE" => {
                            self.enable_condstore();
                            enabled.push_str(" CONDSTORE");
                        }
                        // RFC 7162 §3.2.3: QRESYNC implies CONDSTORE.
                        "QRESYNC" => {
                            self.enable_condstore();
                            self.qresync = true;
                            enabled.push_str(" QRESYNC");
                        }
                        _ => {}
                    }
                }
                self.untagged(&enabled);
                Ok("ENABLE completed".into())
            }
            C::Select {
                mailbox,
                examine,
                condstore,
                qresync,
            } => {
                self.cmd_select(&mailbox, examine, condstore, qresync.as_ref())
                    .await
            }
            C::Create(name) => self.cmd_create(&name).await,
            C::Delete(name) => self.cmd_delete(&name).await,
            C::Rename(from, to) => self.cmd_rename(&from, &to).await,
            C::Subscribe(name) => self.cmd_subscribe(&name, true).await,
            C::Unsubscribe(name) => self.cmd_subscribe(&name, false).await,
            C::List {
                reference,
                patterns,
                options,
            } => self.cmd_list(&reference, &patterns, &options, false).await,
            C::Lsub { reference, pattern } => {
                let opts = ListOptions {
                    subscribed: true,
                    ..ListOptions::default()
                };
                self.cmd_list(&reference, &[pattern], &opts, true).await
            }
            C::Namespace => {
                self.need_auth()?;
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                Ok("NAMESPACE completed".into())
            }
            C::Status { mailbox, items } => self.cmd_status(&mailbox, &items).await,
            C::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.cmd_append(&mailbox, &flags, date, message).await,
            C::Idle => self.cmd_idle().await,
            C::Close => self.cmd_close(true).await,
            C::Unselect => self.cmd_close(false).await,
            C::Expunge(uids) => self.cmd_expunge(uids.as_ref()).await,
            C::Search { uid, ret, key } => self.cmd_search(&tag, uid, ret, &key).await,
            C::Fetch {
                uid,
                set,
                attrs,
                changed_since,
                vanished,
            } => {
                self.cmd_fetch(uid, &set, &attrs, changed_since, vanished)
                    .await
            }
            C::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                self.cmd_store(uid, &set, mode, silent, &flags, unchanged_since)
                    .await
            }
            C::Copy { uid, set, mailbox } => self.cmd_copy(uid, &set, &mailbox, false).await,
            C::Move { uid, set, mailbox } => self.cmd_copy(uid, &set, &mailbox, true).await,
        }
    }
}

/// One LIST answer: name, attributes, and the mailbox id when it exists.
type ListLine = (String, Vec<String>, Option<MailboxId>);

/// The flag list a mailbox announces: system flags and the keywords in use.
fn flag_list(keywords: &BTreeSet<String>) -> String {
    let mut s = String::from("\\Answered \\Flagged \\Deleted \\Seen \\Draft");
    for k in keywords {
        s.push(' ');
        s.push_str(k);
    }
    s
}

/// An unsolicited `FETCH (FLAGS ...)` line: with MODSEQ once CONDSTORE is on (RFC 7162
/// §3.1.4), with UID once QRESYNC is on (§3.2.4).
/// The UIDs of the expunge log `gone` (ascending) that `keep` accepts, for `VANISHED
/// (EARLIER)`; `keep` gets each UID and the value of `*` (the largest UID present or logged).
fn logged_vanished(gone: &[Uid], max_uid: u32, keep: impl Fn(u32, u32) -> bool) -> String {
    let largest = gone.last().map_or(max_uid, |u| u.0.max(max_uid));
    let uids: Vec<u32> = gone
        .iter()
        .map(|u| u.0)
        .filter(|&u| keep(u, largest))
        .collect();
    compact(&uids)
}

fn fetch_flags_line(seq: usize, m: &Msg, condstore: bool, qresync: bool) -> String {
    let mut line = format!("{seq} FETCH (");
    if qresync {
        let _ = write!(line, "UID {} ", m.uid);
    }
    let _ = write!(line, "FLAGS ({})", flags_text(&m.flags, m.recent));
    if condstore {
        let _ = write!(line, " MODSEQ ({})", m.modseq);
    }
    line.push(')');
    line
}

/// `FLAGS (...)` written into `out` as [`flags_text`] spells the list.
fn push_flags(out: &mut Vec<u8>, flags: &Flags, recent: bool) {
    out.extend_from_slice(b"FLAGS (");
    let mut first = true;
    let names = flags
        .keywords
        .iter()
        .map(String::as_str)
        .chain(recent.then_some("\\Recent"));
    let names = flags.system.names().map(|n| -> &str { n }).chain(names);
    for name in names {
        if !std::mem::take(&mut first) {
            out.push(b' ');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b')');
}

fn flags_text(flags: &Flags, recent: bool) -> String {
    let mut names = flags.names();
    if recent {
        names.push("\\Recent".into());
    }
    names.join(" ")
}

impl Session<'_> {
    // ------------------------------------------------------------ not authenticated

    async fn cmd_starttls(&mut self, tag: &str) -> CmdResult {
        if self.state != State::NotAuthenticated {
            return Err(CmdError::Bad("STARTTLS only before login".into()));
        }
        let Some(config) = self.conn.starttls_config() else {
            return Err(CmdError::Bad(
                "TLS is already active or not offered here".into(),
            ));
        };
        self.tagged(tag, "OK", "Begin TLS negotiation now");
        self.flush().await?;
        // RFC 3501 §6.2.1: pipelined plaintext is discarded by start_tls.
        if let Err(e) = self.conn.start_tls(config).await {
            tracing::debug!(error = %e, "STARTTLS handshake failed");
            return Err(CmdError::Close);
        }
        // Nothing to answer: the tagged OK was sent before the handshake.
        Err(CmdError::Silent)
    }

    async fn cmd_authenticate(
        &mut self,
        mechanism: &str,
        initial: Option<net::sasl::Secret<Vec<u8>>>,
    ) -> CmdResult {
        if self.state != State::NotAuthenticated {
            return Err(CmdError::Bad("Already logged in".into()));
        }
        if mechanism != "PLAIN" {
            return Err(CmdError::No("Unsupported authentication mechanism".into()));
        }
        if !self.tls_ok() {
            return Err(CmdError::No(
                "[PRIVACYREQUIRED] Authentication is disabled before STARTTLS".into(),
            ));
        }
        let response = match initial {
            // RFC 4959: "=" is an empty initial response.
            Some(ir) => ir.into_inner(),
            None => {
                self.out.extend_from_slice(b"+ \r\n");
                self.flush().await?;
                match self.conn.read_line(net::sasl::MAX_ENCODED_LEN + 2).await? {
                    ReadEvent::Line(l) => l,
                    ReadEvent::TooLong => return Err(CmdError::Bad("Response too long".into())),
                    _ => return Err(CmdError::Close),
                }
            }
        };
        let creds = match net::sasl::decode_plain(&response) {
            Ok(c) => c,
            Err(net::sasl::SaslError::Cancelled) => {
                return Err(CmdError::Bad("Authentication cancelled".into()));
            }
            Err(e) => return Err(CmdError::Bad(format!("Invalid SASL response: {e}"))),
        };
        if let Some(authz) = &creds.authzid
            && !authz.is_empty()
            && authz != &creds.authcid
        {
            return Err(CmdError::No(
                "[AUTHORIZATIONFAILED] Proxy authorisation is not supported".into(),
            ));
        }
        self.login(&creds.authcid, creds.password.expose()).await
    }

    async fn login(&mut self, user: &str, password: &str) -> CmdResult {
        let ip = self.conn.peer().ip();
        let throttle = &self.server.throttle;
        let delay = throttle.delay_for(user, ip);
        let account = self.server.store.authenticate(user, password).await?;
        let Some(account) = account else {
            throttle.record_failure(user, ip);
            tokio::time::sleep(delay).await;
            return Err(CmdError::No(
                "[AUTHENTICATIONFAILED] Authentication failed".into(),
            ));
        };
        throttle.record_success(user, ip);
        self.conn.set_user(&account.address.to_string());
        self.feed = Some(self.server.store.subscribe(account.id));
        self.account = Some(account);
        self.state = State::Authenticated;
        self.conn
            .set_idle_timeout(self.server.config.auth_idle_timeout);
        // CLIENTS.md §F.1: capabilities after login.
        Ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
    }

    // ------------------------------------------------------------ authenticated

    fn parse_name(&self, raw: &[u8]) -> Result<String, CmdError> {
        Ok(mailbox_name::parse_name(raw, false)?)
    }

    /// The mailbox called `name`, or the special-use mailbox an alias name stands for.
    async fn lookup(&self, name: &str) -> Result<Option<store::MailboxInfo>, CmdError> {
        let account = self.account_id()?;
        let store = &self.server.store;
        if let Some(m) = store.mailbox(account, name).await? {
            return Ok(Some(m));
        }
        if let Some((_, use_)) = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(name)) {
            let all = store.list_mailboxes(account).await?;
            return Ok(all.into_iter().find(|m| m.special_use == Some(*use_)));
        }
        Ok(None)
    }

    async fn cmd_select(
        &mut self,
        raw: &[u8],
        examine: bool,
        condstore: bool,
        qresync: Option<&wire::QresyncParams>,
    ) -> CmdResult {
        self.need_auth()?;
        if qresync.is_some() && !self.qresync {
            // RFC 7162 §3.2.5: the QRESYNC parameter needs a prior ENABLE QRESYNC.
            return Err(CmdError::Bad(
                "QRESYNC parameter without ENABLE QRESYNC".into(),
            ));
        }
        if self.selected.is_some() {
            // RFC 7162 §3.2.11: responses after this belong to the new mailbox.
            self.untagged("OK [CLOSED] Previous mailbox closed");
        }
        // RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected.
        self.leave_mailbox().await;
        self.state = State::Authenticated;
        if condstore {
            // RFC 7162 §3.1.8: SELECT (CONDSTORE) is a CONDSTORE-enabling command.
            self.enable_condstore();
        }
        let name = self.parse_name(raw)?;
        let Some(info) = self.lookup(&name).await? else {
            return Err(CmdError::No("[NONEXISTENT] No such mailbox".into()));
        };
        let snapshot = self.mailbox_index(&info).await?;
        let max_uid = snapshot.msgs.last().map_or(0, |m| m.uid);
        let claimed = self
            .server
            .claim_recent(info.id, max_uid, !examine, info.recent_uid.0);
        let recent_claim = if !examine && max_uid > claimed {
            max_uid
        } else {
            0
        };
        let mut msgs = snapshot.msgs.clone();
        drop(snapshot);
        if claimed < max_uid {
            // Some messages are \Recent for this session only: a private copy.
            for m in Arc::make_mut(&mut msgs).iter_mut().rev() {
                if m.uid <= claimed {
                    break;
                }
                m.recent = true;
            }
        }
        let mut keywords = BTreeSet::new();
        for m in msgs.iter().filter(|m| !m.flags.keywords.is_empty()) {
            keywords.extend(m.flags.keywords.iter().cloned());
        }
        let flags = flag_list(&keywords);
        self.untagged(&format!("FLAGS ({flags})"));
        if examine {
            self.untagged("OK [PERMANENTFLAGS ()] Read-only mailbox");
        } else {
            self.untagged(&format!(
                "OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted"
            ));
        }
        self.untagged(&format!("{} EXISTS", msgs.len()));
        let recent = msgs.iter().filter(|m| m.recent).count();
        self.untagged(&format!("{recent} RECENT"));
        if let Some(pos) = msgs
            .iter()
            .position(|m| !m.flags.system.contains(store::SystemFlags::SEEN))
        {
            self.untagged(&format!("OK [UNSEEN {}] First unseen", pos + 1));
        }
        self.untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            info.uid_validity.0
        ));
        self.untagged(&format!(
            "OK [UIDNEXT {}] Predicted next UID",
            info.uid_next.0
        ));
        // RFC 7162 §3.1.2.1: HIGHESTMODSEQ with every successful SELECT/EXAMINE. `info` was
        // read before the messages, so the value never claims a change `msgs` lacks.
        let highest_modseq = info.highest_modseq.0;
        self.untagged(&format!("OK [HIGHESTMODSEQ {highest_modseq}] Highest"));
        self.selected = Some(Selected {
            id: info.id,
            uid_validity: info.uid_validity.0,
            name: info.name,
            read_only: examine,
            msgs,
            dirty: false,
            keywords,
            highest_modseq,
            details: false,
            recent_claim,
        });
        self.state = State::Selected;
        if let Some(q) = qresync
            && q.uid_validity == info.uid_validity.0
        {
            self.qresync_report(q, info.uid_next.0).await?;
        }
        Ok(if examine {
            "[READ-ONLY] EXAMINE completed".into()
        } else {
            "[READ-WRITE] SELECT completed".into()
        })
    }

    /// The messages of `info` as of (at least) its HIGHESTMODSEQ: the shared snapshot
    /// brought forward by what changed since it was taken, or a fresh read of the store
    /// (`index` explains why this is never staler than the store at `info`'s read).
    async fn mailbox_index(
        &self,
        info: &store::MailboxInfo,
    ) -> Result<Arc<index::MailboxIndex>, CmdError> {
        let account = self.account_id()?;
        let store = &self.server.store;
        let cache = &self.server.index;
        let hms = info.highest_modseq.0;
        if let Some(snap) = cache.get((account, info.id), info.uid_validity.0) {
            if snap.modseq >= hms {
                return Ok(snap);
            }
            let since = store::ModSeq(snap.modseq);
            // When the expunge log no longer reaches back to the snapshot (garbage
            // collection bounds it), the mailbox is read whole below.
            if let Some(gone) = store.expunged_since(account, info.id, since).await? {
                let gone: Vec<u32> = gone.into_iter().map(|u| u.0).collect();
                let changed = store
                    .messages_changed_since(account, info.id, since)
                    .await?;
                let next = Arc::new(snap.advanced(hms, &changed, &gone));
                cache.put((account, info.id), next.clone());
                return Ok(next);
            }
        }
        let metas = store.message_flags(account, info.id).await?;
        let snap = Arc::new(index::MailboxIndex {
            uid_validity: info.uid_validity.0,
            modseq: hms,
            msgs: Arc::new(
                metas
                    .into_iter()
                    .map(|m| Msg::new(m.uid.0, m.message, m.flags, m.modseq.0))
                    .collect(),
            ),
        });
        cache.put((account, info.id), snap.clone());
        Ok(snap)
    }

    /// RFC 7162 §3.2.5.1: after SELECT (QRESYNC ...) with a matching UIDVALIDITY, report
    /// what changed since the client's MODSEQ: `VANISHED (EARLIER)` for expunged UIDs, then
    /// FETCH (UID FLAGS MODSEQ) for changed messages; both limited to the known UIDs.
    async fn qresync_report(
        &mut self,
        q: &wire::QresyncParams,
        uid_next: u32,
    ) -> Result<(), CmdError> {
        let account = self.account_id()?;
        let sel = self.selected.as_ref().ok_or(CmdError::Close)?;
        let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
        let gone = self
            .server
            .store
            .expunged_since(account, sel.id, store::ModSeq(q.modseq))
            .await?;
        let in_known = |uid: u32, largest: u32| {
            q.known_uids
                .as_ref()
                .is_none_or(|set| set.contains(uid, largest))
        };
        let vanished = match gone {
            Some(gone) => logged_vanished(&gone, max_uid, in_known),
            // The expunge log no longer reaches back to the client's MODSEQ: every UID
            // below UIDNEXT that the client may know and the mailbox does not hold (a
            // client ignores UIDs it never had).
            None => {
                let largest = uid_next.saturating_sub(1).max(max_uid);
                let within = q.known_uids.as_ref().map(|k| k.ranges(largest));
                format_ranges(&missing(
                    sel.msgs.iter().map(|m| m.uid),
                    largest,
                    within.as_deref(),
                ))
            }
        };
        let mut lines = Vec::new();
        if !vanished.is_empty() {
            lines.push(format!("VANISHED (EARLIER) {vanished}"));
        }
        for (i, m) in sel.msgs.iter().enumerate() {
            if m.modseq > q.modseq && in_known(m.uid, max_uid) {
                lines.push(format!(
                    "{} FETCH (UID {} FLAGS ({}) MODSEQ ({}))",
                    i + 1,
                    m.uid,
                    flags_text(&m.flags, m.recent),
                    m.modseq
                ));
            }
        }
        for l in lines {
            self.untagged(&l);
            self.maybe_flush().await?;
        }
        Ok(())
    }

    /// Turns CONDSTORE on (RFC 7162 §3.1). When a mailbox is selected already, the client
    /// learns its HIGHESTMODSEQ now (§3.1.2.1), unless expunges are still withheld.
    fn enable_condstore(&mut self) {
        if self.condstore {
            return;
        }
        self.condstore = true;
        if let Some(hms) = self.announceable_modseq() {
            self.untagged(&format!("OK [HIGHESTMODSEQ {hms}] Highest"));
        }
    }

    /// The HIGHESTMODSEQ the client may be told: only when no expunge is withheld (a client
    /// resyncing from it later would never hear of those).
    fn announceable_modseq(&self) -> Option<u64> {
        let sel = self.selected.as_ref()?;
        (!sel.msgs.iter().any(|m| m.expunged)).then_some(sel.highest_modseq)
    }

    async fn cmd_create(&mut self, raw: &[u8]) -> CmdResult {
        self.need_auth()?;
        // RFC 3501 §6.3.3: a trailing delimiter declares intent to create children.
        let raw = raw.strip_suffix(b"/").unwrap_or(raw);
        let name = self.parse_name(raw)?;
        if name == "INBOX" {
            return Err(CmdError::No("[ALREADYEXISTS] INBOX always exists".into()));
        }
        let account = self.account_id()?;
        let store = &self.server.store;
        if store.mailbox(account, &name).await?.is_some() {
            return Err(CmdError::No("[ALREADYEXISTS] Mailbox exists".into()));
        }
        // Create missing superiors (RFC 3501 §6.3.3 SHOULD).
        let parts: Vec<&str> = name.split(DELIMITER).collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            if parent != "INBOX" && store.mailbox(account, &parent).await?.is_none() {
                match store.create_mailbox(account, &parent, None).await {
                    Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        store.create_mailbox(account, &name, None).await?;
        Ok("CREATE completed".into())
    }

    async fn cmd_delete(&mut self, raw: &[u8]) -> CmdResult {
        self.need_auth()?;
        let name = self.parse_name(raw)?;
        if name == "INBOX" {
            return Err(CmdError::No("[CANNOT] INBOX cannot be deleted".into()));
        }
        let account = self.account_id()?;
        let store = &self.server.store;
        let all = store.list_mailboxes(account).await?;
        let Some(doomed) = all.iter().find(|m| m.name == name) else {
            return Err(CmdError::No("[NONEXISTENT] No such mailbox".into()));
        };
        // Memory only: a recreated mailbox gets a new UIDVALIDITY, which the index checks.
        self.server.index.forget((account, doomed.id));
        self.server.headers.forget((account, doomed.id));
        let prefix = format!("{name}/");
        if all.iter().any(|m| m.name.starts_with(&prefix)) {
            return Err(CmdError::No(
                "[INUSE] Mailbox has children; delete them first".into(),
            ));
        }
        if self.selected.as_ref().is_some_and(|s| s.name == name) {
            self.leave_mailbox().await;
            self.state = State::Authenticated;
        }
        store.delete_mailbox(account, &name).await?;
        Ok("DELETE completed".into())
    }

    async fn cmd_rename(&mut self, from: &[u8], to: &[u8]) -> CmdResult {
        self.need_auth()?;
        let from = self.parse_name(from)?;
        let to = self.parse_name(to)?;
        let account = self.account_id()?;
        let store = &self.server.store;
        if to == "INBOX" {
            return Err(CmdError::No("[ALREADYEXISTS] INBOX exists".into()));
        }
        if store.mailbox(account, &to).await?.is_some() {
            return Err(CmdError::No("[ALREADYEXISTS] Target mailbox exists".into()));
        }
        if from == "INBOX" {
            // RFC 3501 §6.3.5: move every message of INBOX to the new mailbox; INBOX stays,
            // empty, and its children are not renamed.
            let inbox = store
                .mailbox(account, "INBOX")
                .await?
                .ok_or_else(|| CmdError::Internal("account has no INBOX".into()))?;
            let target = store.create_mailbox(account, &to, None).await?;
            let uids: Vec<Uid> = store
                .messages(account, inbox.id)
                .await?
                .into_iter()
                .map(|m| m.uid)
                .collect();
            if !uids.is_empty() {
                store
                    .move_messages(account, inbox.id, &uids, target)
                    .await?;
            }
            if self.selected.as_ref().is_some_and(|s| s.id == inbox.id) {
                self.mark_dirty();
            }
            return Ok("RENAME completed".into());
        }
        if store.mailbox(account, &from).await?.is_none() {
            return Err(CmdError::No("[NONEXISTENT] No such mailbox".into()));
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(CmdError::No(
                "[CANNOT] Cannot move a mailbox into itself".into(),
            ));
        }
        store.rename_mailbox(account, &from, &to).await?;
        if let Some(sel) = self.selected.as_mut() {
            if sel.name == from {
                sel.name = to.clone();
            } else if let Some(rest) = sel.name.strip_prefix(&format!("{from}/")) {
                sel.name = format!("{to}/{rest}");
            }
        }
        Ok("RENAME completed".into())
    }

    async fn cmd_subscribe(&mut self, raw: &[u8], subscribe: bool) -> CmdResult {
        self.need_auth()?;
        let name = self.parse_name(raw)?;
        let account = self.account_id()?;
        match self
            .server
            .store
            .set_subscribed(account, &name, subscribe)
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound(_)) if !subscribe => {}
            Err(e) => return Err(e.into()),
        }
        Ok(if subscribe {
            "SUBSCRIBE completed".into()
        } else {
            "UNSUBSCRIBE completed".into()
        })
    }

    async fn cmd_list(
        &mut self,
        reference: &[u8],
        patterns: &[Vec<u8>],
        options: &ListOptions,
        lsub: bool,
    ) -> CmdResult {
        self.need_auth()?;
        let word = if lsub { "LSUB" } else { "LIST" };
        let reference = mailbox_name::decode_mutf7(reference)?;
        let account = self.account_id()?;
        let all = self.server.store.list_mailboxes(account).await?;
        // RFC 3501 §6.3.8: an empty pattern asks for the delimiter.
        if patterns.len() == 1 && patterns[0].is_empty() {
            self.untagged(&format!("{word} (\\Noselect) \"/\" \"\""));
            return Ok(format!("{word} completed"));
        }
        let mut pats = Vec::new();
        for p in patterns {
            let p = mailbox_name::decode_mutf7(p)?;
            let full = if reference.is_empty() || p.starts_with(DELIMITER) {
                p
            } else if reference.ends_with(DELIMITER) {
                format!("{reference}{p}")
            } else {
                format!("{reference}{DELIMITER}{p}")
            };
            pats.push(full);
        }
        let names: BTreeSet<&str> = all.iter().map(|m| m.name.as_str()).collect();
        // Implied parents (a/b exists without a) are listed as \Noselect / \NonExistent.
        let mut implied: BTreeSet<String> = BTreeSet::new();
        for m in &all {
            let parts: Vec<&str> = m.name.split(DELIMITER).collect();
            for i in 1..parts.len() {
                let parent = parts[..i].join("/");
                if !names.contains(parent.as_str()) {
                    implied.insert(parent);
                }
            }
        }
        let has_children = |name: &str| {
            let prefix = format!("{name}/");
            all.iter().any(|m| m.name.starts_with(&prefix))
        };
        let mut lines: Vec<ListLine> = Vec::new();
        for m in &all {
            if !pats
                .iter()
                .any(|p| mailbox_name::pattern_matches(p, &m.name))
            {
                continue;
            }
            if options.subscribed && !m.subscribed {
                continue;
            }
            if options.special_use_only && m.special_use.is_none() {
                continue;
            }
            let mut attrs = Vec::new();
            if !lsub {
                attrs.push(
                    if has_children(&m.name) {
                        "\\HasChildren"
                    } else {
                        "\\HasNoChildren"
                    }
                    .to_string(),
                );
                if (options.subscribed || options.return_subscribed) && m.subscribed {
                    attrs.push("\\Subscribed".into());
                }
                if let Some(u) = m.special_use {
                    attrs.push(u.attribute().into());
                }
            }
            lines.push((m.name.clone(), attrs, Some(m.id)));
        }
        if !options.subscribed && !options.special_use_only {
            for name in &implied {
                if pats.iter().any(|p| mailbox_name::pattern_matches(p, name)) {
                    let attrs = if options.extended {
                        vec!["\\NonExistent".to_string(), "\\HasChildren".to_string()]
                    } else {
                        vec!["\\Noselect".to_string(), "\\HasChildren".to_string()]
                    };
                    lines.push((name.clone(), attrs, None));
                }
            }
        }
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, attrs, id) in lines {
            let mut line = Vec::new();
            let _ = write!(Lossy(&mut line), "* {word} ({}) \"/\" ", attrs.join(" "));
            push_string(&mut line, mailbox_name::encode_mutf7(&name).as_bytes());
            line.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&line);
            if let (Some(items), Some(id)) = (&options.return_status, id) {
                self.push_status(&name, id, items).await?;
            }
            self.maybe_flush().await?;
        }
        Ok(format!("{word} completed"))
    }

    async fn push_status(
        &mut self,
        name: &str,
        id: MailboxId,
        items: &[StatusItem],
    ) -> Result<(), CmdError> {
        let account = self.account_id()?;
        let store = &self.server.store;
        let st = store.mailbox_status(account, id).await?;
        let mut parts = Vec::new();
        for item in items {
            let v = match item {
                StatusItem::Messages => u64::from(st.messages),
                StatusItem::Unseen => u64::from(st.unseen),
                StatusItem::UidNext => u64::from(st.uid_next.0),
                StatusItem::UidValidity => u64::from(st.uid_validity.0),
                StatusItem::Size => st.size,
                StatusItem::HighestModSeq => st.highest_modseq.0,
                StatusItem::Recent => {
                    let claimed = self.server.claim_recent(id, 0, false, st.recent_uid.0);
                    let n = if st.uid_next.0.saturating_sub(1) <= claimed {
                        0
                    } else {
                        store
                            .messages(account, id)
                            .await?
                            .iter()
                            .filter(|m| m.uid.0 > claimed)
                            .count()
                    };
                    n as u64
                }
            };
            parts.push(format!("{} {v}", item.name()));
        }
        let mut line = b"* STATUS ".to_vec();
        push_string(&mut line, mailbox_name::encode_mutf7(name).as_bytes());
        let _ = write!(Lossy(&mut line), " ({})\r\n", parts.join(" "));
        self.out.extend_from_slice(&line);
        Ok(())
    }

    async fn cmd_status(&mut self, raw: &[u8], items: &[StatusItem]) -> CmdResult {
        self.need_auth()?;
        if items.contains(&StatusItem::HighestModSeq) {
            // RFC 7162 §3.1: STATUS (HIGHESTMODSEQ) is a CONDSTORE-enabling command.
            self.enable_condstore();
        }
        let name = self.parse_name(raw)?;
        let Some(info) = self.lookup(&name).await? else {
            return Err(CmdError::No("[NONEXISTENT] No such mailbox".into()));
        };
        self.push_status(&info.name, info.id, items).await?;
        self.sync_if_selected(true).await?;
        Ok("STATUS completed".into())
    }

    async fn cmd_append(
        &mut self,
        raw: &[u8],
        flags: &[String],
        date: Option<(i64, i32)>,
        message: Vec<u8>,
    ) -> CmdResult {
        self.need_auth()?;
        let name = self.parse_name(raw)?;
        let Some(info) = self.lookup(&name).await? else {
            return Err(CmdError::No("[TRYCREATE] No such mailbox".into()));
        };
        if message.is_empty() {
            return Err(CmdError::No("[CANNOT] Empty message".into()));
        }
        let flags = Flags::from_names(flags.iter().map(String::as_str))
            .map_err(|e| CmdError::Bad(format!("Invalid flags: {e}")))?;
        let (internal_date, tz) = date.unwrap_or((store::unix_now(), 0));
        let account = self.account_id()?;
        let size = message.len() as u64;
        let appended = self
            .server
            .store
            .append(
                account,
                info.id,
                store::NewMessage {
                    bytes: std::sync::Arc::new(message),
                    flags: flags.clone(),
                    internal_date,
                    tz_offset_minutes: tz,
                },
            )
            .await?;
        if self.selected.as_ref().is_some_and(|s| s.id == info.id) {
            let msg = Msg {
                uid: appended.uid.0,
                message: appended.message,
                size,
                date: internal_date,
                tz,
                flags,
                modseq: appended.modseq.0,
                recent: false,
                expunged: false,
            };
            if !self.add_own_append(msg) {
                self.mark_dirty();
            }
        }
        self.sync_if_selected(true).await?;
        Ok(format!(
            "[APPENDUID {} {}] APPEND completed",
            appended.uid_validity.0, appended.uid.0
        ))
    }

    async fn cmd_idle(&mut self) -> CmdResult {
        self.need_auth()?;
        self.sync_if_selected(true).await?;
        self.out.extend_from_slice(b"+ idling\r\n");
        self.flush().await?;
        let mut feed = self.feed.take();
        let result = self.idle_loop(&mut feed).await;
        self.feed = feed;
        result
    }

    async fn idle_loop(&mut self, feed: &mut Option<broadcast::Receiver<Change>>) -> CmdResult {
        enum Ev {
            Line(Result<ReadEvent, NetError>),
            Change(bool),
        }
        loop {
            let ev = match feed.as_mut() {
                Some(rx) => tokio::select! {
                    r = self.conn.read_line(64) => Ev::Line(r),
                    c = rx.recv() => Ev::Change(match c {
                        Ok(change) => self.relevant(&change),
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => false,
                    }),
                },
                None => Ev::Line(self.conn.read_line(64).await),
            };
            match ev {
                Ev::Line(Ok(ReadEvent::Line(l))) => {
                    if l.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                        self.feed = feed.take();
                        self.sync_if_selected(true).await?;
                        *feed = self.feed.take();
                        return Ok("IDLE terminated".into());
                    }
                    return Err(CmdError::Bad("Expected DONE".into()));
                }
                Ev::Line(Ok(ReadEvent::TooLong)) => {
                    return Err(CmdError::Bad("Expected DONE".into()));
                }
                Ev::Line(Ok(ReadEvent::Shutdown)) => {
                    self.untagged("BYE Server shutting down");
                    return Err(CmdError::Close);
                }
                Ev::Line(Ok(ReadEvent::Timeout)) => {
                    self.untagged("BYE Autologout; idle for too long");
                    return Err(CmdError::Close);
                }
                Ev::Line(Ok(ReadEvent::Eof)) => return Err(CmdError::Close),
                Ev::Line(Err(e)) => return Err(CmdError::Io(e)),
                Ev::Change(relevant) => {
                    if relevant {
                        self.mark_dirty();
                    }
                    // Drain whatever else arrived, then report (RFC 2177: any untagged).
                    if let Some(rx) = feed.as_mut() {
                        loop {
                            match rx.try_recv() {
                                Ok(c) => {
                                    if self.relevant(&c) {
                                        self.mark_dirty();
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Lagged(_)) => self.mark_dirty(),
                                Err(_) => break,
                            }
                        }
                    }
                    self.sync_selected(true).await?;
                    self.flush().await?;
                }
            }
        }
    }

    // ------------------------------------------------------------ selected: updates

    fn mark_dirty(&mut self) {
        if let Some(s) = self.selected.as_mut() {
            s.dirty = true;
        }
    }

    fn relevant(&self, change: &Change) -> bool {
        let Some(sel) = &self.selected else {
            return false;
        };
        match change {
            Change::Appended { mailbox, .. }
            | Change::FlagsChanged { mailbox, .. }
            | Change::Expunged { mailbox, .. } => *mailbox == sel.id,
            Change::MailboxesChanged => false,
        }
    }

    /// Whether the feed's `changes` leave the selected mailbox's view as it is, so it need
    /// not be re-read: every change to it is already reflected in `msgs` (this session's
    /// own STORE or EXPUNGE, applied from the store's answer) and their MODSEQs follow on
    /// from `highest_modseq` without a gap. The writer gives each committed job touching a
    /// mailbox the next MODSEQ and publishes its changes before answering, so no gap means
    /// nobody else changed the mailbox meanwhile; HIGHESTMODSEQ then advances without a
    /// read. Anything else (another session's change, a gap) leaves it to `sync_selected`.
    fn absorb(&mut self, changes: &[Change]) -> bool {
        let Some(sel) = self.selected.as_mut() else {
            return true;
        };
        let mut hms = sel.highest_modseq;
        for c in changes {
            let (mailbox, uid, modseq) = match *c {
                Change::Appended {
                    mailbox,
                    uid,
                    modseq,
                }
                | Change::FlagsChanged {
                    mailbox,
                    uid,
                    modseq,
                }
                | Change::Expunged {
                    mailbox,
                    uid,
                    modseq,
                } => (mailbox, uid.0, modseq.0),
                Change::MailboxesChanged => continue,
            };
            // At or below `highest_modseq` a change is reflected already (its invariant).
            if mailbox != sel.id || modseq <= sel.highest_modseq {
                continue;
            }
            if modseq > hms + 1 {
                return false; // a MODSEQ this session has not seen a change for
            }
            hms = hms.max(modseq);
            let found = sel.msgs.binary_search_by_key(&uid, |m| m.uid);
            let reflected = match c {
                Change::Appended { .. } => found.is_ok(),
                Change::FlagsChanged { .. } => found.is_ok_and(|i| sel.msgs[i].modseq >= modseq),
                // Marked, or already announced and removed.
                _ => found.map_or(true, |i| sel.msgs[i].expunged),
            };
            if !reflected {
                return false;
            }
        }
        sel.highest_modseq = hms;
        true
    }

    /// Adds a message this session appended to its selected mailbox as a sync would (\Recent
    /// claim, new keywords, EXISTS and RECENT), without reading it back, when it is the very
    /// next change after what the session knows (its MODSEQ follows `highest_modseq`; see
    /// `absorb`). False when something else changed first: the caller re-reads.
    fn add_own_append(&mut self, mut msg: Msg) -> bool {
        let Some(sel) = self.selected.as_ref() else {
            return false;
        };
        if msg.modseq != sel.highest_modseq + 1 || sel.msgs.last().is_some_and(|m| m.uid >= msg.uid)
        {
            return false;
        }
        let read_only = sel.read_only;
        // The claim map has this mailbox since SELECT; a new UID is above any stored claim.
        let claimed = self.server.claim_recent(sel.id, msg.uid, !read_only, 0);
        msg.recent = msg.uid > claimed;
        let Some(sel) = self.selected.as_mut() else {
            return false;
        };
        if !read_only && msg.uid > claimed {
            sel.recent_claim = sel.recent_claim.max(msg.uid);
        }
        let mut new_keywords = false;
        for k in &msg.flags.keywords {
            new_keywords |= sel.keywords.insert(k.clone());
        }
        sel.highest_modseq = msg.modseq;
        Arc::make_mut(&mut sel.msgs).push(msg);
        let exists = sel.msgs.len();
        let recent = sel.msgs.iter().filter(|m| m.recent).count();
        if new_keywords {
            self.announce_keywords(read_only);
        }
        self.untagged(&format!("{exists} EXISTS"));
        self.untagged(&format!("{recent} RECENT"));
        true
    }

    /// FLAGS (and PERMANENTFLAGS when writable) after new keywords appeared.
    fn announce_keywords(&mut self, read_only: bool) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let flags = flag_list(&sel.keywords);
        self.untagged(&format!("FLAGS ({flags})"));
        if !read_only {
            self.untagged(&format!(
                "OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted"
            ));
        }
    }

    /// Drains the feed and, when something changed, reports it (RFC 3501 §7: unilateral
    /// EXISTS, EXPUNGE, FETCH FLAGS). EXPUNGE only when `allow_expunge`.
    async fn sync_if_selected(&mut self, allow_expunge: bool) -> Result<(), CmdError> {
        if let Some(rx) = self.feed.as_mut() {
            let mut dirty = false;
            let mut changes = Vec::new();
            loop {
                match rx.try_recv() {
                    Ok(c) => changes.push(c),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => dirty = true,
                    Err(_) => break,
                }
            }
            dirty |= !self.absorb(&changes);
            if dirty {
                self.mark_dirty();
            }
        }
        self.sync_selected(allow_expunge).await
    }

    async fn sync_selected(&mut self, allow_expunge: bool) -> Result<(), CmdError> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        let account = self.account_id()?;
        let mut announced_expunge = false;
        let sel_dirty = sel.dirty;
        if sel_dirty {
            let store = &self.server.store;
            let sel_id = sel.id;
            let read_only = sel.read_only;
            let known_modseq = sel.highest_modseq;
            let max_known = sel.msgs.last().map_or(0, |m| m.uid);
            // HIGHESTMODSEQ first: everything up to it is in what is read next.
            let info = store
                .mailbox(account, &sel.name)
                .await?
                .filter(|i| i.id == sel_id);
            let stored_recent = info.as_ref().map_or(0, |i| i.recent_uid.0);
            let (hms, changes, gone) = match info {
                // RFC 7162: only what changed since the last sync (new, flags, expunged),
                // taken from the shared mailbox index brought up to `info` (one session
                // reads the store's delta; the others find the index current). The index
                // reflects every change up to `info.highest_modseq`, read after anything
                // this session has seen, so a known message missing from it is expunged.
                Some(info) => {
                    let snap = self.mailbox_index(&info).await?;
                    let changes: Vec<store::MessageMeta> = snap
                        .msgs
                        .iter()
                        .filter(|m| m.modseq > known_modseq)
                        .map(|m| store::MessageMeta {
                            uid: Uid(m.uid),
                            message: m.message,
                            size: m.size,
                            internal_date: m.date,
                            tz_offset_minutes: m.tz,
                            flags: m.flags.clone(),
                            modseq: store::ModSeq(m.modseq),
                        })
                        .collect();
                    let mut gone = Vec::new();
                    let mut j = 0;
                    for m in sel.msgs.iter().filter(|m| !m.expunged) {
                        while snap.msgs.get(j).is_some_and(|s| s.uid < m.uid) {
                            j += 1;
                        }
                        if snap.msgs.get(j).is_none_or(|s| s.uid != m.uid) {
                            gone.push(m.uid);
                        }
                    }
                    (info.highest_modseq.0, changes, gone)
                }
                // Renamed or deleted under us: compare with the whole mailbox.
                None => {
                    let fresh = store.messages(account, sel_id).await?;
                    let present: BTreeSet<u32> = fresh.iter().map(|m| m.uid.0).collect();
                    let gone = sel
                        .msgs
                        .iter()
                        .map(|m| m.uid)
                        .filter(|u| !present.contains(u))
                        .collect();
                    (known_modseq, fresh, gone)
                }
            };
            let max_fresh = changes.last().map_or(0, |m| m.uid.0);
            let claimed = if max_fresh > max_known {
                self.server
                    .claim_recent(sel_id, max_fresh, !read_only, stored_recent)
            } else {
                u32::MAX
            };
            let (condstore, qresync) = (self.condstore, self.qresync);
            let Some(sel) = self.selected.as_mut() else {
                return Ok(());
            };
            if !read_only && max_fresh > claimed {
                sel.recent_claim = sel.recent_claim.max(max_fresh);
            }
            sel.dirty = false;
            sel.highest_modseq = sel.highest_modseq.max(hms);
            for uid in gone {
                if let Ok(i) = sel.msgs.binary_search_by_key(&uid, |m| m.uid) {
                    Arc::make_mut(&mut sel.msgs)[i].expunged = true;
                }
            }
            let mut out = Vec::new();
            let mut new_keywords = false;
            let mut added = 0;
            let mut details_lost = false;
            for f in changes {
                let uid = f.uid.0;
                if uid > max_known {
                    for k in &f.flags.keywords {
                        if sel.keywords.insert(k.clone()) {
                            new_keywords = true;
                        }
                    }
                    // Taken from the index without its size and date (`Msg::new`).
                    details_lost |= f.size == 0 && f.internal_date == 0;
                    Arc::make_mut(&mut sel.msgs).push(Msg {
                        uid,
                        message: f.message,
                        size: f.size,
                        date: f.internal_date,
                        tz: f.tz_offset_minutes,
                        flags: f.flags,
                        modseq: f.modseq.0,
                        recent: uid > claimed,
                        expunged: false,
                    });
                    added += 1;
                    continue;
                }
                let Ok(i) = sel.msgs.binary_search_by_key(&uid, |m| m.uid) else {
                    continue;
                };
                if sel.msgs[i].expunged || f.modseq.0 < sel.msgs[i].modseq {
                    continue;
                }
                let m = &mut Arc::make_mut(&mut sel.msgs)[i];
                m.modseq = m.modseq.max(f.modseq.0);
                if f.flags == m.flags {
                    continue;
                }
                m.flags = f.flags;
                for k in &m.flags.keywords {
                    if !sel.keywords.contains(k) {
                        sel.keywords.insert(k.clone());
                        new_keywords = true;
                    }
                }
                out.push(fetch_flags_line(i + 1, m, condstore, qresync));
            }
            if details_lost {
                sel.details = false;
            }
            if new_keywords {
                self.announce_keywords(read_only);
            }
            for line in out {
                self.untagged(&line);
            }
            if allow_expunge {
                announced_expunge = self.announce_expunges();
            }
            if added > 0 {
                let Some(sel) = self.selected.as_ref() else {
                    return Ok(());
                };
                let exists = sel.msgs.len();
                let recent = sel.msgs.iter().filter(|m| m.recent).count();
                self.untagged(&format!("{exists} EXISTS"));
                self.untagged(&format!("{recent} RECENT"));
            }
        } else if allow_expunge {
            announced_expunge = self.announce_expunges();
        }
        if sel_dirty {
            self.share_selected();
        }
        if announced_expunge
            && self.condstore
            && let Some(hms) = self.announceable_modseq()
        {
            // RFC 7162 §3.2.10: a client cannot learn the MODSEQ of an expunge otherwise.
            self.untagged(&format!("OK [HIGHESTMODSEQ {hms}] Highest"));
        }
        Ok(())
    }

    /// After a sync, shares the message list with the mailbox index again when this
    /// session holds nothing of its own in it (no \Recent, no withheld expunge), so idle
    /// sessions on one mailbox keep one copy: adopts the index's list when it is the same,
    /// or offers this list when it is newer (it reflects every change up to
    /// `highest_modseq`, like any snapshot; see `index`).
    fn share_selected(&mut self) {
        let cache = &self.server.index;
        let (Some(account), Some(sel)) = (self.account.as_ref(), self.selected.as_mut()) else {
            return;
        };
        let key = (account.id, sel.id);
        // A session that loaded sizes and dates keeps them (sharing would drop them).
        if sel.details || sel.msgs.iter().any(|m| m.recent || m.expunged) {
            return;
        }
        let snap = cache.get(key, sel.uid_validity);
        if let Some(snap) = &snap {
            if Arc::ptr_eq(&snap.msgs, &sel.msgs) {
                return;
            }
            if snap.msgs.len() == sel.msgs.len()
                && snap
                    .msgs
                    .iter()
                    .zip(sel.msgs.iter())
                    .all(|(a, b)| a.same_state(b))
            {
                sel.msgs = snap.msgs.clone();
                return;
            }
        }
        if snap.is_none_or(|s| s.modseq < sel.highest_modseq) {
            cache.put(
                key,
                Arc::new(index::MailboxIndex {
                    uid_validity: sel.uid_validity,
                    modseq: sel.highest_modseq,
                    msgs: sel.msgs.clone(),
                }),
            );
        }
    }

    /// Sends EXPUNGE for messages known to be gone, highest number first so every number
    /// sent is valid when the client reads it; after ENABLE QRESYNC one `VANISHED` with
    /// their UIDs instead (RFC 7162 §3.2.10). True when something was announced.
    fn announce_expunges(&mut self) -> bool {
        let qresync = self.qresync;
        let Some(sel) = self.selected.as_mut() else {
            return false;
        };
        if !sel.msgs.iter().any(|m| m.expunged) {
            return false;
        }
        let mut lines = Vec::new();
        let mut uids = Vec::new();
        for i in (0..sel.msgs.len()).rev() {
            if sel.msgs[i].expunged {
                uids.push(sel.msgs[i].uid);
                lines.push(format!("{} EXPUNGE", i + 1));
            }
        }
        Arc::make_mut(&mut sel.msgs).retain(|m| !m.expunged);
        if qresync {
            uids.reverse();
            self.untagged(&format!("VANISHED {}", compact(&uids)));
        } else {
            for l in lines {
                self.untagged(&l);
            }
        }
        true
    }

    // ------------------------------------------------------------ selected: commands

    /// Fills in the sizes and dates SELECT left out (RFC822.SIZE, INTERNALDATE, SEARCH
    /// LARGER/SMALLER/BEFORE/ON/SINCE). Messages gone from the store keep zeros: they are
    /// expunged and never answered with those values.
    async fn ensure_details(&mut self) -> Result<(), CmdError> {
        let account = self.account_id()?;
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        if sel.details {
            return Ok(());
        }
        let metas = self.server.store.messages(account, sel.id).await?;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let mut it = metas.into_iter().peekable();
        for m in Arc::make_mut(&mut sel.msgs).iter_mut() {
            while it.peek().is_some_and(|f| f.uid.0 < m.uid) {
                it.next();
            }
            if let Some(f) = it.peek()
                && f.uid.0 == m.uid
            {
                m.size = f.size;
                m.date = f.internal_date;
                m.tz = f.tz_offset_minutes;
            }
        }
        sel.details = true;
        Ok(())
    }

    /// Indices (seq - 1) of the messages a set names; UID sets skip missing UIDs.
    fn resolve_set(&self, set: &SeqSet, uid: bool) -> Result<Vec<usize>, CmdError> {
        let sel = self
            .selected
            .as_ref()
            .ok_or_else(|| CmdError::Bad("No mailbox selected".into()))?;
        let n = sel.msgs.len();
        if uid {
            let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
            Ok((0..n)
                .filter(|&i| set.contains(sel.msgs[i].uid, max_uid))
                .collect())
        } else {
            let count = u32::try_from(n).unwrap_or(u32::MAX);
            if set.exceeds(count) {
                return Err(CmdError::Bad("Invalid message sequence number".into()));
            }
            Ok((0..n)
                .filter(|&i| set.contains(u32::try_from(i + 1).unwrap_or(u32::MAX), count))
                .collect())
        }
    }

    async fn cmd_close(&mut self, expunge: bool) -> CmdResult {
        self.need_selected()?;
        if let Some(sel) = self.selected.as_ref()
            && expunge
            && !sel.read_only
        {
            // RFC 3501 §6.4.2: expunge silently.
            let account = self.account_id()?;
            let id = sel.id;
            self.server.store.expunge(account, id, None, false).await?;
        }
        self.leave_mailbox().await;
        self.state = State::Authenticated;
        Ok(if expunge {
            "CLOSE completed"
        } else {
            "UNSELECT completed"
        }
        .into())
    }

    fn need_writable(&self) -> Result<(), CmdError> {
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Err(CmdError::No("[READ-ONLY] Mailbox is read-only".into()));
        }
        Ok(())
    }

    async fn cmd_expunge(&mut self, uids: Option<&SeqSet>) -> CmdResult {
        self.need_selected()?;
        self.need_writable()?;
        let account = self.account_id()?;
        let (id, filter) = {
            let sel = self.selected.as_ref().ok_or(CmdError::Close)?;
            let filter: Option<Vec<Uid>> = match uids {
                Some(set) => Some(
                    self.resolve_set(set, true)?
                        .into_iter()
                        .map(|i| Uid(sel.msgs[i].uid))
                        .collect(),
                ),
                None => None,
            };
            (sel.id, filter)
        };
        if filter.as_ref().is_some_and(Vec::is_empty) {
            self.sync_if_selected(true).await?;
            return Ok("EXPUNGE completed".into());
        }
        let gone = self
            .server
            .store
            .expunge(account, id, filter.as_deref(), false)
            .await?;
        if let Some(sel) = self.selected.as_mut() {
            let gone: BTreeSet<u32> = gone.iter().map(|u| u.0).collect();
            for m in Arc::make_mut(&mut sel.msgs).iter_mut() {
                if gone.contains(&m.uid) {
                    m.expunged = true;
                }
            }
            // The feed has our expunge already (published before the store answers): the
            // sync below advances HIGHESTMODSEQ from it, or re-reads when more changed.
        }
        self.sync_if_selected(true).await?;
        if self.condstore
            && let Some(hms) = self.announceable_modseq()
        {
            // RFC 7162 §3.2.10 (example): HIGHESTMODSEQ in the tagged OK of EXPUNGE.
            return Ok(format!("[HIGHESTMODSEQ {hms}] EXPUNGE completed"));
        }
        Ok("EXPUNGE completed".into())
    }

    async fn cmd_store(
        &mut self,
        uid: bool,
        set: &SeqSet,
        mode: StoreMode,
        silent: bool,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> CmdResult {
        self.need_selected()?;
        self.need_writable()?;
        let flags = Flags::from_names(flags.iter().map(String::as_str))
            .map_err(|e| CmdError::Bad(format!("Invalid flags: {e}")))?;
        if unchanged_since.is_some() {
            // RFC 7162 §3.1: STORE (UNCHANGEDSINCE) is a CONDSTORE-enabling command.
            self.enable_condstore();
        }
        let idx = self.resolve_set(set, uid)?;
        let account = self.account_id()?;
        let sel = self.selected.as_ref().ok_or(CmdError::Close)?;
        let id = sel.id;
        // RFC 7162 §3.1.3: a message whose MODSEQ is above UNCHANGEDSINCE is not changed and
        // is listed in MODIFIED. The MODSEQs are re-read from the store (not this session's
        // possibly stale view) right before the write.
        let mut modified: BTreeSet<u32> = BTreeSet::new();
        if let Some(limit) = unchanged_since {
            let newer: BTreeSet<u32> = self
                .server
                .store
                .messages_changed_since(account, id, store::ModSeq(limit))
                .await?
                .into_iter()
                .map(|m| m.uid.0)
                .collect();
            for &i in &idx {
                let m = &sel.msgs[i];
                if !m.expunged && (newer.contains(&m.uid) || m.modseq > limit) {
                    modified.insert(m.uid);
                }
            }
        }
        let uids: Vec<Uid> = idx
            .iter()
            .map(|&i| &sel.msgs[i])
            .filter(|m| !m.expunged && !modified.contains(&m.uid))
            .map(|m| Uid(m.uid))
            .collect();
        let op = match mode {
            StoreMode::Replace => FlagOp::Replace,
            StoreMode::Add => FlagOp::Add,
            StoreMode::Remove => FlagOp::Remove,
        };
        let updates = if uids.is_empty() {
            Vec::new()
        } else {
            self.server
                .store
                .store_flags(account, id, &uids, op, &flags)
                .await?
        };
        let sel = self.selected.as_mut().ok_or(CmdError::Close)?;
        let mut new_kw = false;
        for k in &flags.keywords {
            if sel.keywords.insert(k.clone()) {
                new_kw = true;
            }
        }
        if new_kw {
            let fl = flag_list(&sel.keywords);
            let text = format!("FLAGS ({fl})");
            let perm = format!("OK [PERMANENTFLAGS ({fl} \\*)] Flags permitted");
            self.untagged(&text);
            self.untagged(&perm);
        }
        let condstore = self.condstore;
        let sel = self.selected.as_mut().ok_or(CmdError::Close)?;
        let mut lines = Vec::new();
        let updated: std::collections::HashMap<u32, &store::FlagUpdate> =
            updates.iter().map(|u| (u.uid.0, u)).collect();
        let mut modified_ids = Vec::new();
        for &i in &idx {
            let m = &mut Arc::make_mut(&mut sel.msgs)[i];
            if modified.contains(&m.uid) {
                modified_ids.push(if uid {
                    m.uid
                } else {
                    u32::try_from(i + 1).unwrap_or(u32::MAX)
                });
                continue;
            }
            let changed = updated.get(&m.uid);
            if let Some(u) = changed {
                m.flags = u.flags.clone();
                m.modseq = u.modseq.0;
            }
            if m.expunged {
                continue;
            }
            let uid_part = if uid {
                format!("UID {} ", m.uid)
            } else {
                String::new()
            };
            if !silent {
                let modseq = if condstore {
                    format!(" MODSEQ ({})", m.modseq)
                } else {
                    String::new()
                };
                lines.push(format!(
                    "{} FETCH ({uid_part}FLAGS ({}){modseq})",
                    i + 1,
                    flags_text(&m.flags, m.recent)
                ));
            } else if condstore && changed.is_some() {
                // RFC 7162 §3.1.3: the new MODSEQ is reported even with .SILENT.
                lines.push(format!("{} FETCH ({uid_part}MODSEQ ({}))", i + 1, m.modseq));
            }
        }
        for l in lines {
            self.untagged(&l);
        }
        // Our own change comes back through the feed; nothing new to report for it.
        self.sync_if_selected(uid).await?;
        if !modified_ids.is_empty() {
            modified_ids.sort_unstable();
            return Ok(format!(
                "[MODIFIED {}] Conditional STORE failed",
                compact(&modified_ids)
            ));
        }
        Ok("STORE completed".into())
    }

    async fn cmd_copy(&mut self, uid: bool, set: &SeqSet, raw: &[u8], is_move: bool) -> CmdResult {
        self.need_selected()?;
        if is_move {
            self.need_writable()?;
        }
        let name = self.parse_name(raw)?;
        let Some(dest) = self.lookup(&name).await? else {
            return Err(CmdError::No("[TRYCREATE] No such mailbox".into()));
        };
        let idx = self.resolve_set(set, uid)?;
        let account = self.account_id()?;
        let sel = self.selected.as_ref().ok_or(CmdError::Close)?;
        let src = sel.id;
        let uids: Vec<Uid> = idx
            .iter()
            .filter(|&&i| !sel.msgs[i].expunged)
            .map(|&i| Uid(sel.msgs[i].uid))
            .collect();
        let word = if is_move { "MOVE" } else { "COPY" };
        if uids.is_empty() {
            if !uid && !idx.is_empty() {
                return Err(CmdError::No(
                    "[EXPUNGEISSUED] Messages were expunged".into(),
                ));
            }
            return Ok(format!("{word} completed"));
        }
        let store = &self.server.store;
        let copied = if is_move {
            store.move_messages(account, src, &uids, dest.id).await?
        } else {
            store.copy(account, src, &uids, dest.id).await?
        };
        let src_uids: Vec<u32> = copied.uids.iter().map(|(s, _)| s.0).collect();
        let dst_uids: Vec<u32> = copied.uids.iter().map(|(_, d)| d.0).collect();
        let code = format!(
            "COPYUID {} {} {}",
            copied.uid_validity.0,
            compact(&src_uids),
            compact(&dst_uids)
        );
        if dest.id == src {
            self.mark_dirty();
        }
        if is_move {
            // RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs.
            self.untagged(&format!("OK [{code}] Moved"));
            let moved: BTreeSet<u32> = src_uids.iter().copied().collect();
            if let Some(sel) = self.selected.as_mut() {
                for m in Arc::make_mut(&mut sel.msgs).iter_mut() {
                    if moved.contains(&m.uid) {
                        m.expunged = true;
                    }
                }
            }
            self.sync_if_selected(true).await?;
            return Ok("MOVE completed".into());
        }
        self.sync_if_selected(true).await?;
        Ok(format!("[{code}] COPY completed"))
    }

    async fn cmd_search(
        &mut self,
        tag: &str,
        uid: bool,
        ret: Option<wire::SearchReturn>,
        key: &wire::SearchKey,
    ) -> CmdResult {
        self.need_selected()?;
        let with_modseq = search::uses_modseq(key);
        if with_modseq {
            // RFC 7162 §3.1: SEARCH MODSEQ is a CONDSTORE-enabling command.
            self.enable_condstore();
        }
        let account = self.account_id()?;
        let needs = search::needs_message(key);
        if search::needs_details(key) {
            self.ensure_details().await?;
        }
        let sel = self.selected.as_ref().ok_or(CmdError::Close)?;
        let max_seq = u32::try_from(sel.msgs.len()).unwrap_or(u32::MAX);
        let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
        let candidates: Vec<(usize, Msg)> = sel
            .msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.expunged)
            .map(|(i, m)| (i, m.clone()))
            .collect();
        let headers_only = needs && !search::needs_body(key);
        let (sel_id, uid_validity) = (sel.id, sel.uid_validity);
        let mut hits: Vec<u32> = Vec::new();
        let mut hit_modseq = 0u64;
        // Header keys only: header blocks from the shared cache, else a chunk of UIDs per
        // query (no bodies), remembered for the next SEARCH.
        let cached = if headers_only {
            self.server.headers.get_many(
                (account, sel_id),
                uid_validity,
                candidates.iter().map(|(_, m)| m.uid),
            )
        } else {
            Vec::new()
        };
        let mut heads: std::collections::VecDeque<(Uid, Arc<[u8]>)> = Default::default();
        let mut bodies: std::collections::VecDeque<(Uid, Vec<u8>)> = Default::default();
        for (k, (i, m)) in candidates.iter().enumerate() {
            let raw: Option<std::borrow::Cow<'_, [u8]>> = if headers_only {
                if let Some(Some(head)) = cached.get(k) {
                    Some(std::borrow::Cow::Borrowed(&head[..]))
                } else {
                    if heads.front().is_none_or(|(u, _)| u.0 < m.uid) {
                        heads.clear();
                        let last = candidates[(k + SEARCH_CHUNK - 1).min(candidates.len() - 1)]
                            .1
                            .uid;
                        heads = self
                            .server
                            .store
                            .message_headers(account, sel_id, Uid(m.uid), Uid(last), HEADER_MAX)
                            .await?
                            .into_iter()
                            .map(|(u, h)| (u, Arc::from(h)))
                            .collect();
                        // Only complete header blocks (a cut one falls back to the message).
                        self.server.headers.put_many(
                            (account, sel_id),
                            uid_validity,
                            heads
                                .iter()
                                .filter(|(_, h)| mime::header_end(h).is_some())
                                .map(|(u, h)| (u.0, h.clone())),
                        );
                    }
                    while heads.front().is_some_and(|(u, _)| u.0 < m.uid) {
                        heads.pop_front();
                    }
                    match heads.pop_front() {
                        Some((u, head)) if u.0 == m.uid => {
                            if whole_header(&head, m.size) {
                                Some(std::borrow::Cow::Owned(head.to_vec()))
                            } else {
                                match self.server.store.read_message(account, m.message).await {
                                    Ok(r) => Some(std::borrow::Cow::Owned(r)),
                                    Err(StoreError::NotFound(_)) => continue,
                                    Err(e) => return Err(e.into()),
                                }
                            }
                        }
                        // Gone from the store already.
                        Some(other) => {
                            heads.push_front(other);
                            continue;
                        }
                        None => continue,
                    }
                }
            } else if needs {
                // Whole messages, a chunk of UIDs (bounded in bytes) per store call.
                if bodies.front().is_none_or(|(u, _)| u.0 < m.uid) {
                    let last = candidates[(k + SEARCH_CHUNK - 1).min(candidates.len() - 1)]
                        .1
                        .uid;
                    bodies = self
                        .server
                        .store
                        .message_bodies(account, sel_id, Uid(m.uid), Uid(last), BODY_CHUNK_BYTES)
                        .await?
                        .into();
                }
                while bodies.front().is_some_and(|(u, _)| u.0 < m.uid) {
                    bodies.pop_front();
                }
                match bodies.pop_front() {
                    Some((u, body)) if u.0 == m.uid => Some(std::borrow::Cow::Owned(body)),
                    // Gone from the store already.
                    Some(other) => {
                        bodies.push_front(other);
                        continue;
                    }
                    None => continue,
                }
            } else {
                None
            };
            let (i, m) = (*i, m);
            let seq = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let c = search::Candidate {
                seq,
                uid: m.uid,
                max_seq,
                max_uid,
                flags: &m.flags,
                recent: m.recent,
                size: m.size,
                internal_date: (m.date, m.tz),
                modseq: m.modseq,
                raw: raw.as_deref(),
            };
            if search::matches(key, &c) {
                hits.push(if uid { m.uid } else { seq });
                hit_modseq = hit_modseq.max(m.modseq);
            }
        }
        match ret {
            None => {
                let mut line = String::from("SEARCH");
                for h in &hits {
                    let _ = write!(line, " {h}");
                }
                if with_modseq && !hits.is_empty() {
                    // RFC 7162 §3.1.5: `* SEARCH 2 5 (MODSEQ n)`.
                    let _ = write!(line, " (MODSEQ {hit_modseq})");
                }
                self.untagged(&line);
            }
            Some(r) => {
                // RFC 4731 ESEARCH.
                let mut line = String::new();
                let _ = write!(line, "ESEARCH (TAG \"{tag}\")");
                if uid {
                    line.push_str(" UID");
                }
                if !hits.is_empty() {
                    if r.min {
                        let _ = write!(line, " MIN {}", hits[0]);
                    }
                    if r.max {
                        let _ = write!(line, " MAX {}", hits[hits.len() - 1]);
                    }
                    if r.all {
                        let _ = write!(line, " ALL {}", compact(&hits));
                    }
                }
                if r.count {
                    let _ = write!(line, " COUNT {}", hits.len());
                }
                if with_modseq && !hits.is_empty() {
                    // RFC 7162 §3.1.5 / RFC 4731: ESEARCH return data MODSEQ.
                    let _ = write!(line, " MODSEQ {hit_modseq}");
                }
                self.untagged(&line);
            }
        }
        self.sync_if_selected(uid).await?;
        Ok("SEARCH completed".into())
    }

    async fn cmd_fetch(
        &mut self,
        uid: bool,
        set: &SeqSet,
        attrs: &[FetchAttr],
        changed_since: Option<u64>,
        vanished: bool,
    ) -> CmdResult {
        self.need_selected()?;
        if vanished && !(uid && self.qresync && changed_since.is_some()) {
            // RFC 7162 §3.2.6: VANISHED only in UID FETCH with CHANGEDSINCE, after
            // ENABLE QRESYNC.
            return Err(CmdError::Bad(
                "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC".into(),
            ));
        }
        if changed_since.is_some() || attrs.contains(&FetchAttr::ModSeq) {
            // RFC 7162 §3.1: FETCH MODSEQ / CHANGEDSINCE are CONDSTORE-enabling commands.
            self.enable_condstore();
        }
        let account = self.account_id()?;
        if attrs
            .iter()
            .any(|a| matches!(a, FetchAttr::InternalDate | FetchAttr::Rfc822Size))
        {
            self.ensure_details().await?;
        }
        let mut idx = self.resolve_set(set, uid)?;
        let sel = self.selected.as_ref().ok_or(CmdError::Close)?;
        if let Some(since) = changed_since {
            // RFC 7162 §3.1.4.1: only messages whose MODSEQ is above the value (CLIENTS.md
            // §F.6: `CHANGEDSINCE 0` means all of them).
            idx.retain(|&i| sel.msgs[i].modseq > since);
            if vanished {
                // RFC 7162 §3.2.6: expunged UIDs of the set first, as VANISHED (EARLIER).
                // UIDs this session still shows (expunge not yet announced) are left to
                // the VANISHED that announces them.
                let gone = self
                    .server
                    .store
                    .expunged_since(account, sel.id, store::ModSeq(since))
                    .await?;
                let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
                let vanished = match gone {
                    Some(gone) => logged_vanished(&gone, max_uid, |u, largest| {
                        set.contains(u, largest)
                            && sel.msgs.binary_search_by_key(&u, |m| m.uid).is_err()
                    }),
                    // The expunge log no longer reaches back to `since`: every UID of the
                    // set this session does not show (the client ignores UIDs it never had).
                    // `*` stands for UIDNEXT-1 here, as the expunged UIDs above the last
                    // present one may be in the client's cache.
                    None => {
                        let uid_next = self
                            .server
                            .store
                            .mailbox(account, &sel.name)
                            .await?
                            .map_or(0, |i| i.uid_next.0);
                        let within = set.ranges(uid_next.saturating_sub(1).max(max_uid));
                        let largest = within.last().map_or(0, |r| r.1);
                        format_ranges(&missing(
                            sel.msgs.iter().map(|m| m.uid),
                            largest,
                            Some(&within),
                        ))
                    }
                };
                if !vanished.is_empty() {
                    self.untagged(&format!("VANISHED (EARLIER) {vanished}"));
                }
            }
        }
        let sel = self.selected.as_ref().ok_or(CmdError::Close)?;
        // RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ; after CONDSTORE, FLAGS brings it.
        let with_modseq = attrs.contains(&FetchAttr::ModSeq)
            || changed_since.is_some()
            || (self.condstore && attrs.contains(&FetchAttr::Flags));
        let read_only = sel.read_only;
        let sel_id = sel.id;
        let needs_body = attrs.iter().any(|a| {
            !matches!(
                a,
                FetchAttr::Flags
                    | FetchAttr::InternalDate
                    | FetchAttr::Rfc822Size
                    | FetchAttr::Uid
                    | FetchAttr::ModSeq
            )
        });
        // Only the root header of the message is used.
        let header_only = needs_body
            && attrs.iter().all(|a| {
                matches!(
                    a,
                    FetchAttr::Flags
                        | FetchAttr::InternalDate
                        | FetchAttr::Rfc822Size
                        | FetchAttr::Uid
                        | FetchAttr::ModSeq
                        | FetchAttr::Envelope
                        | FetchAttr::Rfc822Header
                )
            });
        let sets_seen = !read_only
            && attrs.iter().any(|a| match a {
                FetchAttr::BodySection { peek, .. } | FetchAttr::Binary { peek, .. } => !peek,
                FetchAttr::Rfc822 | FetchAttr::Rfc822Text => true,
                _ => false,
            });
        // RFC 3501 §6.4.5: fetching a body section sets \Seen; the flag change is reported.
        let mut seen_changed: BTreeSet<u32> = BTreeSet::new();
        if sets_seen {
            let unseen: Vec<Uid> = idx
                .iter()
                .map(|&i| &sel.msgs[i])
                .filter(|m| !m.expunged && !m.flags.system.contains(store::SystemFlags::SEEN))
                .map(|m| Uid(m.uid))
                .collect();
            if !unseen.is_empty() {
                let seen =
                    Flags::from_names(["\\Seen"]).map_err(|e| CmdError::Internal(e.to_string()))?;
                let updates = self
                    .server
                    .store
                    .store_flags(account, sel_id, &unseen, FlagOp::Add, &seen)
                    .await?;
                if let Some(sel) = self.selected.as_mut() {
                    for u in updates {
                        if let Some(m) = Arc::make_mut(&mut sel.msgs)
                            .iter_mut()
                            .find(|m| m.uid == u.uid.0)
                        {
                            m.flags = u.flags;
                            m.modseq = u.modseq.0;
                            seen_changed.insert(m.uid);
                        }
                    }
                }
            }
        }
        let mut failed = false;
        // Header blocks read ahead for ENVELOPE / RFC822.HEADER of many messages: one store
        // read per chunk of the set instead of one per message.
        let mut headers = HeaderPrefetch::default();
        for (pos, &i) in idx.iter().enumerate() {
            let Some(m) = self.selected.as_ref().map(|s| s.msgs[i].clone()) else {
                break;
            };
            if m.expunged {
                failed = true;
                continue;
            }
            let parsed = if header_only {
                // ENVELOPE / RFC822.HEADER: the header block is all that is read.
                if idx.len() > 1 && pos >= headers.next_refill {
                    let uids = self.selected.as_ref().map(|s| {
                        idx[pos..]
                            .iter()
                            .take(PREFETCH_CHUNK)
                            .map(|&j| s.msgs[j].uid)
                            .collect::<Vec<u32>>()
                    });
                    headers
                        .refill(
                            &*self.server.store,
                            account,
                            sel_id,
                            pos,
                            &uids.unwrap_or_default(),
                        )
                        .await?;
                }
                let head = match headers.take(m.uid) {
                    Some(h) => Ok(h),
                    None => {
                        self.server
                            .store
                            .read_message_header(account, m.message, HEADER_MAX)
                            .await
                    }
                };
                let head = match head {
                    Ok(h) if whole_header(&h, m.size) => Ok(h),
                    Ok(_) => self.server.store.read_message(account, m.message).await,
                    Err(e) => Err(e),
                };
                match head {
                    Ok(bytes) => Some(MimeMessage::parse(bytes)),
                    Err(StoreError::NotFound(_)) => {
                        failed = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else if needs_body {
                match self.server.store.read_message(account, m.message).await {
                    Ok(bytes) => Some(MimeMessage::parse(bytes)),
                    Err(StoreError::NotFound(_)) => {
                        failed = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                None
            };
            // Written straight into the output: a FETCH of every message of a big
            // mailbox allocates nothing per message.
            let item = &mut self.out;
            // Where this message's line starts: an error part-way takes it back out.
            let line_start = item.len();
            let _ = write!(Lossy(item), "* {} FETCH (", i + 1);
            let mut first = true;
            let mut next_item = |item: &mut Vec<u8>| {
                if !std::mem::take(&mut first) {
                    item.push(b' ');
                }
            };
            if uid {
                next_item(item);
                let _ = write!(Lossy(item), "UID {}", m.uid);
            }
            let mut flags_done = false;
            for a in attrs {
                if match a {
                    FetchAttr::Uid => uid,
                    FetchAttr::Flags => flags_done,
                    FetchAttr::ModSeq => true,
                    FetchAttr::Envelope
                    | FetchAttr::BodyStructure
                    | FetchAttr::Body
                    | FetchAttr::Rfc822
                    | FetchAttr::Rfc822Header
                    | FetchAttr::Rfc822Text
                    | FetchAttr::BodySection { .. }
                    | FetchAttr::Binary { .. }
                    | FetchAttr::BinarySize { .. } => parsed.is_none(),
                    FetchAttr::InternalDate | FetchAttr::Rfc822Size => false,
                } {
                    continue;
                }
                next_item(item);
                match a {
                    FetchAttr::Uid => {
                        let _ = write!(Lossy(item), "UID {}", m.uid);
                    }
                    FetchAttr::Flags => {
                        flags_done = true;
                        push_flags(item, &m.flags, m.recent);
                    }
                    FetchAttr::InternalDate => {
                        let _ = write!(
                            Lossy(item),
                            "INTERNALDATE \"{}\"",
                            wire::format_date_time(m.date, m.tz)
                        );
                    }
                    FetchAttr::Rfc822Size => {
                        let _ = write!(Lossy(item), "RFC822.SIZE {}", m.size);
                    }
                    FetchAttr::ModSeq => {}
                    FetchAttr::Envelope => {
                        let Some(p) = &parsed else { continue };
                        item.extend_from_slice(b"ENVELOPE ");
                        mime::push_envelope(item, p.header());
                    }
                    FetchAttr::BodyStructure | FetchAttr::Body => {
                        let Some(p) = &parsed else { continue };
                        let ext = matches!(a, FetchAttr::BodyStructure);
                        item.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                        mime::push_body_structure(item, &p.bytes, &p.root, ext, false);
                    }
                    FetchAttr::Rfc822 | FetchAttr::Rfc822Header | FetchAttr::Rfc822Text => {
                        let Some(p) = &parsed else { continue };
                        let (name, bytes) = match a {
                            FetchAttr::Rfc822 => ("RFC822", p.bytes.clone()),
                            FetchAttr::Rfc822Header => ("RFC822.HEADER", p.header().to_vec()),
                            _ => ("RFC822.TEXT", p.bytes[p.root.body.clone()].to_vec()),
                        };
                        let _ = write!(Lossy(item), "{name} ");
                        push_literal(item, &bytes);
                    }
                    FetchAttr::BodySection {
                        section, partial, ..
                    } => {
                        let Some(p) = &parsed else { continue };
                        item.extend_from_slice(b"BODY[");
                        push_section_spec(item, section);
                        item.push(b']');
                        let data = mime::section_bytes(p, &section.path, &section.text);
                        push_partial(item, data, *partial);
                    }
                    FetchAttr::Binary { path, partial, .. } => {
                        let Some(p) = &parsed else { continue };
                        match mime::binary_bytes(p, path) {
                            Ok(data) => {
                                item.extend_from_slice(b"BINARY[");
                                item.extend_from_slice(path_text(path).as_bytes());
                                item.push(b']');
                                push_partial(item, Some(data), *partial);
                            }
                            Err(e) => {
                                item.truncate(line_start);
                                return Err(binary_error(e));
                            }
                        }
                    }
                    FetchAttr::BinarySize { path } => {
                        let Some(p) = &parsed else { continue };
                        match mime::binary_bytes(p, path) {
                            Ok(data) => {
                                let _ = write!(
                                    Lossy(item),
                                    "BINARY.SIZE[{}] {}",
                                    path_text(path),
                                    data.len()
                                );
                            }
                            Err(e) => {
                                item.truncate(line_start);
                                return Err(binary_error(e));
                            }
                        }
                    }
                }
            }
            if seen_changed.contains(&m.uid) && !flags_done {
                next_item(item);
                push_flags(item, &m.flags, m.recent);
            }
            if with_modseq || (self.condstore && seen_changed.contains(&m.uid)) {
                next_item(item);
                let _ = write!(Lossy(item), "MODSEQ ({})", m.modseq);
            }
            item.extend_from_slice(b")\r\n");
            self.maybe_flush().await?;
        }
        self.sync_if_selected(uid).await?;
        if failed && !uid {
            return Err(CmdError::No(
                "[EXPUNGEISSUED] Some messages were expunged".into(),
            ));
        }
        Ok("FETCH completed".into())
    }
}

/// UIDs per header query of SEARCH.
const SEARCH_CHUNK: usize = 512;
/// How much of a message is read for its header block before falling back to all of it.
const HEADER_MAX: usize = 16 * 1024;

/// Messages whose header blocks one [`HeaderPrefetch::refill`] reads.
const PREFETCH_CHUNK: usize = 128;

/// Header blocks of the next messages of a FETCH, read with one
/// [`store::Store::message_headers`] call per chunk of the set. A chunk whose UID range is
/// sparse (it would read many messages the client did not ask for) is not read ahead; those
/// messages are read one by one.
#[derive(Default)]
struct HeaderPrefetch {
    heads: std::collections::HashMap<u32, Vec<u8>>,
    /// Position in the FETCH's set where the next chunk starts.
    next_refill: usize,
}

impl HeaderPrefetch {
    async fn refill(
        &mut self,
        store: &dyn store::Store,
        account: store::AccountId,
        mailbox: store::MailboxId,
        pos: usize,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        self.heads.clear();
        self.next_refill = pos + uids.len().max(1);
        let (Some(&first), Some(&last)) = (uids.first(), uids.last()) else {
            return Ok(());
        };
        let span = u64::from(last.saturating_sub(first)) + 1;
        if uids.len() < 2 || span > 2 * uids.len() as u64 + 32 {
            return Ok(());
        }
        let wanted: BTreeSet<u32> = uids.iter().copied().collect();
        for (uid, head) in store
            .message_headers(account, mailbox, Uid(first), Uid(last), HEADER_MAX)
            .await?
        {
            if wanted.contains(&uid.0) {
                self.heads.insert(uid.0, head);
            }
        }
        Ok(())
    }

    fn take(&mut self, uid: u32) -> Option<Vec<u8>> {
        self.heads.remove(&uid)
    }
}

/// Whether `head` (from [`store::Store::read_message_header`]) holds a whole header block:
/// it ends with the empty line, or it is the whole message.
fn whole_header(head: &[u8], size: u64) -> bool {
    mime::header_end(head).is_some() || head.len() as u64 == size
}

fn binary_error(e: mime::BinaryError) -> CmdError {
    match e {
        mime::BinaryError::UnknownCte => {
            CmdError::No("[UNKNOWN-CTE] Unknown Content-Transfer-Encoding".into())
        }
        mime::BinaryError::Broken => CmdError::No("[PARSE] Invalid data in MIME part".into()),
        mime::BinaryError::NoPart => CmdError::No("No such MIME part".into()),
    }
}

fn path_text(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn push_section_spec(out: &mut Vec<u8>, section: &wire::Section) {
    let path = path_text(&section.path);
    out.extend_from_slice(path.as_bytes());
    let sep = if path.is_empty() { "" } else { "." };
    let names = |word: &str, list: &[String], out: &mut Vec<u8>| {
        let _ = write!(Lossy(out), "{sep}{word} (");
        for (i, n) in list.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            crate::wire::push_astring(out, n.as_bytes());
        }
        out.push(b')');
    };
    match &section.text {
        SectionText::Full => {}
        SectionText::Header => {
            let _ = write!(Lossy(out), "{sep}HEADER");
        }
        SectionText::Text => {
            let _ = write!(Lossy(out), "{sep}TEXT");
        }
        SectionText::Mime => {
            let _ = write!(Lossy(out), "{sep}MIME");
        }
        SectionText::HeaderFields(list) => names("HEADER.FIELDS", list, out),
        SectionText::HeaderFieldsNot(list) => names("HEADER.FIELDS.NOT", list, out),
    }
}

/// Appends ` <data>` or `<origin> <data>` for a partial fetch (RFC 3501 §6.4.5).
fn push_partial(out: &mut Vec<u8>, data: Option<Vec<u8>>, partial: Option<(u32, u32)>) {
    let Some(data) = data else {
        out.extend_from_slice(b" NIL");
        return;
    };
    let slice: &[u8] = match partial {
        Some((origin, count)) => {
            let _ = write!(Lossy(out), "<{origin}>");
            let start = usize::try_from(origin)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let end = start
                .saturating_add(usize::try_from(count).unwrap_or(usize::MAX))
                .min(data.len());
            &data[start..end]
        }
        None => &data,
    };
    out.push(b' ');
    if slice.contains(&0) {
        // RFC 3516 §4.2: literal8 for data with NUL.
        out.push(b'~');
    }
    push_literal(out, slice);
}
