//! The pooled HTTP/1.1 client to the app, over TCP or a Unix socket.
//!
//! A small pool of `hyper::client::conn::http1` senders instead of
//! hyper-util's legacy `Client`: one authority, so no pool keys, no hashing,
//! no boxed futures per request; the idle connections are a LIFO stack
//! behind an uncontended lock. It keeps the legacy client's behaviour: a
//! request waiting for a new connection also takes an idle one returned
//! before the connect completes (the connect then finishes in the background
//! and joins the pool); a request that a *reused* connection dropped before
//! writing it (the app closed the idle socket) is retried on another
//! connection; idle connections are evicted after [`IDLE_TIMEOUT`]; at most
//! [`MAX_IDLE`] are kept.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{uri::Authority, Method, Request, Response, Uri};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
    sync::oneshot,
};
use tracing::{debug, trace};

use crate::{config::UpstreamAddr, proxy::ProxyBody};

/// An idle upstream connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many idle upstream connections are kept.
pub const MAX_IDLE: usize = 1024;

/// The authority of the `CONNECT` request line sent to the app.
pub const POOL_AUTHORITY: &str = "upstream";

/// Builds the client every connection shares.
pub fn client(addr: UpstreamAddr, connect_timeout: Duration) -> UpstreamClient {
    UpstreamClient {
        pool: Arc::new(Pool {
            addr,
            connect_timeout,
            state: Mutex::new(PoolState { idle: Vec::new(), waiters: VecDeque::new(), reaper: false }),
        }),
    }
}

/// The pooled client every connection shares.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
}

type Sender = SendRequest<ProxyBody>;

struct Pool {
    addr: UpstreamAddr,
    connect_timeout: Duration,
    state: Mutex<PoolState>,
}

struct PoolState {
    /// Most recently used last.
    idle: Vec<Idle>,
    /// Requests connecting that would also take a connection returned meanwhile.
    waiters: VecDeque<oneshot::Sender<Sender>>,
    /// The idle-eviction task is running.
    reaper: bool,
}

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Why an exchange with the app failed (the legacy client's kinds, same messages).
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// No connection could be made.
    Connect,
    /// A fresh connection was closed before the request could be written.
    Canceled,
    /// The exchange failed once the request was handed to the connection.
    SendRequest,
}

impl Error {
    fn new(kind: Kind, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error { kind, source: source.into() }
    }

    /// True if the app could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, Kind::Connect)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client error ({:?})", self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl UpstreamClient {
    /// Sends `req` (its URI as the request target, origin-form; `CONNECT`
    /// goes out in authority-form) on a pooled or new connection.
    pub async fn request(&self, mut req: Request<ProxyBody>) -> Result<Response<Incoming>, Error> {
        if req.method() == Method::CONNECT {
            *req.uri_mut() = Uri::from(Authority::from_static(POOL_AUTHORITY));
        }
        loop {
            let (mut tx, reused) = self.checkout().await?;
            match tx.try_send_request(req).await {
                Ok(res) => {
                    self.release(tx);
                    return Ok(res);
                }
                Err(mut err) => match err.take_message() {
                    // The app closed the idle connection before the request
                    // was written: nothing was sent, try another connection.
                    Some(again) if reused => {
                        trace!(error = %err.error(), "unstarted request canceled, trying again");
                        req = again;
                    }
                    Some(_) => return Err(Error::new(Kind::Canceled, err.into_error())),
                    None => return Err(Error::new(Kind::SendRequest, err.into_error())),
                },
            }
        }
    }

