//! A minimal, fast HTTP upstream for `bench/run.sh`: it must never be the bottleneck.
//!
//! * `GET /64k` answers 65536 bytes, anything else 13 bytes (`Hello, world!`),
//!   both from static buffers (`Bytes::from_static`, no copy per request).
//! * HTTP/1.1 keep-alive, and h2c with prior knowledge (a connection whose
//!   first bytes are the HTTP/2 preface), for the direct h2load baseline.
//! * `TCP_NODELAY` on every accepted socket; an accept queue of 4096.
//!
//! Usage: `bench_upstream --listen 127.0.0.1:PORT [--threads N]` (default 1:
//! a current-thread runtime; N > 1: a multi-thread runtime with N workers).
//! Prints `listening ADDR` on stdout once bound.

use std::{convert::Infallible, io::Write, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const SMALL: &[u8] = b"Hello, world!";
static BIG: [u8; 65536] = [b'x'; 65536];
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn usage() -> ! {
    eprintln!("usage: bench_upstream --listen ADDR [--threads N]");
    std::process::exit(2)
}

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut threads: usize = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = Some(args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage())),
            "--threads" => {
                threads = args.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let listen = listen.unwrap_or_else(|| usage());
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("runtime");
    rt.block_on(async move {
        let listener = bind(listen).unwrap_or_else(|e| {
            eprintln!("bench_upstream: cannot bind {listen}: {e}");
            std::process::exit(1)
        });
        let addr = listener.local_addr().expect("local addr");
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening {addr}");
            let _ = out.flush();
        }
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(serve(tcp));
                }
                // EMFILE and friends: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
}

/// Like `TcpListener::bind`, but with a deep accept queue: std's backlog of
/// 128 drops SYNs (a 1 s retransmit) when many clients connect at once.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == "/64k" { Bytes::from_static(&BIG) } else { Bytes::from_static(SMALL) };
    Ok(Response::new(Full::new(body)))
}

/// Is this connection h2c with prior knowledge? Peeks (does not consume) the first bytes.
async fn is_h2c(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    for _ in 0..1000 {
        let n = match tcp.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // A partial preface: peek would return the same bytes at once, so wait a little.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

async fn serve(tcp: TcpStream) {
    if is_h2c(&tcp).await {
        let _ = http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(1024)
            .serve_connection(TokioIo::new(tcp), service_fn(handle))
            .await;
    } else {
        let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(tcp), service_fn(handle)).await;
    }
}
