//! Idle keep-alive clients for `bench/run.sh`.
//!
//! Opens `--conns N` HTTP/1.1 connections to `--connect ADDR` (at most
//! `--concurrency C` connecting at once), sends one `GET PATH` on each, reads
//! the whole response, then keeps every connection open and idle. Prints
//!
//! ```text
//! ready conns=N ok=N failed=0 open_ms=812.3 slowest_connect_ms=1.2 slowest_open_ms=3.4 over_200ms=0
//! ```
//!
//! Then, once the file `--go-file PATH` exists, sends `--signal SIG` (TERM,
//! QUIT, USR1, INT) to `--pid PID` and measures, from that `kill(2)`, when the
//! last of its connections saw EOF (or a reset) and when the process exited
//! (pidfd, so the process need not be our child):
//!
//! ```text
//! drain signal=TERM eof=N reset=0 data=0 early=0 open_left=0 all_eof_ms=12.3 exit_ms=14.1 timed_out=0
//! ```
//!
//! `early` counts connections closed by the server before the signal (an idle
//! timeout). Without `--pid`, it just holds the connections until killed.
//! Everything runs on one current-thread runtime: pin it with `taskset`.

use std::{
    io::Write,
    net::SocketAddr,
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{unix::AsyncFd, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{Notify, Semaphore},
};

struct Args {
    connect: SocketAddr,
    conns: usize,
    concurrency: usize,
    path: String,
    go_file: Option<PathBuf>,
    pid: Option<i32>,
    signal: String,
    timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: idle_clients --connect ADDR --conns N [--concurrency C] [--path /] \
         [--go-file PATH --pid PID --signal TERM|QUIT|USR1|INT] [--timeout SECS]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        connect: "127.0.0.1:8080".parse().unwrap(),
        conns: 10_000,
        concurrency: 256,
        path: "/".into(),
        go_file: None,
        pid: None,
        signal: "TERM".into(),
        timeout: Duration::from_secs(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--connect" => a.connect = v.parse().unwrap_or_else(|_| usage()),
            "--conns" => a.conns = v.parse().unwrap_or_else(|_| usage()),
            "--concurrency" => a.concurrency = v.parse().unwrap_or_else(|_| usage()),
            "--path" => a.path = v,
            "--go-file" => a.go_file = Some(v.into()),
            "--pid" => a.pid = Some(v.parse().unwrap_or_else(|_| usage())),
            "--signal" => a.signal = v,
            "--timeout" => a.timeout = Duration::from_secs_f64(v.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    a
}

#[derive(Default)]
struct State {
    ok: AtomicUsize,
    failed: AtomicUsize,
    opened_done: AtomicUsize,
    /// Connections still open after their response.
    open: AtomicUsize,
    /// Set once the signal has been sent.
    signalled: AtomicBool,
    early: AtomicUsize,
    eof: AtomicUsize,
    reset: AtomicUsize,
    data: AtomicUsize,
    all_opened: Notify,
    all_closed: Notify,
    first_error: Mutex<Option<String>>,
    /// Slowest connect and slowest connect+request+response, in µs; how many took over 200 ms.
    max_connect_us: AtomicU64,
    max_open_us: AtomicU64,
    slow: AtomicUsize,
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) from `s`.
async fn read_response(s: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut content_length = None;
    let mut chunked = false;
    for line in head.split("\r\n") {
        if let Some(v) = line.strip_prefix("content-length:") {
            content_length = v.trim().parse::<usize>().ok();
        } else if let Some(v) = line.strip_prefix("transfer-encoding:") {
            chunked = v.contains("chunked");
        }
    }
    let mut body = buf.split_off(head_end);
    if let Some(len) = content_length {
        while body.len() < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if chunked {
        // Good enough for a bench: the last chunk ends the body.
        while !body.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(status)
}

async fn one(args: Arc<Args>, st: Arc<State>, sem: Arc<Semaphore>, req: Arc<Vec<u8>>) {
    let permit = sem.acquire_owned().await.expect("semaphore");
    let t = Instant::now();
    let opened = async {
        let mut s = TcpStream::connect(args.connect).await?;
        st.max_connect_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::SeqCst);
        s.set_nodelay(true)?;
        s.write_all(&req).await?;
        let status = read_response(&mut s).await?;
        if !(200..300).contains(&status) {
            return Err(std::io::Error::other(format!("status {status}")));
        }
        Ok::<_, std::io::Error>(s)
    }
    .await;
    drop(permit);
    let took = t.elapsed();
    st.max_open_us.fetch_max(took.as_micros() as u64, Ordering::SeqCst);
    if took > Duration::from_millis(200) {
        st.slow.fetch_add(1, Ordering::SeqCst);
    }
    let mut s = match opened {
        Ok(s) => {
            st.ok.fetch_add(1, Ordering::SeqCst);
            st.open.fetch_add(1, Ordering::SeqCst);
            s
        }
        Err(e) => {
            st.failed.fetch_add(1, Ordering::SeqCst);
            st.first_error.lock().unwrap().get_or_insert_with(|| e.to_string());
            if st.opened_done.fetch_add(1, Ordering::SeqCst) + 1 == args.conns {
                st.all_opened.notify_one();
            }
            return;
        }
    };
    if st.opened_done.fetch_add(1, Ordering::SeqCst) + 1 == args.conns {
        st.all_opened.notify_one();
    }
    // Idle: wait for the server to close.
    let mut b = [0u8; 256];
    let how = loop {
        match s.read(&mut b).await {
            Ok(0) => break "eof",
            Ok(_) => {
                st.data.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Err(_) => break "reset",
        }
    };
    if !st.signalled.load(Ordering::SeqCst) {
        st.early.fetch_add(1, Ordering::SeqCst);
    } else {
        if how == "eof" { &st.eof } else { &st.reset }.fetch_add(1, Ordering::SeqCst);
    }
    // Do not close: a close() here sends our FIN and costs this (timed) thread
    // ~10 µs per socket, which would inflate the drain figure. The process exits
    // right after reporting and the kernel closes them then.
    std::mem::forget(s);
    if st.open.fetch_sub(1, Ordering::SeqCst) == 1 {
        st.all_closed.notify_one();
    }
}

fn signal_number(name: &str) -> i32 {
    match name.trim_start_matches("SIG") {
        "TERM" => nix::libc::SIGTERM,
        "QUIT" => nix::libc::SIGQUIT,
        "USR1" => nix::libc::SIGUSR1,
        "INT" => nix::libc::SIGINT,
        "KILL" => nix::libc::SIGKILL,
        _ => usage(),
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, nix::libc::O_NONBLOCK) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Resolves when process `pid` has exited (pidfd readable), or, without pidfd, when /proc says so.
async fn exited(pid: i32, pidfd: Option<OwnedFd>) {
    if let Some(fd) = pidfd {
        // SAFETY: an OwnedFd stays open and the same fd for the AsyncFd's whole life.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
            let _ = afd.readable().await;
            return;
        }
    }
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) if !s.rsplit(") ").next().unwrap_or("").starts_with('Z') => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn main() {
    let args = Arc::new(parse_args());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let st = Arc::new(State::default());
        let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
        let req = Arc::new(
            format!("GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: idle_clients\r\n\r\n", args.path, args.connect)
                .into_bytes(),
        );
        let started = Instant::now();
        let all_opened = st.all_opened.notified();
        tokio::pin!(all_opened);
        all_opened.as_mut().enable();
        for _ in 0..args.conns {
            tokio::spawn(one(args.clone(), st.clone(), sem.clone(), req.clone()));
        }
        if args.conns > 0 {
            all_opened.await;
        }
        let open_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut line = format!(
            "ready conns={} ok={} failed={} open_ms={:.1} slowest_connect_ms={:.1} slowest_open_ms={:.1} over_200ms={}",
            args.conns,
            st.ok.load(Ordering::SeqCst),
            st.failed.load(Ordering::SeqCst),
            open_ms,
            st.max_connect_us.load(Ordering::SeqCst) as f64 / 1e3,
            st.max_open_us.load(Ordering::SeqCst) as f64 / 1e3,
            st.slow.load(Ordering::SeqCst)
        );
        if let Some(e) = st.first_error.lock().unwrap().as_ref() {
            line.push_str(&format!(" first_error={:?}", e));
        }
        println!("{line}");
        let _ = std::io::stdout().flush();

        let (Some(go), Some(pid)) = (args.go_file.clone(), args.pid) else {
            std::future::pending::<()>().await;
            return;
        };
        while !go.exists() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let sig = signal_number(&args.signal);
        let pidfd = pidfd_open(pid);
        let all_closed = st.all_closed.notified();
        tokio::pin!(all_closed);
        all_closed.as_mut().enable();
        let t0 = Instant::now();
        st.signalled.store(true, Ordering::SeqCst);
        // SAFETY: kill(2) on a pid the caller gave us.
        if unsafe { nix::libc::kill(pid, sig) } != 0 {
            eprintln!("idle_clients: kill({pid}, {}) failed: {}", args.signal, std::io::Error::last_os_error());
            std::process::exit(1);
        }
        let eof_fut = tokio::time::timeout(args.timeout, async {
            if st.open.load(Ordering::SeqCst) > 0 {
                all_closed.await;
            }
            t0.elapsed()
        });
        let exit_fut = tokio::time::timeout(args.timeout, async {
            exited(pid, pidfd).await;
            t0.elapsed()
        });
        let (all_eof, exit) = tokio::join!(eof_fut, exit_fut);
        let (all_eof, exit) = (all_eof.ok(), exit.ok());
        let timed_out = u8::from(all_eof.is_none() || exit.is_none());
        let fmt = |d: Option<Duration>| d.map_or("NA".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
        println!(
            "drain signal={} eof={} reset={} data={} early={} open_left={} all_eof_ms={} exit_ms={} timed_out={}",
            args.signal,
            st.eof.load(Ordering::SeqCst),
            st.reset.load(Ordering::SeqCst),
            st.data.load(Ordering::SeqCst),
            st.early.load(Ordering::SeqCst),
            st.open.load(Ordering::SeqCst),
            fmt(all_eof),
            fmt(exit),
            timed_out
        );
        let _ = std::io::stdout().flush();
        // Do not wait for the leftover tasks.
        std::process::exit(0);
    });
}
