//! Upgraded tunnels at the grace deadline, black-box: a WebSocket gets a Close
//! 1001 (Going Away) on both sides at a frame boundary; other upgrades are just closed.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use support::{Client, End, Proxy, Upstream, SOON};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tokio_tungstenite::{
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    WebSocketStream,
};

const GRACE: &str = "1s";
/// The deadline is at least this long after our SIGTERM (the grace, less timer slack).
const BEFORE_THE_DEADLINE: Duration = Duration::from_millis(900);
/// The big frame: 1 MiB crosses the tunnel in many reads.
const BIG: usize = 1 << 20;

type Ws = WebSocketStream<TcpStream>;

async fn ws_client(p: &Proxy) -> Ws {
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (ws, res) = tokio_tungstenite::client_async(format!("ws://{}/ws", p.addr), tcp).await.unwrap();
    assert_eq!(res.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(SOON, ws.next()).await.expect("echo timed out");
    assert_eq!(got.unwrap().unwrap(), Message::text(text));
}

async fn next(ws: &mut Ws) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    tokio::time::timeout(SOON, ws.next()).await.expect("nothing from the proxy")
}

fn assert_going_away(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
    match msg {
        Some(Ok(Message::Close(Some(CloseFrame { code: CloseCode::Away, .. })))) => {}
        other => panic!("expected a Close 1001, got {other:?}"),
    }
}

/// SIGTERM, then waits until the drain is under way (upgrades must start before it).
async fn drain(p: &mut Proxy) -> Instant {
    let t0 = Instant::now();
    p.sigterm();
    p.log.wait_for("listener closed").await;
    t0
}

async fn exits_with_one_cut(p: &mut Proxy) {
    let (status, _) = p.exit().await;
    assert!(status.success(), "{status}");
    assert!(p.log.all().contains("cut=1"), "{}", p.log.all());
}

#[tokio::test]
async fn client_gets_going_away_at_the_deadline() {
    let up = Upstream::start().await;
    let mut p = Proxy::start(&up.addr, &["--grace", GRACE]).await;
    let mut ws = ws_client(&p).await;
    echo(&mut ws, "before").await;

    let t0 = drain(&mut p).await;
    echo(&mut ws, "during").await;
    assert!(p.running());

    assert_going_away(next(&mut ws).await);
    assert!(t0.elapsed() >= BEFORE_THE_DEADLINE, "closed {:?} after SIGTERM", t0.elapsed());
    // Our reply completes the closing handshake; then the stream just ends, no reset.
    assert!(next(&mut ws).await.is_none(), "a clean end after the Close");
    exits_with_one_cut(&mut p).await;
}

#[tokio::test]
async fn app_gets_going_away_too() {
    let (app, close) = recording_app().await;
    let mut p = Proxy::start(&app.to_string(), &["--grace", GRACE]).await;
    let mut ws = ws_client(&p).await;
    echo(&mut ws, "before").await;

    drain(&mut p).await;
    echo(&mut ws, "during").await;
    assert_going_away(next(&mut ws).await);
    let close = tokio::time::timeout(SOON, close).await.expect("the app saw no end").unwrap();
    match close {
        Ok(Some(CloseFrame { code: CloseCode::Away, .. })) => {}
        other => panic!("the app expected a Close 1001, got {other:?}"),
    }
    exits_with_one_cut(&mut p).await;
}

#[tokio::test]
async fn a_frame_in_flight_at_the_deadline_is_finished_before_the_close() {
    let app = streaming_app().await;
    let mut p = Proxy::start(&app.addr.to_string(), &["--grace", GRACE]).await;
    let mut ws = ws_client(&p).await;

    let t0 = drain(&mut p).await;
    app.go.send(()).unwrap();
    // tungstenite would fail on a Close spliced into the frame; it gets the whole message first.
    match next(&mut ws).await {
        Some(Ok(Message::Binary(data))) => {
            assert_eq!(data.len(), BIG);
            assert!(data.iter().enumerate().all(|(i, &b)| b == payload_byte(i)), "payload corrupted");
        }
        other => panic!("expected the 1 MiB message, got {other:?}"),
    }
    assert_going_away(next(&mut ws).await);
    assert!(t0.elapsed() >= BEFORE_THE_DEADLINE, "closed {:?} after SIGTERM", t0.elapsed());

    let report = tokio::time::timeout(SOON, app.report).await.expect("the app did not finish").unwrap();
    assert!(
        0 < report.sent_before_close && report.sent_before_close < BIG,
        "the cut did not land mid-frame: {} of {BIG} bytes sent when the Close came",
        report.sent_before_close
    );
    // The app's side: exactly one masked Close 1001, nothing else.
    let got = &report.received;
    assert_eq!(got.len(), 8, "{got:?}");
    assert_eq!(got[..2], [0x88, 0x82], "a masked Close with 2 bytes of payload");
    assert_eq!([got[6] ^ got[2], got[7] ^ got[3]], [0x03, 0xe9], "code 1001");
    exits_with_one_cut(&mut p).await;
}

