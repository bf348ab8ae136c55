//! The group-commit writer: one synchronous SQLite connection (rusqlite, cached prepared
//! statements) behind a mutex, and one dedicated OS thread that commits batches on it.
//!
//! A write takes one of two paths ([`Writer::submit`]):
//!
//! - **Inline**, when the writer is idle (no job queued and the connection free) and the job
//!   is an interactive mailbox write (IMAP, POP3; not an SMTP delivery) carrying no large
//!   body: the caller runs it as a batch of one on its own thread and has
//!   its answer without a hand-off. A lone IMAP session's STORE or APPEND used to cost two
//!   thread wake-ups (caller to writer thread and back), a large part of its latency on a
//!   small machine. The caller's thread is blocked for one small transaction and its fsync,
//!   as it would be in a synchronous server; only one caller at a time can be there. It
//!   never waits for a write lock held by another connection (the CLI, the garbage
//!   collector): the transaction is begun without waiting, else the job is queued.
//! - **Queued**, otherwise: the job goes on a bounded tokio channel ([`super::QUEUE_DEPTH`]:
//!   callers wait for room, which is the backpressure). The thread blocks on it, takes the
//!   connection, takes every job waiting (up to [`MAX_BATCH`]) and runs them as one batch.
//!   While any job is queued no caller goes inline, so queued jobs are not overtaken
//!   indefinitely; under load, which is when jobs queue, commits are shared.
//!
//! A batch, on either path:
//!
//! 1. bodies larger than [`INLINE_BODY_MAX`] are written as files and made durable with one
//!    filesystem sync, before any row refers to them (queued path only);
//! 2. one `BEGIN IMMEDIATE` transaction, small bodies inserted into `inline_blobs` by their
//!    job; the jobs run without savepoints, and only when one fails is the transaction
//!    rolled back and the batch run again with each job in its own SAVEPOINT, so that the
//!    failing job is rolled back alone;
//! 3. one COMMIT, i.e. one WAL fsync (`synchronous=FULL`) for the whole batch;
//! 4. only then every caller is answered (tokio oneshot) and the change feed published;
//! 5. each time the WAL has grown by [`CHECKPOINT_BYTES`], the checkpoint thread is asked to
//!    copy it into the database, on its own connection, while commits go on: a checkpoint
//!    (1,000 pages copied, two fsyncs) takes as long as several batches, and every job
//!    arriving meanwhile used to wait for it. SQLite only restarts the WAL from its
//!    beginning at a write that finds every frame copied, which a checkpoint running beside a
//!    busy writer seldom leaves; so past [`CHECKPOINT_INLINE_BYTES`] the committing thread
//!    checkpoints itself after its batch (copying the little the checkpoint thread left),
//!    and the WAL restarts at the next commit: it stays bounded.
//!
//! Why not a task on sqlx's connection: sqlx-sqlite hands every statement to its own worker
//! thread over a channel and back, ~7 hand-offs per delivery; here a statement is a function
//! call, and the only hand-offs left are, on the queued path, one wake-up per batch and one
//! per answer.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{INLINE_BODY_MAX, WriterStats, db_u64, int, normalize_mailbox_name};
use crate::blob::{BlobHash, BlobStore, PendingBlob};
use crate::error::{Result, StoreError};
use crate::feed::{Change, ChangeFeed};
use crate::queue::{DsnRet, QueueId, QueuedMessage};
use crate::types::*;
use crate::{Appended, Copied, FlagUpdate, NewMessage, unix_now};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
/// Longest a statement waits for a lock held by another connection (the CLI, an
/// administrative transaction from the pool).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Prepared statements kept per connection (the writer uses about forty).
const STATEMENT_CACHE: usize = 64;
/// WAL growth (in bytes of pages) after which the checkpoint thread is asked to run: SQLite's
/// default automatic checkpoint threshold, 1,000 pages of 4 KiB.
const CHECKPOINT_BYTES: i64 = 1000 * 4096;
/// WAL size (in bytes of pages) past which the committing thread checkpoints itself, so the
/// WAL restarts.
const CHECKPOINT_INLINE_BYTES: i64 = 4 * CHECKPOINT_BYTES;

