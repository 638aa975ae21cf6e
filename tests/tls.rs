//! TLS termination, black-box: certificates made at test time, a real rustls client, the real binary and real signals.
//!
//! HTTPS must drain exactly as plaintext does (tests/drain.rs), so the same
//! rule holds: every test runs with a long `--grace` unless it tests a
//! timeout, and "exits right after the work is done" is told apart from
//! "waited out the grace".

mod support;

use std::{
    io::ErrorKind,
    process::Stdio,
    time::{Duration, Instant},
};

use http::Request;
use nix::sys::signal::Signal;
use support::{
    get,
    tls::{self, Dir, KeyKind, Pem, TlsClient, TlsEnd},
    Proxy, Upstream, LONG_GRACE, SOON,
};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// A drainproxy terminating TLS with `pem`, written to a fresh temp dir (kept alive by the caller).
async fn tls_proxy(up: &Upstream, dir: &Dir, pem: &Pem, args: &[&str]) -> Proxy {
    let (cert, key) = dir.install(pem);
    let mut all = vec!["--grace", LONG_GRACE, "--tls-cert", &cert, "--tls-key", &key];
    all.extend_from_slice(args);
    Proxy::start(&up.addr, &all).await
}

/// One GET over HTTPS/1.1 on a fresh connection trusting `pem`'s root.
async fn https_get(p: &Proxy, pem: &Pem, path: &str) -> support::Response {
    TlsClient::connect(p.addr, &[&pem.root]).await.get(path).await
}

/// The value of `name` in the demo upstream's `/echo` text.
fn echoed(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Waits until `/metrics` shows `line` (the server counts a failed handshake
/// a moment after the client gave up on it).
async fn wait_metric(p: &Proxy, line: &str) {
    let seen = tokio::time::timeout(SOON, async {
        loop {
            let metrics = get(p.admin(), "/metrics").await.text();
            if metrics.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "metrics never showed {line:?}:\n{}", get(p.admin(), "/metrics").await.text());
}

// 1. HTTPS over HTTP/1.1 and h2, chosen by ALPN

#[tokio::test]
async fn https_request_over_http1_via_alpn() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("http1"), Pem::self_signed());
    let p = tls_proxy(&up, &dir, &pem, &[]).await;
    let mut c = TlsClient::connect(p.addr, &[&pem.root]).await;
    assert_eq!(c.peer_leaf(), pem.leaf);
    let res = c.get("/echo").await;
    assert_eq!(res.status, 200);
    assert!(!res.closes(), "keep-alive while serving: {:?}", res.headers);
    assert_eq!(echoed(&res.text(), "x-forwarded-proto").as_deref(), Some("https"), "{}", res.text());
    // The same connection serves a second request.
    let res = c.get("/").await;
    assert_eq!((res.status, res.text().as_str()), (200, "hello from the demo upstream\n"));
}

#[tokio::test]
async fn https_request_without_alpn_is_http1() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("no-alpn"), Pem::self_signed());
    let p = tls_proxy(&up, &dir, &pem, &[]).await;
    let stream = tls::connect(p.addr, tls::client_config(&[&pem.root], &[])).await;
    assert_eq!(tls::alpn(&stream), None);
    let res = TlsClient::from_stream(stream).get("/echo").await;
    assert_eq!(res.status, 200);
    assert_eq!(echoed(&res.text(), "x-forwarded-proto").as_deref(), Some("https"), "{}", res.text());
}

#[tokio::test]
async fn https_request_over_h2_via_alpn() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("h2"), Pem::self_signed());
    let p = tls_proxy(&up, &dir, &pem, &[]).await;
    let (mut send, _conn, _) = tls::h2(p.addr, &[&pem.root]).await;
    // Two streams on the one connection, concurrently.
    let mut pending = Vec::new();
    for path in ["/echo", "/"] {
        send = send.ready().await.unwrap();
        let req = Request::get(format!("https://{}{path}", tls::HOST)).body(()).unwrap();
        pending.push(send.send_request(req, true).unwrap().0);
    }
    let mut bodies = Vec::new();
    for res in pending {
        let res = tokio::time::timeout(SOON, res).await.expect("h2 response timed out").expect("h2 response");
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_2);
        bodies.push(String::from_utf8(tls::h2_body(res).await).unwrap());
    }
    assert_eq!(echoed(&bodies[0], "x-forwarded-proto").as_deref(), Some("https"), "{}", bodies[0]);
    assert_eq!(bodies[1], "hello from the demo upstream\n");
}

