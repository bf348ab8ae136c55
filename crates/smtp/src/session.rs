//! One SMTP session: owns the connection, reads one command at a time, keeps the state
//! (EHLO, TLS, AUTH, the mail transaction) and dispatches each command to one function.

use std::time::Duration;

use net::sasl::{self, Credentials, SaslError};
use net::{Connection, FillEvent, NetError, ReadEvent};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_BINARYMIME, MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8,
    MailFrom, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
    RcptTo, Request,
};
use store::{AccountInfo, Address, AliasSource, DsnNotify, DsnRet};

use crate::delivery::{self, Failure, Recipient, Transaction};
use crate::reply::{self, Reply};
use crate::wire::{self, DataDecoder, DataOutcome, MAX_COMMAND_LINE, PathTrick};
use crate::{Inner, SmtpMode};

/// Longest SASL response line accepted (RFC 4954 §4 allows 12,288 octets; the shared SASL
/// decoder caps the encoded response lower).
const MAX_SASL_LINE: usize = sasl::MAX_ENCODED_LEN + 2;
/// Piece size when discarding an unwanted BDAT chunk, so memory stays bounded.
const DISCARD_PIECE: usize = 64 * 1024;

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// The state of one connection.
struct Session<'a> {
    /// The listener's shared state: mode, store, throttle, configuration, verifier.
    server: &'a Inner,
    /// The client connection.
    conn: Connection,
    /// Replies not yet written (flushed when no pipelined input is waiting, RFC 2920 §3.2).
    out: Vec<u8>,
    /// The EHLO/HELO argument, once given (forgotten after STARTTLS).
    helo: Option<String>,
    /// Whether the client said EHLO (ESMTP) rather than HELO.
    esmtp: bool,
    /// The authenticated account (submission only).
    account: Option<AccountInfo>,
    /// The addresses that account may send as (RFC 6409 §6.1).
    senders: Vec<AliasSource>,
    /// The mail transaction in progress.
    tx: Option<Transaction>,
    /// Error replies so far (RFC 5321 §4.2.5 lets a server close after too many).
    errors: u32,
    /// Command lines read so far.
    commands: u64,
    /// Messages accepted so far (part of each message's id).
    messages: u64,
}

/// Runs one session to its end and closes the connection.
pub(crate) async fn run(server: &Inner, conn: Connection) {
    let mut session = Session {
        server,
        conn,
        out: Vec::with_capacity(512),
        helo: None,
        esmtp: false,
        account: None,
        senders: Vec::new(),
        tx: None,
        errors: 0,
        commands: 0,
        messages: 0,
    };
    session.conn.set_idle_timeout(server.config.command_timeout);
    if let Err(err) = session.serve().await {
        tracing::debug!(%err, "connection ended");
    }
    session.conn.close().await;
}

