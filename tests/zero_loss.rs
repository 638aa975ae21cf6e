//! Zero loss under load: keep-alive clients loop requests through the real
//! binary while it drains, and every request is accounted for.
//!
//! Each run starts its own demo upstream and drainproxy on 127.0.0.1:0, lets
//! `clients` keep-alive clients (HTTP/1.1 over a raw socket, or h2c with the
//! `h2` crate) loop GETs through it (`/`, `/bytes?n=16384`, `/`, `/slow?ms=20`,
//! so some are in flight at any instant), sends SIGTERM once the warm-up count
//! of answers is reached, and keeps the clients going until their connects are
//! refused. Every request attempt lands in exactly one bucket:
//!
//! - **answered**: a complete 200 with the exact expected body;
//! - **refused at connect** (ECONNREFUSED: a load balancer retries elsewhere);
//! - **refused by h2** (REFUSED_STREAM, a stream above the GOAWAY's last
//!   stream id, or rejected locally because a GOAWAY already arrived): never
//!   processed, safe to retry;
//! - **bad status**: a complete response that is not 200 (none expected);
//! - **lost**: written on an established connection and never answered
//!   completely (EOF or reset before the whole response, a truncated body).
//!
//! An HTTP/1 client checks, before reusing a keep-alive socket, whether the
//! server already closed it (as real connection pools do) and then reconnects
//! without counting anything; it reconnects after `Connection: close` too.
//!
//! With the default idle-grace lost must be 0 for HTTP/1.1 and h2c, with
//! drain-delay 0 and 300ms. The `--idle-grace 0` runs only print what they
//! lose: that is why the default exists.
//!
//! Knobs (one implementation for the test and `bench/zero_loss.sh`):
//! `ZERO_LOSS_CLIENTS` (32), `ZERO_LOSS_WARMUP` answers before the signal
//! (300), `ZERO_LOSS_ROUNDS` drains per test, each with a fresh proxy (1),
//! `ZERO_LOSS_SECS` seconds of load per test, spread over the rounds (0: just
//! the warm-up). For digging into a loss: `ZERO_LOSS_PROXY_ARGS="--log-level
//! debug"` adds flags to drainproxy, and `ZERO_LOSS_LOG=needle` prints its log
//! lines that contain the needle or name a lost request's client port.

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use http::Request;
use support::{field, Proxy, Upstream, SOON};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::Notify,
};

const SLOW_MS: u64 = 20;
const BYTES: usize = 16384;
/// Evidence kept per run for losses and surprises.
const KEEP_DETAILS: usize = 40;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
        }
    }
}

struct Knobs {
    clients: usize,
    warmup: u64,
    rounds: u32,
    secs: f64,
}

fn knobs() -> Knobs {
    fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
        match std::env::var(name) {
            Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
            Err(_) => default,
        }
    }
    Knobs {
        clients: env("ZERO_LOSS_CLIENTS", 32),
        warmup: env("ZERO_LOSS_WARMUP", 300),
        rounds: env("ZERO_LOSS_ROUNDS", 1u32).max(1),
        secs: env("ZERO_LOSS_SECS", 0.0),
    }
}

/// The request mix: every 4th request is slow, every 4th carries a 16 KiB body.
fn path(i: usize) -> &'static str {
    match i % 4 {
        1 => "/bytes?n=16384",
        3 => "/slow?ms=20",
        _ => "/",
    }
}

fn expected_body(path: &str) -> Vec<u8> {
    match path {
        "/" => b"hello from the demo upstream\n".to_vec(),
        p if p.starts_with("/slow") => format!("slow response after {SLOW_MS}ms\n").into_bytes(),
        _ => vec![b'x'; BYTES],
    }
}

