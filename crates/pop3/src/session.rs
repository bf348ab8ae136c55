//! One POP3 session: the state machine over a [`net::Connection`] (RFC 1939 §3–6).

use std::fmt::Display;

use net::sasl::{self, SaslError};
use net::{Connection, NetError, ReadEvent};
use store::AccountInfo;

use crate::Pop3Server;
use crate::maildrop::{Maildrop, MaildropLock, MsgError, top_slice};
use crate::wire::{self, Command, DotStuffer, MsgNum, Reply, RespCode};

/// Bytes of message content stuffed and written at a time: bounds the output buffer whatever
/// the message size, and is large enough to fill TLS records.
const CHUNK: usize = 64 * 1024;

/// Longest SASL response line (RFC 5034 §4 continuation), CRLF included.
const MAX_SASL_LINE: usize = sasl::MAX_ENCODED_LEN + 2;

/// What to do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Read the next command.
    Continue,
    /// Flush what is pending and close.
    Close,
}

/// The protocol state (RFC 1939 §3). UPDATE is not a resting state: it is entered by QUIT in
/// TRANSACTION and ends the session within that command.
enum State {
    /// Before login. `user` is the name from an accepted USER, waiting for PASS.
    Authorization { user: Option<String> },
    /// Logged in, holding the maildrop lock.
    Transaction(Box<Transaction>),
}

/// Everything a logged-in session holds.
struct Transaction {
    /// The account.
    account: AccountInfo,
    /// The snapshot with this session's deletion marks.
    maildrop: Maildrop,
    /// The exclusive maildrop lock, released when the session ends (after UPDATE).
    _lock: MaildropLock,
}

/// One connection's session.
pub(crate) struct Session<'s> {
    /// The service: store, throttle, settings, locks.
    server: &'s Pop3Server,
    /// The client connection.
    conn: Connection,
    /// Protocol state.
    state: State,
    /// Consecutive bad commands; reset by any well-formed command valid in the state.
    bad_commands: u32,
    /// Internal errors so far, for unique references.
    internal_errors: u32,
    /// Replies not yet written: written when no further complete command is buffered
    /// (pipelining) or when they exceed [`CHUNK`].
    out: Vec<u8>,
}