    /// An idle connection (reused: true), or a new one, or, while that one
    /// connects, an idle one returned meanwhile.
    async fn checkout(&self) -> Result<(Sender, bool), Error> {
        let mut waiter = {
            let mut state = self.pool.lock();
            if let Some(tx) = state.pop_idle() {
                return Ok((tx, true));
            }
            let (tx, rx) = oneshot::channel();
            state.waiters.retain(|w| !w.is_closed());
            state.waiters.push_back(tx);
            rx
        };
        let mut connect = Box::pin(connect(self.pool.clone()));
        tokio::select! {
            biased;
            Ok(tx) = &mut waiter => {
                // Not wasted: it joins the pool once connected.
                let pool = self.pool.clone();
                tokio::spawn(async move {
                    match connect.await {
                        Ok(tx) => pool.put(tx),
                        Err(e) => trace!(error = %e, "background connect failed"),
                    }
                });
                Ok((tx, true))
            }
            connected = &mut connect => {
                waiter.close();
                if let Ok(tx) = waiter.try_recv() {
                    self.pool.put(tx);
                }
                connected.map(|tx| (tx, false))
            }
        }
    }

    /// Back to the pool once the connection can take the next request: at
    /// once for a small response already read, else when its body is done.
    fn release(&self, mut tx: Sender) {
        if tx.is_ready() {
            self.pool.put(tx);
        } else if !tx.is_closed() {
            let pool = self.pool.clone();
            tokio::spawn(async move {
                if std::future::poll_fn(|cx| tx.poll_ready(cx)).await.is_ok() {
                    pool.put(tx);
                }
            });
        }
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready connection to the first request still waiting, else to the idle stack.
    fn put(self: &Arc<Self>, mut tx: Sender) {
        if !tx.is_ready() {
            return;
        }
        let mut state = self.lock();
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(tx) {
                Ok(()) => return,
                Err(back) => tx = back,
            }
        }
        if state.idle.len() >= MAX_IDLE {
            return;
        }
        state.idle.push(Idle { tx, since: Instant::now() });
        if !state.reaper {
            state.reaper = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

impl PoolState {
    fn pop_idle(&mut self) -> Option<Sender> {
        let mut now = None;
        while let Some(idle) = self.idle.pop() {
            if !idle.tx.is_ready() {
                continue;
            }
            if now.get_or_insert_with(Instant::now).saturating_duration_since(idle.since) > IDLE_TIMEOUT {
                continue;
            }
            return Some(idle.tx);
        }
        None
    }
}

/// Closes idle connections past [`IDLE_TIMEOUT`] (and those the app closed);
/// ends when none is left or the pool is gone.
async fn reap(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut state = pool.lock();
        let now = Instant::now();
        state.idle.retain(|i| i.tx.is_ready() && now.saturating_duration_since(i.since) <= IDLE_TIMEOUT);
        if state.idle.is_empty() {
            state.reaper = false;
            return;
        }
    }
}

/// A new connection, its HTTP/1 handshake done and its driver spawned.
/// Opens a socket to the app (small requests must not wait for Nagle).
async fn dial(addr: &UpstreamAddr) -> io::Result<UpstreamStream> {
    match addr {
        UpstreamAddr::Tcp { host, port } => {
            let tcp = TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            Ok(UpstreamStream::Tcp(tcp))
        }
        UpstreamAddr::Unix(path) => UnixStream::connect(path).await.map(UpstreamStream::Unix),
    }
}

async fn connect(pool: Arc<Pool>) -> Result<Sender, Error> {
    let stream = match tokio::time::timeout(pool.connect_timeout, dial(&pool.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Error::new(Kind::Connect, e)),
        Err(_) => {
            return Err(Error::new(
                Kind::Connect,
                io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"),
            ))
        }
    };
    drop(pool);
    let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::new(Kind::SendRequest, e))?;
    let (err_tx, err_rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!("client connection error: {:?}", e);
            let _ = err_tx.send(e);
        }
    });
    match tx.ready().await {
        Ok(()) => Ok(tx),
        // The connection ended before it could take a request: its own error says why.
        Err(e) if e.is_closed() => Err(Error::new(Kind::SendRequest, err_rx.await.unwrap_or(e))),
        Err(e) => Err(Error::new(Kind::SendRequest, e)),
    }
}