/// Shared by the clients of one drain.
struct Tally {
    answered: AtomicU64,
    answered_after_signal: AtomicU64,
    told_to_close: AtomicU64,
    refused_connect: AtomicU64,
    refused_h2: AtomicU64,
    bad_status: AtomicU64,
    lost: AtomicU64,
    connections: AtomicU64,
    /// Why requests were refused, and other non-loss events worth printing.
    reasons: Mutex<BTreeMap<String, u64>>,
    /// What the client saw for each loss (and bad status), first few only.
    details: Mutex<Vec<String>>,
    /// The client ports of lost requests' connections, to find them in the proxy's log.
    lost_ports: Mutex<Vec<u16>>,
    signalled: OnceLock<Instant>,
    warmup: u64,
    warm: Notify,
}

impl Tally {
    fn new(warmup: u64) -> Self {
        Tally {
            answered: AtomicU64::new(0),
            answered_after_signal: AtomicU64::new(0),
            told_to_close: AtomicU64::new(0),
            refused_connect: AtomicU64::new(0),
            refused_h2: AtomicU64::new(0),
            bad_status: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            reasons: Mutex::default(),
            details: Mutex::default(),
            lost_ports: Mutex::default(),
            signalled: OnceLock::new(),
            warmup,
            warm: Notify::new(),
        }
    }

    fn answered(&self) {
        if self.signalled.get().is_some() {
            self.answered_after_signal.fetch_add(1, Ordering::Relaxed);
        }
        if self.answered.fetch_add(1, Ordering::Relaxed) + 1 == self.warmup {
            // Stores a permit if the test is not waiting yet: no lost wake-up.
            self.warm.notify_one();
        }
    }

    fn reason(&self, why: &str) {
        *self.reasons.lock().unwrap().entry(why.to_string()).or_default() += 1;
    }

    fn refused_connect(&self, e: &std::io::Error) {
        self.refused_connect.fetch_add(1, Ordering::Relaxed);
        self.reason(&format!("connect: {:?}", e.kind()));
    }

    fn refused_h2(&self, why: &str) {
        self.refused_h2.fetch_add(1, Ordering::Relaxed);
        self.reason(why);
    }

    /// `kind` groups losses in the summary; `what` is the full evidence.
    fn lost(&self, kind: &str, what: String, port: u16) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.lost_ports.lock().unwrap().push(port);
        self.reason(&format!("LOST: {kind}"));
        self.detail(format!("LOST {what}"));
    }

    fn bad_status(&self, what: String) {
        self.bad_status.fetch_add(1, Ordering::Relaxed);
        self.detail(format!("BAD {what}"));
    }

    fn detail(&self, what: String) {
        let mut details = self.details.lock().unwrap();
        if details.len() < KEEP_DETAILS {
            details.push(what);
        }
    }

    /// Where `t` lies relative to the SIGTERM, for evidence.
    fn when(&self, t: Instant) -> String {
        match self.signalled.get() {
            Some(&s) if t >= s => format!("+{:.1}ms after SIGTERM", (t - s).as_secs_f64() * 1e3),
            Some(&s) => format!("{:.1}ms before SIGTERM", (s - t).as_secs_f64() * 1e3),
            None => "before SIGTERM".into(),
        }
    }
}

// ---------------------------------------------------------------- HTTP/1.1

struct H1Conn {
    stream: BufReader<TcpStream>,
    /// Which connection of this client, and how many answers it gave so far.
    seq: u32,
    answers: u32,
    last_answer: Option<Instant>,
    /// The client's port (to find the connection in the proxy's debug log) and when connect() returned.
    port: u16,
    connected: Instant,
}

struct H1Response {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

impl H1Conn {
    /// A pooled keep-alive socket is reused only if the server has not
    /// closed it meanwhile (EOF between requests is not a loss).
    fn still_open(&self) -> bool {
        if !self.stream.buffer().is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.get_ref().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn exchange(&mut self, path: &str) -> Result<H1Response, String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: zero-loss\r\n\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).await.map_err(|e| format!("write failed: {e}"))?;
        match tokio::time::timeout(SOON, self.read_response()).await {
            Ok(res) => res,
            Err(_) => Err(format!("no complete response within {SOON:?}")),
        }
    }

