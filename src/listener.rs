//! The accept loop: hands each client socket to its own tracked task, survives every accept error.

use std::{io, sync::Arc, time::Duration};

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{error, warn};

use crate::{
    conn::{self, ConnSettings},
    drain::Phase,
    proxy::Shared,
};

/// Accepts until the phase reaches `Closing`, then closes the listener so new
/// connects are refused.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, settings: ConnSettings, tls: Option<TlsAcceptor>) {
    let drain = shared.drain.clone();
    let spawn = |tcp: TcpStream| {
        let Ok(peer) = tcp.peer_addr() else { return };
        // Small responses must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let (shared, settings) = (shared.clone(), settings.clone());
        match &tls {
            Some(tls) => drain.tracker.spawn(conn::serve_tls(tcp, peer, shared, settings, tls.clone())),
            None => drain.tracker.spawn(conn::serve(tcp, peer, shared, settings, "http", None)),
        };
    };
    loop {
        tokio::select! {
            _ = drain.reached(Phase::Closing) => break,
            res = listener.accept() => match res {
                Ok((tcp, _)) => spawn(tcp),
                Err(e) => handle_accept_error(e).await,
            },
        }
    }
    // Connections the kernel already completed sit in the backlog; closing
    // the listener would reset them after their client may have sent a
    // request. Take them in (they are served with `Connection: close`).
    while let Some(Ok((tcp, _))) = listener.accept().now_or_never() {
        spawn(tcp);
    }
}

/// Per-connection errors are the client's problem; resource exhaustion
/// (EMFILE, ENOBUFS) passes, so back off briefly instead of spinning.
async fn handle_accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    ) {
        return warn!(error = %e, "accept failed; continuing");
    }
    error!(error = %e, "accept failed; retrying in 50ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
