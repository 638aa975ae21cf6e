//! Test helpers: the real binaries on 127.0.0.1:0, raw HTTP/1 clients, and waiting on events, never on sleeps.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    sync::mpsc,
};

/// Generous bound for anything that should happen "at once" on a loaded CI box.
pub const SOON: Duration = Duration::from_secs(10);

/// A `--grace` far longer than any test: a drain that waits for it is caught by [`NOT_THE_GRACE`].
pub const LONG_GRACE: &str = "60s";
/// A process still alive this long after its signal waited for the grace.
pub const NOT_THE_GRACE: Duration = Duration::from_secs(20);

pub fn bin(name: &str) -> &'static str {
    match name {
        "drainproxy" => env!("CARGO_BIN_EXE_drainproxy"),
        "demo-upstream" => env!("CARGO_BIN_EXE_demo-upstream"),
        _ => panic!("unknown binary {name}"),
    }
}

/// Lines from a child's output, kept for later assertions and streamed for waiting.
pub struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
    all: Arc<Mutex<Vec<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Lines {
    pub fn spawn(out: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = all.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Lines { rx, all, reader: Some(reader) }
    }

    /// Waits until the writer closed its end (the process exited), so `all` is complete.
    pub async fn finished(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(SOON, reader).await;
        }
    }

    /// Waits for the next line containing `needle`; panics with everything seen on timeout.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(SOON, async {
            while let Some(line) = self.rx.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no line containing {needle:?}; output so far:\n{}", self.all()),
        }
    }

    pub fn all(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }
}

/// The bundled demo upstream, killed on drop.
pub struct Upstream {
    child: Child,
    pub addr: String,
    pub out: Lines,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::spawn(&["--listen", "127.0.0.1:0"]).await
    }

    pub async fn start_unix(path: &std::path::Path) -> Self {
        Self::spawn(&["--unix", path.to_str().unwrap()]).await
    }

    async fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(bin("demo-upstream"))
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start demo-upstream");
        let mut out = Lines::spawn(child.stdout.take().unwrap());
        let line = out.wait_for("listening ").await;
        let addr = line.trim_start_matches("listening ").to_string();
        Upstream { child, addr, out }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.addr.parse().expect("a TCP upstream")
    }

    /// Waits until a `/hold/NAME` request has reached the app.
    pub async fn wait_held(&mut self, name: &str) {
        self.out.wait_for(&format!("held {name}")).await;
    }

    /// Lets a held request answer.
    pub async fn release(&self, name: &str) {
        let res = get(self.socket_addr(), &format!("/release/{name}")).await;
        assert_eq!(res.status, 200);
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A running drainproxy binary, killed on drop.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub log: Lines,
    signalled_at: Option<Instant>,
}

impl Proxy {
    /// Starts drainproxy on 127.0.0.1:0 (admin too, unless `args` sets
    /// `--admin`) and waits for its `listening` line.
    pub async fn start(upstream: &str, args: &[&str]) -> Self {
        Self::start_with(upstream, args, &[]).await
    }

    pub async fn start_with(upstream: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin("drainproxy"));
        cmd.args(["--listen", "127.0.0.1:0", "--upstream", upstream]);
        if !args.contains(&"--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        cmd.args(args).envs(env.iter().copied()).env("RUST_LOG", "info").stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("start drainproxy");
        let mut log = Lines::spawn(child.stderr.take().unwrap());
        let mut admin = None;
        let line = loop {
            let line = log.wait_for("listening").await;
            if line.contains("admin listening") {
                admin = Some(field(&line, "addr").parse().unwrap());
            } else {
                break line;
            }
        };
        let addr = field(&line, "addr").parse().unwrap();
        Proxy { child, addr, admin, log, signalled_at: None }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    pub fn signal(&mut self, sig: Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal drainproxy");
        self.signalled_at.get_or_insert_with(Instant::now);
    }

    pub fn sigterm(&mut self) {
        self.signal(Signal::SIGTERM)
    }

    /// Waits for the process to exit; returns its status and the time since
    /// the first signal.
    pub async fn exit(&mut self) -> (ExitStatus, Duration) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("drainproxy did not exit; log:\n{}", self.log.all()))
            .unwrap();
        self.log.finished().await;
        let since = self.signalled_at.map_or(Duration::ZERO, |t| t.elapsed());
        (status, since)
    }

    /// Waits for the exit: clean, and without waiting out a long `--grace`.
    pub async fn exits_promptly(&mut self) {
        let (status, took) = self.exit().await;
        assert!(status.success(), "{status}");
        assert!(took < NOT_THE_GRACE, "waited for the grace: {took:?}");
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin enabled")
    }
}

