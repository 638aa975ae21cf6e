//! Prometheus metrics: connection states, requests, upstream errors, and the drain.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric handle; clones share the same values.
pub struct Metrics {
    registry: Registry,
    /// Open HTTP connections (not tunnels); idle = open - active, computed at scrape.
    pub conn_open: Gauge,
    pub conn_active: Gauge,
    pub conn_idle: Gauge,
    pub conn_upgraded: Gauge,
    /// Idle connections waiting in the parking lot (a subset of idle).
    pub conn_parked: Gauge,
    pub connections_total: Counter,
    pub in_flight: Gauge,
    requests: [Counter; 5],
    pub request_duration: Histogram,
    upstream_errors: Family<Labels, Counter>,
    pub drain_phase: Gauge,
    pub drain_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub cut_total: Counter,
    pub tls_handshake_failures: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("drainproxy");
        let connections = Family::<Labels, Gauge>::default();
        registry.register(
            "open_connections",
            "Open client connections (upgraded = tunnels such as WebSockets)",
            connections.clone(),
        );
        let state = |s| connections.get_or_create(&vec![("state", s)]).clone();
        let (conn_active, conn_idle, conn_upgraded) = (state("active"), state("idle"), state("upgraded"));

        let conn_parked = Gauge::default();
        registry.register(
            "parked_connections",
            "Idle keep-alive connections parked with no task or buffers (a subset of idle)",
            conn_parked.clone(),
        );
        let connections_total = Counter::default();
        registry.register("connections", "Client connections accepted", connections_total.clone());
        let in_flight = Gauge::default();
        registry.register("in_flight_requests", "Requests whose response has not finished", in_flight.clone());
        let by_class = Family::<Labels, Counter>::default();
        registry.register("requests", "Responses sent to clients, by status class", by_class.clone());
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| by_class.get_or_create(&vec![("class", c)]).clone());
        let request_duration = Histogram::new([0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0]);
        registry.register_with_unit(
            "request_duration",
            "Time from request to response head",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_errors = Family::<Labels, Counter>::default();
        registry.register("upstream_errors", "Failed upstream exchanges, by kind", upstream_errors.clone());
        let drain_phase = Gauge::default();
        registry.register("drain_phase", "0 serving, 1 draining, 2 closing", drain_phase.clone());
        let drain_duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "drain_duration",
            "Time since the drain started (0 while serving)",
            prometheus_client::registry::Unit::Seconds,
            drain_duration.clone(),
        );
        let cut_total = Counter::default();
        registry.register("connections_cut", "Connections closed by the grace deadline", cut_total.clone());
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );

        Metrics {
            registry,
            conn_open: Gauge::default(),
            conn_active,
            conn_idle,
            conn_upgraded,
            conn_parked,
            connections_total,
            in_flight,
            requests,
            request_duration,
            upstream_errors,
            drain_phase,
            drain_duration,
            cut_total,
            tls_handshake_failures,
        }
    }

    /// Counts one response by its status class.
    pub fn response(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
    }

    /// Counts one failed upstream exchange; `kind` is a short fixed word.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&vec![("kind", kind)]).inc();
    }

    /// Open HTTP connections with no request in progress.
    pub fn idle(&self) -> i64 {
        (self.conn_open.get() - self.conn_active.get()).max(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.conn_idle.set(self.idle());
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
