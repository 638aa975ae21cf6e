//! Turns Unix signals into the events `run` understands.

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

/// Something from outside that changes what the proxy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT: drain (a second one: stop now).
    Stop,
    /// SIGHUP: reload what can be reloaded.
    Reload,
}

/// Registers the handlers; call it before binding so that a signal arriving
/// during start-up is not lost (it drains right after start).
pub fn events() -> std::io::Result<impl Stream<Item = Event> + Unpin + Send> {
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    Ok(signals.map(|sig| if sig == SIGHUP { Event::Reload } else { Event::Stop }))
}