#[tokio::test]
async fn tls_files_from_the_config_file_and_the_environment() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("sources"), Pem::self_signed());
    let (cert, key) = dir.install(&pem);
    let toml = dir.write("drainproxy.toml", &format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n"));
    let p = Proxy::start(&up.addr, &["--config", &toml]).await;
    assert_eq!(https_get(&p, &pem, "/").await.status, 200);
    let p = Proxy::start_with(&up.addr, &[], &[("DRAINPROXY_TLS_CERT", &cert), ("DRAINPROXY_TLS_KEY", &key)]).await;
    assert_eq!(https_get(&p, &pem, "/").await.status, 200);
}

// 2-4. The drain over TLS

#[tokio::test]
async fn in_flight_https_request_completes_then_process_exits() {
    let mut up = Upstream::start().await;
    let (dir, pem) = (Dir::new("inflight"), Pem::self_signed());
    let mut p = tls_proxy(&up, &dir, &pem, &[]).await;
    let mut c = TlsClient::connect(p.addr, &[&pem.root]).await;
    c.start_get("/hold/tls-inflight").await;
    up.wait_held("tls-inflight").await;
    p.sigterm();
    p.log.wait_for("drain started").await;
    // Not mistaken for an idle socket: the process waits for the request.
    p.log.wait_for("listener closed").await;
    assert!(p.running(), "exited with an HTTPS request in flight");
    up.release("tls-inflight").await;

    let res = c.response().await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "released tls-inflight\n");
    assert!(res.complete && res.closes(), "{res:?}");
    assert_eq!(c.end().await, TlsEnd::CloseNotify, "a clean TLS close after the response");
    p.exits_promptly().await;
}

#[tokio::test]
async fn idle_https_keepalive_closed_with_close_notify_at_drain() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("idle"), Pem::self_signed());
    let mut p = tls_proxy(&up, &dir, &pem, &["--idle-grace", "0"]).await;
    let mut c = TlsClient::connect(p.addr, &[&pem.root]).await;
    let res = c.get("/").await;
    assert_eq!(res.status, 200);
    assert!(!res.closes(), "keep-alive before the drain");
    p.sigterm();
    assert_eq!(c.end().await, TlsEnd::CloseNotify, "close_notify then EOF, not a truncation or a reset");
    p.exits_promptly().await;
}

#[tokio::test]
async fn h2_over_tls_stream_completes_after_goaway() {
    let mut up = Upstream::start().await;
    let (dir, pem) = (Dir::new("h2-drain"), Pem::self_signed());
    let mut p = tls_proxy(&up, &dir, &pem, &[]).await;
    let (mut send, conn, end) = tls::h2(p.addr, &[&pem.root]).await;
    let req = |path: &str| Request::get(format!("https://{}{path}", tls::HOST)).body(()).unwrap();
    send = send.ready().await.unwrap();
    let (held, _) = send.send_request(req("/hold/tls-h2"), true).unwrap();
    up.wait_held("tls-h2").await;
    p.sigterm();
    p.log.wait_for("drain started").await;

    // Once the client has seen the final GOAWAY, new streams are refused.
    let refusal = support::until_new_streams_refused(&send, || req("/echo")).await;
    assert!(
        refusal.is_go_away() || refusal.reason() == Some(h2::Reason::REFUSED_STREAM),
        "unexpected error: {refusal:?}"
    );
    assert!(p.running(), "exited with an h2 stream open");

    up.release("tls-h2").await;
    let res =
        tokio::time::timeout(SOON, held).await.expect("held stream timed out").expect("the open stream completes");
    assert_eq!(res.status(), 200);
    assert_eq!(tls::h2_body(res).await, b"released tls-h2\n");
    let closed = tokio::time::timeout(SOON, conn).await.expect("server closes the connection").unwrap();
    // The h2 client answers the final GOAWAY with its own GOAWAY and a
    // close_notify. When those cross the server's close they meet a TCP
    // reset (the server does not linger after closing) and h2 reports the
    // write as failed; everything the server owed had arrived by then, and
    // the server's close_notify is still read below.
    if let Err(e) = &closed {
        let kind = e.get_io().map(std::io::Error::kind);
        assert!(
            matches!(kind, Some(ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)),
            "not a graceful close: {e:?}"
        );
    }
    assert_eq!(end.end().await, TlsEnd::CloseNotify, "the TLS stream ends with close_notify, not a truncation");
    p.exits_promptly().await;
}

