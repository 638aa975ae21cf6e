//! One client connection: tell HTTP/1 from h2c, serve it, and close it exactly when the drain says.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::{
    drain::{Drain, Phase},
    metrics::Metrics,
    proxy::{Proxy, Shared},
};

/// After the deadline, how long a connection may take to write the 503s it
/// owes before it is dropped (a client that does not read cannot hold us).
const CUT_FLUSH: Duration = Duration::from_millis(100);

/// Per-connection settings that do not change at run time.
#[derive(Clone)]
pub struct ConnSettings {
    pub idle_grace: Duration,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

/// What the drain needs to know about one connection's requests.
pub struct ConnState {
    /// Requests whose response body has not finished.
    in_flight: AtomicUsize,
    /// Requests still waiting for a response head.
    heads_pending: AtomicUsize,
    /// When `in_flight` last dropped to zero (µs since process start).
    last_done: AtomicU64,
    /// Woken whenever `in_flight` drops to zero.
    idle: Notify,
    /// A request on this connection was answered 503 by the deadline.
    deadline_hit: std::sync::atomic::AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            in_flight: AtomicUsize::new(0),
            heads_pending: AtomicUsize::new(0),
            last_done: AtomicU64::new(now_micros()),
            idle: Notify::new(),
            deadline_hit: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The deadline answered one of this connection's requests: the
    /// connection counts as cut even if it then closed cleanly.
    pub fn mark_cut(&self) {
        self.deadline_hit.store(true, Ordering::Release);
    }

    /// Marks a request as started; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>, metrics: &Arc<Metrics>) -> RequestGuard {
        metrics.in_flight.inc();
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            metrics.conn_active.inc();
        }
        self.heads_pending.fetch_add(1, Ordering::AcqRel);
        RequestGuard { conn: self.clone(), metrics: metrics.clone(), head_pending: true }
    }

    /// Resolves once the drain has started and this connection has had no
    /// request in progress for `grace`.
    async fn idle_for(&self, grace: Duration, drain: &Drain) {
        drain.reached(Phase::Draining).await;
        loop {
            let woken = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                let idle = Duration::from_micros(now_micros().saturating_sub(self.last_done.load(Ordering::Acquire)));
                if idle >= grace {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(grace - idle) => {}
                    _ = woken => {}
                }
            } else {
                woken.await;
            }
        }
    }

    /// True when some response is past its head and still streaming.
    fn streaming(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > self.heads_pending.load(Ordering::Acquire)
    }
}

/// Keeps one request counted until its response body is done.
pub struct RequestGuard {
    conn: Arc<ConnState>,
    metrics: Arc<Metrics>,
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
        self.metrics.in_flight.dec();
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.metrics.conn_active.dec();
            self.conn.last_done.store(now_micros(), Ordering::Release);
            self.conn.idle.notify_one();
        }
    }
}

fn now_micros() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Runs the TLS handshake (in the connection's own task, bounded by the
/// handshake timeout and by the listener closing), then serves the
/// connection with the protocol ALPN chose.
pub async fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    settings: ConnSettings,
    tls: TlsAcceptor,
) {
    let drain = shared.drain.clone();
    let handshake = tokio::time::timeout(settings.tls_handshake_timeout, tls.accept(tcp));
    let stream = tokio::select! {
        res = handshake => match res {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                shared.metrics.tls_handshake_failures.inc();
                return debug!(%peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                shared.metrics.tls_handshake_failures.inc();
                return debug!(%peer, "TLS handshake timed out");
            }
        },
        // Not yet a client we owe anything: it can reconnect elsewhere.
        _ = drain.reached(Phase::Closing) => return debug!(%peer, "closed during the TLS handshake"),
    };
    let h2 = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(true),
        Some(_) => Some(false),
        None => None,
    };
    serve(stream, peer, shared, settings, "https", h2).await
}

