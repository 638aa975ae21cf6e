//! The per-request service: rewrite headers, forward to the app, stream the answer back, and tunnel upgrades.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
    time::{Duration, Instant},
};

use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    uri::PathAndQuery,
    Request, Response, StatusCode, Uri, Version,
};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::{debug, warn};

pub use crate::body::{full, ProxyBody, TrackedBody};
use crate::{
    activity::ConnState, body::StallGuard, drain::Drain, error::ProxyError, metrics::Metrics, upstream::UpstreamClient,
};

/// What every connection's service shares.
pub struct Shared {
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    /// False until a supervised app accepts connections (always true otherwise).
    pub ready: watch::Receiver<bool>,
    /// How long a request may wait for `ready`.
    pub upstream_wait: Duration,
    /// The supervised app has exited: nothing to forward to.
    pub app_gone: AtomicBool,
    /// `--body-read-timeout`: the longest a request body may stall.
    pub body_read_timeout: Duration,
    /// `--upstream-timeout`: the longest the app may take to send a response head.
    pub upstream_timeout: Option<Duration>,
}

/// The hyper service for one client connection.
#[derive(Clone)]
pub struct Proxy {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnState>,
    pub peer: SocketAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// `X-Forwarded-For`'s value for this client.
    pub client_ip: HeaderValue,
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        Box::pin(self.clone().handle(req))
    }
}

impl Proxy {
    async fn handle(self, mut req: Request<Incoming>) -> Result<Response<TrackedBody>, Infallible> {
        let mut guard = self.conn.begin();
        // Test hook, debug builds only: prove a panicking connection task
        // neither takes the process down nor goes unlogged.
        if cfg!(debug_assertions) && req.headers().contains_key("x-drainproxy-test-panic") {
            panic!("test panic requested by {}", self.peer);
        }
        let started = Instant::now();
        let drain = &self.shared.drain;
        let h1 = req.version() < Version::HTTP_2;
        let seen = HeaderScan::of(req.headers());
        let upgrade = h1 && seen.upgrade && wants_upgrade(req.headers());
        let (method, uri) = (req.method().clone(), req.uri().clone());

        let available = match self.upstream_ready() {
            Some(now) => now,
            // Boxed: the wait is rare and should not size every request's future.
            None => Box::pin(self.wait_upstream()).await,
        };
        let result = if let Err(e) = available {
            Err(e)
        } else if upgrade && drain.is_draining() {
            Err(ProxyError::UpgradeWhileDraining)
        } else {
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            match self.prepare(&mut req, upgrade, &seen) {
                Err(e) => Err(e),
                Ok(()) => {
                    let req = req.map(|b| ProxyBody::Request(StallGuard::new(b, self.shared.body_read_timeout)));
                    // One hand-rolled select over three pinned futures: no
                    // combinator moving the exchange around. The losers are
                    // dropped at the end of this block, as select! would.
                    let mut exchange = pin!(self.shared.client.request(req));
                    let mut limit = pin!(self.shared.upstream_timeout.map(tokio::time::sleep));
                    let mut cut = pin!(drain.cut());
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(res) = exchange.as_mut().poll(cx) {
                            return Poll::Ready(res.map_err(ProxyError::from_client));
                        }
                        if limit.as_mut().as_pin_mut().is_some_and(|sleep| sleep.poll(cx).is_ready()) {
                            return Poll::Ready(Err(ProxyError::UpstreamTimeout));
                        }
                        if cut.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(ProxyError::Deadline));
                        }
                        Poll::Pending
                    })
                    .await
                    .map(|res| (res, client_upgrade))
                }
            }
        };

        // Read once, at the moment the head leaves: from t=0 of the drain every
        // HTTP/1 response tells the client to go elsewhere.
        let draining = drain.is_draining();
        let mut res = match result {
            Ok((mut res, Some(client_upgrade))) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let websocket = crate::websocket::is_websocket(res.headers());
                self.tunnel(client_upgrade, hyper::upgrade::on(&mut res), websocket);
                res.map(|_| ProxyBody::Empty)
            }
            Ok((res, _)) => {
                let mut res = res.map(ProxyBody::Incoming);
                strip_hop_by_hop(res.headers_mut(), false);
                res
            }
            Err(e) => {
                if let ProxyError::Deadline = e {
                    self.conn.mark_cut();
                }
                if let Some(kind) = e.kind() {
                    self.shared.metrics.upstream_error(kind);
                }
                warn!(peer = %self.peer, %method, %uri, error = %e, "request failed");
                e.into_response(draining)
            }
        };
        if h1 && draining && res.status() != StatusCode::SWITCHING_PROTOCOLS {
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let metrics = &self.shared.metrics;
        metrics.response(res.status());
        metrics.request_duration.observe(started.elapsed().as_secs_f64());
        guard.head_sent();
        Ok(res.map(|body| TrackedBody { inner: body, guard }))
    }

    /// Whether requests can go to the app right now; `None`: in supervisor
    /// mode, not yet (see [`Self::wait_upstream`]).
    fn upstream_ready(&self) -> Option<Result<(), ProxyError>> {
        if self.shared.app_gone.load(Ordering::Acquire) {
            return Some(Err(ProxyError::AppGone));
        }
        if *self.shared.ready.borrow() {
            return Some(Ok(()));
        }
        None
    }

    /// In supervisor mode, waits (bounded) for the app to be ready.
    async fn wait_upstream(&self) -> Result<(), ProxyError> {
        let shared = &self.shared;
        let mut ready = shared.ready.clone();
        let became_ready = tokio::time::timeout(shared.upstream_wait, ready.wait_for(|r| *r)).await;
        match became_ready {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ProxyError::NotReady),
        }
    }

    /// Rewrites the request for the app: origin-form URI, `Host` kept,
    /// hop-by-hop headers dropped, forwarding headers set.
    fn prepare(&self, req: &mut Request<Incoming>, upgrade: bool, seen: &HeaderScan) -> Result<(), ProxyError> {
        if !seen.host {
            // HTTP/2 carries the host in `:authority`; the app speaks HTTP/1.1.
            if let Some(auth) = req.uri().authority() {
                let host =
                    HeaderValue::from_str(auth.as_str()).map_err(|_| ProxyError::BadRequest("invalid authority"))?;
                req.headers_mut().insert(header::HOST, host);
            }
        }
        let uri = req.uri();
        // An HTTP/1 request target is almost always origin-form already: sent as is.
        if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
            let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = origin_form(path);
        }
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        if seen.hop_by_hop {
            let upgrade_value = headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(headers, true);
            if let (true, Some(value)) = (upgrade, upgrade_value) {
                headers.insert(header::UPGRADE, value);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
        }
        if seen.forwarded_for {
            append_forwarded_for(headers, &self.client_ip);
        } else {
            // The common case: no proxy in front, no lookup, no allocation.
            headers.insert(X_FORWARDED_FOR, self.client_ip.clone());
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme));
        Ok(())
    }

    /// Joins the client's and the app's upgraded sockets, as a tracked task
    /// that only the grace deadline interrupts.
    fn tunnel(&self, client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, websocket: bool) {
        let (drain, metrics, peer) = (self.shared.drain.clone(), self.shared.metrics.clone(), self.peer);
        // The tunnel outlives the HTTP connection: it keeps the connection slot.
        let permit = self.conn.take_permit();
        // Spawned before the 101 goes out, so the tracker never sees zero
        // connections between the HTTP connection ending and the tunnel starting.
        self.shared.drain.tracker.spawn(async move {
            let (client, upstream) = match tokio::join!(client, upstream) {
                (Ok(c), Ok(u)) => (c, u),
                (Err(e), _) | (_, Err(e)) => return debug!(%peer, error = %e, "upgrade failed"),
            };
            metrics.conn_upgraded.inc();
            let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            // WebSockets get a Close 1001 (Going Away) at a frame boundary when
            // the deadline cuts them; other tunnels are simply closed.
            match crate::websocket::tunnel(client, upstream, websocket, drain.cut()).await {
                crate::websocket::TunnelEnd::Closed(res) => debug!(%peer, result = ?res, "tunnel closed"),
                crate::websocket::TunnelEnd::Cut { graceful } => {
                    metrics.cut_total.inc();
                    debug!(%peer, websocket, graceful, "tunnel cut at the grace deadline");
                }
            }
            metrics.conn_upgraded.dec();
            drop(permit);
        });
    }
}