// 5. Certificate rotation

#[tokio::test]
async fn rotation_on_sighup_and_on_disk_change() {
    let up = Upstream::start().await;
    let dir = Dir::new("rotation");
    let (a, b, c) = (Pem::self_signed(), Pem::self_signed(), Pem::self_signed());
    let mut p = tls_proxy(&up, &dir, &a, &[]).await;
    let trust = [&a.root, &b.root, &c.root];
    let addr = p.addr;
    let new_leaf = || async move { tls::peer_leaf(&tls::connect(addr, tls::client_config(&trust, &[])).await) };

    let mut old = TlsClient::connect(p.addr, &trust).await;
    assert_eq!(old.peer_leaf(), a.leaf);
    let res = old.get("/").await;
    assert_eq!(res.status, 200);
    assert!(!res.closes());

    // Replace both files (rename over, like a Secret update), then SIGHUP.
    dir.replace("cert.pem", &b.cert);
    dir.replace("key.pem", &b.key);
    p.signal(Signal::SIGHUP);
    tls::wait_for_all(&mut p.log, &["TLS certificate reloaded", "SIGHUP"]).await;
    assert_eq!(new_leaf().await, b.leaf, "a new connection gets the new certificate");
    let res = old.get("/").await;
    assert_eq!(res.status, 200, "the old connection keeps working");
    assert!(!res.closes(), "{:?}", res.headers);
    assert_eq!(old.peer_leaf(), a.leaf);

    // A garbage key: the reload fails, names the file, and B stays in service.
    let key = tls::arg(&dir.path("key.pem"));
    dir.replace("key.pem", "not a key\n");
    p.signal(Signal::SIGHUP);
    let line = tls::wait_for_all(&mut p.log, &["TLS certificate reload failed", "SIGHUP"]).await;
    assert!(line.contains(&key), "the error names the key file: {line}");
    assert_eq!(new_leaf().await, b.leaf, "a broken replacement keeps the old certificate");

    // A valid key that does not match the certificate: same.
    dir.replace("key.pem", &a.key);
    p.signal(Signal::SIGHUP);
    let line = tls::wait_for_all(&mut p.log, &["TLS certificate reload failed", "SIGHUP"]).await;
    assert!(line.contains("do not form a usable pair"), "{line}");
    assert_eq!(new_leaf().await, b.leaf, "a mismatched key keeps the old certificate");
    assert_eq!(old.get("/").await.status, 200);

    // No signal at all: the watcher notices the files changed.
    dir.replace("key.pem", &c.key);
    dir.replace("cert.pem", &c.cert);
    tls::wait_for_all(&mut p.log, &["TLS certificate reloaded", "files changed"]).await;
    assert_eq!(new_leaf().await, c.leaf, "picked up from disk without SIGHUP");
    assert_eq!(old.get("/").await.status, 200, "the old connection still works");
}

