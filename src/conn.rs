//! One client connection: tell HTTP/1 from h2c, serve it, and close it exactly when the drain says.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::{
    activity::{ConnState, Limits, Verdict},
    drain::{Drain, Phase},
    gated::Gated,
    metrics::Metrics,
    park::{Lot, Parked},
    proxy::{Proxy, Shared},
};

/// How long an HTTP/1 connection must be quiet before hyper's state and
/// buffers are dropped and its task waits on the bare socket.
const PARK_AFTER: Duration = Duration::from_millis(25);

/// How long it must be quiet before even its task goes and the socket moves
/// to the parking lot. Later than [`PARK_AFTER`]: leaving and rejoining the
/// runtime costs four `epoll_ctl` calls, which a client sending a request
/// every few dozen milliseconds should not pay each time. Early enough that
/// a burst of new idle connections never piles up in tasks: the allocator
/// keeps the pages of a peak, and 10,000 connections waiting a whole second
/// in their tasks (~3.4 KiB each) left that peak in the RSS.
const LOT_AFTER: Duration = Duration::from_millis(100);

/// A client socket: plain TCP can wait for readability without a buffer,
/// which lets idle connections park; TLS keeps its session state anyway.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    const CAN_PARK: bool;
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// The socket as the parking lot keeps it, out of the runtime (plain TCP only).
    fn into_parked(self) -> Option<std::net::TcpStream>;
}