thread_local! {
    /// Pages in the WAL after this thread's last commit on the writer's connection (set by
    /// [`note_wal_size`]; -1 before a batch, so a batch that wrote nothing is told apart).
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's WAL hook on the writer's connection: runs inside each COMMIT, on the committing
/// thread, and only notes the WAL's size. Registering it replaces the automatic checkpoint.
fn note_wal_size(_wal: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// A mailbox write waiting for the writer.
pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Output>>,
}

/// The mailbox writes the writer performs.
pub(super) enum Op {
    Append {
        account: AccountId,
        mailbox: MailboxId,
        blob: PendingBlob,
        message: NewMessage,
    },
    Deliver {
        accounts: Vec<AccountId>,
        blob: PendingBlob,
        message: NewMessage,
    },
    StoreFlags {
        account: AccountId,
        mailbox: MailboxId,
        uids: Vec<Uid>,
        op: FlagOp,
        flags: Flags,
    },
    Copy {
        account: AccountId,
        from: MailboxId,
        to: MailboxId,
        uids: Vec<Uid>,
        remove_source: bool,
    },
    Expunge {
        account: AccountId,
        mailbox: MailboxId,
        uids: Option<Vec<Uid>>,
        force: bool,
    },
    CreateMailbox {
        account: AccountId,
        name: String,
        special_use: Option<SpecialUse>,
    },
    DeleteMailbox {
        account: AccountId,
        name: String,
    },
    RenameMailbox {
        account: AccountId,
        from: String,
        to: String,
    },
    Subscribe {
        account: AccountId,
        name: String,
        subscribed: bool,
    },
    SetRecent {
        account: AccountId,
        mailbox: MailboxId,
        uid: Uid,
    },
    Enqueue {
        blob: PendingBlob,
        message: QueuedMessage,
    },
}

impl Op {
    /// Whether a caller may commit this job on its own thread when the writer is idle: the
    /// interactive mailbox writes (IMAP, POP3) carrying no body to write as a file.
    /// Deliveries and queued outbound messages always go through the writer thread: they
    /// come from many SMTP sessions at once, which share its commits, and measured at 20
    /// and 50 concurrent sessions the inline path cost about 4 % more CPU per message
    /// (a runtime worker blocked in fsync while its sessions wait).
    fn may_go_inline(&self) -> bool {
        match self {
            Op::Deliver { .. } | Op::Enqueue { .. } => false,
            Op::Append { blob, .. } => blob.bytes.len() <= INLINE_BODY_MAX,
            _ => true,
        }
    }

    fn blob(&self) -> Option<&PendingBlob> {
        match self {
            Op::Append { blob, .. } | Op::Deliver { blob, .. } | Op::Enqueue { blob, .. } => {
                Some(blob)
            }
            _ => None,
        }
    }
}

/// What a job returns.
pub(super) enum Output {
    Appended(Appended),
    Delivered(Vec<Result<Appended>>),
    Flags(Vec<FlagUpdate>),
    Copied(Copied),
    Expunged(Vec<Uid>),
    Mailbox(MailboxId),
    Queued(QueueId),
    Done,
}

/// Changes a job made, published after the batch commits.
type Events = Vec<(AccountId, Change)>;

/// The writer: its connection (shared by its thread and by callers that find it idle) and
/// the channel to its thread. The thread ends when this is dropped.
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("queued", &self.shared.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What the writer thread and inline callers share.
struct Shared {
    state: Mutex<State>,
    /// Jobs sent to the thread and not yet taken into a batch (and the thread's claim on the
    /// connection while it waits for it): while non-zero, nobody goes inline.
    queued: AtomicUsize,
    blobs: Arc<BlobStore>,
    feed: Arc<ChangeFeed>,
    stats: Arc<WriterStats>,
    checkpointer: Checkpointer,
}

/// The connection and its checkpoint bookkeeping, held by whoever is committing.
struct State {
    conn: Connection,
    /// [`CHECKPOINT_BYTES`] and [`CHECKPOINT_INLINE_BYTES`] in pages of this database.
    checkpoint_frames: i32,
    inline_frames: i32,
    /// The WAL's size when the checkpoint thread was last asked to run.
    requested_at: i32,
}

/// `bytes` of WAL in pages of `page_size` (the thresholds are kept in bytes: a database
/// may have pages of any size SQLite allows).
fn frames_of(bytes: i64, page_size: i64) -> i32 {
    i32::try_from(bytes / page_size.max(512)).unwrap_or(i32::MAX)
}

/// Opens the writer's connection to `db` (already created and migrated) and starts the
/// writer thread.
pub(super) fn start(
    db: &Path,
    depth: usize,
    blobs: Arc<BlobStore>,
    feed: Arc<ChangeFeed>,
    stats: Arc<WriterStats>,
) -> Result<Writer> {
    let conn = open(db)?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let checkpointer = Checkpointer::start(db)?;
    let (tx, rx) = mpsc::channel(depth);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            conn,
            checkpoint_frames: frames_of(CHECKPOINT_BYTES, page_size),
            inline_frames: frames_of(CHECKPOINT_INLINE_BYTES, page_size),
            requested_at: 0,
        }),
        queued: AtomicUsize::new(0),
        blobs,
        feed,
        stats,
        checkpointer,
    });
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer_thread(&thread_shared, rx))
        .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
    Ok(Writer { tx, shared })
}

