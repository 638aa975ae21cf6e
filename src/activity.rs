//! What one client connection is doing (requests in flight, idle since when, a head arriving) and when it must close.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::{
    drain::{Drain, Phase},
    metrics::Metrics,
};

/// Shared by a connection's task, its service and its I/O wrapper; no
/// registry of connections exists anywhere else.
pub struct ConnState {
    /// Held here so a request does not clone the process-wide handle.
    metrics: Arc<Metrics>,
    /// Requests whose response body has not finished.
    in_flight: AtomicUsize,
    /// Requests still waiting for a response head.
    heads_pending: AtomicUsize,
    /// When `in_flight` last dropped to zero (µs since process start).
    last_done: AtomicU64,
    /// When the first byte of a not-yet-complete request head arrived (0: none).
    head_started: AtomicU64,
    /// Woken whenever `in_flight` drops to zero.
    idle: Notify,
    /// A request on this connection was answered 503 by the deadline.
    deadline_hit: AtomicBool,
    /// The `--max-connections` slot; an upgraded tunnel takes it over.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Set by the first request: until then a drain gives the connection at least [`FIRST_REQUEST_GRACE`].
    served: AtomicBool,
    /// Bytes written since hyper last flushed (hyper flushes the socket only
    /// once its own write buffer is empty).
    unflushed: AtomicBool,
}

/// During a drain, how long a connection that has not sent its first request may still send it.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Why a connection's watchdog says it must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No request in progress for long enough (keep-alive timeout, or idle-grace while draining): close gracefully.
    Idle,
    /// A request head has been arriving for longer than the header read timeout (slowloris): drop it.
    HeadTimeout,
    /// Quiet long enough to drop the HTTP state and wait on the bare socket.
    Park,
}

/// The watchdog's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub keepalive: Duration,
    pub idle_grace: Duration,
    pub head: Duration,
}

impl Limits {
    /// How long a connection with no request in progress may stay open: the
    /// keep-alive timeout, or once draining the idle-grace. A connection that
    /// has not sent its first request yet was opened to send one, likely in
    /// flight now: closing it would lose it even with `--idle-grace 0`.
    pub fn idle(&self, draining: bool, served: bool) -> Duration {
        match (draining, served) {
            (false, _) => self.keepalive,
            (true, true) => self.idle_grace,
            (true, false) => self.idle_grace.max(FIRST_REQUEST_GRACE),
        }
    }
}

impl ConnState {
    pub fn new(permit: Option<OwnedSemaphorePermit>, metrics: Arc<Metrics>) -> Self {
        Self::resumed(permit, metrics, now_micros(), false)
    }

    /// A connection back from the parking lot keeps its idle clock and whether it was served.
    pub fn resumed(permit: Option<OwnedSemaphorePermit>, metrics: Arc<Metrics>, last_done: u64, served: bool) -> Self {
        ConnState {
            metrics,
            in_flight: AtomicUsize::new(0),
            heads_pending: AtomicUsize::new(0),
            last_done: AtomicU64::new(last_done),
            head_started: AtomicU64::new(0),
            idle: Notify::new(),
            deadline_hit: AtomicBool::new(false),
            permit: Mutex::new(permit),
            unflushed: AtomicBool::new(false),
            served: AtomicBool::new(served),
        }
    }

    /// When the last request ended ([`now_micros`]).
    pub fn last_done(&self) -> u64 {
        self.last_done.load(Ordering::Acquire)
    }

    /// Whether a request has started on this connection.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Called by the I/O wrapper on every write (`false`) and completed flush (`true`).
    pub fn wrote(&self, flushed: bool) {
        self.unflushed.store(!flushed, Ordering::Relaxed);
    }