impl Transport for TcpStream {
    const CAN_PARK: bool = true;
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
    fn into_parked(self) -> Option<std::net::TcpStream> {
        self.into_std().ok()
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    const CAN_PARK: bool = false;
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
    fn into_parked(self) -> Option<std::net::TcpStream> {
        None
    }
}

/// After the deadline, how long a connection may take to write the 503s it
/// owes before it is dropped (a client that does not read cannot hold us).
const CUT_FLUSH: Duration = Duration::from_millis(100);

/// Per-connection settings that do not change at run time.
#[derive(Clone)]
pub struct ConnSettings {
    pub limits: Limits,
    pub max_header_bytes: usize,
    pub tls_handshake_timeout: Duration,
    /// Where long-idle plain HTTP/1 connections wait (none if it could not be set up).
    pub lot: Option<Arc<Lot>>,
}

/// How a connection's task ended.
enum End {
    /// The connection is closed; true when the deadline cut it.
    Closed(bool),
    /// The socket is in the parking lot, still open.
    Parked,
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
    permit: Option<OwnedSemaphorePermit>,
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
    serve(stream, peer, shared, settings, "https", h2, permit).await
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
    permit: Option<OwnedSemaphorePermit>,
) where
    IO: Transport,
{
    let metrics = shared.metrics.clone();
    metrics.connections_total.inc();
    metrics.conn_open.inc();
    let state = Arc::new(ConnState::new(permit, metrics.clone()));
    let drain = shared.drain.clone();
    let svc = Proxy { shared, conn: state.clone(), peer, scheme, client_ip: crate::proxy::client_ip(peer) };

    let mut io = ConnIo { prefix: Vec::new(), pos: 0, io, state: state.clone() };
    // Until the first bytes arrive the connection is idle: the watchdog
    // applies the keep-alive timeout, or the idle-grace once draining.
    let detected = match h2 {
        Some(known) => Some(known),
        // Boxed: this state is passed once, and should not size every idle task.
        None => {
            Box::pin(async {
                tokio::select! {
                    r = is_h2c(&mut io) => r.ok(),
                    _ = state.watchdog(settings.limits, &drain, true, None) => None,
                    _ = drain.cut() => None,
                }
            })
            .await
        }
    };
    let end = match detected {
        Some(false) => serve_h1(io, svc, &state, &settings, &drain).await,
        // Boxed: only h2 connections pay for the h2 state machine's size.
        Some(true) => End::Closed(Box::pin(serve_h2(TokioIo::new(io), svc, &state, &settings, &drain)).await),
        None => End::Closed(false),
    };
    ended(end, &state, &metrics, peer);
}

/// Serves a connection from the parking lot that turned readable: its next
/// request, or its client closing. It was counted open when first accepted.
pub async fn resume(parked: Parked, shared: Arc<Shared>, settings: ConnSettings) {
    let metrics = shared.metrics.clone();
    let peer = parked.peer;
    let tcp = match TcpStream::from_std(parked.tcp) {
        Ok(tcp) => tcp,
        Err(e) => {
            metrics.conn_open.dec();
            return debug!(%peer, error = %e, "cannot resume a parked connection");
        }
    };
    debug!(%peer, "parked connection resumed");
    let state = Arc::new(ConnState::resumed(parked.permit, metrics.clone(), parked.last_done, parked.served));
    // It woke up because bytes (or the client's FIN) are waiting; see `serve_h1`.
    state.bytes_read();
    let drain = shared.drain.clone();
    let svc = Proxy { shared, conn: state.clone(), peer, scheme: "http", client_ip: crate::proxy::client_ip(peer) };
    let io = ConnIo { prefix: Vec::new(), pos: 0, io: tcp, state: state.clone() };
    let end = serve_h1(io, svc, &state, &settings, &drain).await;
    ended(end, &state, &metrics, peer);
}

fn ended(end: End, state: &ConnState, metrics: &Metrics, peer: SocketAddr) {
    let End::Closed(was_cut) = end else { return };
    if was_cut || state.was_cut() {
        metrics.cut_total.inc();
        debug!(%peer, "connection cut at the grace deadline");
    }
    metrics.conn_open.dec();
}

/// Serves HTTP/1 until the connection closes or moves to the parking lot.
///
/// An idle keep-alive connection does not need hyper's state or buffers
/// (~20 KiB): after [`PARK_AFTER`] of quiet they are dropped and the bare
/// socket waits for readability; the next request gets a fresh hyper
/// connection. After [`LOT_AFTER`] the task ends too and the socket waits in
/// the [`Lot`]. Busy keep-alive clients never park.
async fn serve_h1<IO>(mut io: ConnIo<IO>, svc: Proxy, state: &ConnState, settings: &ConnSettings, drain: &Drain) -> End
where
    IO: Transport,
{
    loop {
        // Boxed: while parked, the task holds none of the active phase's state.
        match Box::pin(serve_h1_active(io, &svc, state, settings, drain)).await {
            Active::Done(was_cut) => return End::Closed(was_cut),
            Active::Parked(parked) => io = parked,
        }
        if !io.prefix.is_empty() {
            continue;
        }
        debug!(peer = %svc.peer, "idle connection parked");
        let lot_after = settings.lot.as_ref().map(|_| LOT_AFTER);
        tokio::select! {
            ready = std::future::poll_fn(|cx| io.io.poll_read_ready(cx)) => match ready {
                // Bytes (or the client's FIN) are waiting: time them as a
                // request head from now, or the watchdog, seeing a long-quiet
                // connection, would park it again before hyper reads them.
                Ok(()) => state.bytes_read(),
                Err(_) => return End::Closed(false),
            },
            // Idle past the keep-alive timeout or the idle-grace. Dropping the
            // socket sends a clean FIN (nothing unread: it was not readable).
            verdict = state.watchdog(settings.limits, drain, true, lot_after) => {
                return match (verdict, &settings.lot) {
                    (Verdict::Park, Some(lot)) => to_lot(io.io, lot, state, svc.peer),
                    _ => End::Closed(false),
                };
            }
            _ = drain.cut() => return End::Closed(false),
        }
    }
}

/// Moves a quiet connection's socket to the parking lot; its task then ends.
fn to_lot<IO: Transport>(io: IO, lot: &Lot, state: &ConnState, peer: SocketAddr) -> End {
    let permit = state.take_permit();
    // If the socket cannot leave the runtime or cannot be watched, close it:
    // it has been idle for a while with nothing in progress, as at a keep-alive timeout.
    let Some(tcp) = io.into_parked() else { return End::Closed(false) };
    let parked = Parked { tcp, peer, permit, last_done: state.last_done(), served: state.served() };
    match lot.park(parked) {
        Ok(()) => {
            debug!(%peer, "idle connection moved to the parking lot");
            End::Parked
        }
        Err(_) => End::Closed(false),
    }
}

/// How an active HTTP/1 phase ended.
enum Active<IO> {
    /// Finished; true when the deadline cut it.
    Done(bool),
    /// Quiet: hyper's state is gone, the socket (and any read-ahead bytes) comes back.
    Parked(ConnIo<IO>),
}

async fn serve_h1_active<IO>(
    io: ConnIo<IO>,
    svc: &Proxy,
    state: &ConnState,
    settings: &ConnSettings,
    drain: &Drain,
) -> Active<IO>
where
    IO: Transport,
{
    let (peer, metrics) = (svc.peer, &svc.shared.metrics);
    let mut builder = http1::Builder::new();
    builder
        // Our watchdog times heads from their first byte; hyper's (its only
        // use of a timer on HTTP/1) would also run while the connection is
        // idle and cut keep-alives short.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes);
    // Boxed so that `into_parts` can take it by value when parking.
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), svc.clone()).with_upgrades());
    let park = IO::CAN_PARK.then_some(PARK_AFTER);
    // Gated: polled only when what they wait on fires, not on every wake of a busy connection.
    // (A gated future that completed stays pending: `cut` is awaited again only if it did not fire.)
    let mut cut = Gated::new(drain.cut());
    let cut_fired = tokio::select! {
        res = conn.as_mut() => {
            finished(peer, metrics, res);
            return Active::Done(false);
        }
        verdict = Gated::new(state.watchdog(settings.limits, drain, true, park)) => match verdict {
            // Closes at once: hyper sees no request in progress.
            Verdict::Idle => {
                conn.as_mut().graceful_shutdown();
                false
            }
            Verdict::HeadTimeout => {
                debug!(%peer, "request head not complete in time; closed");
                return Active::Done(false);
            }
            Verdict::Park => {
                let Some(parts) = Pin::into_inner(conn).into_parts() else { return Active::Done(false) };
                let mut io = parts.io.into_inner();
                // Bytes hyper read ahead but did not parse yet are replayed.
                io.prefix = parts.read_buf.to_vec();
                io.pos = 0;
                return Active::Parked(io);
            }
        },
        _ = &mut cut => true,
    };
    if !cut_fired {
        tokio::select! {
            res = conn.as_mut() => {
            finished(peer, metrics, res);
            return Active::Done(false);
        }
            _ = &mut cut => {}
        }
    }
    // The deadline: a response already streaming cannot be saved on HTTP/1,
    // but a request still waiting for its head gets its 503 written.
    if !state.streaming() {
        let _ = tokio::time::timeout(CUT_FLUSH, conn.as_mut()).await;
    }
    Active::Done(true)
}

