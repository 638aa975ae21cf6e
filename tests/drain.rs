//! The drain timeline, black-box: the real binary, real signals, asserting what clients observe.
//!
//! Every test runs with a long `--grace` unless it tests the deadline, so "exits
//! right after the work is done" is told apart from "waited out the grace".

mod support;

use std::time::{Duration, Instant};

use http::Request;
use nix::sys::signal::Signal;
use support::{get, refused, Client, End, Proxy, Upstream, LONG_GRACE, SOON};

async fn proxy(upstream: &Upstream, args: &[&str]) -> Proxy {
    let mut all = vec!["--grace", LONG_GRACE];
    all.extend_from_slice(args);
    Proxy::start(&upstream.addr, &all).await
}

#[tokio::test]
async fn no_connections_exits_at_once() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    p.sigterm();
    p.exits_promptly().await;
    assert!(p.log.all().contains("drain complete"));
}

#[tokio::test]
async fn idle_keepalive_closed_at_once_with_zero_idle_grace() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &["--idle-grace", "0"]).await;
    let mut c = Client::connect(p.addr).await;
    let res = c.get("/").await;
    assert_eq!(res.status, 200);
    assert!(!res.closes(), "keep-alive before the drain");
    p.sigterm();
    assert_eq!(c.end().await, End::Eof, "a clean close, not a reset");
    p.exits_promptly().await;
}

#[tokio::test]
async fn idle_keepalive_gets_idle_grace_then_closes() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut idle = Client::connect(p.addr).await;
    let mut busy = Client::connect(p.addr).await;
    assert_eq!(idle.get("/").await.status, 200);
    assert_eq!(busy.get("/").await.status, 200);
    let last_response = Instant::now();
    p.sigterm();
    p.log.wait_for("drain started").await;

    // A request sent on a recently used socket during the window is answered in full, and told to go.
    let res = busy.get("/").await;
    assert_eq!((res.status, res.text().as_str()), (200, "hello from the demo upstream\n"));
    assert!(res.closes(), "{:?}", res.headers);
    assert_eq!(busy.end().await, End::Eof);

    // The idle one is closed about idle-grace (1s) after its last response, not before.
    assert_eq!(idle.end().await, End::Eof);
    let idle_for = last_response.elapsed();
    assert!(idle_for >= Duration::from_millis(900), "closed after {idle_for:?}");
    p.exits_promptly().await;
}

#[tokio::test]
async fn in_flight_request_completes_then_process_exits() {
    let mut up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/inflight").await;
    up.wait_held("inflight").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    assert!(p.running());
    up.release("inflight").await;

    let res = c.response().await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "released inflight\n");
    assert!(res.complete && res.closes(), "{res:?}");
    assert_eq!(c.end().await, End::Eof);
    p.exits_promptly().await;
}

#[tokio::test]
async fn response_started_before_the_drain_completes_and_connection_closes() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/stream?chunks=4&ms=200").await;
    let mut res = c.head().await;
    assert_eq!(res.status, 200);
    p.sigterm();
    p.log.wait_for("drain started").await;
    c.body(&mut res).await;
    assert!(res.complete, "terminating chunk missing: {res:?}");
    assert_eq!(res.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert_eq!(c.end().await, End::Eof);
    p.exits_promptly().await;
}

#[tokio::test]
async fn listener_closes_at_once_without_drain_delay() {
    let mut up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    // Keep the process alive past the listener close with one in-flight request.
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/keepalive").await;
    up.wait_held("keepalive").await;
    p.sigterm();
    p.log.wait_for("listener closed").await;
    assert!(refused(p.addr).await, "new connections must be refused once the listener closed");
    up.release("keepalive").await;
    assert_eq!(c.response().await.status, 200);
    assert!(p.exit().await.0.success());
}

