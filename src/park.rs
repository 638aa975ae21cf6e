//! The parking lot: idle HTTP/1 keep-alive connections with no task, no
//! buffers and no hyper state, only the socket and a few words about it.
//!
//! A connection quiet for a moment hands its bare socket here. The lot keeps
//! every parked socket in an epoll set of its own (the kernel holds the
//! registration, not our heap), and one task watches that set: a socket that
//! turns readable (a request, or the client closing) goes back to a fresh
//! connection task; one idle past the keep-alive timeout, or past the
//! idle-grace once the drain starts, is closed right here. Closing 10,000
//! idle connections at a drain is one loop of `close(2)`, not 10,000 task
//! wake-ups.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use slab::Slab;
use tokio::{
    io::unix::AsyncFd,
    sync::{Notify, OwnedSemaphorePermit},
};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, warn};

use crate::{
    activity::{now_micros, Limits},
    drain::{Drain, Phase},
    metrics::Metrics,
};

/// How many sockets one pass closes or wakes before letting other tasks run.
const BATCH: usize = 1024;

/// After this many connections parked since the last release, and
/// [`RELEASE_QUIET`] without another, the burst is over: the memory that
/// served those connections while they were active is handed back.
const RELEASE_BURST: usize = 1024;
const RELEASE_QUIET: Duration = Duration::from_secs(1);

/// Asks the allocator to return free pages to the OS. The binary sets it
/// (it chooses the allocator); without it, nothing is released.
static RELEASE_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Sets what returns free memory to the OS after a burst of connections
/// went idle: an allocator keeps the pages of its peak otherwise, and
/// 10,000 connections opened at once leave megabytes of them behind.
pub fn set_memory_release(release: fn()) {
    let _ = RELEASE_MEMORY.set(release);
}

/// Whether a burst of parking is over and its memory should be released.
fn burst_over(parked_since_release: usize, last_park: u64, now: u64) -> bool {
    parked_since_release >= RELEASE_BURST && now.saturating_sub(last_park) >= RELEASE_QUIET.as_micros() as u64
}

/// What a parked connection keeps: enough to serve its next request.
pub struct Parked {
    pub tcp: std::net::TcpStream,
    pub peer: SocketAddr,
    /// The `--max-connections` slot stays taken while parked.
    pub permit: Option<OwnedSemaphorePermit>,
    /// When its last request ended ([`now_micros`]): the keep-alive and idle-grace clocks run from here.
    pub last_done: u64,
    /// It has sent a request (see [`crate::activity::FIRST_REQUEST_GRACE`]).
    pub served: bool,
}

struct Entry {
    parked: Parked,
    /// Tells this entry from a later one in the same slot.
    generation: u32,
    /// Counts the connection as open in the drain's tracker, as its task did.
    _open: TaskTrackerToken,
}

struct Lots {
    entries: Slab<Entry>,
    /// (deadline µs, slot, generation); stale items are skipped when popped.
    deadlines: BinaryHeap<Reverse<(u64, usize, u32)>>,
    next_generation: u32,
    /// The deadline the lot's timer is set for, if any.
    armed: Option<u64>,
    /// After the cut nothing may park: the process is about to exit.
    closed: bool,
    /// Connections parked since memory was last released, and when the last one came ([`now_micros`]).
    parked_since_release: usize,
    last_park: u64,
}

