//! The three config sources and their priority, every config error (exit 2), bind errors (exit 1), address and duration forms, `--help`.
mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use support::{field, Client, Proxy, Upstream, SOON};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A temp file (or path) unique to this process and test, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(test: &str, ext: &str) -> Self {
        let path = std::env::temp_dir().join(format!("drainproxy-config-{}-{test}.{ext}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }

    fn toml(test: &str, text: &str) -> Self {
        let file = Self::new(test, "toml");
        std::fs::write(&file.0, text).expect("write temp config");
        file
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The binary with a hermetic environment: no inherited `DRAINPROXY_*`, logs at info.
fn drainproxy(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(support::bin("drainproxy"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DRAINPROXY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).envs(env.iter().copied()).env("RUST_LOG", "info").stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs a drainproxy that is expected to exit at once. A bug that lets it
/// start instead fails the test after `SOON` (the child is killed on drop).
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(SOON, drainproxy(args, env).output())
        .await
        .unwrap_or_else(|_| panic!("drainproxy {args:?} env {env:?} did not exit"))
        .expect("run drainproxy");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout, stderr)
}

/// Asserts a config error: exit 2, nothing on stdout, and the problem on the
/// first stderr line (`error: ...`), alone on its line (clap follows it with
/// a blank line and a usage hint), which names every one of `needles`.
#[track_caller]
fn assert_config_error((code, stdout, stderr): &(Option<i32>, String, String), needles: &[&str]) {
    assert_eq!(*code, Some(2), "exit code; stderr:\n{stderr}");
    assert!(stdout.is_empty(), "stdout should be empty, got:\n{stdout}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    let mut lines = stderr.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("error: "), "first stderr line is not `error: ...`:\n{stderr}");
    for needle in needles {
        assert!(first.contains(needle), "the error line does not name {needle:?}:\n{stderr}");
    }
    assert_eq!(lines.next().map(str::trim), Some(""), "the error message spans more than one line:\n{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "more than one error:\n{stderr}");
}

/// A drainproxy that reached its `listening` line, killed on drop.
struct Running {
    _child: Child,
    listen: SocketAddr,
    upstream: String,
    admin: Option<SocketAddr>,
}

/// How a launch ended: it listens, or it exited (code, stderr).
type Launch = Result<Running, (Option<i32>, String)>;

/// Starts drainproxy without adding any flag (unlike `Proxy::start_with`), so
/// env and file values can win; waits for the `listening` line or the exit.
async fn launch(args: &[&str], env: &[(&str, &str)]) -> Launch {
    let mut child =
        drainproxy(args, env).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start drainproxy");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut admin = None;
    let found = tokio::time::timeout(SOON, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line.contains("admin listening") {
                admin = Some(field(&line, "addr").parse().unwrap());
            } else if line.contains("listening") {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => Ok(Running {
            _child: child,
            listen: field(&line, "addr").parse().unwrap(),
            upstream: field(&line, "upstream"),
            admin,
        }),
        Ok(None) => {
            let status = tokio::time::timeout(SOON, child.wait()).await.expect("exit after closing stderr").unwrap();
            Err((status.code(), seen.join("\n")))
        }
        Err(_) => panic!("drainproxy {args:?} neither listened nor exited; stderr:\n{}", seen.join("\n")),
    }
}

async fn listening(args: &[&str], env: &[(&str, &str)]) -> Running {
    launch(args, env)
        .await
        .unwrap_or_else(|(code, stderr)| panic!("drainproxy exited ({code:?}) instead of listening:\n{stderr}"))
}

fn ip(addr: SocketAddr) -> String {
    addr.ip().to_string()
}

/// Reads `time_left_ms` (drain-delay + grace − elapsed) from the first
/// `draining` progress line, which is logged one second into the drain.
async fn time_left_after_sigterm(proxy: &mut Proxy) -> Duration {
    proxy.sigterm();
    let line = proxy.log.wait_for("time_left_ms=").await;
    Duration::from_millis(field(&line, "time_left_ms").parse().unwrap())
}

/// `left` is what a drain with `total` = drain-delay + grace reports about one
/// second in (`SOON` of slack for a loaded box).
#[track_caller]
fn assert_total(left: Duration, total: Duration) {
    assert!(left <= total && left + SOON >= total, "time left {left:?} does not fit drain-delay + grace = {total:?}");
}

/// Extra flags and env for one run.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// 1. Sources and priority: flag > env > file > default
// ---------------------------------------------------------------------------

#[tokio::test]
async fn file_given_with_config_sets_listen_upstream_and_admin() {
    let file = TempPath::toml(
        "file_only",
        "listen = \"127.0.0.3:0\"\nupstream = \"127.0.0.3:1003\"\nadmin = \"127.0.0.3:0\"\n",
    );
    let p = listening(&["--config", file.arg()], &[]).await;
    assert_eq!(ip(p.listen), "127.0.0.3");
    assert_eq!(p.upstream, "127.0.0.3:1003");
    assert_eq!(ip(p.admin.expect("admin listening line")), "127.0.0.3");
}

#[tokio::test]
async fn drainproxy_config_env_names_the_file() {
    let file = TempPath::toml(
        "config_env",
        "listen = \"127.0.0.3:0\"\nupstream = \"127.0.0.3:1003\"\nadmin = \"127.0.0.3:0\"\n",
    );
    let p = listening(&[], &[("DRAINPROXY_CONFIG", file.arg())]).await;
    assert_eq!(ip(p.listen), "127.0.0.3");
    assert_eq!(p.upstream, "127.0.0.3:1003");
    assert_eq!(ip(p.admin.expect("admin listening line")), "127.0.0.3");
}

#[tokio::test]
async fn config_flag_beats_drainproxy_config_env() {
    let by_env = TempPath::toml("config_flag_env", "listen = \"127.0.0.2:0\"\nupstream = \":1002\"\nadmin = \"off\"\n");
    let by_flag =
        TempPath::toml("config_flag_flag", "listen = \"127.0.0.3:0\"\nupstream = \":1003\"\nadmin = \"off\"\n");
    let p = listening(&["--config", by_flag.arg()], &[("DRAINPROXY_CONFIG", by_env.arg())]).await;
    assert_eq!(ip(p.listen), "127.0.0.3");
    assert_eq!(p.upstream, "127.0.0.1:1003");
}

#[tokio::test]
async fn env_sets_listen_upstream_and_admin() {
    let p = listening(
        &[],
        &[
            ("DRAINPROXY_LISTEN", "127.0.0.2:0"),
            ("DRAINPROXY_UPSTREAM", "127.0.0.2:1002"),
            ("DRAINPROXY_ADMIN", "127.0.0.2:0"),
        ],
    )
    .await;
    assert_eq!(ip(p.listen), "127.0.0.2");
    assert_eq!(p.upstream, "127.0.0.2:1002");
    assert_eq!(ip(p.admin.expect("admin listening line")), "127.0.0.2");
}

#[tokio::test]
async fn env_beats_file() {
    let file = TempPath::toml(
        "env_beats_file",
        "listen = \"127.0.0.3:0\"\nupstream = \"127.0.0.3:1003\"\nadmin = \"127.0.0.3:0\"\n",
    );
    let p = listening(
        &["--config", file.arg()],
        &[
            ("DRAINPROXY_LISTEN", "127.0.0.2:0"),
            ("DRAINPROXY_UPSTREAM", "127.0.0.2:1002"),
            ("DRAINPROXY_ADMIN", "127.0.0.2:0"),
        ],
    )
    .await;
    assert_eq!(ip(p.listen), "127.0.0.2");
    assert_eq!(p.upstream, "127.0.0.2:1002");
    assert_eq!(ip(p.admin.expect("admin listening line")), "127.0.0.2");
}

#[tokio::test]
async fn flag_beats_env_and_file() {
    let file = TempPath::toml(
        "flag_beats_all",
        "listen = \"127.0.0.3:0\"\nupstream = \"127.0.0.3:1003\"\nadmin = \"127.0.0.3:0\"\n",
    );
    let p = listening(
        &["--config", file.arg(), "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1001", "--admin", "127.0.0.1:0"],
        &[
            ("DRAINPROXY_LISTEN", "127.0.0.2:0"),
            ("DRAINPROXY_UPSTREAM", "127.0.0.2:1002"),
            ("DRAINPROXY_ADMIN", "127.0.0.2:0"),
        ],
    )
    .await;
    assert_eq!(ip(p.listen), "127.0.0.1");
    assert_eq!(p.upstream, "127.0.0.1:1001");
    assert_eq!(ip(p.admin.expect("admin listening line")), "127.0.0.1");
}

/// Priority is per setting, not per source: each one comes from the highest source that has it.
#[tokio::test]
async fn each_setting_comes_from_its_own_highest_source() {
    let file = TempPath::toml(
        "per_setting",
        "listen = \"127.0.0.3:0\"\nupstream = \"127.0.0.3:1003\"\nadmin = \"127.0.0.3:0\"\n",
    );
    // listen: flag; upstream: env; admin: file.
    let p = listening(
        &["--config", file.arg(), "--listen", "127.0.0.1:0"],
        &[("DRAINPROXY_LISTEN", "127.0.0.2:0"), ("DRAINPROXY_UPSTREAM", "127.0.0.2:1002")],
    )
    .await;
    assert_eq!(ip(p.listen), "127.0.0.1");
    assert_eq!(p.upstream, "127.0.0.2:1002");
    assert_eq!(ip(p.admin.expect("admin listening line")), "127.0.0.3");

    // listen: file; upstream: flag; admin: env.
    let p =
        listening(&["--config", file.arg(), "--upstream", "127.0.0.1:1001"], &[("DRAINPROXY_ADMIN", "127.0.0.2:0")])
            .await;
    assert_eq!(ip(p.listen), "127.0.0.3");
    assert_eq!(p.upstream, "127.0.0.1:1001");
    assert_eq!(ip(p.admin.expect("admin listening line")), "127.0.0.2");
}

#[tokio::test]
async fn admin_off_from_each_source_disables_the_admin_listener() {
    let file = TempPath::toml("admin_off", "admin = \"off\"\n");
    let cases: [Case; 4] = [
        (&["--admin", "off"], &[]),
        (&["--admin", "off"], &[("DRAINPROXY_ADMIN", "127.0.0.2:0")]),
        (&[], &[("DRAINPROXY_ADMIN", "off")]),
        (&["--config", file.arg()], &[]),
    ];
    for (extra, env) in cases {
        let mut args = vec!["--listen", "127.0.0.1:0", "--upstream", ":1"];
        args.extend_from_slice(extra);
        let p = listening(&args, env).await;
        // The admin line is logged before the `listening` line, so its absence is final here.
        assert_eq!(p.admin, None, "admin listener with {extra:?} {env:?}");
        assert_eq!(ip(p.listen), "127.0.0.1");
    }
    // And a lower source's `off` loses to a higher source's address.
    let p = listening(
        &["--listen", "127.0.0.1:0", "--upstream", ":1", "--config", file.arg()],
        &[("DRAINPROXY_ADMIN", "127.0.0.2:0")],
    )
    .await;
    assert_eq!(ip(p.admin.expect("env admin beats the file's off")), "127.0.0.2");
}

/// Durations follow the same rule. drain-delay + grace is visible in the
/// first `draining` progress line (`time_left_ms`), one second into a drain.
#[tokio::test]
async fn grace_and_drain_delay_follow_priority() {
    // drain_delay only in the file (1h): the file is read for durations.
    // grace: file 3h, env 2h → env wins. Total 1h + 2h.
    let file = TempPath::toml("durations_env", "drain_delay = \"1h\"\ngrace = \"3h\"\n");
    let mut p = Proxy::start_with(":1", &["--config", file.arg()], &[("DRAINPROXY_GRACE", "2h")]).await;
    assert_total(time_left_after_sigterm(&mut p).await, 3 * HOUR);

    // grace: flag 30m beats env 2h and file 3h; drain_delay: env 2h beats
    // file 1h. Total 2h + 30m.
    let mut p = Proxy::start_with(
        ":1",
        &["--config", file.arg(), "--grace", "30m"],
        &[("DRAINPROXY_GRACE", "2h"), ("DRAINPROXY_DRAIN_DELAY", "2h")],
    )
    .await;
    assert_total(time_left_after_sigterm(&mut p).await, 2 * HOUR + HOUR / 2);

    // drain_delay: flag 1m30s beats env 2h and file 1h. Total 1m30s + 5s.
    let mut p = Proxy::start_with(
        ":1",
        &["--config", file.arg(), "--drain-delay", "1m30s", "--grace", "5s"],
        &[("DRAINPROXY_DRAIN_DELAY", "2h")],
    )
    .await;
    assert_total(time_left_after_sigterm(&mut p).await, Duration::from_secs(95));
}

#[tokio::test]
async fn grace_defaults_to_5s_and_drain_delay_to_0() {
    // With drain_delay 0 and no connection the proxy exits at once; to see the
    // default grace, give a drain delay from the file and nothing for grace.
    let file = TempPath::toml("durations_default", "drain_delay = \"1h\"\n");
    let mut p = Proxy::start(":1", &["--config", file.arg()]).await;
    assert_total(time_left_after_sigterm(&mut p).await, HOUR + Duration::from_secs(5));

    // Default drain_delay 0: with no connection the proxy exits promptly.
    let mut p = Proxy::start(":1", &["--grace", "1h"]).await;
    p.sigterm();
    let (status, took) = p.exit().await;
    assert!(status.success(), "{status}");
    assert!(took < SOON, "exit took {took:?}: drain_delay should default to 0");
}

/// An idle keep-alive connection is closed `idle_grace` into a drain; a
/// winning `0` closes it at once, a losing `1h` would keep it (grace is 1h).
#[tokio::test]
async fn idle_grace_follows_priority() {
    let upstream = Upstream::start().await;
    let file = TempPath::toml("idle_grace", "idle_grace = \"1h\"\n");
    let cases: [Case; 2] = [
        // env 0 beats file 1h
        (&["--grace", "1h", "--config", file.arg()], &[("DRAINPROXY_IDLE_GRACE", "0")]),
        // flag 0s beats env 1h and file 1h
        (&["--grace", "1h", "--config", file.arg(), "--idle-grace", "0s"], &[("DRAINPROXY_IDLE_GRACE", "1h")]),
    ];
    for (args, env) in cases {
        let mut p = Proxy::start_with(&upstream.addr, args, env).await;
        let mut client = Client::connect(p.addr).await;
        assert_eq!(client.get("/").await.status, 200);
        p.sigterm();
        let end = client.end().await;
        assert!(matches!(end, support::End::Eof | support::End::Reset), "{end:?} with {args:?} {env:?}");
        let (status, _) = p.exit().await;
        assert!(status.success(), "{status}");
    }
}

// ---------------------------------------------------------------------------
// 2. Config errors: exit 2, one line naming the problem
// ---------------------------------------------------------------------------

/// Valid settings that bind nothing fixed, so each error test varies one thing.
const OK: [&str; 6] = ["--listen", "127.0.0.1:0", "--upstream", ":1", "--admin", "off"];

fn with_ok<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = OK.to_vec();
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn unknown_flag() {
    assert_config_error(&run_to_exit(&with_ok(&["--bogus"]), &[]).await, &["--bogus"]);
}

#[tokio::test]
async fn bad_duration_flag() {
    for flag in ["--grace", "--drain-delay", "--idle-grace"] {
        assert_config_error(&run_to_exit(&with_ok(&[flag, "soon"]), &[]).await, &[flag, "soon"]);
    }
    // A bare number has no unit.
    assert_config_error(&run_to_exit(&with_ok(&["--grace", "5"]), &[]).await, &["--grace", "5"]);
}

#[tokio::test]
async fn bad_listen_address() {
    for bad in ["8080", "localhost:80", "127.0.0.1", "127.0.0.1:99999", "[::1]"] {
        let args = ["--listen", bad, "--upstream", ":1", "--admin", "off"];
        assert_config_error(&run_to_exit(&args, &[]).await, &["--listen", bad]);
    }
}

#[tokio::test]
async fn bad_admin_address() {
    let args = ["--listen", "127.0.0.1:0", "--upstream", ":1", "--admin", "nope"];
    assert_config_error(&run_to_exit(&args, &[]).await, &["--admin", "nope"]);
}

#[tokio::test]
async fn bad_upstream() {
    for bad in ["https://x:1", "nohost", "host:notaport", "unix:", ":0"] {
        let args = ["--listen", "127.0.0.1:0", "--admin", "off", "--upstream", bad];
        assert_config_error(&run_to_exit(&args, &[]).await, &["--upstream", bad]);
    }
    // The scheme is named when it is the problem.
    let args = ["--listen", "127.0.0.1:0", "--admin", "off", "--upstream", "https://x:1"];
    assert_config_error(&run_to_exit(&args, &[]).await, &["https"]);
}

#[tokio::test]
async fn missing_upstream() {
    let out = run_to_exit(&["--listen", "127.0.0.1:0", "--admin", "off"], &[]).await;
    assert_config_error(&out, &["upstream"]);
    // Also when a file is given that does not set it.
    let file = TempPath::toml("missing_upstream", "grace = \"1s\"\n");
    let out = run_to_exit(&["--listen", "127.0.0.1:0", "--admin", "off", "--config", file.arg()], &[]).await;
    assert_config_error(&out, &["upstream"]);
}

#[tokio::test]
async fn unknown_toml_key_names_file_and_line() {
    let file = TempPath::toml("unknown_key", "upstream = \":1\"\n\nlisten_port = 8080\n");
    let out = run_to_exit(&["--config", file.arg(), "--listen", "127.0.0.1:0", "--admin", "off"], &[]).await;
    assert_config_error(&out, &[file.arg(), "line 3", "listen_port"]);
    // The flag spelling is not a TOML key.
    let file = TempPath::toml("dashed_key", "upstream = \":1\"\ndrain-delay = \"1s\"\n");
    let out = run_to_exit(&["--config", file.arg(), "--listen", "127.0.0.1:0", "--admin", "off"], &[]).await;
    assert_config_error(&out, &[file.arg(), "line 2", "drain-delay"]);
}

#[tokio::test]
async fn toml_syntax_error_names_file_and_line() {
    let file = TempPath::toml("syntax", "upstream = \":1\"\nadmin = \"off\"\nlisten = \"127.0.0.1:0\n");
    assert_config_error(&run_to_exit(&["--config", file.arg()], &[]).await, &[file.arg(), "line 3"]);
    let file = TempPath::toml("duplicate", "upstream = \":1\"\nupstream = \":2\"\n");
    assert_config_error(&run_to_exit(&["--config", file.arg()], &[]).await, &[file.arg(), "line 2", "upstream"]);
}

#[tokio::test]
async fn toml_syntax_error_is_one_line() {
    let file = TempPath::toml("syntax_table", "upstream = \":1\"\n[tls\n");
    assert_config_error(&run_to_exit(&["--config", file.arg(), "--admin", "off"], &[]).await, &[file.arg(), "line 2"]);
}

#[tokio::test]
async fn bad_toml_value_names_file_and_line() {
    let cases = [
        ("grace = \"soon\"", "soon"),
        ("idle_grace = 5", "integer"),
        ("listen = \"8080\"", "8080"),
        ("upstream = \"https://x:1\"", "https"),
        ("admin = \"nope\"", "nope"),
        ("max_header_bytes = \"lots\"", "string"),
    ];
    for (i, (line, needle)) in cases.iter().enumerate() {
        // The bad line is the fourth, after valid ones.
        let text = format!("# drainproxy\n\nupstream = \":1\"\n{line}\n");
        let text =
            if line.starts_with("upstream") { format!("# drainproxy\n\nadmin = \"off\"\n{line}\n") } else { text };
        let file = TempPath::toml(&format!("bad_value_{i}"), &text);
        let out = run_to_exit(&["--config", file.arg(), "--listen", "127.0.0.1:0", "--admin", "off"], &[]).await;
        assert_config_error(&out, &[file.arg(), "line 4", needle]);
    }
}

#[tokio::test]
async fn missing_config_file_is_named() {
    let missing = TempPath::new("missing_file", "toml");
    let out = run_to_exit(&with_ok(&["--config", missing.arg()]), &[]).await;
    assert_config_error(&out, &[missing.arg()]);
    // Same through DRAINPROXY_CONFIG.
    let out = run_to_exit(&OK, &[("DRAINPROXY_CONFIG", missing.arg())]).await;
    assert_config_error(&out, &[missing.arg()]);
}

#[tokio::test]
async fn unreadable_config_file_is_named() {
    // Tests may run as root, which reads a mode-000 file; a directory is unreadable for everyone.
    let dir = std::env::temp_dir().join(format!("drainproxy-config-{}-unreadable.d", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_to_exit(&with_ok(&["--config", dir.to_str().unwrap()]), &[]).await;
    let _ = std::fs::remove_dir(&dir);
    assert_config_error(&out, &[dir.to_str().unwrap()]);

    // Not UTF-8.
    let file = TempPath::new("not_utf8", "toml");
    std::fs::write(file.path(), b"upstream = \"\xff\xfe\"\n").unwrap();
    assert_config_error(&run_to_exit(&with_ok(&["--config", file.arg()]), &[]).await, &[file.arg()]);
}

#[tokio::test]
async fn bad_env_values() {
    let cases = [
        ("DRAINPROXY_GRACE", "xyz", "grace"),
        ("DRAINPROXY_DRAIN_DELAY", "xyz", "drain-delay"),
        ("DRAINPROXY_IDLE_GRACE", "xyz", "idle-grace"),
        ("DRAINPROXY_LISTEN", "xyz", "listen"),
        ("DRAINPROXY_UPSTREAM", "xyz", "upstream"),
        ("DRAINPROXY_ADMIN", "xyz", "admin"),
    ];
    for (key, value, setting) in cases {
        // Only the env value is given for that setting; the others are valid flags.
        let args: Vec<&str> = OK.chunks(2).filter(|kv| kv[0] != format!("--{setting}")).flatten().copied().collect();
        let out = run_to_exit(&args, &[(key, value)]).await;
        assert_config_error(&out, &[setting, value]);
    }
}

// ---------------------------------------------------------------------------
// 3. Bind failures: exit 1, naming the address
// ---------------------------------------------------------------------------

#[tokio::test]
async fn listen_address_in_use_exits_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = run_to_exit(&["--listen", &addr, "--upstream", ":1", "--admin", "off"], &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot bind") && stderr.contains(&addr), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn admin_address_in_use_exits_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = run_to_exit(&["--listen", "127.0.0.1:0", "--upstream", ":1", "--admin", &addr], &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot bind admin") && stderr.contains(&addr), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(taken);
}

// ---------------------------------------------------------------------------
// 4. Address and duration forms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn listen_on_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let upstream = Upstream::start().await;
    // `Proxy::start` always passes `--listen 127.0.0.1:0`, hence `listening`.
    let p = listening(&["--listen", "[::1]:0", "--admin", "[::1]:0", "--upstream", &upstream.addr], &[]).await;
    assert!(p.listen.is_ipv6() && p.listen.ip().is_loopback(), "{}", p.listen);
    let admin = p.admin.expect("admin listening line");
    assert!(admin.is_ipv6() && admin.ip().is_loopback(), "{admin}");
    assert_eq!(support::get(p.listen, "/").await.status, 200);
}

#[tokio::test]
async fn listen_colon_port_means_all_interfaces() {
    let p = listening(&["--listen", ":0", "--upstream", ":1", "--admin", "off"], &[]).await;
    assert_eq!(ip(p.listen), "0.0.0.0");
    assert_ne!(p.listen.port(), 0);
}

#[tokio::test]
async fn every_tcp_upstream_form_is_accepted_and_proxies() {
    let upstream = Upstream::start().await;
    let port = upstream.socket_addr().port();
    let forms = [
        (format!("http://127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        (format!("http://127.0.0.1:{port}/"), format!("127.0.0.1:{port}")),
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        (format!(":{port}"), format!("127.0.0.1:{port}")),
        (format!("localhost:{port}"), format!("localhost:{port}")),
    ];
    for (form, shown) in forms {
        let p = Proxy::start(&form, &[]).await;
        let line = p.log.all();
        let line = line.lines().find(|l| l.contains(" listening") && !l.contains("admin")).unwrap();
        assert_eq!(field(line, "upstream"), shown, "{form}");
        let res = support::get(p.addr, "/").await;
        assert_eq!(res.status, 200, "through upstream {form}: {}", res.text());
    }
}

#[tokio::test]
async fn unix_upstream_is_accepted_and_proxies() {
    let sock = TempPath::new("unix_upstream", "sock");
    let _upstream = Upstream::start_unix(sock.path()).await;
    let form = format!("unix:{}", sock.arg());
    let p = Proxy::start(&form, &[]).await;
    assert!(p.log.all().contains(&format!("upstream={form}")), "{}", p.log.all());
    let res = support::get(p.addr, "/").await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn duration_forms_are_accepted_from_every_source() {
    for dur in ["5s", "500ms", "1m30s", "0", "0s"] {
        Proxy::start(":1", &["--grace", dur, "--drain-delay", dur, "--idle-grace", dur]).await;
        Proxy::start_with(
            ":1",
            &[],
            &[("DRAINPROXY_GRACE", dur), ("DRAINPROXY_DRAIN_DELAY", dur), ("DRAINPROXY_IDLE_GRACE", dur)],
        )
        .await;
        let file = TempPath::toml(
            &format!("durations_{dur}"),
            &format!("grace = \"{dur}\"\ndrain_delay = \"{dur}\"\nidle_grace = \"{dur}\"\n"),
        );
        Proxy::start(":1", &["--config", file.arg()]).await;
    }
}

#[tokio::test]
async fn example_config_file_starts() {
    // The shipped example, with the addresses moved to port 0 by higher sources.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/drainproxy.toml");
    let p = listening(
        &["--config", example, "--listen", "127.0.0.1:0", "--upstream", ":1"],
        &[("DRAINPROXY_ADMIN", "127.0.0.1:0")],
    )
    .await;
    assert_eq!(ip(p.listen), "127.0.0.1");
}

// ---------------------------------------------------------------------------
// 5. --help
// ---------------------------------------------------------------------------

#[tokio::test]
async fn help_lists_every_flag_and_exits_0() {
    let (code, stdout, stderr) = run_to_exit(&["--help"], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    for flag in ["--listen", "--upstream", "--grace", "--drain-delay", "--idle-grace", "--admin", "--config"] {
        assert!(stdout.contains(flag), "--help does not list {flag}:\n{stdout}");
    }
    for env in ["DRAINPROXY_LISTEN", "DRAINPROXY_UPSTREAM", "DRAINPROXY_GRACE", "DRAINPROXY_CONFIG"] {
        assert!(stdout.contains(env), "--help does not name {env}:\n{stdout}");
    }
    let (code, short, _) = run_to_exit(&["-h"], &[]).await;
    assert_eq!(code, Some(0));
    assert!(short.contains("--listen"), "{short}");
}