    async fn read_response(&mut self) -> Result<H1Response, String> {
        let mut line = String::new();
        match self.stream.read_line(&mut line).await {
            Ok(0) => return Err("EOF before the status line".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("{} before the status line", e.kind())),
        }
        if !line.ends_with("\r\n") || !line.starts_with("HTTP/1.1 ") || line.len() < 12 {
            return Err(format!("broken status line {line:?}"));
        }
        let status = line[9..12].parse().map_err(|_| format!("broken status line {line:?}"))?;
        let (mut len, mut close) = (None, false);
        loop {
            line.clear();
            match self.stream.read_line(&mut line).await {
                Ok(0) => return Err(format!("EOF in the head of a {status}")),
                Ok(_) => {}
                Err(e) => return Err(format!("{} in the head of a {status}", e.kind())),
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| format!("broken header {l:?}"))?;
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.parse::<usize>().map_err(|_| format!("broken content-length {v:?}"))?);
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let len = len.ok_or_else(|| format!("a {status} without content-length"))?;
        let mut body = vec![0; len];
        let mut got = 0;
        while got < len {
            match self.stream.read(&mut body[got..]).await {
                Ok(0) => return Err(format!("truncated body: EOF after {got} of {len} bytes")),
                Ok(n) => got += n,
                Err(e) => return Err(format!("truncated body: {} after {got} of {len} bytes", e.kind())),
            }
        }
        Ok(H1Response { status, close, body })
    }
}

async fn h1_client(id: usize, addr: SocketAddr, tally: Arc<Tally>) {
    let mut i = id;
    let mut conn: Option<H1Conn> = None;
    let mut seq = 0;
    loop {
        let path = path(i);
        i += 1;
        if conn.as_ref().is_some_and(|c| !c.still_open()) {
            tally.reason("h1: server closed the idle socket before reuse (reconnect)");
            conn = None;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    tally.connections.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                    let port = tcp.local_addr().map_or(0, |a| a.port());
                    let connected = Instant::now();
                    conn.insert(H1Conn {
                        stream: BufReader::new(tcp),
                        seq,
                        answers: 0,
                        last_answer: None,
                        port,
                        connected,
                    })
                }
                Err(e) => {
                    // The listener is closed (or the process gone): nothing more to send.
                    return tally.refused_connect(&e);
                }
            },
        };
        let sent = Instant::now();
        match c.exchange(path).await {
            Ok(res) => {
                c.answers += 1;
                c.last_answer = Some(Instant::now());
                if res.status != 200 {
                    tally.bad_status(format!("h1 client {id} conn {} {path}: status {}", c.seq, res.status));
                } else if res.body != expected_body(path) {
                    tally.lost(
                        "h1 wrong body",
                        format!("h1 client {id} conn {} {path}: wrong body ({} bytes)", c.seq, res.body.len()),
                        c.port,
                    );
                } else {
                    tally.answered();
                }
                if res.close {
                    tally.told_to_close.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
            Err(what) => {
                let kind = format!(
                    "h1 {}: {}",
                    if c.last_answer.is_some() {
                        "reused keep-alive socket"
                    } else {
                        "first request on a fresh connection"
                    },
                    what.split(':').next().unwrap_or_default().split(" after ").next().unwrap_or_default()
                );
                let reuse = match c.last_answer {
                    Some(t) => format!(
                        "reused keep-alive socket after {} answers, previous answer {}, idle {:.1}ms before the write",
                        c.answers,
                        tally.when(t),
                        (sent - t).as_secs_f64() * 1e3
                    ),
                    None => format!(
                        "first request on a fresh connection (port {}, connected {})",
                        c.port,
                        tally.when(c.connected)
                    ),
                };
                tally.lost(
                    &kind,
                    format!("h1 client {id} conn {} GET {path}: {what}; written {}; {reuse}", c.seq, tally.when(sent)),
                    c.port,
                );
                conn = None;
            }
        }
    }
}

// --------------------------------------------------------------------- h2c