// 6. Silent clients: the handshake timeout, and the drain

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("silent"), Pem::self_signed());
    let mut p = tls_proxy(&up, &dir, &pem, &["--tls-handshake-timeout", "1s", "--log-level", "drainproxy=debug"]).await;
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    let connected = Instant::now();
    let mut buf = [0; 64];
    let read = tokio::time::timeout(SOON, silent.read(&mut buf)).await.expect("the silent client was never dropped");
    let after = connected.elapsed();
    assert_eq!(read.unwrap(), 0, "a plain EOF (nothing was ever sent)");
    assert!(after >= Duration::from_millis(900), "dropped before the handshake timeout: {after:?}");
    assert!(after < Duration::from_secs(5), "dropped long after the 1s handshake timeout: {after:?}");
    wait_metric(&p, "drainproxy_tls_handshake_failures_total 1").await;
    let line = p.log.wait_for("TLS handshake timed out").await;
    assert!(line.contains("DEBUG"), "a client's failure is not the operator's problem: {line}");
}

#[tokio::test]
async fn failed_handshake_does_not_disturb_other_connections() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("bad-hello"), Pem::self_signed());
    let mut p = tls_proxy(&up, &dir, &pem, &["--log-level", "drainproxy=debug"]).await;
    let mut good = TlsClient::connect(p.addr, &[&pem.root]).await;
    assert_eq!(good.get("/").await.status, 200);

    // Plain HTTP on the TLS port: the handshake fails and only that socket closes.
    let mut plain = support::Client::connect(p.addr).await;
    plain.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(SOON, plain.stream.read_to_end(&mut rest)).await.expect("left open");
    assert!(read.is_ok(), "{read:?}");
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"), "served plaintext on a TLS port");
    // A client that does not trust the certificate: its own handshake fails, nobody else's.
    let stranger = Pem::self_signed();
    assert!(tls::try_connect(p.addr, tls::client_config(&[&stranger.root], &[])).await.is_err());

    assert_eq!(good.get("/").await.status, 200, "an established connection is untouched");
    assert_eq!(https_get(&p, &pem, "/").await.status, 200, "new handshakes still work");
    wait_metric(&p, "drainproxy_tls_handshake_failures_total 2").await;
    let line = p.log.wait_for("TLS handshake failed").await;
    assert!(line.contains("DEBUG"), "a client's failure is not the operator's problem: {line}");
}

#[tokio::test]
async fn silent_client_neither_blocks_accepting_nor_delays_the_drain() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("silent-drain"), Pem::self_signed());
    // A handshake timeout longer than the test: only the drain can end the silent client.
    let mut p = tls_proxy(&up, &dir, &pem, &["--tls-handshake-timeout", "60s"]).await;
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    // The handshake runs in the connection's task: others are served meanwhile.
    assert_eq!(https_get(&p, &pem, "/").await.status, 200);

    p.sigterm();
    let mut buf = [0; 64];
    let read = tokio::time::timeout(SOON, silent.read(&mut buf)).await.expect("the silent client was kept open");
    assert!(matches!(read, Ok(0)), "closed with EOF: {read:?}");
    p.exits_promptly().await;
    p.log.all().lines().find(|l| l.contains("drain complete")).expect("drain complete logged");
}

// 7. Start-up errors

