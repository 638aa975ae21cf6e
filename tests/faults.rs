//! Nothing lost, nothing crashes: upstream faults, client faults, hostile input, limits.

mod support;

use std::time::{Duration, Instant};

use support::{get, Client, End, Proxy, Response, Upstream, SOON};

async fn upstream_and_proxy(args: &[&str]) -> (Upstream, Proxy) {
    let up = Upstream::start().await;
    let p = Proxy::start(&up.addr, args).await;
    (up, p)
}

/// A raw request on a fresh connection: the response, then how the connection ended.
async fn raw(p: &Proxy, request: &[u8]) -> (Response, End) {
    let mut c = Client::connect(p.addr).await;
    c.send(request).await;
    let res = c.response().await;
    let end = c.end().await;
    (res, end)
}

async fn still_serves(p: &Proxy) {
    let res = get(p.addr, "/").await;
    assert_eq!(res.status, 200, "the proxy must keep serving");
}

// ---- upstream faults ----

#[tokio::test]
async fn slow_upstream_head_gets_504_with_upstream_timeout() {
    let (mut up, p) = upstream_and_proxy(&["--upstream-timeout", "300ms"]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/slowhead").await;
    up.wait_held("slowhead").await;
    let res = c.response().await;
    assert_eq!(res.status, 504);
    still_serves(&p).await;
}

#[tokio::test]
async fn upstream_connect_timeout_gives_502() {
    // A listener whose accept queue is full: the kernel drops further SYNs,
    // so a connect hangs, exactly like an unreachable host.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue until a connect no longer completes at once.
    loop {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    let p = Proxy::start(&addr.to_string(), &["--upstream-connect-timeout", "300ms"]).await;
    let started = Instant::now();
    let res = get(p.addr, "/").await;
    assert_eq!(res.status, 502);
    assert!(started.elapsed() >= Duration::from_millis(250), "gave up before the connect timeout");
    drop(listener);
}

#[tokio::test]
async fn upstream_dying_during_a_drain_fails_cleanly_and_the_drain_ends() {
    let (mut up, mut p) = upstream_and_proxy(&["--grace", "60s"]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/dying").await;
    up.wait_held("dying").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    up.kill().await;
    let res = c.response().await;
    assert_eq!(res.status, 502, "no head was sent: a clean 502");
    assert!(res.closes());
    p.exits_promptly().await;
}

// ---- client faults ----

#[tokio::test]
async fn client_disconnecting_mid_request_leaks_nothing() {
    let (mut up, p) = upstream_and_proxy(&[]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/gone").await;
    up.wait_held("gone").await;
    drop(c);
    // The proxy forgets the request and the connection.
    tokio::time::timeout(SOON, async {
        loop {
            let status = get(p.admin(), "/status").await.text();
            if status.contains("in_flight 0") && status.contains("connections 0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("in-flight request or connection leaked");
    still_serves(&p).await;
}

#[tokio::test]
async fn slowloris_head_is_dropped_after_the_header_read_timeout() {
    let (_up, p) = upstream_and_proxy(&["--header-read-timeout", "500ms"]).await;
    let mut c = Client::connect(p.addr).await;
    let started = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n").await;
    // Trickle a byte at a time: each arrival must not reset the timer.
    let trickle = async {
        for b in b"Host: slow.example\r\nX-A: b\r\n".iter() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if c.stream.get_mut().try_write(&[*b]).is_err() {
                break;
            }
        }
    };
    trickle.await;
    assert!(matches!(c.end().await, End::Eof | End::Reset));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "closed before the timeout: {took:?}");
    still_serves(&p).await;
}

#[tokio::test]
async fn stalled_request_body_gets_408() {
    let (_up, p) = upstream_and_proxy(&["--body-read-timeout", "300ms"]).await;
    let (res, end) = raw(&p, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b").await;
    assert_eq!(res.status, 408);
    assert!(res.closes());
    assert!(matches!(end, End::Eof | End::Reset));
    still_serves(&p).await;
}

#[tokio::test]
async fn idle_keepalive_is_closed_after_the_keepalive_timeout() {
    let (_up, p) = upstream_and_proxy(&["--keepalive-timeout", "400ms"]).await;
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("/").await.status, 200);
    let idle_since = Instant::now();
    assert_eq!(c.end().await, End::Eof);
    assert!(idle_since.elapsed() >= Duration::from_millis(350), "closed after {:?}", idle_since.elapsed());
}

// ---- hostile input ----

#[tokio::test]
async fn request_smuggling_shapes_get_400_and_a_closed_connection() {
    let (_up, p) = upstream_and_proxy(&[]).await;
    let shapes: [&[u8]; 4] = [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for shape in shapes {
        let mut c = Client::connect(p.addr).await;
        c.send(shape).await;
        let res = c.head().await;
        let shown = String::from_utf8_lossy(shape);
        assert_eq!(res.status, 400, "{shown}");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(SOON, tokio::io::AsyncReadExt::read_to_end(&mut c.stream, &mut rest)).await;
        assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"), "a smuggled request was answered: {shown}");
    }
    still_serves(&p).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_smuggled() {
    // RFC 9112 §6.3: chunked wins and the connection must close after; the
    // bytes after the chunked body must never be read as a second request.
    let (_up, p) = upstream_and_proxy(&[]).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let res = c.response().await;
    assert!(res.status == 400 || !res.text().contains("content-length: 40"), "{res:?}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SOON, tokio::io::AsyncReadExt::read_to_end(&mut c.stream, &mut rest)).await;
    assert!(!String::from_utf8_lossy(&rest).contains("/smuggled"), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn http_1_0_client_is_served_and_closed() {
    let (_up, p) = upstream_and_proxy(&[]).await;
    let (res, end) = raw(&p, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello from the demo upstream\n");
    assert_eq!(end, End::Eof);
}

#[tokio::test]
async fn absolute_form_uri_is_forwarded_in_origin_form() {
    let (_up, p) = upstream_and_proxy(&[]).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET http://example.test/echo?x=1 HTTP/1.1\r\nHost: example.test\r\n\r\n").await;
    let res = c.response().await;
    assert_eq!(res.status, 200);
    let text = res.text();
    assert!(text.starts_with("GET /echo?x=1 HTTP/1.1"), "{text}");
    assert!(text.contains("host: example.test\n"), "{text}");
}

#[tokio::test]
async fn very_long_uri_gets_414() {
    let (_up, p) = upstream_and_proxy(&[]).await;
    let mut c = Client::connect(p.addr).await;
    c.send(format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).as_bytes()).await;
    let res = c.head().await;
    assert!(res.status == 414 || res.status == 431, "{}", res.status);
    still_serves(&p).await;
}

// ---- limits and robustness ----

#[tokio::test]
async fn beyond_max_connections_new_clients_wait_for_a_slot() {
    let (_up, p) = upstream_and_proxy(&["--max-connections", "2"]).await;
    let mut a = Client::connect(p.addr).await;
    let mut b = Client::connect(p.addr).await;
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
    let mut third = Client::connect(p.addr).await;
    third.start_get("/").await;
    // Both slots are taken: the third is not served while they stay open.
    assert!(third.still_open_after(Duration::from_millis(300)).await, "served beyond the limit");
    drop(a);
    let res = third.response().await;
    assert_eq!(res.status, 200);
    assert_eq!(b.get("/").await.status, 200);
}

#[tokio::test]
async fn running_out_of_file_descriptors_keeps_the_accept_loop_alive() {
    let up = Upstream::start().await;
    // A shell lowers the limit for drainproxy alone.
    let script = format!(
        "ulimit -n 48 && exec {} --listen 127.0.0.1:0 --admin off --upstream {}",
        support::bin("drainproxy"),
        up.addr
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = support::Lines::spawn(child.stderr.take().unwrap());
    let line = log.wait_for("listening").await;
    let addr: std::net::SocketAddr = support::field(&line, "addr").parse().unwrap();
    // Open far more connections than descriptors, each with a request.
    let mut flood = Vec::new();
    for _ in 0..80 {
        let mut c = Client::connect(addr).await;
        c.start_get("/").await;
        flood.push(c);
    }
    log.wait_for("accept failed").await;
    drop(flood);
    // Once descriptors free up, the same process serves again.
    let res = tokio::time::timeout(SOON, async {
        loop {
            let mut c = Client::connect(addr).await;
            c.start_get("/").await;
            if let Ok(res) = tokio::time::timeout(Duration::from_secs(1), c.head()).await {
                return res;
            }
        }
    })
    .await
    .expect("never served again");
    assert_eq!(res.status, 200);
    assert!(child.try_wait().unwrap().is_none(), "the process died");
}

#[tokio::test]
async fn a_panicking_connection_is_logged_and_the_process_keeps_serving() {
    let (_up, mut p) = upstream_and_proxy(&[]).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nx-drainproxy-test-panic: 1\r\n\r\n").await;
    assert!(matches!(c.end().await, End::Eof | End::Reset));
    p.log.wait_for("panic").await;
    still_serves(&p).await;
    assert!(p.running());
}

#[tokio::test]
async fn sighup_during_a_drain_does_not_disturb_it() {
    let (mut up, mut p) = upstream_and_proxy(&["--grace", "60s"]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/hup").await;
    up.wait_held("hup").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    p.signal(nix::sys::signal::Signal::SIGHUP);
    p.log.wait_for("SIGHUP during the drain").await;
    assert!(p.running());
    up.release("hup").await;
    assert_eq!(c.response().await.status, 200);
    assert!(p.exit().await.0.success());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Content-Length".to_string()),
            Just("Transfer-Encoding".to_string()),
            Just("Connection".to_string()),
            Just("Upgrade".to_string()),
            Just("Expect".to_string()),
            Just("Host".to_string()),
            "[!-~]{1,20}",
            "[a-zA-Z-]{1,30}",
        ]
    }

    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("chunked".to_string()),
            Just("close".to_string()),
            Just("upgrade".to_string()),
            Just("100-continue".to_string()),
            "[0-9]{1,12}",
            "[ -~]{0,60}",
        ]
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // Pure noise.
            proptest::collection::vec(any::<u8>(), 0..512),
            // Plausible requests with random headers and bodies.
            (
                prop_oneof![
                    Just("GET".to_string()),
                    Just("POST".to_string()),
                    Just("CONNECT".to_string()),
                    "[A-Z]{1,8}"
                ],
                "/[ -~]{0,40}".prop_map(String::from),
                prop_oneof![
                    Just("HTTP/1.1".to_string()),
                    Just("HTTP/1.0".to_string()),
                    Just("HTTP/2.0".to_string()),
                    "[ -~]{0,10}"
                ],
                proptest::collection::vec((header_name(), header_value()), 0..8),
                proptest::collection::vec(any::<u8>(), 0..64),
            )
                .prop_map(|(method, path, version, headers, body)| {
                    let mut out = format!("{method} {path} {version}\r\n").into_bytes();
                    for (k, v) in headers {
                        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&body);
                    out
                }),
        ]
    }

    /// Random bytes and random header sets against a running proxy; after
    /// each, a normal request must still be served.
    #[test]
    fn random_input_never_breaks_the_proxy() {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let (_up, p) = rt.block_on(upstream_and_proxy(&["--header-read-timeout", "1s", "--body-read-timeout", "1s"]));
        let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
        proptest!(config, |(input in request())| {
            rt.block_on(async {
                let mut c = Client::connect(p.addr).await;
                let _ = tokio::io::AsyncWriteExt::write_all(c.stream.get_mut(), &input).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(c.stream.get_mut()).await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(3), tokio::io::AsyncReadExt::read_to_end(&mut c.stream, &mut sink)).await;
                still_serves(&p).await;
            });
        });
    }
}
