//! The parking lot: an HTTP/1 keep-alive connection idle for 100 ms leaves
//! its task and buffers behind, and must still behave exactly like an idle
//! connection: served again, timed out, drained, and holding its slot.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::{get, Client, End, Proxy, Upstream, LONG_GRACE, SOON};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

async fn proxy(upstream: &Upstream, args: &[&str]) -> Proxy {
    let mut all = vec!["--grace", LONG_GRACE, "--log-level", "drainproxy=debug"];
    all.extend_from_slice(args);
    Proxy::start(&upstream.addr, &all).await
}

/// Polls the admin `/status` until `key` reads `value` (the lot moves
/// sockets on its own schedule; this waits for it instead of guessing).
async fn until_status(admin: SocketAddr, key: &str, value: usize) {
    let wanted = format!("\n{key} {value}\n");
    let deadline = Instant::now() + SOON;
    loop {
        let status = format!("\n{}", get(admin, "/status").await.text());
        if status.contains(&wanted) {
            return;
        }
        assert!(Instant::now() < deadline, "`{key}` never became {value}:{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_parked_in_its_task_serves_again_and_drains() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("/").await.status, 200);
    // After 25 ms of quiet the connection gives up its HTTP state (still in its task)...
    p.log.wait_for("idle connection parked").await;
    // ...and the next request on the same socket is served as if nothing happened.
    let res = c.get("/echo").await;
    assert_eq!(res.status, 200);
    assert!(!res.closes());
    p.log.wait_for("idle connection parked").await;
    p.sigterm();
    // A parked socket is closed by the drain like any idle one: a clean EOF.
    assert_eq!(c.end().await, End::Eof);
    p.exits_promptly().await;
}

/// A slow reader: the response is complete on the proxy's side (the upstream
/// sent it all, the request is over) while its tail still waits in hyper's
/// write buffer. The connection going quiet meanwhile must not park and drop
/// that tail.
#[tokio::test]
async fn a_response_still_being_written_to_a_slow_reader_is_delivered_whole() {
    const N: usize = 10_000_000;
    let up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get(&format!("/bytes?n={N}")).await;
    assert_eq!(c.head().await.status, 200);
    let mut got = c.stream.buffer().len();
    c.stream.consume(got);
    let read = tokio::time::timeout(SOON, async {
        let mut chunk = vec![0; 65536];
        while got < N {
            match c.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
            // 64 KiB every 5 ms: slower than the proxy can send.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(read.is_ok() && got == N, "response bytes lost: {got} of {N} arrived");
    // The connection then parks (in its task) and still serves.
    p.log.wait_for("idle connection parked").await;
    assert_eq!(c.get("/").await.status, 200);
}

#[tokio::test]
async fn a_long_idle_connection_moves_to_the_lot_and_is_served_again() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &[]).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("/").await.status, 200);
    p.log.wait_for("idle connection moved to the parking lot").await;
    // Still an open, idle connection as far as anyone can tell.
    until_status(p.admin(), "parked", 1).await;
    until_status(p.admin(), "connections", 1).await;
    until_status(p.admin(), "idle", 1).await;
    let metrics = get(p.admin(), "/metrics").await.text();
    assert!(metrics.contains("\ndrainproxy_parked_connections 1\n"), "{metrics}");

    for _ in 0..2 {
        let res = c.get("/echo").await;
        assert_eq!(res.status, 200);
        assert!(!res.closes());
        p.log.wait_for("parked connection resumed").await;
        p.log.wait_for("idle connection moved to the parking lot").await;
    }
    p.sigterm();
    assert_eq!(c.end().await, End::Eof);
    p.exits_promptly().await;
}

#[tokio::test]
async fn the_keepalive_timeout_closes_a_parked_connection() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &["--keepalive-timeout", "1500ms"]).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("/").await.status, 200);
    let idle_since = Instant::now();
    p.log.wait_for("idle connection moved to the parking lot").await;
    assert_eq!(c.end().await, End::Eof);
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(1400), "closed after {idle:?}");
    until_status(p.admin(), "connections", 0).await;
    until_status(p.admin(), "parked", 0).await;
}

#[tokio::test]
async fn a_parked_connection_that_sends_during_the_drain_is_served_with_close() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &["--idle-grace", "30s"]).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("/").await.status, 200);
    p.log.wait_for("idle connection moved to the parking lot").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    // The idle-grace keeps it open, and its next request is answered.
    let res = c.get("/echo").await;
    assert_eq!(res.status, 200);
    assert!(res.closes());
    assert_eq!(c.end().await, End::Eof);
    p.exits_promptly().await;
}

#[tokio::test]
async fn the_idle_grace_closes_a_parked_connection_during_the_drain() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &["--idle-grace", "1s"]).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("/").await.status, 200);
    p.log.wait_for("idle connection moved to the parking lot").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    // Re-timed to the idle-grace (from its last request), not closed at once...
    assert!(c.still_open_after(Duration::from_millis(200)).await, "closed before the idle-grace");
    // ...and closed by the lot when it runs out, which ends the drain.
    assert_eq!(c.end().await, End::Eof);
    p.exits_promptly().await;
}

#[tokio::test]
async fn a_parked_connection_keeps_its_max_connections_slot() {
    let up = Upstream::start().await;
    let mut p = proxy(&up, &["--max-connections", "1"]).await;
    let mut a = Client::connect(p.addr).await;
    assert_eq!(a.get("/").await.status, 200);
    p.log.wait_for("idle connection moved to the parking lot").await;
    let mut b = Client::connect(p.addr).await;
    b.start_get("/").await;
    assert!(b.still_open_after(Duration::from_millis(300)).await, "served beyond the limit");
    // The client closing a parked connection wakes it: its slot frees up.
    drop(a);
    let res = b.response().await;
    assert_eq!(res.status, 200);
}

/// More than one batch of the lot (1024), and a burst big enough for the
/// lot to hand the memory it used back to the OS once it is over.
#[tokio::test]
async fn a_burst_of_idle_connections_is_parked_released_and_drained_at_once() {
    const N: usize = 1100;
    let up = Upstream::start().await;
    let mut p = proxy(&up, &["--idle-grace", "0"]).await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = Client::connect(p.addr).await;
        assert_eq!(c.get("/").await.status, 200);
        clients.push(c);
    }
    until_status(p.admin(), "parked", N).await;
    p.log.wait_for("a burst of connections went idle: free memory returned to the OS").await;
    p.sigterm();
    for c in &mut clients {
        assert_eq!(c.end().await, End::Eof);
    }
    p.exits_promptly().await;
    assert!(p.log.all().contains(&format!("connections={N}")), "{}", p.log.all());
}
