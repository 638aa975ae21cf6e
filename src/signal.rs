//! Turns Unix signals into the events `run` understands.

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_tokio::Signals;

/// Something from outside that changes what the proxy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT: drain (a second one: stop now).
    Stop,
    /// SIGHUP: reload what can be reloaded (and pass it on to a supervised app).
    Reload,
    /// SIGUSR1 or SIGUSR2: the supervised app's; passed on unchanged.
    User(i32),
}

impl Event {
    /// The signal a supervised app gets for this event, if any.
    pub fn app_signal(self) -> Option<nix::sys::signal::Signal> {
        match self {
            Event::Stop => None,
            Event::Reload => Some(nix::sys::signal::Signal::SIGHUP),
            Event::User(sig) => nix::sys::signal::Signal::try_from(sig).ok(),
        }
    }
}

/// Registers the handlers; call it before binding so that a signal arriving
/// during start-up is not lost (it drains right after start).
pub fn events() -> std::io::Result<impl Stream<Item = Event> + Unpin + Send> {
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])?;
    Ok(signals.map(|sig| match sig {
        SIGHUP => Event::Reload,
        SIGUSR1 | SIGUSR2 => Event::User(sig),
        _ => Event::Stop,
    }))
}