/// Runs drainproxy with TLS files that must stop it before it binds; returns (exit code, stderr).
async fn start_failure(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(support::bin("drainproxy"))
        .args(["--listen", "127.0.0.1:0", "--admin", "off", "--upstream", "127.0.0.1:1"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(SOON, out).await.unwrap_or_else(|_| panic!("drainproxy {args:?} did not exit")).unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Exit 1, one line on stderr that names `file` and says `what`, and nothing bound.
#[track_caller]
fn assert_cert_error((code, stderr): &(Option<i32>, String), file: &str, what: &str) {
    assert_eq!(*code, Some(1), "exit code; stderr:\n{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(lines[0].contains(file), "does not name {file}:\n{stderr}");
    assert!(lines[0].contains(what), "does not say {what:?}:\n{stderr}");
    assert!(!stderr.contains("listening") && !stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn startup_errors_exit_1_naming_the_file() {
    let dir = Dir::new("startup");
    let (a, b) = (Pem::self_signed(), Pem::self_signed());
    let (cert, key) = dir.install(&a);
    let missing = tls::arg(&dir.path("missing.pem"));

    let run = |c: &str, k: &str| {
        let (c, k) = (c.to_string(), k.to_string());
        async move { start_failure(&["--tls-cert", &c, "--tls-key", &k]).await }
    };
    assert_cert_error(&run(&missing, &key).await, &missing, "cannot read");
    assert_cert_error(&run(&cert, &missing).await, &missing, "cannot read");
    // A directory cannot be read as a file (root reads any file, whatever its mode).
    let unreadable = dir.root();
    assert_cert_error(&run(&unreadable, &key).await, &unreadable, "cannot read");

    let garbage = dir.write("garbage.pem", "this is not PEM\n");
    assert_cert_error(&run(&garbage, &key).await, &garbage, "no CERTIFICATE");
    // A PEM file with only a key in it is not a certificate either.
    assert_cert_error(&run(&key, &key).await, &key, "no CERTIFICATE");
    let bad_base64 = dir.write("bad64.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    assert_cert_error(&run(&bad_base64, &key).await, &bad_base64, "invalid PEM");

    // The key file holds no key (the certificate, or garbage).
    assert_cert_error(&run(&cert, &cert).await, &cert, "no usable private key");
    assert_cert_error(&run(&cert, &garbage).await, &garbage, "no usable private key");
    // A valid key for another certificate.
    let other_key = dir.write("other-key.pem", &b.key);
    let out = run(&cert, &other_key).await;
    assert_cert_error(&out, &other_key, "do not form a usable pair");
    assert!(out.1.contains(&cert), "names the certificate too:\n{}", out.1);
}

#[tokio::test]
async fn half_a_tls_setting_is_a_config_error() {
    let dir = Dir::new("half");
    let (cert, key) = dir.install(&Pem::self_signed());
    for (args, needle) in [(["--tls-cert", cert.as_str()], "--tls-key"), (["--tls-key", key.as_str()], "--tls-cert")] {
        let (code, stderr) = start_failure(&args).await;
        assert_eq!(code, Some(2), "exit code for {args:?}; stderr:\n{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: ") && first.contains(needle), "{args:?}:\n{stderr}");
    }
}

// 8. Key formats and chains

async fn serves_https_with(kind: KeyKind) {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new(&format!("{kind:?}")), Pem::with_key(kind));
    let p = tls_proxy(&up, &dir, &pem, &[]).await;
    let mut c = TlsClient::connect(p.addr, &[&pem.root]).await;
    assert_eq!(c.peer_leaf(), pem.leaf);
    assert_eq!(c.get("/").await.status, 200, "{kind:?}");
}

#[tokio::test]
async fn rsa_pkcs8_key() {
    serves_https_with(KeyKind::RsaPkcs8).await
}

#[tokio::test]
async fn rsa_pkcs1_key() {
    serves_https_with(KeyKind::RsaPkcs1).await
}

#[tokio::test]
async fn ecdsa_p256_pkcs8_key() {
    serves_https_with(KeyKind::EcdsaPkcs8).await
}

#[tokio::test]
async fn ecdsa_p256_sec1_key() {
    serves_https_with(KeyKind::EcdsaSec1).await
}

#[tokio::test]
async fn ed25519_pkcs8_key() {
    serves_https_with(KeyKind::Ed25519).await
}

#[tokio::test]
async fn certificate_chain_is_served_whole() {
    let up = Upstream::start().await;
    let (dir, pem) = (Dir::new("chain"), Pem::chain());
    let p = tls_proxy(&up, &dir, &pem, &[]).await;
    // The client trusts only the root, which the server does not send: the
    // handshake succeeds only if the intermediate came with the leaf.
    let mut c = TlsClient::connect(p.addr, &[&pem.root]).await;
    let chain = tls::peer_chain(c.stream.get_ref());
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(chain[0], pem.leaf);
    assert_eq!(c.get("/").await.status, 200);
}