impl Session<'_> {
    async fn serve(&mut self) -> Result<(), NetError> {
        // RFC 5321 §4.2: the greeting (no enhanced code, RFC 2034 §3).
        let greeting = format!("220 {} ESMTP Tessera\r\n", self.server.config.hostname);
        self.out.extend_from_slice(greeting.as_bytes());
        loop {
            if self.conn.buffer().is_empty() {
                self.flush().await?;
            }
            let flow = match self.conn.read_line(MAX_COMMAND_LINE).await? {
                ReadEvent::Line(line) => self.command(line).await?,
                ReadEvent::TooLong => {
                    self.reply(reply::LINE_TOO_LONG);
                    Flow::Continue
                }
                ReadEvent::Eof => return Ok(()),
                ReadEvent::Shutdown => {
                    self.reply(reply::SHUTTING_DOWN);
                    Flow::Close
                }
                ReadEvent::Timeout => {
                    self.reply(reply::TIMEOUT);
                    Flow::Close
                }
            };
            if flow == Flow::Continue && self.errors >= self.server.config.max_errors {
                self.reply(reply::TOO_MANY_ERRORS);
                self.flush().await?;
                return Ok(());
            }
            if flow == Flow::Close {
                self.flush().await?;
                return Ok(());
            }
        }
    }

    /// Queues a reply, counting errors.
    fn reply(&mut self, reply: Reply) {
        if reply.is_error() {
            self.errors += 1;
            tracing::debug!(%reply, "error reply");
        }
        reply.encode(&mut self.out);
    }

    async fn flush(&mut self) -> Result<(), NetError> {
        if !self.out.is_empty() {
            self.conn.write_all(&self.out).await?;
            self.conn.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Logs an internal failure with a correlation id and returns the generic reply.
    fn internal(&self, detail: &str, template: &Reply) -> Reply {
        let id = format!("{:x}-{:08x}", self.conn.id(), rand::random::<u32>());
        tracing::error!(correlation = %id, detail, "internal error");
        template.with_text(format!("{}; reference {id}", template.text))
    }

    fn fail(&mut self, failure: Failure) {
        let r = match failure {
            Failure::Client(r) => r,
            Failure::Internal(detail) => self.internal(&detail, &reply::INTERNAL_ERROR),
        };
        self.reply(r);
    }

    /// One command line: checks, parse, dispatch.
    async fn command(&mut self, line: Vec<u8>) -> Result<Flow, NetError> {
        self.commands += 1;
        if self.commands == 1 && wire::is_foreign_protocol(&line) {
            self.reply(reply::NOT_SMTP);
            return Ok(Flow::Close);
        }
        if let Err(r) = wire::check_line_ending(&line) {
            self.reply(r);
            return Ok(Flow::Continue);
        }
        let command = match wire::parse_command(&line) {
            Ok(c) => c.into_owned(),
            Err(r) => {
                self.reply(r);
                return Ok(Flow::Continue);
            }
        };
        // Wire trace without arguments: AUTH carries credentials.
        tracing::trace!(command = command.name(), "command");
        match command {
            Request::Ehlo { host } => self.ehlo(host, true),
            Request::Helo { host } => self.ehlo(host, false),
            Request::StartTls => return self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Request::Mail { from } => self.mail(from).await,
            Request::Rcpt { to } => self.rcpt(to, &line).await,
            Request::Data => return self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                // RFC 5321 §4.1.1.5: aborts the transaction only.
                self.tx = None;
                self.reply(reply::OK);
            }
            Request::Noop { .. } => self.reply(reply::OK),
            Request::Quit => {
                self.reply(reply::BYE);
                return Ok(Flow::Close);
            }
            Request::Help { .. } => self.reply(reply::HELP),
            // RFC 5321 §7.3: no user enumeration.
            Request::Vrfy { .. } => self.reply(reply::CANNOT_VRFY),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => self.reply(reply::NOT_IMPLEMENTED),
        }
        Ok(Flow::Continue)
    }

    /// RFC 5321 §4.1.1.1: EHLO/HELO; resets the transaction.
    fn ehlo(&mut self, host: String, esmtp: bool) {
        if host.trim().is_empty() {
            self.reply(reply::SYNTAX_ERROR.with_text("Syntax: EHLO domain"));
            return;
        }
        self.tx = None;
        self.esmtp = esmtp;
        let hostname = &self.server.config.hostname;
        if esmtp {
            let caps = wire::Capabilities {
                hostname,
                size: self.server.config.max_message_size,
                starttls: self.conn.starttls_config().is_some(),
                auth: self.server.mode == SmtpMode::Submission
                    && self.conn.is_tls()
                    && self.account.is_none(),
            };
            wire::ehlo_reply(&caps, &host, &mut self.out);
        } else {
            self.out
                .extend_from_slice(format!("250 {hostname}\r\n").as_bytes());
        }
        self.helo = Some(host);
    }

    /// RFC 3207: STARTTLS. Pipelined plaintext is discarded by the connection; the session
    /// forgets everything learnt before the handshake (§4.2).
    async fn starttls(&mut self) -> Result<Flow, NetError> {
        if self.conn.is_tls() {
            self.reply(reply::BAD_SEQUENCE.with_text("TLS already active"));
            return Ok(Flow::Continue);
        }
        let Some(config) = self.conn.starttls_config() else {
            self.reply(reply::NOT_IMPLEMENTED.with_text("STARTTLS not available"));
            return Ok(Flow::Continue);
        };
        self.reply(reply::READY_FOR_TLS);
        self.flush().await?;
        self.conn.start_tls(config).await?;
        self.helo = None;
        self.esmtp = false;
        self.account = None;
        self.senders.clear();
        self.tx = None;
        Ok(Flow::Continue)
    }

    /// RFC 4954: AUTH PLAIN / LOGIN, submission only, TLS only.
    async fn auth(&mut self, mechanism: u64, initial: String) -> Result<Flow, NetError> {
        if self.server.mode != SmtpMode::Submission {
            self.reply(reply::NOT_IMPLEMENTED.with_text("AUTH not available on this port"));
            return Ok(Flow::Continue);
        }
        if !self.conn.is_tls() {
            // RFC 4954 §4 / DESIGN §6: no password in clear.
            self.reply(reply::ENCRYPTION_REQUIRED);
            return Ok(Flow::Continue);
        }
        if self.helo.is_none() || !self.esmtp {
            self.reply(reply::BAD_SEQUENCE.with_text("Send EHLO first"));
            return Ok(Flow::Continue);
        }
        if self.account.is_some() {
            self.reply(reply::BAD_SEQUENCE.with_text("Already authenticated"));
            return Ok(Flow::Continue);
        }
        if self.tx.is_some() {
            self.reply(reply::BAD_SEQUENCE.with_text("AUTH not allowed during a transaction"));
            return Ok(Flow::Continue);
        }
        let credentials = match mechanism {
            AUTH_PLAIN => self.sasl_plain(initial).await?,
            AUTH_LOGIN => self.sasl_login(initial).await?,
            _ => Err(reply::UNKNOWN_MECHANISM),
        };
        let credentials = match credentials {
            Ok(c) => c,
            Err(r) => {
                self.reply(r);
                return Ok(Flow::Continue);
            }
        };
        let r = self.login(credentials).await;
        self.reply(r);
        Ok(Flow::Continue)
    }

    /// Sends a `334` challenge and reads the client's response line (without CRLF).
    async fn challenge(&mut self, challenge: &str) -> Result<Result<Vec<u8>, Reply>, NetError> {
        self.out
            .extend_from_slice(format!("334 {challenge}\r\n").as_bytes());
        self.flush().await?;
        match self.conn.read_line(MAX_SASL_LINE).await? {
            ReadEvent::Line(mut line) => {
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                Ok(Ok(line))
            }
            ReadEvent::TooLong => Ok(Err(reply::LINE_TOO_LONG)),
            ReadEvent::Eof | ReadEvent::Shutdown | ReadEvent::Timeout => Err(NetError::Closed),
        }
    }

    /// RFC 4616 PLAIN, with or without an initial response (RFC 4954 §4).
    async fn sasl_plain(
        &mut self,
        initial: String,
    ) -> Result<Result<Credentials, Reply>, NetError> {
        let response = if initial.is_empty() {
            match self.challenge("").await? {
                Ok(line) => line,
                Err(r) => return Ok(Err(r)),
            }
        } else {
            initial.into_bytes()
        };
        Ok(sasl::decode_plain(&response).map_err(sasl_reply))
    }

    /// draft-murchison-sasl-login LOGIN; an initial response is the user name.
    async fn sasl_login(
        &mut self,
        initial: String,
    ) -> Result<Result<Credentials, Reply>, NetError> {
        let user_line = if initial.is_empty() {
            match self.challenge(sasl::LOGIN_USERNAME_CHALLENGE).await? {
                Ok(line) => line,
                Err(r) => return Ok(Err(r)),
            }
        } else {
            initial.into_bytes()
        };
        let user = match sasl::decode_base64_line(&user_line) {
            Ok(u) => u,
            Err(e) => return Ok(Err(sasl_reply(e))),
        };
        let password_line = match self.challenge(sasl::LOGIN_PASSWORD_CHALLENGE).await? {
            Ok(line) => line,
            Err(r) => return Ok(Err(r)),
        };
        Ok(sasl::decode_base64_line(&password_line)
            .map(|password| Credentials {
                authzid: None,
                authcid: user,
                password: sasl::Secret::new(password),
            })
            .map_err(sasl_reply))
    }

    /// Checks credentials against the store through the shared throttle.
    async fn login(&mut self, credentials: Credentials) -> Reply {
        let ip = self.conn.peer().ip();
        let login = credentials.authcid.trim().to_lowercase();
        // RFC 4616 §2: an authzid other than the authcid would be proxy authorisation.
        let authzid_ok = credentials
            .authzid
            .as_deref()
            .is_none_or(|z| z.trim().eq_ignore_ascii_case(&login));
        let delay = self.server.throttle.delay_for(&login, ip);
        let result = if authzid_ok {
            self.server
                .store
                .authenticate(&login, credentials.password.expose())
                .await
        } else {
            Ok(None)
        };
        match result {
            Ok(Some(account)) => {
                self.server.throttle.record_success(&login, ip);
                match self.server.store.sender_addresses(account.id).await {
                    Ok(senders) => self.senders = senders,
                    Err(e) => {
                        return self
                            .internal(&format!("sender addresses: {e}"), &reply::AUTH_TEMPORARY);
                    }
                }
                let user = account.address.to_string();
                self.conn.set_user(&user);
                tracing::info!(user, "authenticated");
                self.account = Some(account);
                reply::AUTH_OK
            }
            Ok(None) => {
                self.server.throttle.record_failure(&login, ip);
                tracing::info!(login, "authentication failed");
                if !delay.is_zero() {
                    tokio::time::sleep(delay.min(Duration::from_secs(60))).await;
                }
                reply::AUTH_FAILED
            }
            Err(e) => self.internal(&format!("authenticate: {e}"), &reply::AUTH_TEMPORARY),
        }
    }

    /// RFC 5321 §4.1.1.2: MAIL FROM starts a transaction.
    async fn mail(&mut self, from: MailFrom<String>) {
        if self.helo.is_none() {
            self.reply(reply::BAD_SEQUENCE.with_text("Send EHLO first"));
            return;
        }
        if self.tx.is_some() {
            self.reply(reply::BAD_SEQUENCE.with_text("Nested MAIL command"));
            return;
        }
        let submission = self.server.mode == SmtpMode::Submission;
        if submission && self.account.is_none() {
            // RFC 6409 §4.3 / RFC 4954 §6.
            self.reply(reply::AUTH_REQUIRED);
            return;
        }
        // RFC 1870 §6: a declared size over the limit is refused at once.
        if from.size > self.server.config.max_message_size {
            self.reply(reply::MESSAGE_TOO_BIG);
            return;
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            self.reply(reply::PARAMETER_NOT_IMPLEMENTED.with_text("BODY=BINARYMIME not supported"));
            return;
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = if from.address.is_empty() {
            None
        } else {
            if !from.address.is_ascii() && !smtputf8 {
                self.reply(reply::NEEDS_SMTPUTF8);
                return;
            }
            match Address::parse(&from.address) {
                Ok(a) => Some(a),
                Err(_) => {
                    self.reply(reply::BAD_SENDER_SYNTAX);
                    return;
                }
            }
        };
        if submission {
            let owned = sender
                .as_ref()
                .is_some_and(|s| delivery::may_send_as(&self.senders, s));
            if !owned {
                self.reply(reply::SENDER_NOT_OWNED);
                return;
            }
        }
        let ret = if from.flags & MAIL_RET_FULL != 0 {
            Some(DsnRet::Full)
        } else if from.flags & MAIL_RET_HDRS != 0 {
            Some(DsnRet::Headers)
        } else {
            None
        };
        self.tx = Some(Transaction {
            sender,
            smtputf8,
            envid: from.env_id,
            ret,
            recipients: Vec::new(),
            chunks: None,
        });
        self.reply(reply::SENDER_OK);
    }

    /// RFC 5321 §4.1.1.3: RCPT TO.
    async fn rcpt(&mut self, to: RcptTo<String>, line: &[u8]) {
        let Some(tx) = &self.tx else {
            self.reply(reply::BAD_SEQUENCE.with_text("Send MAIL first"));
            return;
        };
        if let Some(trick) = wire::raw_path(line).and_then(PathTrick::of) {
            let why = match trick {
                PathTrick::SourceRoute => "Source routes are not accepted",
                PathTrick::IpLiteral => "Address literals are not accepted",
                PathTrick::QuotedLocalPart => "Quoted local parts are not accepted",
                PathTrick::PercentHack => "Routing in the local part is not accepted",
            };
            self.reply(reply::RELAY_DENIED.with_text(why));
            return;
        }
        if tx.recipients.len() >= self.server.config.max_recipients {
            self.reply(reply::TOO_MANY_RECIPIENTS);
            return;
        }
        if !to.address.is_ascii() && !tx.smtputf8 {
            self.reply(reply::NEEDS_SMTPUTF8);
            return;
        }
        let Ok(address) = Address::parse(&to.address) else {
            self.reply(reply::BAD_RECIPIENT_SYNTAX);
            return;
        };
        if tx.recipients.iter().any(|r| r.address == address) {
            self.reply(reply::RECIPIENT_OK);
            return;
        }
        let submission = self.server.mode == SmtpMode::Submission;
        let target =
            match delivery::route_recipient(self.server.store.as_ref(), &address, submission).await
            {
                Ok(t) => t,
                Err(f) => {
                    self.fail(f);
                    return;
                }
            };
        let mut notify = 0;
        for (flag, bit) in [
            (RCPT_NOTIFY_SUCCESS, DsnNotify::SUCCESS),
            (RCPT_NOTIFY_FAILURE, DsnNotify::FAILURE),
            (RCPT_NOTIFY_DELAY, DsnNotify::DELAY),
            (RCPT_NOTIFY_NEVER, DsnNotify::NEVER),
        ] {
            if to.flags & flag != 0 {
                notify |= bit;
            }
        }
        if let Some(tx) = &mut self.tx {
            tx.recipients.push(Recipient {
                address,
                target,
                notify: DsnNotify(notify),
                orcpt: to.orcpt,
            });
        }
        self.reply(reply::RECIPIENT_OK);
    }

    /// Checks that a transaction with recipients is ready for message data.
    fn ready_for_data(&self) -> Result<(), Reply> {
        match &self.tx {
            None => Err(reply::BAD_SEQUENCE.with_text("Send MAIL first")),
            Some(tx) if tx.recipients.is_empty() => Err(reply::NO_VALID_RECIPIENTS),
            Some(_) => Ok(()),
        }
    }

    /// RFC 5321 §4.1.1.4: DATA.
    async fn data(&mut self) -> Result<Flow, NetError> {
        if let Err(r) = self.ready_for_data() {
            self.reply(r);
            return Ok(Flow::Continue);
        }
        if self.tx.as_ref().is_some_and(|t| t.chunks.is_some()) {
            // RFC 3030 §2: DATA and BDAT do not mix in one transaction.
            self.reply(reply::BAD_SEQUENCE.with_text("DATA not allowed after BDAT"));
            return Ok(Flow::Continue);
        }
        self.reply(reply::START_DATA);
        self.flush().await?;
        self.conn.set_idle_timeout(self.server.config.data_timeout);
        let mut decoder = DataDecoder::new(self.server.config.max_message_size);
        loop {
            if self.conn.buffer().is_empty() {
                match self.conn.fill_buf_bulk().await? {
                    FillEvent::Read(_) => {}
                    FillEvent::Eof => return Ok(Flow::Close),
                    FillEvent::Timeout => {
                        self.reply(reply::TIMEOUT);
                        return Ok(Flow::Close);
                    }
                    FillEvent::Shutdown => {
                        self.reply(reply::SHUTTING_DOWN);
                        return Ok(Flow::Close);
                    }
                }
            }
            let (used, done) = decoder.feed(self.conn.buffer());
            self.conn.consume(used);
            if done {
                break;
            }
        }
        self.conn
            .set_idle_timeout(self.server.config.command_timeout);
        match decoder.finish() {
            DataOutcome::TooBig => {
                self.tx = None;
                self.reply(reply::MESSAGE_TOO_BIG);
            }
            DataOutcome::Message(message) => self.finish_message(message).await,
        }
        Ok(Flow::Continue)
    }

    /// RFC 3030: BDAT. The chunk's octets follow the command and are read (or discarded)
    /// whatever the state, so the next command is found where the client put it.
    async fn bdat(&mut self, size: usize, last: bool) -> Result<Flow, NetError> {
        let received = self
            .tx
            .as_ref()
            .and_then(|t| t.chunks.as_ref())
            .map_or(0, Vec::len);
        let refusal = match self.ready_for_data() {
            Err(r) => Some(r),
            Ok(()) if received.saturating_add(size) > self.server.config.max_message_size => {
                self.tx = None;
                Some(reply::MESSAGE_TOO_BIG)
            }
            Ok(()) => None,
        };
        self.conn.set_idle_timeout(self.server.config.data_timeout);
        let flow = if let Some(r) = refusal {
            let mut left = size;
            let mut flow = Flow::Continue;
            while left > 0 {
                let piece = left.min(DISCARD_PIECE);
                match self.read_chunk(piece).await? {
                    Some(_) => left -= piece,
                    None => {
                        flow = Flow::Close;
                        break;
                    }
                }
            }
            if flow == Flow::Continue {
                self.reply(r);
            }
            flow
        } else {
            match self.read_chunk(size).await? {
                None => Flow::Close,
                Some(bytes) => {
                    if let Some(tx) = &mut self.tx {
                        tx.chunks
                            .get_or_insert_with(Vec::new)
                            .extend_from_slice(&bytes);
                    }
                    if last {
                        let message = self
                            .tx
                            .as_mut()
                            .and_then(|t| t.chunks.take())
                            .unwrap_or_default();
                        self.finish_message(message).await;
                    } else {
                        self.reply(reply::CHUNK_OK.with_text(format!("{size} octets received")));
                    }
                    Flow::Continue
                }
            }
        };
        self.conn
            .set_idle_timeout(self.server.config.command_timeout);
        Ok(flow)
    }

    /// Reads `n` octets of chunk data; `None` when the client went away or timed out (a
    /// timeout reply is queued then).
    async fn read_chunk(&mut self, n: usize) -> Result<Option<Vec<u8>>, NetError> {
        match self.conn.read_exact_bytes(n).await {
            Ok(bytes) => Ok(bytes),
            Err(NetError::Timeout) => {
                self.reply(reply::TIMEOUT);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The end of DATA or the last BDAT: checks, trace headers, durable store, reply.
    async fn finish_message(&mut self, message: Vec<u8>) {
        let Some(tx) = self.tx.take() else {
            self.reply(reply::BAD_SEQUENCE.with_text("Send MAIL first"));
            return;
        };
        if wire::has_bare_line_ending(&message) {
            self.reply(reply::BARE_LINE_ENDING_IN_DATA);
            return;
        }
        if message.len() > self.server.config.max_message_size {
            self.reply(reply::MESSAGE_TOO_BIG);
            return;
        }
        self.messages += 1;
        let id = format!("{:x}.{}", self.conn.id(), self.messages);
        let result = match self.server.mode {
            SmtpMode::Mx => self.receive(&tx, &message, &id).await,
            SmtpMode::Submission => self.submit(&tx, &message, &id).await,
        };
        match result {
            Ok(stored) => {
                tracing::info!(
                    id,
                    size = message.len(),
                    delivered = stored.delivered,
                    queued = ?stored.queued,
                    "message accepted"
                );
                self.reply(reply::MESSAGE_ACCEPTED.with_text(format!("Message accepted as {id}")));
            }
            Err(f) => self.fail(f),
        }
    }

    fn trace_info<'s>(&'s self, tx: &'s Transaction, id: &'s str) -> delivery::TraceInfo<'s> {
        delivery::TraceInfo {
            hostname: &self.server.config.hostname,
            helo: self.helo.as_deref().unwrap_or("unknown"),
            ip: self.conn.peer().ip(),
            tls: self
                .conn
                .tls_info()
                .map(|t| (t.version.as_str(), t.cipher.as_str())),
            authenticated: self.account.is_some(),
            esmtp: self.esmtp,
            smtputf8: tx.smtputf8,
            id,
            single_recipient: match tx.recipients.as_slice() {
                [one] => Some(&one.address),
                _ => None,
            },
        }
    }

    /// MX: verdicts, DMARC policy, trace headers, delivery to hosted accounts.
    async fn receive(
        &self,
        tx: &Transaction,
        message: &[u8],
        id: &str,
    ) -> Result<delivery::Stored, Failure> {
        let mut headers = delivery::return_path_header(tx.sender.as_ref());
        if let Some(verifier) = &self.server.verifier {
            let sender = tx
                .sender
                .as_ref()
                .map(Address::to_string)
                .unwrap_or_default();
            let helo = self.helo.as_deref().unwrap_or("unknown");
            let verdicts = verifier
                .verify(self.conn.peer().ip(), helo, &sender, message)
                .await;
            if let Some(domain) = verdicts.dmarc_reject
                && self.server.config.dmarc_reject
            {
                return Err(Failure::Client(reply::DMARC_REJECT.with_text(format!(
                    "Rejected by the DMARC policy of {}",
                    wire::printable(&domain)
                ))));
            }
            headers.push_str(&verdicts.header);
        }
        headers.push_str(&delivery::received_header(&self.trace_info(tx, id)));
        delivery::store_message(self.server.store.as_ref(), tx, None, &headers, message).await
    }

    /// Submission: From: must be the user's, Message-ID and Date added when missing, local
    /// recipients delivered, remote ones queued.
    async fn submit(
        &self,
        tx: &Transaction,
        message: &[u8],
        id: &str,
    ) -> Result<delivery::Stored, Failure> {
        let Some(account) = &self.account else {
            return Err(Failure::Client(reply::AUTH_REQUIRED));
        };
        let Some(froms) = delivery::from_addresses(message) else {
            return Err(Failure::Client(reply::BAD_MESSAGE));
        };
        for from in &froms {
            let owned = Address::parse(from)
                .map(|a| delivery::may_send_as(&self.senders, &a))
                .unwrap_or(false);
            if !owned {
                return Err(Failure::Client(reply::SENDER_NOT_OWNED.with_text(
                    "From: header address not owned by the authenticated user",
                )));
            }
        }
        let mut added = delivery::received_header(&self.trace_info(tx, id));
        let names = delivery::header_names(message);
        if !names.contains("message-id") {
            // RFC 6409 §8.3.
            added.push_str(&format!(
                "Message-ID: <{:016x}{:016x}@{}>\r\n",
                rand::random::<u64>(),
                rand::random::<u64>(),
                self.server.config.hostname
            ));
        }
        if !names.contains("date") {
            // RFC 6409 §8.2.
            added.push_str(&format!("Date: {}\r\n", delivery::rfc5322_now()));
        }
        let full = delivery::with_headers(&added, message);
        let local_headers = delivery::return_path_header(tx.sender.as_ref());
        delivery::store_message(
            self.server.store.as_ref(),
            tx,
            Some(account.id),
            &local_headers,
            &full,
        )
        .await
    }
}

/// A SASL decoding problem as a reply (RFC 4954 §4).
fn sasl_reply(e: SaslError) -> Reply {
    match e {
        SaslError::Cancelled => reply::AUTH_CANCELLED,
        other => reply::SYNTAX_ERROR.with_text(format!("Invalid SASL response: {other}")),
    }
}
