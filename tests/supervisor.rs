//! Supervisor mode, black-box: `drainproxy [flags] -- app` with a real child process.
//!
//! The app is the demo upstream on a per-test Unix socket, started through a
//! small `sh` wrapper so that each test controls when it listens (a FIFO) and
//! what it does with signals.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use support::{bin, get, refused, Client, Lines, Proxy, SOON};

/// A per-test scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("drainproxy-sup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
    /// A FIFO the app's wrapper blocks on until the test writes to it.
    fn gate(&self) -> String {
        let path = self.path("gate");
        let status = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(status.success());
        path
    }
}

impl Drop for Scratch {
    /// If a test failed before drainproxy stopped its app, the app outlives
    /// it (its own process group, by design): end every process this test
    /// started, recognised by the test's own scratch path on its command line.
    fn drop(&mut self) {
        let mark = self.0.to_str().unwrap().as_bytes().to_vec();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline.windows(mark.len()).any(|w| w == mark.as_slice()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens the gate: the wrapper's `read` returns and the app goes on.
async fn open(gate: &str) {
    let gate = gate.to_string();
    tokio::task::spawn_blocking(move || std::fs::write(gate, "go\n")).await.unwrap().unwrap();
}

fn upstream_flag(sock: &str) -> String {
    format!("unix:{sock}")
}

async fn start(sock: &str, flags: &[&str], script: &str) -> Proxy {
    let upstream = upstream_flag(sock);
    let mut args: Vec<&str> = vec!["--grace", "60s"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    Proxy::start(&upstream, &args).await
}

fn demo(sock: &str) -> String {
    format!("{} --unix {sock}", bin("demo-upstream"))
}

#[tokio::test]
async fn ready_only_once_the_app_accepts_and_early_requests_wait() {
    let dir = Scratch::new("ready");
    let (sock, gate) = (dir.path("app.sock"), dir.gate());
    let mut p = start(&sock, &[], &format!("read x < {gate}; exec {}", demo(&sock))).await;
    let ready = get(p.admin(), "/readyz").await;
    assert_eq!(ready.status, 503, "not ready before the app listens: {}", ready.text());

    // A request that arrives now waits for the app instead of failing.
    let mut early = Client::connect(p.addr).await;
    early.start_get("/").await;
    open(&gate).await;
    let res = early.response().await;
    assert_eq!(res.status, 200, "{}", res.text());
    p.log.wait_for("app ready").await;
    assert_eq!(get(p.admin(), "/readyz").await.status, 200);
    p.sigterm();
    p.exit().await;
}

#[tokio::test]
async fn not_ready_within_upstream_wait_gets_503() {
    let dir = Scratch::new("notready");
    let (sock, gate) = (dir.path("app.sock"), dir.gate());
    let mut p = start(&sock, &["--upstream-wait", "200ms"], &format!("read x < {gate}; exec {}", demo(&sock))).await;
    let res = get(p.addr, "/").await;
    assert_eq!(res.status, 503);
    open(&gate).await;
    p.log.wait_for("app ready").await;
    assert_eq!(get(p.addr, "/").await.status, 200);
    p.sigterm();
    p.exit().await;
}

#[tokio::test]
async fn ready_path_must_answer_2xx() {
    let dir = Scratch::new("readypath");
    let sock = dir.path("app.sock");
    // /status/500 never turns 2xx: the app accepts but is never ready.
    let mut p = start(&sock, &["--upstream-ready-path", "/status/500"], &format!("exec {}", demo(&sock))).await;
    let mut c = Client::connect(p.admin()).await;
    // Wait until the app's socket exists...
    tokio::time::timeout(SOON, async {
        while !Path::new(&sock).exists() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    // ...then, while the app accepts and is polled (every 50 ms) with 500s, it never turns ready.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_millis(300) {
        assert_eq!(c.get("/readyz").await.status, 503);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!p.log.all().contains("app ready"), "{}", p.log.all());
    p.sigterm();
    p.exit().await;

    let sock2 = dir.path("app2.sock");
    let mut p = start(&sock2, &["--upstream-ready-path", "/status/204"], &format!("exec {}", demo(&sock2))).await;
    p.log.wait_for("app ready").await;
    assert_eq!(get(p.admin(), "/readyz").await.status, 200);
    p.sigterm();
    p.exit().await;
}

#[tokio::test]
async fn app_is_signalled_only_after_the_drain_and_its_status_is_ours() {
    let dir = Scratch::new("order");
    let (sock, events) = (dir.path("app.sock"), dir.path("events"));
    // The wrapper records when the app gets its stop signal, then exits 5.
    let script = format!(
        "{} & app=$!; trap 'echo got-term >> {events}; kill $app; wait $app; exit 5' TERM; wait $app",
        demo(&sock)
    );
    let mut p = start(&sock, &[], &script).await;
    p.log.wait_for("app ready").await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/stream?chunks=3&ms=300").await;
    let mut res = c.head().await;
    assert_eq!(res.status, 200);
    p.sigterm();
    p.log.wait_for("drain started").await;
    assert!(!Path::new(&events).exists(), "the app was signalled while a response was still streaming");

    c.body(&mut res).await;
    assert!(res.complete, "the in-flight response completes: {res:?}");
    let (status, _) = p.exit().await;
    assert_eq!(status.code(), Some(5), "drainproxy exits with the app's status");
    assert_eq!(std::fs::read_to_string(&events).unwrap(), "got-term\n");
    let log = p.log.all();
    let (drained, stopping) = (log.find("drain complete").unwrap(), log.find("stopping the app").unwrap());
    assert!(drained < stopping, "{log}");
}

#[tokio::test]
async fn app_crash_drains_and_exits_with_its_code() {
    let dir = Scratch::new("crash");
    let (sock, gate) = (dir.path("app.sock"), dir.gate());
    let script = format!("{} & app=$!; read x < {gate}; kill -9 $app; exit 3", demo(&sock));
    let mut p = start(&sock, &[], &script).await;
    p.log.wait_for("app ready").await;
    assert_eq!(get(p.addr, "/").await.status, 200);
    open(&gate).await;
    let (status, _) = p.exit().await;
    assert_eq!(status.code(), Some(3));
    assert!(refused(p.addr).await);
    assert!(p.log.all().contains("the app exited by itself"));
}

#[tokio::test]
async fn app_ignoring_its_stop_signal_is_killed_after_app_grace() {
    let dir = Scratch::new("stubborn");
    let sock = dir.path("app.sock");
    // The wrapper (and `sleep`, which inherits the ignored disposition) ignore
    // SIGTERM; the demo upstream itself exits on it.
    let script = format!("trap '' TERM; {} & while :; do sleep 1; done", demo(&sock));
    let mut p = start(&sock, &["--app-grace", "1s"], &script).await;
    p.log.wait_for("app ready").await;
    p.sigterm();
    let (status, took) = p.exit().await;
    assert_eq!(status.code(), Some(128 + 9), "killed by SIGKILL");
    assert!(took >= Duration::from_millis(900), "SIGKILL before the app grace: {took:?}");
    assert!(p.log.all().contains("sending SIGKILL"));
}

#[tokio::test]
async fn sighup_and_usr1_reach_the_app() {
    let dir = Scratch::new("forward");
    let (sock, events) = (dir.path("app.sock"), dir.path("events"));
    let script = format!(
        "{} & app=$!; trap 'echo hup >> {events}' HUP; trap 'echo usr1 >> {events}' USR1; \
         while kill -0 $app 2>/dev/null; do wait $app; done",
        demo(&sock)
    );
    let mut p = start(&sock, &[], &script).await;
    p.log.wait_for("app ready").await;
    for (sig, line) in [(nix::sys::signal::Signal::SIGHUP, "hup\n"), (nix::sys::signal::Signal::SIGUSR1, "hup\nusr1\n")]
    {
        p.signal(sig);
        tokio::time::timeout(SOON, async {
            while std::fs::read_to_string(&events).unwrap_or_default() != line {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{sig} did not reach the app"));
    }
    assert!(p.running(), "forwarded signals do not stop drainproxy");
    p.sigterm();
    p.exit().await;
}

#[tokio::test]
async fn missing_or_non_executable_app_exits_like_a_shell() {
    let dir = Scratch::new("badcmd");
    let not_exec = dir.path("not-exec");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    for (cmd, code, says) in [("/no/such/app", 127, "command not found"), (not_exec.as_str(), 126, "permission denied")]
    {
        let out = tokio::process::Command::new(bin("drainproxy"))
            .args(["--listen", "127.0.0.1:0", "--admin", "off", "--upstream", ":1", "--", cmd, "--its-own-flag"])
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(SOON, out).await.expect("exits").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(cmd) && stderr.contains(says), "{stderr}");
    }
}

#[tokio::test]
async fn orphans_are_reaped_when_drainproxy_is_pid_1() {
    if !std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: cannot create a PID namespace here (unshare --pid needs root or user namespaces)");
        return;
    }
    let dir = Scratch::new("reap");
    let (sock, orphan_pid, gate) = (dir.path("app.sock"), dir.path("orphan"), dir.gate());
    // The subshell exits at once, so the inner `sh` is orphaned and handed to
    // PID 1 (drainproxy). It records its pid (as the namespace sees it) and
    // exits when the gate opens; then only PID 1 can reap it.
    let script = format!("(sh -c 'echo $$ > {orphan_pid}; read x < {gate}' &) ; exec {}", demo(&sock));
    let mut child = tokio::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", bin("drainproxy")])
        .args(["--listen", "127.0.0.1:0", "--admin", "off", "--upstream", &upstream_flag(&sock), "--", "sh", "-c"])
        .arg(&script)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = Lines::spawn(child.stderr.take().unwrap());
    log.wait_for("app ready").await;
    let init = namespace_init(&child);
    // Find the orphan among PID 1's children, by its namespace pid.
    let orphan = tokio::time::timeout(SOON, async {
        loop {
            let ns_pid = std::fs::read_to_string(&orphan_pid).unwrap_or_default().trim().to_string();
            if let Some(host) = children(&init).into_iter().find(|c| ns_pid_of(c).is_some_and(|p| p == ns_pid)) {
                return host;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the orphan was re-parented to drainproxy");
    open(&gate).await;
    let reaped = tokio::time::timeout(SOON, async {
        while Path::new(&format!("/proc/{orphan}")).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let state = std::fs::read_to_string(format!("/proc/{orphan}/status")).unwrap_or_default();
    let _ =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.parse().unwrap()), nix::sys::signal::Signal::SIGTERM);
    let _ = tokio::time::timeout(SOON, child.wait()).await;
    assert!(reaped.is_ok(), "the orphan was not reaped: {state}\nlog:\n{}", log.all());
}

fn children(pid: &str) -> Vec<String> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace().map(str::to_string).collect()
}

/// The pid a process has inside its PID namespace (the last `NSpid` field).
fn ns_pid_of(host_pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last()).map(str::to_string)
}

/// The host pid of the namespace's PID 1 (unshare's only child).
fn namespace_init(unshare: &tokio::process::Child) -> String {
    children(&unshare.id().unwrap().to_string()).into_iter().next().expect("unshare forked drainproxy")
}
