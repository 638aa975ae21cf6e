//! drainproxy: a reverse proxy that makes an app's shutdown lossless.
//!
//! The drain timeline, from the first SIGTERM/SIGINT or `POST /drain`:
//!
//! | when | what happens |
//! |---|---|
//! | t=0 | phase [`Phase::Draining`]: `/readyz` 503; every HTTP/1 response carries `Connection: close`; HTTP/2 gets GOAWAY; idle HTTP/1 sockets close once idle for `idle-grace`; the listener still accepts |
//! | t=drain-delay | phase [`Phase::Closing`]: the listener closes; in-flight work continues |
//! | Closing and no connection left | return (exit 0) |
//! | t=drain-delay+grace | the cut: requests without a response head get 503, the rest are closed; return |
//! | a second SIGTERM/SIGINT | return at once |
//!
//! [`run`] is the whole server; `main` only parses the config, sets up logs and
//! feeds it the signals.
// One reviewed exception: registering the parking lot's epoll set with tokio (src/park.rs).
#![deny(unsafe_code)]

pub mod activity;
pub mod admin;
pub mod body;
pub mod config;
pub mod conn;
pub mod drain;
pub mod drain_client;
pub mod error;
pub mod gated;
pub mod listener;
pub mod metrics;
pub mod park;
pub mod proxy;
pub mod signal;
pub mod supervisor;
pub mod tls;
pub mod upstream;
pub mod websocket;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use futures_util::{Stream, StreamExt};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch, OnceCell},
    time::Instant,
};
use tracing::{info, warn};

pub use config::Config;
pub use drain::Phase;
pub use signal::Event;

use crate::{conn::ConnSettings, drain::DrainControl, metrics::Metrics, proxy::Shared};

/// How often the TLS files are checked for changes on disk.
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A second stop signal closed everything at once.
    pub forced: bool,
    /// The process exit code: 0, or in supervisor mode the app's.
    pub exit_code: u8,
}

