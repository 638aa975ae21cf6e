//! The pooled HTTP/1.1 client to the app, over TCP or a Unix socket.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper::Uri;
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection},
        Client,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};

use crate::{config::UpstreamAddr, proxy::ProxyBody};

/// The pooled client every connection shares.
pub type UpstreamClient = Client<Connector, ProxyBody>;

/// Builds the client. Idle upstream connections are kept for reuse; the pool
/// retries a request that lost the race with the app closing an idle socket.
pub fn client(addr: UpstreamAddr, connect_timeout: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1024)
        .set_host(false)
        .build(Connector { addr: addr.into(), connect_timeout })
}

/// Every request URI is rewritten to this authority, so all share one pool.
pub const POOL_AUTHORITY: &str = "upstream";

/// Connects to the configured upstream, whatever the request URI says.
#[derive(Clone)]
pub struct Connector {
    addr: std::sync::Arc<UpstreamAddr>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, limit) = (self.addr.clone(), self.connect_timeout);
        Box::pin(async move {
            let connect = async {
                match &*addr {
                    UpstreamAddr::Tcp { host, port } => {
                        let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                        tcp.set_nodelay(true)?;
                        Ok(UpstreamStream::Tcp(tcp))
                    }
                    UpstreamAddr::Unix(path) => UnixStream::connect(path).await.map(UpstreamStream::Unix),
                }
            };
            match tokio::time::timeout(limit, connect).await {
                Ok(stream) => stream.map(TokioIo::new),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out")),
            }
        })
    }
}

/// A connection to the app.
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
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
        let accepts = match &addr {
            UpstreamAddr::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.is_ok(),
            UpstreamAddr::Unix(path) => UnixStream::connect(path).await.is_ok(),
        };
        if !accepts {
            continue;
        }
        if let Some(path) = &ready_path {
            let uri = format!("http://{POOL_AUTHORITY}{path}");
            let req =
                http::Request::get(uri).body(crate::proxy::ProxyBody::Empty).expect("valid path checked at start");
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
