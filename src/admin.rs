//! The admin port: liveness, readiness, Prometheus metrics, drain status, and the drain trigger.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use http::{header, Method, Request, Response, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, OnceCell},
};
use tracing::{debug, info};

use crate::{
    body::{text, ProxyBody},
    drain::{Drain, Phase},
    metrics::Metrics,
};

/// What the admin handlers read and trigger.
pub struct Admin {
    pub drain: Drain,
    pub metrics: Arc<Metrics>,
    /// Asks `run` to start the drain, like SIGTERM.
    pub trigger: mpsc::Sender<()>,
    /// Set when the drain started.
    pub drain_started: Arc<OnceCell<Instant>>,
    /// False until a supervised app accepts connections.
    pub ready: tokio::sync::watch::Receiver<bool>,
}

/// Serves the admin port until the process exits. Admin connections are not
/// client connections: they are not tracked and never delay the exit.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let phase = self.drain.phase();
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET | &Method::HEAD, "/readyz") => match (phase, *self.ready.borrow()) {
                (Phase::Serving, true) => text(StatusCode::OK, "ready\n"),
                (Phase::Serving, false) => text(StatusCode::SERVICE_UNAVAILABLE, "starting: the app is not ready\n"),
                _ => text(StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", phase.as_str())),
            },
            (&Method::GET, "/metrics") => {
                self.refresh_drain_metrics(phase);
                let mut res = text(StatusCode::OK, self.metrics.render());
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            (&Method::GET, "/status") => text(StatusCode::OK, self.status(phase)),
            (&Method::POST, "/drain") if peer.ip().to_canonical().is_loopback() => {
                info!(%peer, "drain requested on the admin port");
                // A full channel means a request is already queued: same effect.
                let _ = self.trigger.try_send(());
                text(StatusCode::ACCEPTED, "draining\n")
            }
            (&Method::POST, "/drain") => text(StatusCode::FORBIDDEN, "drain is allowed from loopback only\n"),
            (_, "/healthz" | "/readyz" | "/metrics" | "/status" | "/drain") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found: try /healthz /readyz /metrics /status, POST /drain\n"),
        }
    }

    fn refresh_drain_metrics(&self, phase: Phase) {
        self.metrics.drain_phase.set(phase as i64);
        let elapsed = self.drain_started.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.drain_duration.set(elapsed);
    }

    /// `key value` lines that `drainproxy drain --wait` reads.
    fn status(&self, phase: Phase) -> String {
        format!(
            "phase {}\nconnections {}\nin_flight {}\nidle {}\nparked {}\nupgraded {}\n",
            phase.as_str(),
            self.drain.connections(),
            self.metrics.in_flight.get(),
            self.metrics.idle(),
            self.metrics.conn_parked.get(),
            self.metrics.conn_upgraded.get(),
        )
    }
}