    /// Marks a request as started; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        let metrics = &self.metrics;
        metrics.in_flight.inc();
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            metrics.conn_active.inc();
        }
        self.heads_pending.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        self.served.store(true, Ordering::Relaxed);
        RequestGuard { conn: self.clone(), head_pending: true }
    }

    /// Bytes arrived from the client (called by the connection's I/O wrapper).
    pub fn bytes_read(&self) {
        // Only the first byte of a head matters, and only between requests.
        if self.head_started.load(Ordering::Relaxed) == 0 && self.in_flight.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now_micros().max(1), Ordering::Release);
        }
    }

    /// The deadline answered one of this connection's requests: the
    /// connection counts as cut even if it then closed cleanly.
    pub fn mark_cut(&self) {
        self.deadline_hit.store(true, Ordering::Release);
    }

    pub fn was_cut(&self) -> bool {
        self.deadline_hit.load(Ordering::Acquire)
    }

    /// True when some response is past its head and still streaming.
    pub fn streaming(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > self.heads_pending.load(Ordering::Acquire)
    }

    /// Hands the connection slot to whoever outlives the HTTP connection (a tunnel).
    pub fn take_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permit.lock().expect("never poisoned").take()
    }

    /// Resolves when the connection must close: idle past the keep-alive
    /// timeout (or, once the drain started, past the idle-grace), or a
    /// request head arriving too slowly; or, with `park`, when it has been
    /// quiet that long (no request, no head arriving, nothing unflushed).
    /// `h1`: HTTP/2 has no heads to time here (h2 frames its own).
    /// One future and one timer per connection, re-armed when a request ends.
    pub async fn watchdog(&self, limits: Limits, drain: &Drain, h1: bool, park: Option<Duration>) -> Verdict {
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        // Made once: once it fires, `draining` is true and it is never polled again.
        let drain_started = drain.reached(Phase::Draining);
        tokio::pin!(drain_started);
        loop {
            let woken = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                woken.await;
                continue;
            }
            let draining = drain.is_draining();
            let now = now_micros();
            let head_started = self.head_started.load(Ordering::Acquire);
            let last_done = self.last_done.load(Ordering::Acquire);
            let (since, limit, verdict) = if h1 && head_started != 0 {
                (head_started, limits.head, Verdict::HeadTimeout)
            } else {
                (last_done, limits.idle(draining, self.served()), Verdict::Idle)
            };
            let elapsed = Duration::from_micros(now.saturating_sub(since));
            if elapsed >= limit {
                return verdict;
            }
            let mut wait = limit - elapsed;
            if let (Some(park), Verdict::Idle) = (park, verdict) {
                if self.unflushed.load(Ordering::Acquire) {
                    // hyper is still writing: look again shortly.
                    wait = wait.min(Duration::from_millis(5));
                } else if elapsed >= park {
                    return Verdict::Park;
                } else {
                    wait = wait.min(park - elapsed);
                }
            }
            if h1 && verdict == Verdict::Idle {
                // A head that starts arriving does not wake us: look at least
                // this often, so a slow head is cut within twice the limit.
                wait = wait.min(limits.head);
            }
            // Re-evaluate when the wait passes or the drain starts. While idle,
            // requests that come and go only push `last_done` (and so every
            // deadline) later: they cost the watchdog nothing, it recomputes
            // when it wakes. A head being timed is different: once its request
            // ends, the idle deadline may be earlier than the head's.
            let timing_head = verdict == Verdict::HeadTimeout;
            sleep.as_mut().reset(tokio::time::Instant::now() + wait);
            tokio::select! {
                _ = &mut sleep => {}
                _ = woken, if timing_head => {}
                _ = &mut drain_started, if !draining => {}
            }
        }
    }
}

/// Keeps one request counted until its response body is done.
pub struct RequestGuard {
    conn: Arc<ConnState>,
    head_pending: bool,
}

impl RequestGuard {
    /// The response head is about to be written.
    pub fn head_sent(&mut self) {
        if std::mem::take(&mut self.head_pending) {
            self.conn.heads_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.head_sent();
        self.conn.metrics.in_flight.dec();
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.metrics.conn_active.dec();
            self.conn.head_started.store(0, Ordering::Release);
            self.conn.last_done.store(now_micros(), Ordering::Release);
            // Every waiter (watchdog, park timer) re-checks; each created its
            // `Notified` before looking, so none misses this.
            self.conn.idle.notify_waiters();
        }
    }
}

/// Microseconds since the process started: cheap to store in an atomic.
pub fn now_micros() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}