impl<'s> Session<'s> {
    pub(crate) fn new(server: &'s Pop3Server, mut conn: Connection) -> Session<'s> {
        // RFC 1939 §3: the autologout timer is at least 10 minutes (configurable for tests).
        conn.set_idle_timeout(server.config.idle_timeout);
        Session {
            server,
            conn,
            state: State::Authorization { user: None },
            bad_commands: 0,
            internal_errors: 0,
            out: Vec::new(),
        }
    }

    /// Runs the session to its end and closes the connection.
    pub(crate) async fn run(mut self) {
        match self.serve().await {
            Ok(()) => {
                let _ = self.write_pending().await;
                self.conn.close().await;
            }
            Err(err) => tracing::debug!(%err, "connection closed on error"),
        }
    }

    async fn serve(&mut self) -> Result<(), NetError> {
        // RFC 1939 §4: the greeting. No `<timestamp>` in it: that would announce APOP (§7).
        let greeting = format!("{} POP3 server ready", self.server.config.hostname);
        self.send(&Reply::ok(greeting));
        loop {
            self.flush_unless_pipelined().await?;
            match self.conn.read_line(self.server.config.max_line_len).await? {
                ReadEvent::Line(line) => {
                    if self.command(&line).await? == Flow::Close {
                        return Ok(());
                    }
                }
                ReadEvent::TooLong => {
                    // RFC 2449 §4: 255 octets per command line (we allow `max_line_len`).
                    let text = format!(
                        "command line too long (limit {} octets)",
                        self.server.config.max_line_len
                    );
                    if self.bad(Reply::err(text)) == Flow::Close {
                        return Ok(());
                    }
                }
                ReadEvent::Eof => {
                    // RFC 1939 §6: without QUIT there is no UPDATE; nothing is deleted.
                    tracing::debug!("client closed the connection without QUIT");
                    return Ok(());
                }
                ReadEvent::Timeout => {
                    // RFC 1939 §3: on autologout the server closes "without removing any
                    // messages or sending any response to the client".
                    tracing::debug!("autologout timer expired");
                    self.out.clear();
                    return Ok(());
                }
                ReadEvent::Shutdown => {
                    // STYLE §12: say goodbye between commands; no UPDATE (RFC 1939 §6).
                    self.send(&Reply::err_code(
                        RespCode::SysTemp,
                        "server shutting down, try again later",
                    ));
                    return Ok(());
                }
            }
        }
    }

    /// Parses and executes one command line.
    async fn command(&mut self, line: &[u8]) -> Result<Flow, NetError> {
        let command = match wire::parse_line(line) {
            Ok(command) => command,
            Err(err) => {
                tracing::trace!(%err, "bad command");
                return Ok(self.bad(Reply::err(err.to_string())));
            }
        };
        // `Debug` of PASS and AUTH prints REDACTED for the secrets.
        tracing::trace!(?command, "command");
        if !self.valid_in_state(&command) {
            let (name, state) = (command.name(), self.state_name());
            return Ok(self.bad(Reply::err(format!(
                "{name} is not valid in the {state} state"
            ))));
        }
        self.bad_commands = 0;
        match command {
            Command::Capa => self.capa(),
            Command::Stls => return self.stls().await,
            Command::User(name) => return Ok(self.user(name)),
            Command::Pass(password) => return self.pass(password.expose()).await,
            Command::Auth { mechanism, initial } => {
                return self.auth(mechanism, initial.map(|i| *i.expose())).await;
            }
            Command::Quit => return Ok(self.quit().await),
            Command::Stat => self.stat(),
            Command::List(n) => self.list(n),
            Command::Uidl(n) => self.uidl(n),
            Command::Retr(n) => self.retr(n, None).await?,
            Command::Top(n, lines) => self.retr(n, Some(lines)).await?,
            Command::Dele(n) => self.dele(n),
            // RFC 1939 §5: NOOP "+OK".
            Command::Noop => self.send(&Reply::ok("")),
            Command::Rset => self.rset(),
        }
        Ok(Flow::Continue)
    }

    /// RFC 1939 §4–5: which commands each state accepts. CAPA is valid in both (RFC 2449 §5).
    fn valid_in_state(&self, command: &Command<'_>) -> bool {
        use Command as C;
        matches!(
            (&self.state, command),
            (_, C::Capa | C::Quit)
                | (
                    State::Authorization { .. },
                    C::User(_) | C::Pass(_) | C::Auth { .. } | C::Stls
                )
                | (
                    State::Transaction(_),
                    C::Stat
                        | C::List(_)
                        | C::Uidl(_)
                        | C::Retr(_)
                        | C::Top(..)
                        | C::Dele(_)
                        | C::Noop
                        | C::Rset
                )
        )
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Authorization { .. } => "AUTHORIZATION",
            State::Transaction(_) => "TRANSACTION",
        }
    }

    // ---- AUTHORIZATION ----

    /// RFC 2449 §5: the capabilities of the current state. RFC 2595 §4: STLS only while TLS
    /// can still be started; DESIGN §6: USER and SASL only once TLS is up.
    fn capa(&mut self) {
        self.send(&Reply::ok("Capability list follows"));
        let mut lines: Vec<String> = vec![
            "TOP".into(),                    // RFC 2449 §6.1
            "UIDL".into(),                   // RFC 2449 §6.6
            "RESP-CODES".into(),             // RFC 2449 §6.4
            "AUTH-RESP-CODE".into(),         // RFC 3206 §6
            "PIPELINING".into(),             // RFC 2449 §6.6
            "EXPIRE NEVER".into(),           // RFC 2449 §6.7: we never delete on our own
            "IMPLEMENTATION Tessera".into(), // RFC 2449 §6.9
        ];
        if self.login_allowed() {
            lines.push("USER".into()); // RFC 2449 §6.5
            lines.push("SASL PLAIN".into()); // RFC 2449 §6.3, RFC 5034 §3
        }
        if matches!(self.state, State::Authorization { .. })
            && self.conn.starttls_config().is_some()
        {
            lines.push("STLS".into()); // RFC 2595 §4
        }
        for line in &lines {
            wire::listing_line(&mut self.out, line);
        }
        self.out.extend_from_slice(wire::TERMINATOR);
    }

