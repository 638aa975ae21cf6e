//! Operations: the `drain` and `health` subcommands, Prometheus metrics, JSON logs, start-up warnings.

mod support;

use std::{collections::HashMap, process::Stdio};

use support::{bin, get, Client, Proxy, Upstream, SOON};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

fn drain_cmd(admin: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("drainproxy"));
    cmd.args(["drain", "--admin", admin]).args(extra).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn drain_wait_returns_only_after_the_in_flight_request_finished() {
    let mut up = Upstream::start().await;
    let mut p = Proxy::start(&up.addr, &["--grace", "60s"]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/prestop").await;
    up.wait_held("prestop").await;

    let mut waiter = drain_cmd(&p.admin().to_string(), &["--wait"]).spawn().unwrap();
    p.log.wait_for("drain started").await;
    // Still draining: the preStop hook must still be blocked.
    assert_eq!(get(p.admin(), "/readyz").await.status, 503);
    assert!(waiter.try_wait().unwrap().is_none(), "drain --wait returned with a request in flight");

    up.release("prestop").await;
    let res = c.response().await;
    assert_eq!(res.status, 200);
    let status = tokio::time::timeout(SOON, waiter.wait()).await.expect("drain --wait returns").unwrap();
    assert!(status.success());
    // The native-sidecar pattern: by the time SIGTERM would come, nothing is left.
    let (status, _) = p.exit().await;
    assert!(status.success());
}

#[tokio::test]
async fn drain_without_a_running_proxy_fails_clearly() {
    // Bound but never listening: connects are refused, and no one else can take the port.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    for sub in [vec!["drain", "--admin", &addr, "--wait"], vec!["health", "--admin", &addr]] {
        let out = Command::new(bin("drainproxy")).args(&sub).output();
        let out = tokio::time::timeout(SOON, out).await.expect("exits").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sub:?}: {stderr}");
        assert!(stderr.contains("no drainproxy answered") && stderr.contains(&addr), "{stderr}");
    }
}

#[tokio::test]
async fn drain_wait_times_out_with_a_clear_error() {
    let mut up = Upstream::start().await;
    let p = Proxy::start(&up.addr, &["--grace", "60s"]).await;
    let mut c = Client::connect(p.addr).await;
    c.start_get("/hold/stuck").await;
    up.wait_held("stuck").await;
    let out = drain_cmd(&p.admin().to_string(), &["--wait", "--timeout", "300ms"]).output();
    let out = tokio::time::timeout(SOON, out).await.expect("exits").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timed out") && stderr.contains("1 connections left"), "{stderr}");
}

#[tokio::test]
async fn health_subcommand_reports_a_live_proxy() {
    let up = Upstream::start().await;
    let p = Proxy::start(&up.addr, &[]).await;
    let status = Command::new(bin("drainproxy")).args(["health", "--admin", &p.admin().to_string()]).status();
    assert!(tokio::time::timeout(SOON, status).await.unwrap().unwrap().success());
}