enum H2Outcome {
    Answered,
    Refused(&'static str),
    Bad(u16),
    Lost(String),
}

async fn h2_exchange(res: h2::client::ResponseFuture, path: &str) -> H2Outcome {
    let res = match res.await {
        Ok(res) => res,
        Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => return H2Outcome::Refused("h2: REFUSED_STREAM"),
        // RFC 9113 §6.8: streams above the GOAWAY's last stream id were not processed.
        Err(e) if e.is_go_away() && e.is_remote() => {
            return H2Outcome::Refused("h2: stream above GOAWAY last-stream-id")
        }
        Err(e) => return H2Outcome::Lost(format!("no response head: {e}")),
    };
    let status = res.status().as_u16();
    let len: Option<usize> = res.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = res.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            Err(e) => return H2Outcome::Lost(format!("body broke after {} bytes: {e}", got.len())),
        }
    }
    if len.is_some_and(|len| len != got.len()) {
        return H2Outcome::Lost(format!("truncated body: {} of {len:?} bytes", got.len()));
    }
    if status != 200 {
        return H2Outcome::Bad(status);
    }
    if got != expected_body(path) {
        return H2Outcome::Lost(format!("wrong body ({} bytes)", got.len()));
    }
    H2Outcome::Answered
}

async fn h2_client(id: usize, addr: SocketAddr, tally: Arc<Tally>) {
    let mut i = id;
    let mut seq = 0;
    'connect: loop {
        let tcp = match TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => return tally.refused_connect(&e),
        };
        let _ = tcp.set_nodelay(true);
        tally.connections.fetch_add(1, Ordering::Relaxed);
        seq += 1;
        let (port, connected) = (tcp.local_addr().map_or(0, |a| a.port()), Instant::now());
        let (mut send, conn) = match h2::client::handshake(tcp).await {
            Ok(pair) => pair,
            Err(_) => {
                // Only the preface was written: the request was never sent.
                tally.refused_h2("h2: handshake failed (nothing sent)");
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut answers = 0;
        loop {
            let path = path(i);
            i += 1;
            // Rejected here means never sent: refused, not lost.
            send = match send.ready().await {
                Ok(send) => send,
                Err(e) => {
                    tally.refused_h2(if e.is_go_away() {
                        "h2: rejected locally after GOAWAY"
                    } else {
                        "h2: connection closed before sending"
                    });
                    continue 'connect;
                }
            };
            let req = Request::get(format!("http://{addr}{path}")).body(()).expect("valid request");
            let res = match send.send_request(req, true) {
                Ok((res, _)) => res,
                Err(e) => {
                    tally.refused_h2(if e.is_go_away() {
                        "h2: rejected locally after GOAWAY"
                    } else {
                        "h2: connection closed before sending"
                    });
                    continue 'connect;
                }
            };
            let sent = Instant::now();
            let outcome = match tokio::time::timeout(SOON, h2_exchange(res, path)).await {
                Ok(outcome) => outcome,
                Err(_) => H2Outcome::Lost(format!("no complete response within {SOON:?}")),
            };
            match outcome {
                H2Outcome::Answered => {
                    answers += 1;
                    tally.answered();
                }
                H2Outcome::Refused(why) => {
                    tally.refused_h2(why);
                    continue 'connect;
                }
                H2Outcome::Bad(status) => {
                    tally.bad_status(format!("h2c client {id} conn {seq} {path}: status {status}"));
                }
                H2Outcome::Lost(what) => {
                    let kind = format!(
                        "h2c {}: {}",
                        if answers > 0 { "reused connection" } else { "first stream on a fresh connection" },
                        what.split(" after ").next().unwrap_or_default()
                    );
                    tally.lost(&kind, format!(
                        "h2c client {id} conn {seq} GET {path}: {what}; sent {} after {answers} answers on this connection \
                         (port {port}, connected {})",
                        tally.when(sent),
                        tally.when(connected)
                    ), port);
                    continue 'connect;
                }
            }
        }
    }
}

