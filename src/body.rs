//! Bodies that cross the proxy: streamed without boxing, request bodies under a stall timeout, responses tracked until sent.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::activity::RequestGuard;

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body in either direction.
pub enum ProxyBody {
    /// From the app, streamed as it arrives.
    Incoming(Incoming),
    /// From the client, streamed, failing if it stalls.
    Request(StallGuard),
    Full(Option<Bytes>),
    Empty,
}

/// A whole body from bytes (error pages, admin answers).
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    ProxyBody::Full(Some(data.into()))
}

/// A plain-text response of our own (error pages, admin answers).
pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> http::Response<ProxyBody> {
    let mut res = http::Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

/// A client's request body that may not stall longer than `limit` between
/// reads (slow-body attacks hold an upstream connection otherwise).
pub struct StallGuard {
    inner: Incoming,
    limit: Duration,
    // Reused across stalls: one allocation per body at most.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl StallGuard {
    pub fn new(inner: Incoming, limit: Duration) -> Self {
        StallGuard { inner, limit, timer: None, armed: false }
    }
}

/// The client stopped sending its request body; the request fails with 408.
#[derive(Debug)]
pub struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body stalled past the body read timeout")
    }
}

impl std::error::Error for BodyStalled {}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Request(g) => match Pin::new(&mut g.inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    g.armed = false;
                    Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                }
                Poll::Pending => {
                    if !g.armed {
                        let deadline = Instant::now() + g.limit;
                        match &mut g.timer {
                            Some(timer) => timer.as_mut().reset(deadline),
                            None => g.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                        g.armed = true;
                    }
                    match g.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                        Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyStalled)))),
                        _ => Poll::Pending,
                    }
                }
            },
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Request(g) => g.inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Request(g) => g.inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            _ => SizeHint::with_exact(0),
        }
    }
}

/// A response body that keeps its request counted as in flight until it is
/// fully sent (or dropped with the connection).
pub struct TrackedBody {
    pub inner: ProxyBody,
    pub guard: RequestGuard,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