/// Parses the Prometheus text format strictly enough to catch a broken
/// exposition: every sample line is `name{labels} value`, every sample
/// belongs to a declared family.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut families = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            families.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{line}");
        assert!(name.starts_with("drainproxy_"), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
        assert!(families.iter().any(|f| name.starts_with(f.as_str())), "sample without a TYPE: {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn metrics(p: &Proxy) -> HashMap<String, f64> {
    let res = get(p.admin(), "/metrics").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").unwrap().starts_with("text/plain"));
    parse_metrics(&res.text())
}

#[tokio::test]
async fn metrics_parse_and_move_with_requests_and_the_drain() {
    let mut up = Upstream::start().await;
    let mut p = Proxy::start(&up.addr, &["--grace", "1s", "--idle-grace", "0"]).await;
    let m0 = metrics(&p).await;
    for name in [
        "drainproxy_open_connections{state=\"active\"}",
        "drainproxy_open_connections{state=\"idle\"}",
        "drainproxy_open_connections{state=\"upgraded\"}",
        "drainproxy_in_flight_requests",
        "drainproxy_requests_total{class=\"2xx\"}",
        "drainproxy_request_duration_seconds_count",
        "drainproxy_drain_phase",
        "drainproxy_drain_duration_seconds",
        "drainproxy_connections_cut_total",
        "drainproxy_tls_handshake_failures_total",
    ] {
        assert!(m0.contains_key(name), "missing {name}: {m0:?}");
    }
    assert_eq!(m0["drainproxy_drain_phase"], 0.0);

    let mut idle = Client::connect(p.addr).await;
    assert_eq!(idle.get("/").await.status, 200);
    assert_eq!(get(p.addr, "/status/404").await.status, 404);
    let mut held = Client::connect(p.addr).await;
    held.start_get("/hold/metrics").await;
    up.wait_held("metrics").await;
    let m1 = metrics(&p).await;
    assert_eq!(m1["drainproxy_requests_total{class=\"2xx\"}"], 1.0);
    assert_eq!(m1["drainproxy_requests_total{class=\"4xx\"}"], 1.0);
    assert_eq!(m1["drainproxy_in_flight_requests"], 1.0);
    assert_eq!(m1["drainproxy_open_connections{state=\"active\"}"], 1.0);
    assert_eq!(m1["drainproxy_open_connections{state=\"idle\"}"], 1.0);
    assert!(m1["drainproxy_request_duration_seconds_count"] >= 2.0);

    p.sigterm();
    p.log.wait_for("listener closed").await;
    let m2 = metrics(&p).await;
    assert_eq!(m2["drainproxy_drain_phase"], 2.0);
    assert!(m2["drainproxy_drain_duration_seconds"] > 0.0);
    // The held request is cut at the 1s deadline: 503, counted as cut.
    let res = held.response().await;
    assert_eq!(res.status, 503);
    p.exit().await;
    assert!(p.log.all().contains("cut=1"), "{}", p.log.all());
}

#[tokio::test]
async fn json_logs_parse_line_by_line() {
    let up = Upstream::start().await;
    let mut child = Command::new(bin("drainproxy"))
        .args(["--listen", "127.0.0.1:0", "--admin", "off", "--log-format", "json", "--upstream", &up.addr])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(SOON, lines.next_line()).await.unwrap().unwrap().expect("a listening line");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if event["message"] == "listening" {
            break event["addr"].as_str().unwrap().to_string();
        }
    };
    assert_eq!(get(addr.parse().unwrap(), "/").await.status, 200);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    while let Ok(Some(line)) = tokio::time::timeout(SOON, lines.next_line()).await.unwrap() {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event["timestamp"].is_string() && event["level"].is_string(), "{line}");
        seen.push(event);
    }
    assert!(tokio::time::timeout(SOON, child.wait()).await.unwrap().unwrap().success());
    let summary = seen.iter().find(|e| e["message"] == "drain complete").expect("a drain summary event");
    assert_eq!(summary["cut"], 0);
    assert!(summary["duration_ms"].is_u64() && summary["connections"].is_u64(), "{summary}");
    assert!(seen.iter().any(|e| e["message"] == "drain started" && e["source"] == "signal"));
}

#[tokio::test]
async fn warns_when_the_drain_cannot_fit_the_termination_grace_period() {
    let up = Upstream::start().await;
    let mut p =
        Proxy::start(&up.addr, &["--grace", "20s", "--drain-delay", "5s", "--termination-grace-period", "25s"]).await;
    let warning = p.log.wait_for("exceeds the termination grace period").await;
    assert!(warning.contains("WARN") && warning.contains("27s"), "{warning}");
    let mut ok =
        Proxy::start(&up.addr, &["--grace", "20s", "--drain-delay", "5s", "--termination-grace-period", "27s"]).await;
    ok.sigterm();
    ok.exit().await;
    assert!(!ok.log.all().contains("exceeds the termination grace period"), "{}", ok.log.all());
}
