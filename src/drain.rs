//! The drain state every task shares: the phase, the deadline cut, and the set of open client connections.

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Where the process is on the drain timeline. Ordered: later phases compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation: keep-alive, readiness 200.
    Serving,
    /// Drain started: readiness 503, every response says `Connection: close`, idle sockets close, still accepting.
    Draining,
    /// The listener is closed; waiting for the last connection (or the grace deadline).
    Closing,
}

impl Phase {
    /// The lower-case name used in logs, metrics and the admin status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
        }
    }
}

/// Cheap to clone; one per connection task.
#[derive(Clone)]
pub struct Drain {
    phase: watch::Receiver<Phase>,
    /// Cancelled when the grace runs out: unfinished work is cut.
    cut: CancellationToken,
    /// Every client connection and upgraded tunnel runs as a task in here.
    pub tracker: TaskTracker,
}

/// The one owner that moves the phase forward.
pub struct DrainControl {
    phase: watch::Sender<Phase>,
    drain: Drain,
}

impl DrainControl {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(Phase::Serving);
        let drain = Drain { phase: rx, cut: CancellationToken::new(), tracker: TaskTracker::new() };
        DrainControl { phase: tx, drain }
    }

    pub fn handle(&self) -> Drain {
        self.drain.clone()
    }

    /// Moves to `phase` if that is later than the current one.
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    /// The grace ran out: every task cuts what it still holds.
    pub fn cut(&self) {
        self.drain.cut.cancel();
    }
}

impl Default for DrainControl {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Resolves once the phase is at least `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.clone();
        // The sender lives as long as `run`; if it is gone we are shutting down anyway.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Resolves when the grace deadline cuts remaining work.
    pub fn cut(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cut.cancelled()
    }

    /// Open client connections and tunnels.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }
}
