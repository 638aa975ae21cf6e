//! The accept loop: hands each client socket to its own tracked task, survives every accept error.

use std::{io, sync::Arc, time::Duration};

use futures_util::FutureExt;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tracing::{error, warn};

use crate::{
    conn::{self, ConnSettings},
    drain::Phase,
    proxy::Shared,
};

/// Accepts until the phase reaches `Closing`, then closes the listener so new
/// connects are refused.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    settings: ConnSettings,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
) {
    let drain = shared.drain.clone();
    // At the limit, new connections wait in the kernel's listen backlog
    // (clients see a slow connect, not an error) until a slot frees up.
    let slots = Arc::new(Semaphore::new(max_connections));
    let spawn = |tcp: TcpStream, permit: OwnedSemaphorePermit| {
        let Ok(peer) = tcp.peer_addr() else { return };
        // Small responses must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let (shared, settings) = (shared.clone(), settings.clone());
        match &tls {
            Some(tls) => drain.tracker.spawn(conn::serve_tls(tcp, peer, shared, settings, tls.clone(), Some(permit))),
            None => drain.tracker.spawn(conn::serve(tcp, peer, shared, settings, "http", None, Some(permit))),
        };
    };
    loop {
        let permit = tokio::select! {
            _ = drain.reached(Phase::Closing) => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        tokio::select! {
            _ = drain.reached(Phase::Closing) => break,
            res = listener.accept() => match res {
                Ok((tcp, _)) => spawn(tcp, permit),
                Err(e) => handle_accept_error(e).await,
            },
        }
    }
    // Connections the kernel already completed sit in the backlog; closing
    // the listener would reset them after their client may have sent a
    // request. Take them in (they are served with `Connection: close`),
    // beyond the limit if need be: the process is about to exit anyway.
    while let Some(Ok((tcp, _))) = listener.accept().now_or_never() {
        let permit = slots.clone().try_acquire_owned().unwrap_or_else(|_| {
            slots.add_permits(1);
            slots.clone().try_acquire_owned().expect("just added")
        });
        spawn(tcp, permit);
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