impl Writer {
    /// Runs `op` and returns its committed result: inline when the writer is idle, else
    /// through the writer thread (see the module documentation).
    pub(super) async fn submit(&self, op: Op) -> Result<Output> {
        let (reply, mut rx) = oneshot::channel();
        let job = match self.try_inline(Job { op, reply }) {
            None => return rx.try_recv().map_err(|_| StoreError::Closed)?,
            Some(job) => job,
        };
        // Room is reserved first (a caller dropped while waiting for it leaves no count
        // behind), then the job is counted and sent with no await in between.
        let permit = self.tx.reserve().await.map_err(|_| StoreError::Closed)?;
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        permit.send(job);
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `job` on this thread if it may go inline ([`Op::may_go_inline`]), nothing is
    /// queued and the connection is free; gives the job back otherwise.
    fn try_inline(&self, job: Job) -> Option<Job> {
        if !job.op.may_go_inline() || self.shared.queued.load(Ordering::Acquire) != 0 {
            return Some(job);
        }
        let mut state = match self.shared.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Some(job),
        };
        // Another connection may hold the write lock (the CLI in another process, the
        // garbage collector's transaction): a caller must not wait for it on a runtime
        // thread, so the transaction is begun without waiting, else the job is queued.
        if !begin_without_waiting(&state.conn) {
            return Some(job);
        }
        let mut batch = vec![job];
        self.shared.run(&mut state, &mut batch, true);
        None
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while committing leaves SQLite's own state consistent (the transaction is
        // rolled back when the next BEGIN fails or the connection closes).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one batch on the connection held as `state` (its transaction `begun` already,
    /// or not), then the checkpoint bookkeeping.
    fn run(&self, state: &mut State, batch: &mut Vec<Job>, begun: bool) {
        WAL_FRAMES.set(-1);
        run_batch(
            &mut state.conn,
            batch,
            &self.blobs,
            &self.feed,
            &self.stats,
            begun,
        );
        let frames = WAL_FRAMES.get();
        if frames < 0 {
            return; // nothing was written to the WAL
        }
        if frames < state.requested_at {
            state.requested_at = 0; // the WAL restarted
        }
        if frames >= state.inline_frames {
            state.requested_at = 0;
            checkpoint(&state.conn);
        } else if frames - state.requested_at >= state.checkpoint_frames {
            state.requested_at = frames;
            self.checkpointer.request();
        }
    }
}

/// The checkpoint thread: one connection of its own, one PASSIVE checkpoint per request.
/// It ends when the writer is dropped (its handle is in [`Shared`]).
struct Checkpointer {
    /// Room for one pending request: asking again while one waits changes nothing.
    requests: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    fn start(db: &Path) -> Result<Checkpointer> {
        let conn = open(db)?;
        let (requests, pending) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                while pending.recv().is_ok() {
                    checkpoint(&conn);
                }
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the checkpoint connection");
                }
            })
            .map_err(|e| {
                StoreError::Database(format!("cannot start the checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer { requests })
    }

    /// Asks for a checkpoint without waiting (none is queued twice).
    fn request(&self) {
        let _ = self.requests.try_send(());
    }
}

/// The writer's connection, with the same settings as the pool's: WAL, `synchronous=FULL`
/// (a COMMIT returns once the WAL is fsynced), foreign keys, temporary tables in memory.
fn open(db: &Path) -> Result<Connection> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "cannot switch the database to WAL (journal mode is {mode})"
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.wal_hook(Some(note_wal_size));
    Ok(conn)
}

/// `BEGIN IMMEDIATE` if the write lock is free at once; false (no transaction) if another
/// connection holds it or the statement failed otherwise.
fn begin_without_waiting(conn: &Connection) -> bool {
    if conn.busy_timeout(Duration::ZERO).is_err() {
        return false;
    }
    let begun = exec(conn, "BEGIN IMMEDIATE").is_ok();
    if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
        // Without its timeout the connection would fail at the first wait: undo and let the
        // writer thread (whose statements wait) take the job.
        tracing::warn!(error = %e, "cannot restore the writer's busy timeout");
        if begun {
            let _ = exec(conn, "ROLLBACK");
        }
        return false;
    }
    begun
}

fn writer_thread(shared: &Shared, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        // `first` is still counted in `queued`, so no caller goes inline while this thread
        // waits for the connection.
        let mut state = shared.lock();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        shared.run(&mut state, &mut batch, false);
    }
}

/// Runs one batch, draining `batch`; every job is answered.
/// `begun`: the caller has opened the transaction already (the inline path; its jobs carry
/// no body to write as a file).
fn run_batch(
    conn: &mut Connection,
    batch: &mut Vec<Job>,
    blobs: &BlobStore,
    feed: &ChangeFeed,
    stats: &WriterStats,
    begun: bool,
) {
    // 1. The batch's large bodies are written and made durable (one filesystem sync) before
    //    any row refers to them; small ones go into the transaction itself (step 2).
    let pending: Vec<PendingBlob> = batch
        .iter()
        .filter_map(|j| j.op.blob())
        .filter(|b| b.bytes.len() > INLINE_BODY_MAX)
        .cloned()
        .collect();
    if !pending.is_empty()
        && let Err(e) = blobs.write_batch(&pending)
    {
        tracing::error!(error = %e, "cannot write message bodies; failing batch");
        fail_all(batch, &e);
        return;
    }
    // 2. One transaction. The jobs run first without savepoints: a savepoint makes SQLite
    //    copy every existing page a job touches into its statement journal (about eight
    //    pages per delivery, most of the batch's memory traffic), and jobs seldom fail. When
    //    one does, the whole transaction is rolled back and the batch runs again with one
    //    savepoint per job, so the failure is undone alone. A batch of one needs no
    //    savepoint at all: its failure rolls back the transaction.
    if !begun && let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        fail_all(batch, &e);
        return;
    }
    let isolate = batch.len() > 1;
    let done = match run_jobs(conn, batch, false) {
        Ok(done) => done,
        Err(failed) if !isolate => {
            if let Err(e) = exec(conn, "ROLLBACK") {
                tracing::error!(error = %e, "rollback after a failed job failed");
            }
            if let Some(job) = batch.pop() {
                let _ = job.reply.send(Err(failed));
            }
            return;
        }
        // Several jobs, so the writer thread's batch (an inline batch is one job): its
        // BEGIN may wait for another connection's lock.
        Err(_) => {
            if let Err(e) = exec(conn, "ROLLBACK").and_then(|()| exec(conn, "BEGIN IMMEDIATE")) {
                fail_all(batch, &e);
                return;
            }
            match run_jobs(conn, batch, true) {
                Ok(done) => done,
                Err(e) => {
                    // Only a savepoint statement itself fails here.
                    if let Err(e) = exec(conn, "ROLLBACK") {
                        tracing::error!(error = %e, "rollback after a failed savepoint failed");
                    }
                    fail_all(batch, &e);
                    return;
                }
            }
        }
    };
    let done: Vec<_> = batch
        .drain(..)
        .zip(done)
        .map(|(job, (result, events))| (job.reply, result, events))
        .collect();
    // 3. Commit: one WAL fsync for the whole batch.
    if let Err(e) = exec(conn, "COMMIT") {
        tracing::error!(error = %e, "batch commit failed");
        if let Err(e) = exec(conn, "ROLLBACK") {
            tracing::error!(error = %e, "rollback after a failed commit failed");
        }
        for (reply, _, _) in done {
            let _ = reply.send(Err(e.clone_shallow()));
        }
        return;
    }
    // Counted before anyone is answered, so a caller sees its own commit in the figures.
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.jobs.fetch_add(done.len() as u64, Ordering::Relaxed);
    // 4. Answer and publish.
    for (reply, result, events) in done {
        for (account, change) in events {
            feed.publish(account, [change]);
        }
        let _ = reply.send(result);
    }
}

