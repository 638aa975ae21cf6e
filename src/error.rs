//! Every way proxying a request can fail, and the one place that maps each to what the client gets.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{text, ProxyBody};

/// Why a request could not be proxied.
#[derive(Debug)]
pub enum ProxyError {
    /// The app could not be reached (refused, unresolvable, connect timeout).
    UpstreamConnect(String),
    /// The app broke the exchange before a response head (reset, garbage, closed).
    UpstreamProtocol(String),
    /// The app did not send a response head within `--upstream-timeout`.
    UpstreamTimeout,
    /// The client's request body stalled past `--body-read-timeout`.
    ClientTimeout,
    /// The grace deadline arrived before the app answered.
    Deadline,
    /// A new upgrade (WebSocket) request during a drain: the client should reconnect elsewhere.
    UpgradeWhileDraining,
    /// Supervisor mode: the app did not become ready within `--upstream-wait`.
    NotReady,
    /// Supervisor mode: the app has exited.
    AppGone,
    /// The client sent something we cannot forward.
    BadRequest(&'static str),
}

impl ProxyError {
    /// Classifies an upstream client error.
    pub fn from_client(err: crate::upstream::Error) -> Self {
        let chain = std::iter::successors(std::error::Error::source(&err), |e| e.source());
        if chain.clone().any(|e| e.is::<crate::body::BodyStalled>()) {
            return ProxyError::ClientTimeout;
        }
        // Reading the client's request body failed (a bad chunk size, cut
        // short): its fault, not the app's.
        if chain.clone().any(|e| e.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_user())) {
            return ProxyError::BadRequest("malformed or interrupted request body");
        }
        if err.is_connect() {
            ProxyError::UpstreamConnect(error_chain(&err))
        } else {
            ProxyError::UpstreamProtocol(error_chain(&err))
        }
    }

    /// A short fixed word for the `kind` label of the upstream error metric.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::UpstreamConnect(_) => Some("connect"),
            ProxyError::UpstreamProtocol(_) => Some("protocol"),
            ProxyError::UpstreamTimeout => Some("timeout"),
            _ => None,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Deadline | ProxyError::UpgradeWhileDraining | ProxyError::NotReady | ProxyError::AppGone => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The response the client gets. Errors after the drain started, and
    /// every 503, also close the connection.
    pub fn into_response(self, close: bool) -> Response<ProxyBody> {
        let status = self.status();
        let mut res = text(status, format!("{}\n", status.canonical_reason().unwrap_or("error")));
        let headers = res.headers_mut();
        // After a 408 or a 400 the rest of the body is unread or unreadable:
        // the connection cannot be reused.
        if close || status != StatusCode::BAD_GATEWAY && status != StatusCode::GATEWAY_TIMEOUT {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::UpstreamConnect(e) => write!(f, "upstream unreachable: {e}"),
            ProxyError::UpstreamProtocol(e) => write!(f, "upstream failed: {e}"),
            ProxyError::Deadline => f.write_str("grace deadline reached before the upstream answered"),
            ProxyError::UpgradeWhileDraining => f.write_str("upgrade refused while draining"),
            ProxyError::NotReady => f.write_str("the app is not ready yet"),
            ProxyError::AppGone => f.write_str("the app has exited"),
            ProxyError::BadRequest(e) => write!(f, "bad request: {e}"),
            ProxyError::UpstreamTimeout => f.write_str("upstream sent no response head in time"),
            ProxyError::ClientTimeout => f.write_str("client request body stalled"),
        }
    }
}

/// `outer: inner: root`, since hyper's top-level messages alone rarely say what happened.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