    /// Whether credentials may be sent: only under TLS (DESIGN §6, RFC 8314 §3).
    fn login_allowed(&self) -> bool {
        self.conn.is_tls()
    }

    /// The refusal of USER/PASS/AUTH before TLS. `[SYS/PERM]` (RFC 3206 §4) rather than
    /// `[AUTH]`: the password is not the problem, so clients should not prompt for another.
    fn tls_required(&mut self) -> Flow {
        let text = if self.conn.starttls_config().is_some() {
            "plaintext login is disabled: issue STLS first (RFC 2595)"
        } else {
            "plaintext login is disabled: connect with TLS (POP3S, port 995)"
        };
        self.bad(Reply::err_code(RespCode::SysPerm, text))
    }

    /// RFC 2595 §4: STLS. The "+OK" is flushed before the handshake; input the client sent
    /// after STLS is discarded by `start_tls`; the session then starts over.
    async fn stls(&mut self) -> Result<Flow, NetError> {
        if self.conn.is_tls() {
            return Ok(self.bad(Reply::err("TLS is already active")));
        }
        let Some(config) = self.conn.starttls_config() else {
            return Ok(self.bad(Reply::err("STLS is not available on this port")));
        };
        self.send(&Reply::ok("begin TLS negotiation"));
        self.write_pending().await?;
        self.conn.flush().await?;
        if let Err(err) = self.conn.start_tls(config).await {
            tracing::debug!(%err, "STLS handshake failed");
            return Err(err);
        }
        // RFC 2595 §4: forget everything learned before TLS.
        self.state = State::Authorization { user: None };
        self.bad_commands = 0;
        Ok(Flow::Continue)
    }

    /// RFC 1939 §7: USER. Always "+OK" when allowed, so the reply does not reveal whether the
    /// account exists.
    fn user(&mut self, name: &str) -> Flow {
        if !self.login_allowed() {
            return self.tls_required();
        }
        self.state = State::Authorization {
            user: Some(name.to_owned()),
        };
        self.send(&Reply::ok("send PASS"));
        Flow::Continue
    }

    /// RFC 1939 §7: PASS, right after USER.
    async fn pass(&mut self, password: &str) -> Result<Flow, NetError> {
        if !self.login_allowed() {
            return Ok(self.tls_required());
        }
        let user = match &mut self.state {
            State::Authorization { user } => user.take(),
            State::Transaction(_) => None,
        };
        let Some(user) = user else {
            return Ok(self.bad(Reply::err("send USER first")));
        };
        self.login(&user, password).await
    }

