//! Proxying as a client sees it: streaming, header rewriting, bodies, errors, h2c, WebSocket, keep-alive, admin.
//!
//! Every test runs its own demo upstream and drainproxy on 127.0.0.1:0, so
//! they run in parallel. The drain itself is covered in `tests/drain.rs`.

mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use support::{get, h2c, Client, Proxy, Upstream, SOON};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    time::timeout,
};
use tokio_tungstenite::{client_async, tungstenite::Message};

/// The request headers the demo upstream's `/echo` reports (names are lowercase).
fn echoed_headers(echo: &str) -> Vec<(String, String)> {
    echo.lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("an echoed header line");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn echoed(echo: &str, name: &str) -> Vec<String> {
    echoed_headers(echo).into_iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect()
}

/// The body the demo upstream's `/echo` reports (everything after the blank line).
fn echoed_body(echo: &str) -> &str {
    echo.split_once("\n\n").expect("echo has a blank line").1
}

/// The value of one sample line (`name{labels} value`) in a Prometheus text page.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// An address that refuses connections: a socket bound but never listening.
/// Keep the socket alive for the whole test: a port that was merely released
/// could be taken by a parallel test's listener.
fn refusing_addr() -> (TcpSocket, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A socket path unique to this test process and test name.
fn socket_path(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("drainproxy-{}-{test}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A hand-written upstream for answers the demo upstream cannot give: every
/// request head (GETs only) gets `answer`; with `keep_alive` the connection
/// then waits for the next request, else it is closed.
struct RawUpstream {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(answer: &'static [u8], keep_alive: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = [0; 4096];
                    loop {
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            if tcp.write_all(answer).await.is_err() || !keep_alive {
                                return;
                            }
                        }
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        RawUpstream { addr, accepted }
    }

    fn upstream(&self) -> String {
        self.addr.to_string()
    }
}

/// A response streams through: the first chunk reaches the client while the
/// app is still producing the rest, and the body ends with its terminating chunk.
#[tokio::test]
async fn response_streams_chunk_by_chunk() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    let sent = Instant::now();
    client.start_get("/stream?chunks=3&ms=300").await;
    let mut res = client.head().await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));

    // One chunk by hand: its size line, then its data and CRLF.
    let first = timeout(SOON, async {
        let mut size = String::new();
        client.stream.read_line(&mut size).await.unwrap();
        let mut data = vec![0; usize::from_str_radix(size.trim(), 16).unwrap() + 2];
        client.stream.read_exact(&mut data).await.unwrap();
        String::from_utf8(data).unwrap()
    })
    .await
    .expect("first chunk");
    let first_at = sent.elapsed();
    assert_eq!(first, "chunk 0\n\r\n");

    client.body(&mut res).await;
    let done_at = sent.elapsed();
    assert!(res.complete, "no terminating chunk: {res:?}");
    assert_eq!(res.text(), "chunk 1\nchunk 2\n");
    // The app needs 600ms for the whole stream; a buffering proxy would
    // deliver the first chunk together with the last.
    assert!(done_at >= Duration::from_millis(600), "stream ended after {done_at:?}");
    assert!(
        first_at + Duration::from_millis(250) <= done_at,
        "first chunk at {first_at:?} is not well before the end at {done_at:?}"
    );
}

/// The app sees the client's Host, an appended X-Forwarded-For,
/// X-Forwarded-Proto, and none of the client's hop-by-hop headers.
#[tokio::test]
async fn request_headers_are_rewritten() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    client
        .send(
            b"GET /echo HTTP/1.1\r\n\
              Host: example.test:8443\r\n\
              X-Forwarded-For: 1.2.3.4\r\n\
              Connection: keep-alive, x-secret\r\n\
              X-Secret: 1\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              TE: trailers\r\n\
              X-Keep: yes\r\n\r\n",
        )
        .await;
    let res = client.response().await;
    assert_eq!(res.status, 200);
    let echo = res.text();
    assert!(echo.starts_with("GET /echo HTTP/1.1\n"), "{echo}");
    assert_eq!(echoed(&echo, "host"), ["example.test:8443"], "{echo}");
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["1.2.3.4, 127.0.0.1"], "{echo}");
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["http"], "{echo}");
    assert_eq!(echoed(&echo, "te"), ["trailers"], "TE: trailers is the one TE a request keeps\n{echo}");
    assert_eq!(echoed(&echo, "x-keep"), ["yes"], "{echo}");
    for hop in ["connection", "x-secret", "keep-alive", "proxy-connection"] {
        assert!(echoed(&echo, hop).is_empty(), "{hop} reached the app:\n{echo}");
    }
}