// --------------------------------------------------------------------- runs

#[derive(Default)]
struct Counts {
    answered: u64,
    answered_after_signal: u64,
    told_to_close: u64,
    refused_connect: u64,
    refused_h2: u64,
    bad_status: u64,
    lost: u64,
    connections: u64,
    cut: u64,
    drain_ms: Vec<u128>,
    reasons: BTreeMap<String, u64>,
    details: Vec<String>,
}

impl Counts {
    fn add(&mut self, t: &Tally, drain: Duration, cut: u64) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.answered += get(&t.answered);
        self.answered_after_signal += get(&t.answered_after_signal);
        self.told_to_close += get(&t.told_to_close);
        self.refused_connect += get(&t.refused_connect);
        self.refused_h2 += get(&t.refused_h2);
        self.bad_status += get(&t.bad_status);
        self.lost += get(&t.lost);
        self.connections += get(&t.connections);
        self.cut += cut;
        self.drain_ms.push(drain.as_millis());
        for (k, v) in t.reasons.lock().unwrap().iter() {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
        let room = KEEP_DETAILS.saturating_sub(self.details.len());
        self.details.extend(t.details.lock().unwrap().iter().take(room).cloned());
    }
}

/// One drain under load with a fresh proxy: warm up, SIGTERM, wait for the
/// exit, then for every client to have given up on refused connects.
async fn one_drain(up: &Upstream, run: &Run, knobs: &Knobs, load: Duration, counts: &mut Counts) {
    let Run { proto, delay_ms, idle_grace, ref label } = *run;
    let delay = format!("{delay_ms}ms");
    let mut args = vec!["--drain-delay", &delay];
    if let Some(grace) = idle_grace {
        args.extend(["--idle-grace", grace]);
    }
    // Debugging aid: ZERO_LOSS_PROXY_ARGS="--log-level debug" adds flags.
    let extra = std::env::var("ZERO_LOSS_PROXY_ARGS").unwrap_or_default();
    args.extend(extra.split_whitespace());
    let mut p = Proxy::start(&up.addr, &args).await;
    let tally = Arc::new(Tally::new(knobs.warmup));
    let started = Instant::now();
    let clients: Vec<_> = (0..knobs.clients)
        .map(|id| match proto {
            Proto::H1 => tokio::spawn(h1_client(id, p.addr, tally.clone())),
            Proto::H2c => tokio::spawn(h2_client(id, p.addr, tally.clone())),
        })
        .collect();

    if tokio::time::timeout(SOON, tally.warm.notified()).await.is_err() {
        panic!(
            "warm-up of {} answers not reached: answered={} lost={} details={:#?}\nlog:\n{}",
            knobs.warmup,
            tally.answered.load(Ordering::Relaxed),
            tally.lost.load(Ordering::Relaxed),
            tally.details.lock().unwrap(),
            p.log.all()
        );
    }
    // Bench mode only: keep the load on for a while (a duration of load, not a wait for an event).
    if let Some(rest) = load.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    tally.signalled.set(Instant::now()).expect("signalled once");
    p.sigterm();
    let (status, took) = p.exit().await;
    assert!(status.success(), "drainproxy exited with {status}; log:\n{}", p.log.all());
    for client in clients {
        tokio::time::timeout(SOON, client)
            .await
            .expect("a client kept going after drainproxy exited")
            .expect("a client panicked");
    }
    let log = p.log.all();
    let complete =
        log.lines().find(|l| l.contains("drain complete")).unwrap_or_else(|| panic!("no drain complete:\n{log}"));
    let cut = field(complete, "cut").parse().unwrap();
    // Debugging aid: ZERO_LOSS_LOG=needle prints the proxy's log lines that
    // contain it or name a lost request's client port.
    if let Ok(needle) = std::env::var("ZERO_LOSS_LOG") {
        let ports: Vec<String> = tally.lost_ports.lock().unwrap().iter().map(|p| format!(":{p}")).collect();
        for line in log.lines().filter(|l| l.contains(&needle) || ports.iter().any(|p| l.contains(p))) {
            println!("  {label}: log: {line}");
        }
    }
    counts.add(&tally, took, cut);
}