/// Binds, serves until the first [`Event::Stop`] (or `POST /drain`, or the
/// supervised app exiting), drains, stops the app if there is one, and
/// returns. Errors only when it cannot start.
pub async fn run(config: Config, mut events: impl Stream<Item = Event> + Unpin) -> anyhow::Result<Outcome> {
    let control = DrainControl::new();
    let drain = control.handle();
    let metrics = Arc::new(Metrics::new());
    // In supervisor mode the app is not ready until it accepts connections.
    let (ready_tx, ready) = watch::channel(config.app.is_none());
    let shared = Arc::new(Shared {
        client: upstream::client(config.upstream.clone(), config.upstream_connect_timeout),
        metrics: metrics.clone(),
        drain: drain.clone(),
        ready: ready.clone(),
        upstream_wait: config.upstream_wait,
        app_gone: AtomicBool::new(false),
        body_read_timeout: config.body_read_timeout,
        upstream_timeout: config.upstream_timeout,
    });

    // Certificates first: a bad one must fail the start before anything binds.
    let certs =
        config.tls.clone().map(tls::Certificates::load).transpose().context("cannot load the TLS certificate")?;
    let listener = bind(config.listen).with_context(|| format!("cannot bind {}", config.listen))?;
    let (trigger, mut admin_drain) = mpsc::channel(1);
    let drain_started = Arc::new(OnceCell::new());
    if let Some(addr) = config.admin {
        let admin_listener = TcpListener::bind(addr).await.with_context(|| format!("cannot bind admin {addr}"))?;
        info!(addr = %admin_listener.local_addr()?, "admin listening");
        let admin = admin::Admin {
            drain: drain.clone(),
            metrics: metrics.clone(),
            trigger,
            drain_started: drain_started.clone(),
            ready,
        };
        tokio::spawn(admin::serve(admin_listener, Arc::new(admin)));
    }
    let app = match &config.app {
        Some(spec) => {
            let app = supervisor::App::spawn(spec)?;
            tokio::spawn(upstream::wait_ready(
                shared.clone(),
                config.upstream.clone(),
                config.upstream_ready_path.clone(),
                ready_tx,
            ));
            Some(app)
        }
        None => None,
    };
    info!(addr = %listener.local_addr()?, upstream = %config.upstream, tls = certs.is_some(), "listening");
    if let Some(warning) = config.grace_period_warning() {
        warn!("{warning}");
    }
    let limits = activity::Limits {
        keepalive: config.keepalive_timeout,
        idle_grace: config.idle_grace,
        head: config.header_read_timeout,
    };
    let lot = match park::Lot::new(limits, drain.clone(), metrics.clone()) {
        Ok(lot) => Some(lot),
        Err(e) => {
            warn!(error = %e, "no parking lot: idle connections keep a task each");
            None
        }
    };
    let settings = ConnSettings {
        limits,
        max_header_bytes: config.max_header_bytes,
        tls_handshake_timeout: config.tls_handshake_timeout,
        lot: lot.clone(),
    };
    if let Some(lot) = lot {
        let (shared, settings, tracker) = (shared.clone(), settings.clone(), drain.tracker.clone());
        tokio::spawn(lot.run(move |parked| {
            tracker.spawn(conn::resume(parked, shared.clone(), settings.clone()));
        }));
    }
    let acceptor = certs.as_ref().map(|c| c.acceptor());
    if let Some(certs) = &certs {
        tokio::spawn(certs.clone().watch(TLS_WATCH_INTERVAL));
    }
    // SIGHUP reloads the certificate and, in supervisor mode, also reaches the app;
    // SIGUSR1/SIGUSR2 are the app's alone.
    let pass_on = |event: Event, when: &str| {
        if let Event::Reload = event {
            match &certs {
                Some(certs) => certs.reload("SIGHUP"),
                None if app.is_none() => info!("SIGHUP {when}: nothing to reload"),
                None => {}
            }
        }
        if let (Some(app), Some(sig)) = (&app, event.app_signal()) {
            app.signal(sig);
        }
    };
    let app_exit = async {
        match &app {
            Some(app) => app.exited().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(app_exit);
    let accept =
        tokio::spawn(listener::accept_loop(listener, shared.clone(), settings, acceptor, config.max_connections));

    // Serving: wait for the first stop.
    let mut events_open = true;
    let source = loop {
        tokio::select! {
            event = events.next(), if events_open => match event {
                Some(Event::Stop) => break "signal",
                Some(other) => pass_on(other, "while serving"),
                None => events_open = false,
            },
            Some(()) = admin_drain.recv() => break "admin",
            code = &mut app_exit => {
                // Nothing to forward to any more: new requests get 503 + close.
                shared.app_gone.store(true, Ordering::Release);
                warn!(code, "the app exited by itself");
                break "app exit";
            }
        }
    };
    let t0 = Instant::now();
    let _ = drain_started.set(t0.into_std());
    let at_start = drain.connections() as u64;
    let accepted_before = metrics.connections_total.get();
    let closing_at = t0 + config.drain_delay;
    let deadline = closing_at + config.grace;
    control.advance(Phase::Draining);
    info!(source, drain_delay = ?config.drain_delay, grace = ?config.grace, idle_grace = ?config.idle_grace, "drain started");

    let mut accept = Some(accept);
    let mut progress = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let forced = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(closing_at), if accept.is_some() => {
                control.advance(Phase::Closing);
                // The accept loop ends promptly once it sees Closing; only then
                // is the set of connections final.
                let _ = accept.take().expect("guarded").await;
                drain.tracker.close();
                info!(connections = drain.connections(), "listener closed");
            }
            _ = drain.tracker.wait(), if accept.is_none() => break false,
            _ = tokio::time::sleep_until(deadline) => {
                warn!(connections = drain.connections(), "grace deadline reached: cutting what is left");
                control.cut();
                // Each connection gets a moment to write the 503s it owes.
                if tokio::time::timeout(Duration::from_secs(1), drain.tracker.wait()).await.is_err() {
                    warn!(connections = drain.connections(), "connections still open after the cut; exiting anyway");
                }
                break false;
            }
            _ = progress.tick() => info!(
                phase = drain.phase().as_str(),
                connections = drain.connections(),
                in_flight = metrics.in_flight.get(),
                idle = metrics.idle(),
                upgraded = metrics.conn_upgraded.get(),
                time_left_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
                "draining",
            ),
            event = events.next(), if events_open => match event {
                Some(Event::Stop) => { warn!("second stop signal: closing everything now"); break true }
                Some(other) => pass_on(other, "during the drain"),
                None => events_open = false,
            },
            _ = &mut app_exit, if !shared.app_gone.load(Ordering::Acquire) => {
                shared.app_gone.store(true, Ordering::Release);
                warn!("the app exited during the drain");
            }
        }
    };

    let total = at_start + (metrics.connections_total.get() - accepted_before);
    // Cuts only happen at the deadline, so the process-wide counter is this drain's.
    let cut = metrics.cut_total.get();
    info!(
        duration_ms = t0.elapsed().as_millis() as u64,
        connections = total,
        finished = total.saturating_sub(cut),
        cut,
        forced,
        "drain complete",
    );

    // Only now, with nothing left in flight, may the app go.
    let exit_code = match (&app, &config.app) {
        (Some(app), Some(_)) if forced => {
            app.signal_group(nix::sys::signal::Signal::SIGKILL);
            app.exited().await
        }
        (Some(app), Some(spec)) => app.stop(spec).await,
        _ => 0,
    };
    Ok(Outcome { forced, exit_code })
}

/// The client listener, with a listen backlog of 4096: tokio's default (128)
/// overflows when thousands of clients connect at once, and each overflow
/// costs that client a 1 s SYN retransmission.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