#[tokio::test]
async fn drain_delay_keeps_accepting_with_connection_close() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &["--drain-delay", "30s"]).await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    let ready = get(p.admin(), "/readyz").await;
    assert_eq!(ready.status, 503);

    let mut c = Client::connect(p.addr).await;
    let res = c.get("/").await;
    assert_eq!(res.status, 200);
    assert!(res.closes(), "served, but told to go elsewhere: {:?}", res.headers);
    assert_eq!(c.end().await, End::Eof);
    assert!(p.running(), "must keep accepting for the drain-delay");
    // A second signal ends the test without waiting out the delay.
    p.sigterm();
    assert!(p.exit().await.0.success());
}

#[tokio::test]
async fn readyz_flips_at_drain_start_while_healthz_stays_up() {
    let mut up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    assert_eq!(get(p.admin(), "/readyz").await.status, 200);
    assert_eq!(get(p.admin(), "/healthz").await.status, 200);
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/ready").await;
    up.wait_held("ready").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    assert_eq!(get(p.admin(), "/readyz").await.status, 503);
    assert_eq!(get(p.admin(), "/healthz").await.status, 200, "liveness never fails during a drain");
    p.log.wait_for("listener closed").await;
    let metrics = get(p.admin(), "/metrics").await.text();
    assert!(metrics.contains("drainproxy_drain_phase 2"), "{metrics}");
    assert!(metrics.contains("drainproxy_in_flight_requests 1"), "{metrics}");
    up.release("ready").await;
    assert_eq!(c.response().await.status, 200);
    assert!(p.exit().await.0.success());
}

#[tokio::test]
async fn hung_request_gets_503_at_the_deadline() {
    let mut up = Upstream::start().await;
    let mut p = Proxy::start(&up.addr, &["--grace", "1s"]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/never").await;
    up.wait_held("never").await;
    p.sigterm();
    let res = c.response().await;
    let answered = Instant::now();
    assert_eq!(res.status, 503);
    assert!(res.closes(), "{:?}", res.headers);
    assert_eq!(c.end().await, End::Eof);
    let (status, took) = p.exit().await;
    assert!(status.success());
    assert!(took >= Duration::from_millis(900), "cut before the grace ran out: {took:?}");
    assert!(answered.elapsed() < Duration::from_secs(5), "exit lagged the cut");
    assert!(p.log.all().contains("cut=1"), "{}", p.log.all());
}

#[tokio::test]
async fn h2c_stream_completes_and_new_streams_are_refused_after_goaway() {
    let mut up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = || Request::get(format!("http://{}/hold/h2", p.addr)).body(()).unwrap();
    let (held, _) = send.send_request(req(), true).unwrap();
    up.wait_held("h2").await;
    p.sigterm();
    p.log.wait_for("drain started").await;

    // Once the client has seen the final GOAWAY, new streams are refused.
    let refusal =
        support::until_new_streams_refused(&send, || Request::get(format!("http://{}/echo", p.addr)).body(()).unwrap())
            .await;
    assert!(
        refusal.is_go_away() || refusal.reason() == Some(h2::Reason::REFUSED_STREAM),
        "unexpected error: {refusal:?}"
    );

    up.release("h2").await;
    let res = held.await.expect("the open stream completes");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(text, b"released h2\n");
    let closed = tokio::time::timeout(SOON, conn).await.expect("server closes the connection");
    assert!(closed.unwrap().is_ok(), "a graceful close");
    assert!(p.exit().await.0.success());
}

#[tokio::test]
async fn second_signal_exits_immediately() {
    let mut up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/second").await;
    up.wait_held("second").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    p.signal(Signal::SIGINT);
    p.exits_promptly().await;
    assert!(matches!(c.end().await, End::Eof | End::Reset), "the held request was closed");
}

#[tokio::test]
async fn post_drain_on_admin_drains_like_sigterm() {
    let mut up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/admin").await;
    up.wait_held("admin").await;

    let mut admin = Client::connect(p.admin()).await;
    admin.send(b"POST /drain HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(admin.response().await.status, 202);
    p.log.wait_for("drain started").await;
    assert_eq!(get(p.admin(), "/readyz").await.status, 503);

    up.release("admin").await;
    let res = c.response().await;
    assert_eq!(res.status, 200);
    assert!(res.closes());
    let (status, _) = p.exit().await;
    assert!(status.success());
}
