//! Graceful shutdown: one signal for every accept loop and session, plus a tracker of the
//! session tasks so the process can wait for them to say goodbye.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// A cloneable shutdown handle. Every clone shares the same signal and the same task tracker.
///
/// Order at shutdown: [`trigger`](Self::trigger) (accept loops stop, idle sessions get
/// [`ReadEvent::Shutdown`](crate::ReadEvent::Shutdown)), then
/// [`wait_sessions`](Self::wait_sessions) with a grace period.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// Cancelled once shutdown began.
    signal: CancellationToken,
    /// Every session task spawned by [`serve`](crate::serve).
    tracker: TaskTracker,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Shutdown {
            signal: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// Begins shutdown. Idempotent.
    pub fn trigger(&self) {
        self.signal.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Resolves once shutdown has begun (immediately if it already has). Cancel-safe, so it can
    /// sit in a `tokio::select!` next to a protocol's own futures.
    pub async fn triggered(&self) {
        self.signal.cancelled().await;
    }

    /// [`triggered`](Self::triggered) as a future that owns its handle, for a caller that
    /// keeps one waiting across many polls (a connection between its reads) instead of
    /// registering a new waiter each time.
    pub(crate) fn triggered_owned(&self) -> WaitForCancellationFutureOwned {
        self.signal.clone().cancelled_owned()
    }

    /// Waits until every session task has finished, or until `grace` has passed. Returns `true`
    /// if all sessions finished. Call it after [`trigger`](Self::trigger); sessions still
    /// running after `grace` are abandoned to the runtime's shutdown.
    pub async fn wait_sessions(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Number of session tasks still running.
    pub fn sessions(&self) -> usize {
        self.tracker.len()
    }

    /// Triggers shutdown on SIGINT or SIGTERM (Ctrl-C only, on non-Unix systems).
    ///
    /// Spawns a task, so it must be called from within a tokio runtime (it panics otherwise,
    /// like `tokio::spawn`).
    pub fn install_signal_handlers(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let name = wait_for_signal().await;
            tracing::info!(signal = name, "shutting down");
            this.trigger();
        });
    }

    /// Spawns a session task that [`wait_sessions`](Self::wait_sessions) will wait for.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; only SIGINT will stop the server");
            sigint().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = sigint() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    sigint().await;
    "SIGINT"
}

/// Resolves on SIGINT; never resolves if SIGINT cannot be listened for (rather than shutting
/// down on a registration error).
async fn sigint() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::warn!(%err, "cannot listen for SIGINT");
        std::future::pending::<()>().await;
    }
}