/// The request target for the app (`CONNECT`'s is set by the client).
fn origin_form(path: PathAndQuery) -> Uri {
    if path == "/" {
        return Uri::default();
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).expect("path is valid uri")
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The headers a request's rewrite depends on, found in one pass over the
/// names (a standard name compares as a small integer): most requests carry
/// none of the hop-by-hop ones, and lookups by name each cost a hash.
#[derive(Default)]
struct HeaderScan {
    host: bool,
    forwarded_for: bool,
    hop_by_hop: bool,
    upgrade: bool,
}

impl HeaderScan {
    fn of(headers: &HeaderMap) -> Self {
        let mut seen = HeaderScan::default();
        for name in headers.keys() {
            if name == header::HOST {
                seen.host = true;
            } else if name == X_FORWARDED_FOR {
                seen.forwarded_for = true;
            } else if is_hop_by_hop(name) {
                seen.hop_by_hop = true;
                seen.upgrade |= name == header::UPGRADE;
            }
        }
        seen
    }
}

/// The names [`strip_hop_by_hop`] always removes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && has_token(headers, header::CONNECTION, "upgrade")
}

/// Whether a comma-separated header (any of its lines) lists `token`, case-insensitively.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// Removes `Connection`, every header it names, and the fixed hop-by-hop set
/// (RFC 9110 §7.6.1). `TE: trailers` is the one value a request may keep.
fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    // Only `Connection` can name other headers: without any of the fixed set
    // (the common case) there is nothing to do.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers =
        request && headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The client's address as a header value, made once per connection.
pub fn client_ip(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_canonical().to_string()).expect("an IP address is a valid header value")
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).peekable();
    if prior.peek().is_none() {
        headers.insert(X_FORWARDED_FOR, ip.clone());
        return;
    }
    let value = format!("{}, {}", prior.collect::<Vec<_>>().join(", "), ip.to_str().unwrap_or_default());
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, true);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep", "te"]);
    }

    #[test]
    fn header_scan_finds_what_the_rewrite_needs() {
        let mut h = HeaderMap::new();
        h.insert("user-agent", HeaderValue::from_static("x"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        let seen = HeaderScan::of(&h);
        assert!(!seen.host && !seen.forwarded_for && !seen.hop_by_hop && !seen.upgrade);
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(PROXY_CONNECTION, HeaderValue::from_static("keep-alive"));
        let seen = HeaderScan::of(&h);
        assert!(seen.host && seen.forwarded_for && seen.hop_by_hop && !seen.upgrade);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(HeaderScan::of(&h).upgrade);
        for name in [KEEP_ALIVE, header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::CONNECTION] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            assert!(HeaderScan::of(&h).hop_by_hop);
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        append_forwarded_for(&mut h, &client_ip("[::ffff:127.0.0.1]:5".parse().unwrap()));
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
    }
}