/// One combination: protocol, drain-delay, idle-grace (None: the default).
struct Run {
    proto: Proto,
    delay_ms: u64,
    idle_grace: Option<&'static str>,
    label: String,
}

async fn run(proto: Proto, delay_ms: u64, idle_grace: Option<&'static str>) -> Counts {
    let knobs = knobs();
    let up = Upstream::start().await;
    let load = Duration::from_secs_f64(knobs.secs / knobs.rounds as f64);
    let label = format!(
        "{} delay={} idle-grace={}",
        proto.name(),
        if delay_ms == 0 { "0".to_string() } else { format!("{delay_ms}ms") },
        idle_grace.unwrap_or("default")
    );
    let run = Run { proto, delay_ms, idle_grace, label };
    let mut counts = Counts::default();
    for _ in 0..knobs.rounds {
        one_drain(&up, &run, &knobs, load, &mut counts).await;
    }
    let label = &run.label;
    // One line per run, parsed by bench/zero_loss.sh: keep the shape.
    println!(
        "zero-loss {label}: answered={} refused={} lost={} bad_status={} refused_connect={} refused_h2={} \
         answered_after_sigterm={} told_to_close={} connections={} cut={} clients={} rounds={} drain_ms={:?}",
        counts.answered,
        counts.refused_connect + counts.refused_h2,
        counts.lost,
        counts.bad_status,
        counts.refused_connect,
        counts.refused_h2,
        counts.answered_after_signal,
        counts.told_to_close,
        counts.connections,
        counts.cut,
        knobs.clients,
        knobs.rounds,
        counts.drain_ms,
    );
    for (why, n) in &counts.reasons {
        println!("  {label}: {n} × {why}");
    }
    for d in &counts.details {
        println!("  {label}: {d}");
    }
    counts
}

async fn assert_zero_loss(proto: Proto, delay_ms: u64) {
    let c = run(proto, delay_ms, None).await;
    assert_eq!(c.lost, 0, "requests lost with the default idle-grace: {:#?}", c.details);
    assert_eq!(c.bad_status, 0, "error responses during the drain: {:#?}", c.details);
    assert_eq!(c.cut, 0, "nothing may wait for the grace deadline");
}

/// `--idle-grace 0` may lose requests (that is the point): only the run must
/// complete (`run` checks the warm-up ran and the proxy drained and exited).
async fn report_idle_grace_0(proto: Proto, delay_ms: u64) {
    run(proto, delay_ms, Some("0")).await;
}

#[tokio::test]
async fn h1_drain_delay_0_loses_nothing() {
    assert_zero_loss(Proto::H1, 0).await
}

#[tokio::test]
async fn h1_drain_delay_300ms_loses_nothing() {
    assert_zero_loss(Proto::H1, 300).await
}

#[tokio::test]
async fn h2c_drain_delay_0_loses_nothing() {
    assert_zero_loss(Proto::H2c, 0).await
}

#[tokio::test]
async fn h2c_drain_delay_300ms_loses_nothing() {
    assert_zero_loss(Proto::H2c, 300).await
}

#[tokio::test]
async fn h1_idle_grace_0_drain_delay_0_reports_losses() {
    report_idle_grace_0(Proto::H1, 0).await
}

#[tokio::test]
async fn h1_idle_grace_0_drain_delay_300ms_reports_losses() {
    report_idle_grace_0(Proto::H1, 300).await
}

#[tokio::test]
async fn h2c_idle_grace_0_drain_delay_0_reports_losses() {
    report_idle_grace_0(Proto::H2c, 0).await
}

#[tokio::test]
async fn h2c_idle_grace_0_drain_delay_300ms_reports_losses() {
    report_idle_grace_0(Proto::H2c, 300).await
}
