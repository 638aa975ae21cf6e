//! `drainproxy drain` and `drainproxy health`: talk to a running drainproxy over its admin port.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

/// Starts the drain; with `wait`, returns once the proxy has no client
/// connection left (or has exited), or fails after `timeout`.
pub async fn drain(admin: SocketAddr, wait: bool, timeout: Duration) -> anyhow::Result<()> {
    let (status, body) = request(admin, Method::POST, "/drain")
        .await
        .with_context(|| format!("no drainproxy answered on admin address {admin}"))?;
    if status != StatusCode::ACCEPTED {
        bail!("drainproxy at {admin} refused the drain: {status} {}", body.trim());
    }
    eprintln!("drain started on {admin}");
    if !wait {
        return Ok(());
    }
    let give_up = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let status = match request(admin, Method::GET, "/status").await {
            Ok((_, body)) => body,
            // The proxy exits as soon as nothing is left: that is success.
            Err(_) => {
                eprintln!("drainproxy at {admin} has exited");
                return Ok(());
            }
        };
        let field =
            |k: &str| status.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')).unwrap_or("?").to_string();
        let connections = field("connections");
        if connections == "0" && field("phase") == "closing" {
            eprintln!("drained: no connection left");
            return Ok(());
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("waiting: phase {}, {connections} connections, {} in flight", field("phase"), field("in_flight"));
            last_report = Instant::now();
        }
        if Instant::now() >= give_up {
            bail!("timed out after {timeout:?} with {connections} connections left");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Exits 0 when `/healthz` on the admin port answers 200.
pub async fn health(admin: SocketAddr) -> anyhow::Result<()> {
    let (status, body) = request(admin, Method::GET, "/healthz")
        .await
        .with_context(|| format!("no drainproxy answered on admin address {admin}"))?;
    if status != StatusCode::OK {
        bail!("drainproxy at {admin} is unhealthy: {status} {}", body.trim());
    }
    Ok(())
}

async fn request(addr: SocketAddr, method: Method, path: &str) -> anyhow::Result<(StatusCode, String)> {
    let tcp =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await.context("connect timed out")??;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req =
        Request::builder().method(method).uri(path).header("host", addr.to_string()).body(Empty::<Bytes>::new())?;
    let res = tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await.context("no answer")??;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