/// Without `Connection: upgrade`, Upgrade is just a hop-by-hop header; any
/// TE other than `trailers` is dropped too. A missing X-Forwarded-For starts
/// with the client's address.
#[tokio::test]
async fn stray_upgrade_and_te_are_dropped() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    client.send(b"GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: h2c\r\nTE: gzip\r\n\r\n").await;
    let res = client.response().await;
    assert_eq!(res.status, 200);
    let echo = res.text();
    assert!(echoed(&echo, "upgrade").is_empty(), "{echo}");
    assert!(echoed(&echo, "te").is_empty(), "{echo}");
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["127.0.0.1"], "{echo}");
    // The connection was not switched to anything: it still speaks HTTP/1.1.
    assert_eq!(client.get("/").await.status, 200);
}

/// Hop-by-hop headers in the app's response do not reach the client.
#[tokio::test]
async fn response_hop_by_hop_headers_are_dropped() {
    let upstream = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\n\
          Content-Length: 2\r\n\
          Connection: keep-alive, x-secret\r\n\
          X-Secret: 1\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Keep: yes\r\n\r\nok",
        true,
    )
    .await;
    let proxy = Proxy::start(&upstream.upstream(), &[]).await;

    let res = get(proxy.addr, "/").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "ok");
    assert_eq!(res.header("x-keep"), Some("yes"), "{res:?}");
    for hop in ["connection", "x-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(res.header(hop), None, "{hop} reached the client: {res:?}");
    }
}

/// Upstream connections are pooled: sequential requests, even from different
/// clients, reuse one connection to the app.
#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = RawUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let proxy = Proxy::start(&upstream.upstream(), &[]).await;

    for _ in 0..3 {
        let res = get(proxy.addr, "/").await;
        assert_eq!((res.status, res.text().as_str()), (200, "ok"));
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

/// A HEAD answer keeps the app's Content-Length, carries no body, and leaves
/// the connection in sync for the next request.
#[tokio::test]
async fn head_keeps_content_length_without_a_body() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    client.send(b"HEAD /bytes?n=1000 HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let res = client.head().await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-length"), Some("1000"), "{res:?}");
    let next = client.get("/").await;
    assert_eq!((next.status, next.text().as_str()), (200, "hello from the demo upstream\n"));
}

/// `Expect: 100-continue`: the client is told to go on, and its body arrives.
#[tokio::test]
async fn expect_continue_gets_100_then_the_body_is_forwarded() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await;
    let interim = client.head().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    client.send(b"hello").await;
    let res = client.response().await;
    assert_eq!(res.status, 200);
    assert_eq!(echoed_body(&res.text()), "hello", "{}", res.text());
}

/// A request body with a Content-Length reaches the app intact.
#[tokio::test]
async fn content_length_body_is_forwarded() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello world").await;
    let res = client.response().await;
    assert_eq!(res.status, 200);
    let echo = res.text();
    assert!(echo.starts_with("POST /echo HTTP/1.1\n"), "{echo}");
    assert_eq!(echoed(&echo, "content-length"), ["11"], "{echo}");
    assert_eq!(echoed_body(&echo), "hello world");
}

/// A chunked request body reaches the app intact (re-framed by the proxy).
#[tokio::test]
async fn chunked_body_is_forwarded() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    client
        .send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await;
    let res = client.response().await;
    assert_eq!(res.status, 200);
    assert_eq!(echoed_body(&res.text()), "hello world", "{}", res.text());
    // The connection stays in sync: the whole body was consumed.
    assert_eq!(client.get("/").await.status, 200);
}