    /// RFC 5034 §4: AUTH. Only PLAIN is offered; a bare `AUTH` lists the mechanisms.
    async fn auth(
        &mut self,
        mechanism: Option<&str>,
        initial: Option<&[u8]>,
    ) -> Result<Flow, NetError> {
        if !self.login_allowed() {
            return Ok(self.tls_required());
        }
        let Some(mechanism) = mechanism else {
            // Not in RFC 5034, but clients following RFC 1734's draft successors (Outlook)
            // send a bare AUTH to learn the mechanisms.
            self.send(&Reply::ok("SASL mechanisms follow"));
            wire::listing_line(&mut self.out, "PLAIN");
            self.out.extend_from_slice(wire::TERMINATOR);
            return Ok(Flow::Continue);
        };
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            // RFC 5034 §4: an unsupported mechanism is rejected with -ERR.
            return Ok(self.bad(Reply::err("unsupported SASL mechanism; use PLAIN")));
        }
        let response = match initial {
            Some(initial) => initial.to_vec(),
            None => {
                // RFC 5034 §4: an empty server challenge is "+" SP CRLF.
                self.out.extend_from_slice(b"+ \r\n");
                self.write_pending().await?;
                self.conn.flush().await?;
                match self.conn.read_line(MAX_SASL_LINE).await? {
                    ReadEvent::Line(line) => wire::strip_terminator(&line).to_vec(),
                    ReadEvent::TooLong => {
                        return Ok(self.bad(Reply::err("SASL response too long")));
                    }
                    ReadEvent::Eof | ReadEvent::Timeout => return Ok(Flow::Close),
                    ReadEvent::Shutdown => {
                        self.send(&Reply::err_code(RespCode::SysTemp, "server shutting down"));
                        return Ok(Flow::Close);
                    }
                }
            }
        };
        let credentials = match sasl::decode_plain(&response) {
            Ok(credentials) => credentials,
            // RFC 5034 §4: "*" cancels, answered with -ERR.
            Err(SaslError::Cancelled) => {
                self.send(&Reply::err("authentication cancelled"));
                return Ok(Flow::Continue);
            }
            Err(err) => return Ok(self.bad(Reply::err(format!("malformed AUTH PLAIN: {err}")))),
        };
        // RFC 4616 §2: an authzid other than the authcid would be proxy authorisation, which
        // is not supported.
        if let Some(authzid) = &credentials.authzid
            && !authzid.eq_ignore_ascii_case(&credentials.authcid)
        {
            self.send(&Reply::err_code(
                RespCode::Auth,
                "authorization identity must be empty or equal the login",
            ));
            return Ok(Flow::Continue);
        }
        self.login(&credentials.authcid, credentials.password.expose())
            .await
    }

    /// Checks credentials, locks and loads the maildrop, and enters TRANSACTION.
    async fn login(&mut self, user: &str, password: &str) -> Result<Flow, NetError> {
        let server = self.server;
        let ip = self.conn.peer().ip();
        let account = match server.store.authenticate(user, password).await {
            Ok(Some(account)) => account,
            Ok(None) => {
                // DESIGN §6 / net::LoginThrottle: delay the answer to failed attempts.
                let delay = server.throttle.delay_for(user, ip);
                server.throttle.record_failure(user, ip);
                tracing::info!(user, delay_ms = delay.as_millis(), "authentication failed");
                tokio::time::sleep(delay).await;
                // RFC 3206 §5: [AUTH] means the credentials were wrong.
                self.send(&Reply::err_code(
                    RespCode::Auth,
                    "authentication failed: wrong user name or password",
                ));
                return Ok(Flow::Continue);
            }
            Err(err) => {
                let reply = self.internal("authentication", err);
                self.send(&reply);
                return Ok(Flow::Continue);
            }
        };
        server.throttle.record_success(user, ip);
        // RFC 1939 §4 exclusive-access lock; RFC 2449 §8.1.1 [IN-USE] when it is held.
        let Some(lock) = server.locks.try_lock(account.id) else {
            tracing::info!(user = %account.address, "maildrop locked by another session");
            self.send(&Reply::err_code(
                RespCode::InUse,
                "maildrop is locked by another POP3 session, try again later",
            ));
            return Ok(Flow::Continue);
        };
        let maildrop = match Maildrop::load(server.store.as_ref(), account.id).await {
            Ok(maildrop) => maildrop,
            Err(err) => {
                let reply = self.internal("loading the maildrop", err);
                self.send(&reply);
                return Ok(Flow::Continue);
            }
        };
        let address = account.address.to_string();
        self.conn.set_user(&address);
        let (count, octets) = maildrop.stat();
        tracing::debug!(messages = count, octets, "logged in");
        self.state = State::Transaction(Box::new(Transaction {
            account,
            maildrop,
            _lock: lock,
        }));
        // RFC 1939 §7 (PASS): "+OK maildrop locked and ready".
        self.send(&Reply::ok(format!(
            "maildrop locked and ready, {count} messages ({octets} octets)"
        )));
        Ok(Flow::Continue)
    }

    // ---- TRANSACTION ----

    fn transaction(&mut self) -> Option<&mut Transaction> {
        match &mut self.state {
            State::Transaction(t) => Some(t),
            State::Authorization { .. } => None,
        }
    }

    /// RFC 1939 §5: STAT answers exactly "+OK nn mm".
    fn stat(&mut self) {
        let Some(t) = self.transaction() else { return };
        let (count, octets) = t.maildrop.stat();
        self.send(&Reply::ok(format!("{count} {octets}")));
    }

    /// RFC 1939 §5: LIST, one message or a scan listing of every undeleted one.
    fn list(&mut self, n: Option<MsgNum>) {
        self.listing(n, |_, e| e.size.to_string());
    }

    /// RFC 1939 §7: UIDL, one message or every undeleted one.
    fn uidl(&mut self, n: Option<MsgNum>) {
        self.listing(n, |m, e| m.unique_id(e));
    }

    fn listing(
        &mut self,
        n: Option<MsgNum>,
        value: impl Fn(&Maildrop, &crate::maildrop::Entry) -> String,
    ) {
        let Some(t) = self.transaction() else { return };
        let maildrop = &t.maildrop;
        match n {
            Some(n) => {
                let reply = match maildrop.get(n) {
                    Ok(entry) => Reply::ok(format!("{n} {}", value(maildrop, entry))),
                    Err(err) => msg_error(n, err),
                };
                self.send(&reply);
            }
            None => {
                let (count, octets) = maildrop.stat();
                let mut out = Reply::ok(format!("{count} messages ({octets} octets)")).to_bytes();
                for (n, entry) in maildrop.live() {
                    wire::listing_line(&mut out, &format!("{n} {}", value(maildrop, entry)));
                }
                out.extend_from_slice(wire::TERMINATOR);
                self.out.extend_from_slice(&out);
            }
        }
    }

    /// RFC 1939 §5 RETR, and §7 TOP when `lines` is given: the (partial) message, byte-stuffed,
    /// streamed in chunks.
    async fn retr(&mut self, n: MsgNum, lines: Option<u64>) -> Result<(), NetError> {
        let Some(t) = self.transaction() else {
            return Ok(());
        };
        let (account, message) = match t.maildrop.get(n) {
            Ok(entry) => (t.account.id, entry.message),
            Err(err) => {
                self.send(&msg_error(n, err));
                return Ok(());
            }
        };
        let bytes = match self.server.store.read_message(account, message).await {
            Ok(bytes) => bytes,
            Err(err) => {
                let reply = self.internal("reading a message", err);
                self.send(&reply);
                return Ok(());
            }
        };
        let content = match lines {
            Some(lines) => top_slice(&bytes, lines),
            None => &bytes,
        };
        let status = match lines {
            // RFC 1939 §5 example: "+OK 120 octets".
            None => format!("{} octets", bytes.len()),
            Some(_) => "top of message follows".to_owned(),
        };
        self.send(&Reply::ok(status));
        let mut stuffer = DotStuffer::new();
        for chunk in content.chunks(CHUNK) {
            stuffer.push(chunk, &mut self.out);
            if self.out.len() >= CHUNK {
                self.write_pending().await?;
            }
        }
        stuffer.finish(&mut self.out);
        if lines.is_none()
            && let Some(t) = self.transaction()
        {
            t.maildrop.mark_retrieved(n);
        }
        Ok(())
    }

    /// RFC 1939 §5: DELE marks; the store is changed only in UPDATE.
    fn dele(&mut self, n: MsgNum) {
        let Some(t) = self.transaction() else { return };
        let reply = match t.maildrop.mark_deleted(n) {
            Ok(()) => Reply::ok(format!("message {n} deleted")),
            Err(err) => msg_error(n, err),
        };
        self.send(&reply);
    }

    /// RFC 1939 §5: RSET unmarks every message.
    fn rset(&mut self) {
        let Some(t) = self.transaction() else { return };
        t.maildrop.unmark_all();
        let (count, octets) = t.maildrop.stat();
        self.send(&Reply::ok(format!(
            "maildrop has {count} messages ({octets} octets)"
        )));
    }

    /// RFC 1939 §4 (QUIT in AUTHORIZATION) and §6 (QUIT in TRANSACTION enters UPDATE).
    async fn quit(&mut self) -> Flow {
        let host = self.server.config.hostname.clone();
        let state = std::mem::replace(&mut self.state, State::Authorization { user: None });
        let State::Transaction(t) = state else {
            self.send(&Reply::ok(format!("{host} POP3 server signing off")));
            return Flow::Close;
        };
        let reply = match t
            .maildrop
            .update(self.server.store.as_ref(), t.account.id)
            .await
        {
            Ok(expunged) => {
                let left = t.maildrop.stat().0;
                tracing::debug!(deleted = expunged.len(), left, "update done");
                Reply::ok(format!(
                    "{host} POP3 server signing off ({left} messages left)"
                ))
            }
            // RFC 1939 §6: "-ERR some deleted messages not removed".
            Err(err) => {
                let mut reply = self.internal("expunging deleted messages", err);
                reply.text = format!("some deleted messages not removed, {}", reply.text);
                reply
            }
        };
        // The lock is released only now, after the store committed the update.
        drop(t);
        self.send(&reply);
        Flow::Close
    }

    // ---- plumbing ----

    /// Queues a reply.
    fn send(&mut self, reply: &Reply) {
        reply.encode(&mut self.out);
    }

    /// Queues the reply to a bad command and counts it; returns `Close` when there were too
    /// many in a row.
    fn bad(&mut self, mut reply: Reply) -> Flow {
        self.bad_commands += 1;
        let limit = self.server.config.max_bad_commands;
        if self.bad_commands >= limit {
            tracing::debug!(limit, "too many bad commands");
            reply.text = format!("{}; too many bad commands, closing connection", reply.text);
            self.send(&reply);
            return Flow::Close;
        }
        self.send(&reply);
        Flow::Continue
    }

    /// An internal failure: the detail goes to the log with a reference; the client gets only
    /// the reference (STYLE §8).
    fn internal(&mut self, context: &str, err: impl Display) -> Reply {
        self.internal_errors += 1;
        let reference = format!(
            "{:x}-{}-{}",
            store::unix_now(),
            self.conn.id(),
            self.internal_errors
        );
        tracing::error!(%reference, %err, "internal error while {context}");
        Reply::err_code(
            RespCode::SysTemp,
            format!("internal server error, reference {reference}"),
        )
    }

    /// Writes the queued replies.
    async fn write_pending(&mut self) -> Result<(), NetError> {
        if !self.out.is_empty() {
            self.conn.write_all(&self.out).await?;
            self.out.clear();
            if self.out.capacity() > 4 * CHUNK {
                self.out = Vec::new();
            }
        }
        Ok(())
    }

    /// Before waiting for input: writes and flushes the queued replies, unless another complete
    /// command is already buffered (RFC 2449 §6.6 pipelining: answer it first, send together).
    async fn flush_unless_pipelined(&mut self) -> Result<(), NetError> {
        if self.conn.buffer().contains(&b'\n') && self.out.len() < CHUNK {
            return Ok(());
        }
        self.write_pending().await?;
        self.conn.flush().await
    }
}

/// RFC 1939 §5: the -ERR for a message-number that names no usable message.
fn msg_error(n: MsgNum, err: MsgError) -> Reply {
    match err {
        MsgError::NoSuchMessage => Reply::err(format!("no such message: {n}")),
        MsgError::Deleted => Reply::err(format!("message {n} already deleted")),
    }
}