/// Runs every job of the batch in the open transaction. Without `isolate`, the first failing
/// job's error is returned (the transaction must then be rolled back: earlier jobs and part
/// of the failing one are in it). With `isolate`, each job runs in its own savepoint, a
/// failing job is undone alone and its error is its result; `Err` then means a savepoint
/// statement itself failed.
fn run_jobs(
    conn: &Connection,
    batch: &[Job],
    isolate: bool,
) -> Result<Vec<(Result<Output>, Events)>> {
    let mut done = Vec::with_capacity(batch.len());
    for job in batch {
        let mut events = Events::new();
        if isolate {
            exec(conn, Savepoint::Job.sql().0)?;
            let result = apply(conn, &job.op, &mut events);
            end_savepoint(conn, Savepoint::Job, result.is_ok())?;
            if result.is_err() {
                events.clear();
            }
            done.push((result, events));
        } else {
            let output = apply(conn, &job.op, &mut events)?;
            done.push((Ok(output), events));
        }
    }
    Ok(done)
}

/// Copies the WAL's pages into the database file (PASSIVE: never waits for readers; pages a
/// reader still needs are left for the next checkpoint). A failure is logged and retried
/// after a later commit: the WAL stays valid meanwhile.
fn checkpoint(conn: &Connection) {
    // The row: (blocked, pages in the WAL, pages copied).
    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match done {
        Ok((frames, copied)) => tracing::trace!(frames, copied, "WAL checkpoint"),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
    }
}

fn fail_all(batch: &mut Vec<Job>, e: &StoreError) {
    for job in batch.drain(..) {
        let _ = job.reply.send(Err(e.clone_shallow()));
    }
}

impl StoreError {
    /// A copy for fanning one failure out to several callers.
    fn clone_shallow(&self) -> StoreError {
        match self {
            StoreError::Invalid(s) => StoreError::Invalid(s.clone()),
            StoreError::NotFound(s) => StoreError::NotFound(s.clone()),
            StoreError::AlreadyExists(s) => StoreError::AlreadyExists(s.clone()),
            StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
            StoreError::QuotaExceeded { used, quota, size } => StoreError::QuotaExceeded {
                used: *used,
                quota: *quota,
                size: *size,
            },
            StoreError::Blob { path, message } => StoreError::Blob {
                path: path.clone(),
                message: message.clone(),
            },
            StoreError::Database(s) => StoreError::Database(s.clone()),
            StoreError::Closed => StoreError::Closed,
        }
    }
}

/// Runs a parameterless statement through the statement cache.
fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// The two savepoint levels: one per job, one per recipient of a multi-recipient delivery.
#[derive(Clone, Copy)]
enum Savepoint {
    Job,
    Recipient,
}

impl Savepoint {
    /// (open, release, roll back) statements.
    fn sql(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Savepoint::Job => ("SAVEPOINT job", "RELEASE job", "ROLLBACK TO job"),
            Savepoint::Recipient => ("SAVEPOINT inner", "RELEASE inner", "ROLLBACK TO inner"),
        }
    }
}

/// Ends a savepoint: released when its work succeeded, rolled back (and released) when it
/// failed, so a failure leaves no trace in the batch's transaction.
fn end_savepoint(conn: &Connection, level: Savepoint, succeeded: bool) -> Result<()> {
    let (_, release, rollback) = level.sql();
    if !succeeded {
        exec(conn, rollback)?;
    }
    exec(conn, release)
}

