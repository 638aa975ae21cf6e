//! A small HTTP app to put behind drainproxy: fast, slow, hung, streaming, echo and WebSocket routes.
//!
//! ```text
//! demo-upstream [--listen 127.0.0.1:3000 | --unix /path/to.sock]
//! ```
//!
//! | route | answer |
//! |---|---|
//! | `/` | a short text at once |
//! | `/slow?ms=N` | waits N ms (default 2000), then answers |
//! | `/hang` | never answers |
//! | `/stream?chunks=N&ms=M` | N chunks (default 5), one every M ms (default 500) |
//! | `/bytes?n=N` | N bytes with a Content-Length |
//! | `/echo` | the request line, headers and body, as text |
//! | `/status/NNN` | that status |
//! | `/hold/NAME` | prints `held NAME` on stdout, answers once `/release/NAME` is called |
//! | `/ws` | a WebSocket echo |
//!
//! Prints `listening ADDR` on stdout once bound (tests read it).
#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role},
    WebSocketStream,
};

type Body = BoxBody<Bytes, Infallible>;
type Holds = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

#[tokio::main]
async fn main() {
    // As PID 1 in a container SIGTERM has no default action: exit on it explicitly.
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (signal(SignalKind::terminate()).unwrap(), signal(SignalKind::interrupt()).unwrap());
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(0);
    });
    let args: Vec<String> = std::env::args().skip(1).collect();
    let holds = Holds::default();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => serve_tcp("127.0.0.1:3000", holds).await,
        ["--listen", addr] => serve_tcp(addr, holds).await,
        ["--unix", path] => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).unwrap_or_else(|e| die(&format!("cannot bind {path}: {e}")));
            say(&format!("listening unix:{path}"));
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_conn(stream, holds.clone()));
                }
            }
        }
        _ => die("usage: demo-upstream [--listen ADDR | --unix PATH]"),
    }
}

async fn serve_tcp(addr: &str, holds: Holds) {
    let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| die(&format!("cannot bind {addr}: {e}")));
    say(&format!("listening {}", listener.local_addr().expect("bound")));
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_conn(stream, holds.clone()));
        }
    }
}

async fn serve_conn<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO, holds: Holds) {
    let svc = service_fn(move |req| route(req, holds.clone()));
    let _ = http1::Builder::new().serve_connection(TokioIo::new(io), svc).with_upgrades().await;
}

async fn route(req: Request<Incoming>, holds: Holds) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let param = |name: &str, default: u64| -> u64 {
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(default)
    };
    Ok(match path.as_str() {
        "/" => text(StatusCode::OK, "hello from the demo upstream\n".into()),
        "/slow" => {
            let ms = param("ms", 2000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slow response after {ms}ms\n"))
        }
        "/hang" => std::future::pending().await,
        "/stream" => stream(param("chunks", 5), param("ms", 500)),
        "/bytes" => text(StatusCode::OK, "x".repeat(param("n", 1024) as usize)),
        "/echo" => echo(req).await,
        "/ws" => websocket(req),
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..].parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
            let code = code.unwrap_or(StatusCode::BAD_REQUEST);
            text(code, format!("{code}\n"))
        }
        p if p.starts_with("/hold/") => {
            let name = &p["/hold/".len()..];
            let gate = gate(&holds, name);
            say(&format!("held {name}"));
            gate.acquire().await.expect("never closed").forget();
            text(StatusCode::OK, format!("released {name}\n"))
        }
        p if p.starts_with("/release/") => {
            gate(&holds, &p["/release/".len()..]).add_permits(1);
            text(StatusCode::OK, "ok\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    })
}

fn gate(holds: &Holds, name: &str) -> Arc<Semaphore> {
    holds.lock().expect("not poisoned").entry(name.to_string()).or_insert_with(|| Arc::new(Semaphore::new(0))).clone()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

fn stream(chunks: u64, ms: u64) -> Response<Body> {
    let frames = futures_util::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Some((Ok(Frame::data(Bytes::from(format!("chunk {i}\n")))), i + 1))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("valid response")
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        out.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    out.push('\n');
    match req.into_body().collect().await {
        Ok(body) => out.push_str(&String::from_utf8_lossy(&body.to_bytes())),
        Err(e) => out.push_str(&format!("(body error: {e})")),
    }
    text(StatusCode::OK, out)
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake\n".into());
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()).boxed())
        .expect("valid response")
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn die(msg: &str) -> ! {
    eprintln!("demo-upstream: {msg}");
    std::process::exit(2)
}