/// An unreachable upstream is a 502, counted as a connect error; the proxy,
/// and even the same client connection, keep serving.
#[tokio::test]
async fn refused_upstream_is_502() {
    let (_held, refusing) = refusing_addr();
    let proxy = Proxy::start(&refusing.to_string(), &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    for _ in 0..2 {
        let res = client.get("/").await;
        assert_eq!(res.status, 502, "{res:?}");
        assert!(!res.closes(), "a 502 while serving keeps the connection: {res:?}");
    }
    let metrics = get(proxy.admin(), "/metrics").await.text();
    assert_eq!(sample(&metrics, r#"drainproxy_upstream_errors_total{kind="connect"}"#), 2.0);
    assert_eq!(sample(&metrics, r#"drainproxy_requests_total{class="5xx"}"#), 2.0);
}

/// A 502 while the app is down, then a 200 as soon as it is up, from the same
/// proxy process.
#[tokio::test]
async fn recovers_when_the_upstream_comes_up() {
    let path = socket_path("recovers");
    let mut proxy = Proxy::start(&format!("unix:{}", path.display()), &[]).await;

    assert_eq!(get(proxy.addr, "/").await.status, 502);
    let _upstream = Upstream::start_unix(&path).await;
    let res = get(proxy.addr, "/").await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "hello from the demo upstream\n");
    assert!(proxy.running());
    let _ = std::fs::remove_file(&path);
}

/// An app that answers garbage, or closes without answering, is a 502
/// counted as a protocol error.
#[tokio::test]
async fn upstream_failing_before_a_head_is_502() {
    for answer in [&b"not http at all\r\n\r\n"[..], b""] {
        let upstream = RawUpstream::start(answer, false).await;
        let proxy = Proxy::start(&upstream.upstream(), &[]).await;

        let res = get(proxy.addr, "/").await;
        assert_eq!(res.status, 502, "for {:?}: {res:?}", String::from_utf8_lossy(answer));
        let metrics = get(proxy.admin(), "/metrics").await.text();
        assert_eq!(sample(&metrics, r#"drainproxy_upstream_errors_total{kind="protocol"}"#), 1.0);
    }
}

/// An app that dies after serving: the pooled upstream connection is dead and
/// a fresh connect is refused, so the next request is a 502, not a hang.
#[tokio::test]
async fn killed_upstream_is_502() {
    let mut upstream = Upstream::start().await;
    let mut proxy = Proxy::start(&upstream.addr, &[]).await;

    assert_eq!(get(proxy.addr, "/").await.status, 200);
    upstream.kill().await;
    let res = get(proxy.addr, "/").await;
    assert_eq!(res.status, 502, "{res:?}");
    assert!(proxy.running());
}

/// Everything the proxy sends on a fresh connection for `GET /`, until it closes.
async fn raw_exchange(proxy: SocketAddr) -> Vec<u8> {
    let mut client = Client::connect(proxy).await;
    client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut raw = Vec::new();
    // A reset also ends the connection; what arrived before it is what counts.
    let _ = timeout(SOON, client.stream.read_to_end(&mut raw)).await.expect("the connection stayed open");
    raw
}

/// Panics unless `raw` is either nothing at all or a response whose body is
/// visibly incomplete by its own framing.
fn assert_not_complete(raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    if raw.is_empty() {
        return; // closed before the head went out: equally honest
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete head: {text:?}"));
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{text:?}");
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        assert!(body.len() < len.trim().parse().unwrap(), "a truncated body was presented as complete: {text:?}");
    } else if head.contains("transfer-encoding: chunked") {
        assert!(!body.ends_with("0\r\n\r\n"), "a truncated body was presented as complete: {text:?}");
    } else {
        panic!("a close-delimited body cannot show that it was truncated: {text:?}");
    }
}

/// A chunked body cut short by the app is never presented as complete: the
/// client connection closes without the terminating chunk.
#[tokio::test]
async fn upstream_break_mid_chunked_body_closes_the_client() {
    let upstream =
        RawUpstream::start(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\npartia\r\n", false).await;
    let proxy = Proxy::start(&upstream.upstream(), &[]).await;

    assert_not_complete(&raw_exchange(proxy.addr).await);
}

/// Same with a Content-Length: fewer bytes than announced, then the close.
#[tokio::test]
async fn upstream_break_mid_sized_body_closes_the_client() {
    let upstream = RawUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", false).await;
    let proxy = Proxy::start(&upstream.upstream(), &[]).await;

    assert_not_complete(&raw_exchange(proxy.addr).await);
}

/// Garbage on a connection gets a 400, and the next connection is served.
#[tokio::test]
async fn malformed_request_is_400() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;

    for garbage in [&b"BLAH\r\n\r\n"[..], b"GET / HTTP/1.1\r\nbad header\r\n\r\n"] {
        let mut client = Client::connect(proxy.addr).await;
        client.send(garbage).await;
        let res = client.head().await;
        assert_eq!(res.status, 400, "for {:?}", String::from_utf8_lossy(garbage));
    }
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

/// 64 KiB of request headers is too much: 431, and the proxy keeps serving.
#[tokio::test]
async fn oversized_headers_are_431() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;

    let mut client = Client::connect(proxy.addr).await;
    let request = format!("GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000));
    // The proxy may stop reading (and close) before the whole request is written.
    let _ = client.stream.get_mut().write_all(request.as_bytes()).await;
    let res = client.head().await;
    assert_eq!(res.status, 431);
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

/// The 400 and 431 answers hyper writes by itself are responses too, and
/// `drainproxy_requests_total` counts responses by class.
#[tokio::test]
async fn rejected_requests_are_counted_in_metrics() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;

    let mut client = Client::connect(proxy.addr).await;
    client.send(b"BLAH\r\n\r\n").await;
    assert_eq!(client.head().await.status, 400);
    let _ = client.end().await;
    // The count is taken when the connection task sees hyper's error, which
    // can be just after the client saw the close: wait for it, bounded.
    let counted = tokio::time::timeout(SOON, async {
        loop {
            let metrics = get(proxy.admin(), "/metrics").await.text();
            let n = sample(&metrics, r#"drainproxy_requests_total{class="4xx"}"#);
            if n != 0.0 {
                return n;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the 400 was never counted");
    assert_eq!(counted, 1.0);
}

/// An upstream on a Unix socket serves whole exchanges, bodies included.
#[tokio::test]
async fn unix_socket_upstream() {
    let path = socket_path("unix-upstream");
    let upstream = Upstream::start_unix(&path).await;
    assert_eq!(upstream.addr, format!("unix:{}", path.display()));
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    client.send(b"POST /echo HTTP/1.1\r\nHost: via-unix\r\nContent-Length: 4\r\n\r\nping").await;
    let res = client.response().await;
    assert_eq!(res.status, 200);
    let echo = res.text();
    assert_eq!(echoed(&echo, "host"), ["via-unix"], "{echo}");
    assert_eq!(echoed_body(&echo), "ping");
    let _ = std::fs::remove_file(&path);
}

/// h2c with prior knowledge: the app gets an HTTP/1.1 request whose Host
/// comes from `:authority`.
#[tokio::test]
async fn h2c_prior_knowledge() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;

    let send = timeout(SOON, h2c(proxy.addr)).await.expect("h2 handshake");
    let mut send = timeout(SOON, send.ready()).await.expect("h2 ready").unwrap();
    let req = http::Request::get("http://example.test:1234/echo").body(()).unwrap();
    let (res, _) = send.send_request(req, true).unwrap();
    let res = timeout(SOON, res).await.expect("h2 response").unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);

    let mut body = res.into_body();
    let mut echo = Vec::new();
    while let Some(data) = timeout(SOON, body.data()).await.expect("h2 body") {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        echo.extend_from_slice(&data);
    }
    let echo = String::from_utf8(echo).unwrap();
    assert!(echo.starts_with("GET /echo HTTP/1.1\n"), "{echo}");
    assert_eq!(echoed(&echo, "host"), ["example.test:1234"], "{echo}");
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["http"], "{echo}");
}

/// A WebSocket is tunnelled: the handshake succeeds, a message comes back
/// echoed, and the tunnel is counted as upgraded.
#[tokio::test]
async fn websocket_is_tunnelled() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, res) =
        timeout(SOON, client_async(format!("ws://{}/ws", proxy.addr), tcp)).await.expect("handshake").unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::Text("hello through the proxy".into())).await.unwrap();
    let msg = timeout(SOON, ws.next()).await.expect("echo").expect("a message").unwrap();
    assert_eq!(msg, Message::Text("hello through the proxy".into()));

    let metrics = get(proxy.admin(), "/metrics").await.text();
    assert_eq!(sample(&metrics, r#"drainproxy_open_connections{state="upgraded"}"#), 1.0);
    ws.close(None).await.unwrap();
}

/// Two requests on one client connection are both served, and nothing asks
/// the client to close while the proxy is serving.
#[tokio::test]
async fn keep_alive_connection_is_reused() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;
    let mut client = Client::connect(proxy.addr).await;

    for path in ["/", "/echo"] {
        let res = client.get(path).await;
        assert_eq!(res.status, 200, "{path}");
        assert!(!res.closes(), "{path}: {res:?}");
    }
    let metrics = get(proxy.admin(), "/metrics").await.text();
    assert_eq!(sample(&metrics, "drainproxy_connections_total"), 1.0);
    assert_eq!(sample(&metrics, r#"drainproxy_requests_total{class="2xx"}"#), 2.0);
}

/// `/metrics` is Prometheus text whose request counters move with traffic.
#[tokio::test]
async fn admin_metrics_count_requests() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&upstream.addr, &[]).await;

    let before = get(proxy.admin(), "/metrics").await;
    assert_eq!(before.status, 200);
    assert!(before.header("content-type").is_some_and(|v| v.starts_with("text/plain")), "{before:?}");
    let before = before.text();
    assert!(before.contains("# TYPE drainproxy_requests counter"), "{before}");
    assert_eq!(sample(&before, r#"drainproxy_requests_total{class="2xx"}"#), 0.0);
    assert_eq!(sample(&before, r#"drainproxy_requests_total{class="4xx"}"#), 0.0);

    assert_eq!(get(proxy.addr, "/").await.status, 200);
    assert_eq!(get(proxy.addr, "/status/404").await.status, 404);

    let after = get(proxy.admin(), "/metrics").await.text();
    assert_eq!(sample(&after, r#"drainproxy_requests_total{class="2xx"}"#), 1.0);
    assert_eq!(sample(&after, r#"drainproxy_requests_total{class="4xx"}"#), 1.0);
    assert_eq!(sample(&after, "drainproxy_connections_total"), 2.0);
}