fn apply(conn: &Connection, op: &Op, events: &mut Events) -> Result<Output> {
    if let Some(blob) = op.blob() {
        store_inline(conn, blob)?;
    }
    match *op {
        Op::Append {
            account,
            mailbox,
            ref blob,
            ref message,
        } => append_one(
            conn,
            account,
            Target::Mailbox(mailbox),
            &blob.hash,
            message,
            events,
        )
        .map(Output::Appended),
        Op::Deliver {
            ref accounts,
            ref blob,
            ref message,
        } => {
            let mut results = Vec::with_capacity(accounts.len());
            if let [account] = accounts[..] {
                // One recipient: a failure is undone with the job (see `run_jobs`).
                let appended =
                    append_one(conn, account, Target::Inbox, &blob.hash, message, events)?;
                results.push(Ok(appended));
            } else {
                // Several: each account in its own savepoint, so one full mailbox does not
                // keep the message from the others.
                for &account in accounts {
                    exec(conn, Savepoint::Recipient.sql().0)?;
                    let mut mine = Events::new();
                    let r =
                        append_one(conn, account, Target::Inbox, &blob.hash, message, &mut mine);
                    end_savepoint(conn, Savepoint::Recipient, r.is_ok())?;
                    if r.is_ok() {
                        events.append(&mut mine);
                    }
                    results.push(r);
                }
            }
            Ok(Output::Delivered(results))
        }
        Op::StoreFlags {
            account,
            mailbox,
            ref uids,
            op,
            ref flags,
        } => store_flags(conn, account, mailbox, uids, op, flags, events).map(Output::Flags),
        Op::Copy {
            account,
            from,
            to,
            ref uids,
            remove_source,
        } => copy(conn, account, from, to, uids, remove_source, events).map(Output::Copied),
        Op::Expunge {
            account,
            mailbox,
            ref uids,
            force,
        } => expunge(conn, account, mailbox, uids.as_deref(), force, events).map(Output::Expunged),
        Op::CreateMailbox {
            account,
            ref name,
            special_use,
        } => {
            let id = create_mailbox(conn, account, name, special_use)?;
            events.push((account, Change::MailboxesChanged));
            Ok(Output::Mailbox(id))
        }
        Op::DeleteMailbox { account, ref name } => {
            delete_mailbox(conn, account, name)?;
            events.push((account, Change::MailboxesChanged));
            Ok(Output::Done)
        }
        Op::RenameMailbox {
            account,
            ref from,
            ref to,
        } => {
            rename_mailbox(conn, account, from, to)?;
            events.push((account, Change::MailboxesChanged));
            Ok(Output::Done)
        }
        Op::Subscribe {
            account,
            ref name,
            subscribed,
        } => {
            let name = normalize_mailbox_name(name)?;
            let changed = conn
                .prepare_cached(
                    "UPDATE mailboxes SET subscribed = ? WHERE account_id = ? AND name = ?",
                )?
                .execute(params![subscribed, account.0, name])?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("no mailbox {name}")));
            }
            events.push((account, Change::MailboxesChanged));
            Ok(Output::Done)
        }
        Op::SetRecent {
            account,
            mailbox,
            uid,
        } => {
            // No change event: \Recent is not something other sessions are told about.
            conn.prepare_cached(
                "UPDATE mailboxes SET recent_uid = MAX(recent_uid, ?) WHERE id = ? AND account_id = ?",
            )?
            .execute(params![i64::from(uid.0), mailbox.0, account.0])?;
            Ok(Output::Done)
        }
        Op::Enqueue {
            ref blob,
            ref message,
        } => enqueue(conn, &blob.hash, message).map(Output::Queued),
    }
}

/// Inserts a queued message and its recipients (inside the writer's transaction).
fn enqueue(conn: &Connection, hash: &BlobHash, message: &QueuedMessage) -> Result<QueueId> {
    let now = unix_now();
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO queue (blob_hash, size, sender, account_id, dsn_envid, dsn_ret, created_at, next_attempt, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )?
        .query_row(
            params![
                hash.to_hex(),
                db_u64(message.bytes.len() as u64)?,
                message
                    .sender
                    .as_ref()
                    .map(Address::to_string)
                    .unwrap_or_default(),
                message.account.map(|a| a.0),
                message.dsn_envid.as_deref(),
                message.dsn_ret.map(DsnRet::as_str),
                now,
                now,
                message.expires_at,
            ],
            |r| r.get(0),
        )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO queue_recipients (queue_id, position, address, dsn_orcpt, dsn_notify, next_attempt) VALUES (?, ?, ?, ?, ?, ?)",
    )?;
    for (position, rcpt) in message.recipients.iter().enumerate() {
        insert.execute(params![
            id,
            db_u64(position as u64)?,
            rcpt.address.to_string(),
            rcpt.orcpt.as_deref(),
            i64::from(rcpt.notify.0),
            now,
        ])?;
    }
    Ok(QueueId(id))
}

/// Stores a small body in `inline_blobs` (large ones were written as files already).
fn store_inline(conn: &Connection, blob: &PendingBlob) -> Result<()> {
    if blob.bytes.len() > INLINE_BODY_MAX {
        return Ok(());
    }
    conn.prepare_cached("INSERT OR IGNORE INTO inline_blobs (hash, data) VALUES (?, ?)")?
        .execute(params![blob.hash.to_hex(), blob.bytes.as_slice()])?;
    Ok(())
}

/// A mailbox's counters, read inside the writer's transaction.
struct Counters {
    uid_validity: UidValidity,
    uid_next: u32,
    modseq: u64,
}

fn counters(conn: &Connection, account: AccountId, mailbox: MailboxId) -> Result<Counters> {
    let row: Option<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT uidvalidity, uidnext, highestmodseq FROM mailboxes WHERE id = ? AND account_id = ?",
        )?
        .query_row(params![mailbox.0, account.0], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let (uid_validity, uid_next, modseq) =
        row.ok_or_else(|| StoreError::NotFound("no such mailbox".into()))?;
    Ok(Counters {
        uid_validity: UidValidity(int(uid_validity)?),
        uid_next: int(uid_next)?,
        modseq: int(modseq)?,
    })
}

fn set_counters(conn: &Connection, mailbox: MailboxId, uid_next: u32, modseq: u64) -> Result<()> {
    conn.prepare_cached("UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?")?
        .execute(params![i64::from(uid_next), db_u64(modseq)?, mailbox.0])?;
    Ok(())
}