/// Returns true when the deadline cut the connection (even if what it owed was still written).
async fn serve_h2<IO>(io: TokioIo<IO>, svc: Proxy, state: &ConnState, settings: &ConnSettings, drain: &Drain) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, metrics) = (svc.peer, svc.shared.metrics.clone());
    let conn = http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).serve_connection(io, svc);
    tokio::pin!(conn);
    // Gated as in `serve_h1_active`; `cut` is awaited again only if it did not fire.
    let mut cut = Gated::new(drain.cut());
    let cut_fired = tokio::select! {
        res = conn.as_mut() => {
            finished(peer, &metrics, res);
            return false;
        }
        _ = Gated::new(drain.reached(Phase::Draining)) => {
            // GOAWAY: open streams finish, new ones are refused, the
            // connection closes when the last stream ends.
            conn.as_mut().graceful_shutdown();
            false
        }
        _ = Gated::new(state.watchdog(settings.limits, drain, false, None)) => {
            // Idle past the keep-alive timeout: GOAWAY too.
            conn.as_mut().graceful_shutdown();
            false
        }
        _ = &mut cut => true,
    };
    if !cut_fired {
        tokio::select! {
            res = conn.as_mut() => {
            finished(peer, &metrics, res);
            return false;
        }
            _ = &mut cut => {}
        }
    }
    // Streams still waiting for a head get their 503 written; the rest are reset.
    let _ = tokio::time::timeout(CUT_FLUSH, conn.as_mut()).await;
    true
}

fn finished(peer: SocketAddr, metrics: &Metrics, res: Result<(), hyper::Error>) {
    if let Err(e) = res {
        // hyper answers unparsable requests itself (400, 414, 431): count them.
        if e.is_parse() {
            metrics.response(http::StatusCode::BAD_REQUEST);
        }
        debug!(%peer, error = %crate::error::error_chain(&e), "connection ended with an error");
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads just enough to tell the h2c preface from an HTTP/1 request; what
/// was read is replayed by the wrapper.
async fn is_h2c<IO: AsyncRead + Unpin>(io: &mut ConnIo<IO>) -> io::Result<bool> {
    let mut buf = Vec::with_capacity(PREFACE.len());
    loop {
        if io.io.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        io.state.bytes_read();
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] || n == PREFACE.len() {
            let h2 = buf[..n] == *PREFACE;
            io.prefix = buf;
            return Ok(h2);
        }
    }
}

/// The client socket as hyper sees it: replays the bytes read during
/// protocol detection, and tells the watchdog when request bytes arrive.
struct ConnIo<IO> {
    prefix: Vec<u8>,
    pos: usize,
    io: IO,
    state: Arc<ConnState>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for ConnIo<IO> {
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
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.bytes_read();
        }
        res
    }
}

/// Writes mark the connection unflushed until hyper flushes it, which hyper
/// does only once its own write buffer is empty: a response can end (and its
/// request stop counting) while its tail still waits in hyper's buffer for a
/// slow reader, and such a connection must not park (that drops the buffer).
impl<IO: AsyncWrite + Unpin> AsyncWrite for ConnIo<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.state.wrote(false);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.state.wrote(false);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            this.state.wrote(true);
        }
        res
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
