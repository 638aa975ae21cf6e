//! The accept loop: hands each client socket to its own tracked task, survives every accept error.

use std::{io, sync::Arc, time::Duration};

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{error, warn};

use crate::{
    conn::{self, ConnSettings},
    drain::{Drain, Phase},
    proxy::Shared,
};

/// Accepts until the phase reaches `Closing`, then closes the listener so new
/// connects are refused.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, settings: ConnSettings) {
    let drain = shared.drain.clone();
    loop {
        tokio::select! {
            _ = drain.reached(Phase::Closing) => break,
            res = listener.accept() => match res {
                Ok((tcp, _)) => spawn(tcp, &shared, &settings, &drain),
                Err(e) => handle_accept_error(e).await,
            },
        }
    }
    // Connections the kernel already completed sit in the backlog; closing
    // the listener would reset them after their client may have sent a
    // request. Take them in (they are served with `Connection: close`).
    while let Some(Ok((tcp, _))) = listener.accept().now_or_never() {
        spawn(tcp, &shared, &settings, &drain);
    }
}

fn spawn(tcp: TcpStream, shared: &Arc<Shared>, settings: &ConnSettings, drain: &Drain) {
    let Ok(peer) = tcp.peer_addr() else { return };
    // Small responses must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    drain.tracker.spawn(conn::serve(tcp, peer, shared.clone(), settings.clone(), "http"));
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