/// The epoll set, as tokio sees it: readable when some parked socket is.
struct EpollFd(Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// Shared by every connection task (to park) and the lot's own task (to wake and close).
pub struct Lot {
    epoll: AsyncFd<EpollFd>,
    lots: Mutex<Lots>,
    /// A parked socket's deadline is earlier than the timer the lot is sleeping on.
    sooner: Notify,
    limits: Limits,
    drain: Drain,
    metrics: Arc<Metrics>,
}

impl Lot {
    /// Needs a tokio runtime (the epoll set registers with its reactor).
    pub fn new(limits: Limits, drain: Drain, metrics: Arc<Metrics>) -> io::Result<Arc<Self>> {
        let epoll = EpollFd(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        // SAFETY: `EpollFd` owns its descriptor (an `OwnedFd`) for as long as
        // the `AsyncFd` holds it, never replaces it, and always reports that same one.
        #[allow(unsafe_code)]
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Arc::new(Lot {
            epoll,
            lots: Mutex::new(Lots {
                entries: Slab::new(),
                deadlines: BinaryHeap::new(),
                next_generation: 0,
                armed: None,
                closed: false,
                parked_since_release: 0,
                last_park: 0,
            }),
            sooner: Notify::new(),
            limits,
            drain,
            metrics,
        }))
    }

    /// Takes the socket in; gives it back if it cannot be watched, or after
    /// the cut (the caller then closes it, as at a keep-alive timeout).
    pub fn park(&self, parked: Parked) -> Result<(), Parked> {
        let mut lots = self.lock();
        if lots.closed {
            return Err(parked);
        }
        let generation = lots.next_generation;
        lots.next_generation = generation.wrapping_add(1);
        let slot = lots.entries.vacant_key();
        let event = EpollEvent::new(
            EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT,
            token(slot, generation),
        );
        if let Err(e) = self.epoll.get_ref().0.add(&parked.tcp, event) {
            warn!(error = %e, "cannot park an idle connection; closing it");
            return Err(parked);
        }
        let deadline = self.deadline(&parked, self.drain.is_draining());
        lots.entries.insert(Entry { parked, generation, _open: self.drain.tracker.token() });
        lots.parked_since_release += 1;
        lots.last_park = now_micros();
        self.metrics.conn_parked.inc();
        lots.deadlines.push(Reverse((deadline, slot, generation)));
        // Sockets that woke up leave their deadline behind; drop those
        // before they outnumber the live ones.
        if lots.deadlines.len() > 2 * lots.entries.len() + BATCH {
            let Lots { entries, deadlines, .. } = &mut *lots;
            deadlines.retain(|Reverse((_, slot, generation))| is_live(entries, *slot, *generation));
        }
        if lots.armed.map_or(true, |armed| deadline < armed) {
            self.sooner.notify_one();
        }
        Ok(())
    }

    /// When a parked connection must close: the same limits the watchdog applies to an active one.
    fn deadline(&self, parked: &Parked, draining: bool) -> u64 {
        let limit = self.limits.idle(draining, parked.served);
        parked.last_done.saturating_add(limit.as_micros().try_into().unwrap_or(u64::MAX))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lots> {
        // Each step under the lock is a whole insert or remove: a panic
        // elsewhere cannot leave the entries half-changed.
        self.lots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lot's task: hands readable sockets to `resume`, closes expired
    /// ones, re-times everything when the drain starts, and closes
    /// everything at the cut. Runs until the cut.
    pub async fn run(self: Arc<Self>, resume: impl Fn(Parked)) {
        let drain = self.drain.clone();
        let mut draining = drain.is_draining();
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut events = vec![EpollEvent::empty(); BATCH];
        let mut release_check = tokio::time::interval(RELEASE_QUIET / 4);
        release_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.expire(now_micros());
            if next.is_some_and(|due| due <= now_micros()) {
                // More than one batch was due: let other tasks run, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            if let Some(due) = next {
                let wait = Duration::from_micros(due.saturating_sub(now_micros()));
                timer.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            tokio::select! {
                ready = self.epoll.readable() => match ready {
                    Ok(mut guard) => {
                        if self.wake(&mut events, &resume) < events.len() {
                            guard.clear_ready();
                        }
                    }
                    Err(e) => {
                        // Not expected from an epoll set; without it nothing
                        // parked can be served, so close them all.
                        warn!(error = %e, "the parking lot's epoll set failed; closing parked connections");
                        self.close_all();
                        return;
                    }
                },
                _ = &mut timer, if next.is_some() => {}
                _ = self.sooner.notified() => {}
                _ = release_check.tick(), if RELEASE_MEMORY.get().is_some() => self.release_after_burst(),
                _ = drain.reached(Phase::Draining), if !draining => {
                    draining = true;
                    self.retime();
                }
                _ = drain.cut() => {
                    self.close_all();
                    return;
                }
            }
        }
    }

    /// Hands up to one batch of readable sockets back; returns how many epoll reported.
    fn wake(&self, events: &mut [EpollEvent], resume: &impl Fn(Parked)) -> usize {
        let n = match self.epoll.get_ref().0.wait(events, EpollTimeout::ZERO) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => return events.len(),
            Err(e) => {
                warn!(error = %e, "polling parked connections failed");
                return 0;
            }
        };
        let mut woken = Vec::with_capacity(n);
        {
            let mut lots = self.lock();
            for event in &events[..n] {
                let (slot, generation) = untoken(event.data());
                if is_live(&lots.entries, slot, generation) {
                    let entry = lots.entries.remove(slot);
                    // Registered with a oneshot: it is disarmed, but still in the set.
                    let _ = self.epoll.get_ref().0.delete(&entry.parked.tcp);
                    woken.push(entry);
                }
            }
        }
        self.metrics.conn_parked.dec_by(woken.len() as i64);
        for entry in woken {
            // The new task counts the connection before the entry's token goes.
            resume(entry.parked);
        }
        n
    }

    /// Closes every connection past its deadline (at most one batch);
    /// returns the earliest deadline still pending.
    fn expire(&self, now: u64) -> Option<u64> {
        let mut closed = Vec::new();
        let next = {
            let mut lots = self.lock();
            lots.armed = None;
            loop {
                let Some(&Reverse((due, slot, generation))) = lots.deadlines.peek() else { break None };
                if !is_live(&lots.entries, slot, generation) {
                    lots.deadlines.pop();
                    continue;
                }
                if due > now || closed.len() == BATCH {
                    lots.armed = Some(due);
                    break Some(due);
                }
                lots.deadlines.pop();
                closed.push(lots.entries.remove(slot));
            }
        };
        self.closed(closed);
        next
    }

    fn release_after_burst(&self) {
        let over = {
            let mut lots = self.lock();
            let over = burst_over(lots.parked_since_release, lots.last_park, now_micros());
            if over {
                lots.parked_since_release = 0;
            }
            over
        };
        if let (true, Some(release)) = (over, RELEASE_MEMORY.get()) {
            let before = std::time::Instant::now();
            release();
            debug!(took = ?before.elapsed(), "a burst of connections went idle: free memory returned to the OS");
        }
    }

    /// The drain started: every parked socket now has the idle-grace.
    fn retime(&self) {
        let mut lots = self.lock();
        let lots = &mut *lots;
        lots.deadlines.clear();
        for (slot, entry) in &lots.entries {
            let due = self.deadline(&entry.parked, true);
            lots.deadlines.push(Reverse((due, slot, entry.generation)));
        }
        debug!(parked = lots.entries.len(), "drain: parked connections re-timed to the idle-grace");
    }

    fn close_all(&self) {
        let closed = {
            let mut lots = self.lock();
            lots.closed = true;
            lots.deadlines.clear();
            std::mem::take(&mut lots.entries).into_iter().map(|(_, e)| e).collect::<Vec<_>>()
        };
        self.closed(closed);
    }

    /// Dropping the socket closes it: nothing unread (it was not readable), so a clean FIN.
    fn closed(&self, entries: Vec<Entry>) {
        if !entries.is_empty() {
            self.metrics.conn_open.dec_by(entries.len() as i64);
            self.metrics.conn_parked.dec_by(entries.len() as i64);
            debug!(count = entries.len(), "parked connections closed");
        }
    }
}

fn is_live(entries: &Slab<Entry>, slot: usize, generation: u32) -> bool {
    entries.get(slot).is_some_and(|e| e.generation == generation)
}

fn token(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | slot as u64
}

fn untoken(data: u64) -> (usize, u32) {
    ((data & u64::from(u32::MAX)) as usize, (data >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_released_only_after_a_burst_and_a_quiet_second() {
        let second = RELEASE_QUIET.as_micros() as u64;
        assert!(!burst_over(RELEASE_BURST - 1, 0, 10 * second), "not a burst");
        assert!(!burst_over(RELEASE_BURST, 5 * second, 5 * second + second / 2), "still parking");
        assert!(burst_over(RELEASE_BURST, 5 * second, 6 * second));
    }
}