/// A connection to the app.
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamStream::Tcp($s) => $e,
            UpstreamStream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Supervisor mode: polls until the app accepts connections (and answers 2xx
/// on `ready_path`, if given), then flips readiness on.
pub async fn wait_ready(
    shared: std::sync::Arc<crate::proxy::Shared>,
    addr: UpstreamAddr,
    ready_path: Option<String>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if shared.app_gone.load(std::sync::atomic::Ordering::Acquire) || shared.drain.is_draining() {
            return;
        }
        if dial(&addr).await.is_err() {
            continue;
        }
        if let Some(path) = &ready_path {
            let req = http::Request::get(path.as_str())
                .body(crate::proxy::ProxyBody::Empty)
                .expect("valid path checked at start");
            match shared.client.request(req).await {
                Ok(res) if res.status().is_success() => {}
                _ => continue,
            }
        }
        tracing::info!(after_ms = started.elapsed().as_millis() as u64, "app ready");
        let _ = ready.send(true);
        return;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        io::{Read, Write},
        net::TcpListener,
    };

    use super::*;

    /// Reads one request head (no body) and answers it, keeping the connection.
    fn answer(conn: &mut std::net::TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(conn.read(&mut byte).unwrap(), 1, "request head cut short");
            head.push(byte[0]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
    }

    /// Polls once; true if the future completed.
    async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_ready())).await
    }

    fn get() -> Request<ProxyBody> {
        Request::get("/").body(ProxyBody::Empty).unwrap()
    }

    /// The app closes an idle pooled connection just as a request takes it
    /// (its connection task has not run since): the connection gives the
    /// unwritten request back, and it goes out again on a new connection.
    #[tokio::test]
    async fn request_on_a_connection_the_app_just_closed_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            answer(&mut conn);
        });
        let client = client(UpstreamAddr::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(5));

        // An idle connection in the pool, driven by hand.
        let (ours, theirs) = tokio::io::duplex(4096);
        let (tx, conn) = hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(ours)).await.unwrap();
        let mut conn = Box::pin(conn);
        assert!(!poll_once(conn.as_mut()).await);
        assert!(tx.is_ready());
        client.pool.put(tx);

        drop(theirs);
        let mut request = Box::pin(client.request(get()));
        assert!(!poll_once(request.as_mut()).await);
        assert!(client.pool.lock().idle.is_empty(), "the idle connection was taken");
        assert!(poll_once(conn.as_mut()).await, "the connection saw the app close it");

        let res = request.await.expect("retried on a new connection");
        assert_eq!(res.status(), 200);
        app.join().unwrap();
    }

    /// A request that found no idle connection takes one returned while its
    /// own connect is under way; the new connection then joins the pool.
    #[tokio::test]
    async fn connection_returned_while_connecting_is_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = client(UpstreamAddr::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(5));

        let (ours, mut theirs) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(theirs.read_u8().await.unwrap());
            }
            theirs.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            std::future::pending::<()>().await;
        });
        let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(ours)).await.unwrap();
        tokio::spawn(conn);
        tx.ready().await.unwrap();

        let mut request = Box::pin(client.request(get()));
        assert!(!poll_once(request.as_mut()).await, "connecting");
        client.pool.put(tx);
        let res = request.await.unwrap();
        assert_eq!(res.status(), 200);

        // The connect finished in the background and pooled its connection.
        tokio::time::timeout(Duration::from_secs(5), async {
            while client.pool.lock().idle.len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both connections pooled");
        drop(listener);
    }

    /// A refused connect is a connect error (502 upstream unreachable), with the legacy client's message.
    #[tokio::test]
    async fn connect_failure_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = client(UpstreamAddr::Tcp { host: "127.0.0.1".into(), port }, Duration::from_secs(5));
        let err = client.request(get()).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert_eq!(err.to_string(), "client error (Connect)");
    }
}
