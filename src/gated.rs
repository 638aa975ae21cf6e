//! A future that is polled only when its own waker fired.
//!
//! A busy keep-alive connection's task wakes for every read and write, and
//! each wake polls everything its `select!` races against the connection:
//! the watchdog and the drain cut, which almost never have anything to say
//! (~1,400 instructions per request, `bench/callgrind.sh`). Wrapped in
//! [`Gated`], they are skipped unless something they wait on woke them.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

pub struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    /// The waker the inner future sees: it opens the gate, then wakes the task.
    waker: Waker,
}

struct Gate {
    open: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Gated<F> {
    /// The first poll always reaches `inner`, so it can register its wakers.
    pub fn new(inner: F) -> Self {
        let gate = Arc::new(Gate { open: AtomicBool::new(true), task: AtomicWaker::new() });
        Gated { inner: Box::pin(inner), waker: Waker::from(gate.clone()), gate }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Register before looking: a wake-up in between opens the gate and
        // wakes this task again, so none is lost.
        this.gate.task.register(cx.waker());
        if !this.gate.open.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_the_inner_future_only_after_its_own_wake() {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        let mut gated = Gated::new(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut rx).poll(cx).map(|_| ())
        }));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // The task woke for something else: the inner future is left alone.
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        tx.send(()).unwrap();
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