/// The account's (quota, used) bytes; `None` when there is no such account.
fn usage(conn: &Connection, account: AccountId) -> Result<Option<(i64, i64)>> {
    Ok(conn
        .prepare_cached("SELECT quota_bytes, used_bytes FROM accounts WHERE id = ?")?
        .query_row([account.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Adds `size` bytes to the account's usage, refusing when over quota.
fn charge(conn: &Connection, account: AccountId, size: u64) -> Result<()> {
    let (quota, used) = usage(conn, account)?
        .ok_or_else(|| StoreError::NotFound(format!("no account {account}")))?;
    let quota: u64 = int(quota)?;
    let used: u64 = int(used)?;
    if quota > 0 && used.saturating_add(size) > quota {
        return Err(StoreError::QuotaExceeded { used, quota, size });
    }
    conn.prepare_cached("UPDATE accounts SET used_bytes = used_bytes + ? WHERE id = ?")?
        .execute(params![db_u64(size)?, account.0])?;
    Ok(())
}

fn refund(conn: &Connection, account: AccountId, size: u64) -> Result<()> {
    conn.prepare_cached("UPDATE accounts SET used_bytes = MAX(0, used_bytes - ?) WHERE id = ?")?
        .execute(params![db_u64(size)?, account.0])?;
    Ok(())
}

/// Where [`append_one`] puts a message.
#[derive(Clone, Copy)]
enum Target {
    /// A mailbox of the account.
    Mailbox(MailboxId),
    /// The account's INBOX (delivery).
    Inbox,
}

/// Appends one message in four statements (the hot path of delivery): charge the quota,
/// take a UID and MODSEQ, insert the message row and its mailbox row. The caller's
/// savepoint undoes the earlier statements when a later one fails.
fn append_one(
    conn: &Connection,
    account: AccountId,
    target: Target,
    hash: &BlobHash,
    message: &NewMessage,
    events: &mut Events,
) -> Result<Appended> {
    let size = db_u64(message.bytes.len() as u64)?;
    let charged: Option<i64> = conn
        .prepare_cached(
            "UPDATE accounts SET used_bytes = used_bytes + ?1 WHERE id = ?2 AND (quota_bytes = 0 OR used_bytes + ?1 <= quota_bytes) RETURNING used_bytes",
        )?
        .query_row(params![size, account.0], |r| r.get(0))
        .optional()?;
    if charged.is_none() {
        return Err(quota_refusal(conn, account, size));
    }
    // RFC 3501 §2.3.1.1: UIDs ascend and are never reused; 2^32-1 is the last one.
    let take = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, i64, i64, i64)> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    };
    let row = match target {
        Target::Mailbox(id) => conn
            .prepare_cached(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 WHERE id = ? AND account_id = ? AND uidnext < 4294967295 RETURNING id, uidvalidity, uidnext - 1, highestmodseq",
            )?
            .query_row(params![id.0, account.0], take)
            .optional()?,
        Target::Inbox => conn
            .prepare_cached(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 WHERE account_id = ? AND name = 'INBOX' AND uidnext < 4294967295 RETURNING id, uidvalidity, uidnext - 1, highestmodseq",
            )?
            .query_row([account.0], take)
            .optional()?,
    };
    let (mailbox, uid_validity, uid, modseq) = row.ok_or_else(|| {
        StoreError::NotFound("no such mailbox (or its UIDs are exhausted)".into())
    })?;
    let mailbox = MailboxId(mailbox);
    let uid_validity = UidValidity(int(uid_validity)?);
    let uid = Uid(int(uid)?);
    let message_id: i64 = conn
        .prepare_cached(
            "INSERT INTO messages (account_id, blob_hash, size, internal_date, tz_offset) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )?
        .query_row(
            params![
                account.0,
                hash.to_hex(),
                size,
                message.internal_date,
                message.tz_offset_minutes,
            ],
            |r| r.get(0),
        )?;
    conn.prepare_cached(
        "INSERT INTO mailbox_messages (mailbox_id, uid, message_id, flags, keywords, modseq) VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        mailbox.0,
        i64::from(uid.0),
        message_id,
        i64::from(message.flags.system.0),
        message.flags.keywords_text(),
        modseq,
    ])?;
    let modseq = ModSeq(int(modseq)?);
    events.push((
        account,
        Change::Appended {
            mailbox,
            uid,
            modseq,
        },
    ));
    Ok(Appended {
        account,
        mailbox,
        uid_validity,
        uid,
        message: MessageId(message_id),
        modseq,
    })
}

/// Why charging `size` bytes failed: no such account, or over quota.
fn quota_refusal(conn: &Connection, account: AccountId, size: i64) -> StoreError {
    match usage(conn, account) {
        Ok(Some((quota, used))) => StoreError::QuotaExceeded {
            used: u64::try_from(used).unwrap_or(0),
            quota: u64::try_from(quota).unwrap_or(0),
            size: u64::try_from(size).unwrap_or(0),
        },
        Ok(None) => StoreError::NotFound(format!("no account {account}")),
        Err(e) => e,
    }
}

fn sorted_unique(uids: &[Uid]) -> Vec<Uid> {
    uids.iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn store_flags(
    conn: &Connection,
    account: AccountId,
    mailbox: MailboxId,
    uids: &[Uid],
    op: FlagOp,
    flags: &Flags,
    events: &mut Events,
) -> Result<Vec<FlagUpdate>> {
    let c = counters(conn, account, mailbox)?;
    let modseq = c.modseq + 1;
    let mut updates = Vec::new();
    let mut select = conn.prepare_cached(
        "SELECT flags, keywords FROM mailbox_messages WHERE mailbox_id = ? AND uid = ?",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE mailbox_messages SET flags = ?, keywords = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
    )?;
    for uid in sorted_unique(uids) {
        let row: Option<(i64, String)> = select
            .query_row(params![mailbox.0, i64::from(uid.0)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((system, keywords)) = row else {
            continue;
        };
        let old = Flags::from_stored(system, &keywords);
        let mut new = old.clone();
        match op {
            FlagOp::Replace => new = flags.clone(),
            FlagOp::Add => {
                new.system.0 |= flags.system.0;
                new.keywords.extend(flags.keywords.iter().cloned());
            }
            FlagOp::Remove => {
                new.system.0 &= !flags.system.0;
                new.keywords.retain(|k| !flags.keywords.contains(k));
            }
        }
        if new.keywords.len() > MAX_KEYWORDS {
            return Err(StoreError::Invalid(format!(
                "more than {MAX_KEYWORDS} keywords on one message"
            )));
        }
        if new == old {
            continue;
        }
        update.execute(params![
            i64::from(new.system.0),
            new.keywords_text(),
            db_u64(modseq)?,
            mailbox.0,
            i64::from(uid.0),
        ])?;
        events.push((
            account,
            Change::FlagsChanged {
                mailbox,
                uid,
                modseq: ModSeq(modseq),
            },
        ));
        updates.push(FlagUpdate {
            uid,
            flags: new,
            modseq: ModSeq(modseq),
        });
    }
    if !updates.is_empty() {
        set_counters(conn, mailbox, c.uid_next, modseq)?;
    }
    Ok(updates)
}

fn copy(
    conn: &Connection,
    account: AccountId,
    from: MailboxId,
    to: MailboxId,
    uids: &[Uid],
    remove_source: bool,
    events: &mut Events,
) -> Result<Copied> {
    let src = counters(conn, account, from)?;
    let dst = counters(conn, account, to)?;
    if from == to && remove_source {
        return Err(StoreError::Invalid(
            "cannot move messages into the same mailbox".into(),
        ));
    }
    let mut next = dst.uid_next;
    let dst_modseq = dst.modseq + 1;
    let mut pairs = Vec::new();
    let mut select = conn.prepare_cached(
        "SELECT mm.message_id, mm.flags, mm.keywords, m.size FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id WHERE mm.mailbox_id = ? AND mm.uid = ?",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO mailbox_messages (mailbox_id, uid, message_id, flags, keywords, modseq) VALUES (?, ?, ?, ?, ?, ?)",
    )?;
    for uid in sorted_unique(uids) {
        let row: Option<(i64, i64, String, i64)> = select
            .query_row(params![from.0, i64::from(uid.0)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((message_id, flags, keywords, size)) = row else {
            continue;
        };
        let size: u64 = int(size)?;
        if !remove_source {
            // A move neither adds nor frees space; a copy does add.
            charge(conn, account, size)?;
        }
        let new_uid = Uid(next);
        next = next
            .checked_add(1)
            .ok_or_else(|| StoreError::Conflict("mailbox UIDs exhausted".into()))?;
        insert.execute(params![
            to.0,
            i64::from(new_uid.0),
            message_id,
            flags,
            keywords,
            db_u64(dst_modseq)?,
        ])?;
        events.push((
            account,
            Change::Appended {
                mailbox: to,
                uid: new_uid,
                modseq: ModSeq(dst_modseq),
            },
        ));
        pairs.push((uid, new_uid));
    }
    if !pairs.is_empty() {
        set_counters(conn, to, next, dst_modseq)?;
    }
    if remove_source && !pairs.is_empty() {
        let modseq = src.modseq + 1;
        for (uid, _) in &pairs {
            remove_from_mailbox(conn, from, *uid, modseq)?;
            events.push((
                account,
                Change::Expunged {
                    mailbox: from,
                    uid: *uid,
                    modseq: ModSeq(modseq),
                },
            ));
        }
        set_counters(conn, from, src.uid_next, modseq)?;
    }
    Ok(Copied {
        uid_validity: dst.uid_validity,
        uids: pairs,
    })
}

fn remove_from_mailbox(conn: &Connection, mailbox: MailboxId, uid: Uid, modseq: u64) -> Result<()> {
    conn.prepare_cached("DELETE FROM mailbox_messages WHERE mailbox_id = ? AND uid = ?")?
        .execute(params![mailbox.0, i64::from(uid.0)])?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
    )?
    .execute(params![mailbox.0, i64::from(uid.0), db_u64(modseq)?])?;
    Ok(())
}

fn expunge(
    conn: &Connection,
    account: AccountId,
    mailbox: MailboxId,
    only: Option<&[Uid]>,
    force: bool,
    events: &mut Events,
) -> Result<Vec<Uid>> {
    let c = counters(conn, account, mailbox)?;
    // The candidates: the named UIDs looked up one by one (UID EXPUNGE names a few in a
    // mailbox of any size), or every message of the mailbox with \Deleted set (or every
    // message, when forced); the flag test is on the mailbox's own rows, before the join.
    let rows: Vec<(i64, i64, i64)> = match only {
        Some(uids) => {
            let mut stmt = conn.prepare_cached(
                "SELECT mm.uid, mm.flags, m.size FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id WHERE mm.mailbox_id = ? AND mm.uid = ?",
            )?;
            let mut rows = Vec::new();
            for uid in sorted_unique(uids) {
                if let Some(row) = stmt
                    .query_row(params![mailbox.0, i64::from(uid.0)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?
                {
                    rows.push(row);
                }
            }
            rows
        }
        None => conn
            .prepare_cached(
                "SELECT mm.uid, mm.flags, m.size FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id WHERE mm.mailbox_id = ? AND (? OR (mm.flags & ?) != 0) ORDER BY mm.uid",
            )?
            .query_map(
                params![mailbox.0, force, i64::from(SystemFlags::DELETED)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<rusqlite::Result<_>>()?,
    };
    let modseq = c.modseq + 1;
    let mut expunged = Vec::new();
    let mut freed = 0u64;
    for (uid, flags, size) in rows {
        let uid = Uid(int(uid)?);
        let flags = SystemFlags(u8::try_from(flags & 0x1f).unwrap_or(0));
        let size: u64 = int(size)?;
        if !(force || flags.contains(SystemFlags::DELETED)) {
            continue;
        }
        remove_from_mailbox(conn, mailbox, uid, modseq)?;
        freed += size;
        events.push((
            account,
            Change::Expunged {
                mailbox,
                uid,
                modseq: ModSeq(modseq),
            },
        ));
        expunged.push(uid);
    }
    if !expunged.is_empty() {
        set_counters(conn, mailbox, c.uid_next, modseq)?;
        refund(conn, account, freed)?;
    }
    Ok(expunged)
}

/// A UIDVALIDITY never given before in this database (see the store's
/// `next_uid_validity`, which does the same in an administrative transaction).
fn next_uid_validity(conn: &Connection) -> Result<u32> {
    let last: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(v) FROM (SELECT MAX(uidvalidity) AS v FROM mailboxes \
             UNION ALL SELECT value FROM counters WHERE name = 'uidvalidity')",
        )?
        .query_row([], |r| r.get(0))?;
    let next = super::uid_validity_after(last);
    conn.prepare_cached(
        "INSERT INTO counters (name, value) VALUES ('uidvalidity', ?) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute([i64::from(next)])?;
    Ok(next)
}

/// The id of the account's mailbox called `name` (normalised already).
fn mailbox_id(conn: &Connection, account: AccountId, name: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT id FROM mailboxes WHERE account_id = ? AND name = ?")?
        .query_row(params![account.0, name], |r| r.get(0))
        .optional()?)
}

fn create_mailbox(
    conn: &Connection,
    account: AccountId,
    name: &str,
    special_use: Option<SpecialUse>,
) -> Result<MailboxId> {
    let name = normalize_mailbox_name(name)?;
    let count: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM mailboxes WHERE account_id = ?")?
        .query_row([account.0], |r| r.get(0))?;
    if count >= super::MAX_MAILBOXES {
        return Err(StoreError::Invalid(format!(
            "more than {} mailboxes",
            super::MAX_MAILBOXES
        )));
    }
    if mailbox_id(conn, account, &name)?.is_some() {
        return Err(StoreError::AlreadyExists(format!("mailbox {name} exists")));
    }
    let uid_validity = next_uid_validity(conn)?;
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed) VALUES (?, ?, ?, ?, 1, 1, 1) RETURNING id",
        )?
        .query_row(
            params![
                account.0,
                name,
                special_use.map(SpecialUse::attribute),
                i64::from(uid_validity),
            ],
            |r| r.get(0),
        )?;
    Ok(MailboxId(id))
}

fn delete_mailbox(conn: &Connection, account: AccountId, name: &str) -> Result<()> {
    let name = normalize_mailbox_name(name)?;
    if name == "INBOX" {
        return Err(StoreError::Invalid("INBOX cannot be deleted".into()));
    }
    let id = mailbox_id(conn, account, &name)?
        .ok_or_else(|| StoreError::NotFound(format!("no mailbox {name}")))?;
    let size: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(m.size), 0) FROM mailbox_messages mm JOIN messages m ON m.id = mm.message_id WHERE mm.mailbox_id = ?",
        )?
        .query_row([id], |r| r.get(0))?;
    conn.prepare_cached("DELETE FROM mailbox_messages WHERE mailbox_id = ?")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM mailboxes WHERE id = ?")?
        .execute([id])?;
    refund(conn, account, int(size)?)
}

fn rename_mailbox(conn: &Connection, account: AccountId, from: &str, to: &str) -> Result<()> {
    let from = normalize_mailbox_name(from)?;
    let to = normalize_mailbox_name(to)?;
    if from == "INBOX" {
        return Err(StoreError::Invalid(
            "INBOX is renamed by moving its messages".into(),
        ));
    }
    if to == from || to.starts_with(&format!("{from}/")) {
        return Err(StoreError::Invalid(format!("cannot rename {from} to {to}")));
    }
    let rows: Vec<(i64, String)> = conn
        .prepare_cached(
            "SELECT id, name FROM mailboxes WHERE account_id = ? AND (name = ? OR substr(name, 1, ?) = ?)",
        )?
        .query_map(
            params![
                account.0,
                from,
                i64::try_from(from.len() + 1).unwrap_or(i64::MAX),
                format!("{from}/"),
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    if !rows.iter().any(|(_, name)| *name == from) {
        return Err(StoreError::NotFound(format!("no mailbox {from}")));
    }
    for (id, old) in rows {
        let new_name = format!("{to}{}", &old[from.len()..]);
        if mailbox_id(conn, account, &new_name)?.is_some() {
            return Err(StoreError::AlreadyExists(format!(
                "mailbox {new_name} exists"
            )));
        }
        conn.prepare_cached("UPDATE mailboxes SET name = ? WHERE id = ?")?
            .execute(params![new_name, id])?;
    }
    Ok(())
}
