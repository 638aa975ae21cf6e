//! The accept loop: hands each client socket to its own tracked task, survives every accept error.

use std::{io, sync::Arc, time::Duration};

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
    //
    // Two gaps let clients that had connected be reset (tests/zero_loss.rs):
    // tokio's cached readiness lags behind the backlog, so ask the kernel
    // itself; and a handshake can complete between the last accept and the
    // close, so first make the kernel drop new SYNs (the client retries its
    // SYN, finds the port closed: refused, safe), give handshakes already in
    // flight a moment to land, and only then take the last ones and close.
    let Ok(listener) = listener.into_std() else { return };
    stop_new_handshakes(&listener);
    for pass in 0..3 {
        if pass > 0 {
            tokio::time::sleep(HANDSHAKE_SETTLE).await;
        }
        loop {
            match listener.accept() {
                Ok((tcp, _)) => {
                    // An accepted socket does not inherit O_NONBLOCK, and tokio refuses blocking ones.
                    let Ok(tcp) = tcp.set_nonblocking(true).and_then(|()| TcpStream::from_std(tcp)) else { continue };
                    let permit = slots.clone().try_acquire_owned().unwrap_or_else(|_| {
                        slots.add_permits(1);
                        slots.clone().try_acquire_owned().expect("just added")
                    });
                    spawn(tcp, permit);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => {}
                Err(e) => return warn!(error = %e, "accepting the last connections failed"),
            }
        }
    }
}

/// How long handshakes already past their SYN get to complete before the listener closes.
const HANDSHAKE_SETTLE: Duration = Duration::from_millis(2);

/// Attaches a classic BPF filter to the listener that drops every SYN (TCP
/// flags byte & 0x02) and keeps everything else, so no new connection starts
/// while handshakes in flight still complete. Accepted sockets created later
/// inherit it, which is harmless: an established connection sees no SYN.
#[cfg(target_os = "linux")]
fn stop_new_handshakes(listener: &std::net::TcpListener) {
    use socket2::SockFilter;
    let drop_syn = [
        SockFilter::new(0x30, 0, 0, 13),          // ldb [13]        (TCP flags)
        SockFilter::new(0x45, 0, 1, 0x02),        // jset #SYN, 0, 1
        SockFilter::new(0x06, 0, 0, 0),           // ret #0          (drop)
        SockFilter::new(0x06, 0, 0, 0xFFFF_FFFF), // ret #-1         (keep)
    ];
    if let Err(e) = socket2::SockRef::from(listener).attach_filter(&drop_syn) {
        warn!(error = %e, "cannot stop new handshakes before closing the listener");
    }
}

#[cfg(not(target_os = "linux"))]
fn stop_new_handshakes(_: &std::net::TcpListener) {}

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