/// Serves one accepted client connection until it closes, the drain closes
/// it, or the deadline cuts it. `h2` is the protocol if already known (ALPN);
/// otherwise the first bytes tell h2c from HTTP/1.
pub async fn serve<IO>(
    io: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
    settings: ConnSettings,
    scheme: &'static str,
    h2: Option<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = shared.metrics.clone();
    metrics.connections_total.inc();
    metrics.conn_open.inc();
    let state = Arc::new(ConnState::new());
    let drain = shared.drain.clone();
    let svc = Proxy { shared, conn: state.clone(), peer, scheme };

    let mut io = io;
    let mut prefix = Vec::with_capacity(PREFACE.len());
    // Until the first bytes arrive the connection is idle, and a drain treats it so.
    let detected = match h2 {
        Some(known) => Some(known),
        None => tokio::select! {
            r = tokio::time::timeout(settings.header_read_timeout, is_h2c(&mut io, &mut prefix)) => r.ok().and_then(Result::ok),
            _ = state.idle_for(settings.idle_grace, &drain) => None,
            _ = drain.cut() => None,
        },
    };
    let io = Prefixed { prefix, pos: 0, io };
    let was_cut = match detected {
        Some(false) => serve_h1(TokioIo::new(io), svc, &state, &settings, &drain).await,
        Some(true) => serve_h2(TokioIo::new(io), svc, &drain).await,
        None => false,
    };
    if was_cut || state.deadline_hit.load(Ordering::Acquire) {
        drain.count_cut();
        metrics.cut_total.inc();
        debug!(%peer, "connection cut at the grace deadline");
    }
    metrics.conn_open.dec();
}

/// Returns true when the deadline cut the connection (even if what it owed was still written).
async fn serve_h1<IO>(io: TokioIo<IO>, svc: Proxy, state: &ConnState, settings: &ConnSettings, drain: &Drain) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, metrics) = (svc.peer, svc.shared.metrics.clone());
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => return finished(peer, &metrics, res),
        _ = state.idle_for(settings.idle_grace, drain) => {
            // Closes at once: hyper sees no request in progress.
            conn.as_mut().graceful_shutdown();
        }
        _ = drain.cut() => {}
    }
    tokio::select! {
        res = conn.as_mut() => return finished(peer, &metrics, res),
        _ = drain.cut() => {}
    }
    // The deadline: a response already streaming cannot be saved on HTTP/1,
    // but a request still waiting for its head gets its 503 written.
    if !state.streaming() {
        let _ = tokio::time::timeout(CUT_FLUSH, conn.as_mut()).await;
    }
    true
}

/// Returns true when the deadline cut the connection (even if what it owed was still written).
async fn serve_h2<IO>(io: TokioIo<IO>, svc: Proxy, drain: &Drain) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, metrics) = (svc.peer, svc.shared.metrics.clone());
    let conn = http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => return finished(peer, &metrics, res),
        _ = drain.reached(Phase::Draining) => {
            // GOAWAY: open streams finish, new ones are refused, the
            // connection closes when the last stream ends.
            conn.as_mut().graceful_shutdown();
        }
        _ = drain.cut() => {}
    }
    tokio::select! {
        res = conn.as_mut() => return finished(peer, &metrics, res),
        _ = drain.cut() => {}
    }
    // Streams still waiting for a head get their 503 written; the rest are reset.
    let _ = tokio::time::timeout(CUT_FLUSH, conn.as_mut()).await;
    true
}

fn finished(peer: SocketAddr, metrics: &Metrics, res: Result<(), hyper::Error>) -> bool {
    if let Err(e) = res {
        // hyper answers unparsable requests itself (400, 414, 431): count them.
        if e.is_parse() {
            metrics.response(http::StatusCode::BAD_REQUEST);
        }
        debug!(%peer, error = %crate::error::error_chain(&e), "connection ended with an error");
    }
    false
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads just enough to tell the h2c preface from an HTTP/1 request.
async fn is_h2c<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        if io.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
    }
}

/// Replays the bytes read during detection, then reads from the socket.
struct Prefixed<IO> {
    prefix: Vec<u8>,
    pos: usize,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