#[tokio::test]
async fn other_upgrades_are_simply_closed() {
    let (app, app_saw_eof) = raw_upgrade_app().await;
    let mut p = Proxy::start(&app.to_string(), &["--grace", GRACE]).await;
    let mut c = Client::connect(p.addr).await;
    c.send(b"GET /tunnel HTTP/1.1\r\nHost: test\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n").await;
    assert_eq!(c.head().await.status, 101);
    raw_echo(&mut c, b"before").await;

    let t0 = drain(&mut p).await;
    raw_echo(&mut c, b"during").await;
    assert_eq!(c.end().await, End::Eof, "no Close frame, no reset: just EOF");
    assert!(t0.elapsed() >= BEFORE_THE_DEADLINE, "closed {:?} after SIGTERM", t0.elapsed());
    tokio::time::timeout(SOON, app_saw_eof).await.expect("the app's side stayed open").unwrap();
    exits_with_one_cut(&mut p).await;
}

async fn raw_echo(c: &mut Client, data: &[u8]) {
    c.send(data).await;
    let mut got = vec![0; data.len()];
    tokio::time::timeout(SOON, c.stream.read_exact(&mut got)).await.expect("echo timed out").unwrap();
    assert_eq!(got, data);
}

/// A tungstenite echo app that reports the Close frame it received (or what ended it otherwise).
async fn recording_app() -> (SocketAddr, oneshot::Receiver<Result<Option<CloseFrame<'static>>, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut close = None;
        // After the Close keep reading: that sends tungstenite's reply and sees the EOF.
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => close = close.or(Some(Ok(frame))),
                Ok(msg @ Message::Text(_)) => ws.send(msg).await.unwrap(),
                Ok(_) => {}
                Err(e) => {
                    close = close.or(Some(Err(e.to_string())));
                    break;
                }
            }
        }
        let _ = tx.send(close.unwrap_or_else(|| Err("ended without a Close".into())));
    });
    (addr, rx)
}

fn payload_byte(i: usize) -> u8 {
    (i % 251) as u8
}

struct Streamer {
    addr: SocketAddr,
    go: oneshot::Sender<()>,
    report: JoinHandle<StreamReport>,
}

struct StreamReport {
    /// Payload bytes of the big frame written when the proxy's Close arrived.
    sent_before_close: usize,
    /// Every byte the proxy sent after the handshake.
    received: Vec<u8>,
}

/// A hand-written WebSocket app: on `go` it streams one 1 MiB binary frame
/// slowly (about 2 s), and finishes it at full speed once the proxy's Close
/// arrives, so the deadline surely lands mid-frame. Then it answers the Close.
async fn streaming_app() -> Streamer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, go_rx) = oneshot::channel();
    let report = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        handshake(&mut tcp).await;
        go_rx.await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let (closed_tx, mut closed) = watch::channel(false);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut buf = [0; 1024];
            while let Ok(n @ 1..) = rd.read(&mut buf).await {
                received.extend_from_slice(&buf[..n]);
                if received.len() >= 8 {
                    closed_tx.send_replace(true);
                }
            }
            received
        });

        let payload: Vec<u8> = (0..BIG).map(payload_byte).collect();
        let mut frame = vec![0x82, 127];
        frame.extend_from_slice(&(BIG as u64).to_be_bytes());
        let _ = wr.write_all(&frame).await;
        let mut sent = 0;
        while sent < BIG && !*closed.borrow() {
            let _ = wr.write_all(&payload[sent..sent + 8192]).await;
            sent += 8192;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(16)) => {}
                _ = closed.changed() => {}
            }
        }
        let sent_before_close = sent;
        let _ = wr.write_all(&payload[sent..]).await;
        let _ = wr.write_all(&[0x88, 0x02, 0x03, 0xe9]).await;
        let received = tokio::time::timeout(SOON, reader).await.expect("the proxy kept the app's socket").unwrap();
        StreamReport { sent_before_close, received }
    });
    Streamer { addr, go, report }
}

/// Answers a WebSocket handshake by hand, so the test owns every byte after it.
async fn handshake(tcp: &mut TcpStream) {
    let head = read_head(tcp).await;
    let key = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
        .map(|(_, v)| v.trim().to_string())
        .expect("a WebSocket handshake");
    let res = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    tcp.write_all(res.as_bytes()).await.unwrap();
}

async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

/// An app that switches to a made-up `foo` protocol and echoes bytes; reports its EOF.
async fn raw_upgrade_app() -> (SocketAddr, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        read_head(&mut tcp).await;
        tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 1024];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            if tcp.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = tx.send(());
    });
    (addr, rx)
}