/// `key=value` from a tracing text line.
pub fn field(line: &str, key: &str) -> String {
    let start = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len() + 1;
    line[start..].split_whitespace().next().unwrap().trim_matches('"').to_string()
}

/// A parsed HTTP/1 response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// For chunked bodies: whether the terminating chunk arrived.
    pub complete: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
    Data(Vec<u8>),
}

/// A raw HTTP/1.1 client connection.
pub struct Client {
    pub stream: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp =
            tokio::time::timeout(SOON, TcpStream::connect(addr)).await.expect("connect timed out").expect("connect");
        Client { stream: BufReader::new(tcp) }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.get_mut().write_all(raw).await.expect("write request");
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await;
        self.response().await
    }

    /// Sends a GET without waiting for the answer.
    pub async fn start_get(&mut self, path: &str) {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await;
    }

    /// Reads the response head only.
    pub async fn head(&mut self) -> Response {
        tokio::time::timeout(SOON, self.read_head()).await.expect("response head timed out")
    }

    async fn read_head(&mut self) -> Response {
        read_head(&mut self.stream).await
    }

    /// Reads a whole response (head and body).
    pub async fn response(&mut self) -> Response {
        tokio::time::timeout(SOON, async {
            let mut res = self.read_head().await;
            self.read_body(&mut res).await;
            res
        })
        .await
        .expect("response timed out")
    }

    /// Reads the body for a head from [`Client::head`].
    pub async fn body(&mut self, res: &mut Response) {
        tokio::time::timeout(SOON, self.read_body(res)).await.expect("body timed out")
    }

    async fn read_body(&mut self, res: &mut Response) {
        read_body(&mut self.stream, res).await
    }

    /// Reads until the server closes: EOF, reset, or unexpected bytes.
    pub async fn end(&mut self) -> End {
        let mut buf = vec![0; 4096];
        match tokio::time::timeout(SOON, self.stream.read(&mut buf)).await.expect("connection stayed open") {
            Ok(0) => End::Eof,
            Ok(n) => End::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => End::Reset,
            Err(e) => panic!("read error: {e}"),
        }
    }

    /// True if the server has not closed the connection within `d`.
    pub async fn still_open_after(&mut self, d: Duration) -> bool {
        let mut buf = [0; 1];
        tokio::time::timeout(d, self.stream.read(&mut buf)).await.is_err()
    }
}

/// Reads a response head (status line and headers) from any buffered stream.
pub async fn read_head(r: &mut (impl AsyncBufRead + Unpin)) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    assert!(line.starts_with("HTTP/1."), "not a status line: {line:?}");
    let status = line[9..12].parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Response { status, headers, body: Vec::new(), complete: true }
}

/// Reads the body that `res`'s head announces; `complete` tells whether it all arrived.
pub async fn read_body(r: &mut (impl AsyncBufRead + Unpin), res: &mut Response) {
    if res.status == 101 || res.status == 204 || res.status == 304 {
        return;
    }
    if let Some(len) = res.header("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        let n = read_full(r, &mut body).await;
        body.truncate(n);
        res.complete = n == body.capacity();
        res.body = body;
    } else if res.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        res.complete = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let Ok(size) = usize::from_str_radix(line.trim(), 16) else { return };
            if size == 0 {
                let mut crlf = String::new();
                let _ = r.read_line(&mut crlf).await;
                res.complete = true;
                return;
            }
            let mut chunk = vec![0; size + 2];
            if read_full(r, &mut chunk).await < chunk.len() {
                return;
            }
            res.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let _ = r.read_to_end(&mut res.body).await;
    }
}

async fn read_full(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).await.get(path).await
}

/// An h2c (prior knowledge) client connection.
pub async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Connecting is refused (the listener is closed).
pub async fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}
pub mod tls;

/// Keeps opening streams on an h2 connection until one is refused (the
/// client has seen the final GOAWAY, or the server answered REFUSED_STREAM),
/// and returns that error. Streams accepted before then are served normally.
pub async fn until_new_streams_refused(
    send: &h2::client::SendRequest<bytes::Bytes>,
    request: impl Fn() -> http::Request<()>,
) -> h2::Error {
    tokio::time::timeout(SOON, async {
        loop {
            let attempt = match send.clone().ready().await {
                Ok(mut s) => match s.send_request(request(), true) {
                    Ok((res, _)) => res.await.map(drop),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = attempt {
                return e;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("new streams were still accepted")
}
