//! Supervisor mode: run the app as our child, learn when it is ready, and stop it only after the drain.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use futures_util::StreamExt;
use nix::{
    sys::{
        signal::{kill, killpg, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};
use signal_hook_tokio::Signals;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The app command line and how to stop it.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Sent once the drain is over.
    pub stop_signal: Signal,
    /// How long the app may take to exit after `stop_signal` before SIGKILL.
    pub grace: Duration,
}

/// The app could not be started; `code` is what a shell would exit with.
#[derive(Debug)]
pub struct SpawnError {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpawnError {}

/// The running app.
pub struct App {
    pid: Pid,
    /// `Some(exit code)` once the app has exited (128 + signal when killed).
    exited: watch::Receiver<Option<u8>>,
}

impl App {
    /// Starts the app with our stdout, stderr and environment, in its own
    /// process group so that a terminal's Ctrl-C reaches only us: the app
    /// must outlive the drain.
    pub fn spawn(spec: &AppSpec) -> Result<App, SpawnError> {
        // Registered before the child exists, so its SIGCHLD cannot be missed.
        let sigchld = Signals::new([signal_hook::consts::SIGCHLD])
            .map_err(|e| SpawnError { code: 1, message: format!("cannot watch for the app's exit: {e}") })?;
        let name = spec.program.to_string_lossy().into_owned();
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SpawnError { code: 127, message: format!("{name}: command not found") },
                std::io::ErrorKind::PermissionDenied => {
                    SpawnError { code: 126, message: format!("{name}: permission denied (not executable?)") }
                }
                _ => SpawnError { code: 126, message: format!("{name}: cannot execute: {e}") },
            })?;
        let pid = Pid::from_raw(child.id() as i32);
        // We reap by pid below; the std handle must not wait too.
        drop(child);
        info!(pid = pid.as_raw(), command = %name, "app started");
        let (tx, exited) = watch::channel(None);
        tokio::spawn(reap(pid, sigchld, tx));
        Ok(App { pid, exited })
    }

    /// Resolves with the app's exit code once it has exited.
    pub async fn exited(&self) -> u8 {
        let mut rx = self.exited.clone();
        let code = rx.wait_for(Option::is_some).await.map(|c| *c);
        // The reaper only stops after sending; a closed channel means it is gone with the runtime.
        code.ok().flatten().unwrap_or(1)
    }

    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Passes a signal on unchanged.
    pub fn signal(&self, sig: Signal) {
        if !self.has_exited() {
            if let Err(e) = kill(self.pid, sig) {
                warn!(signal = %sig, error = %e, "cannot signal the app");
            }
        }
    }

    /// Stop and kill signals go to the app's whole process group, so that
    /// helpers a shell wrapper started do not outlive it.
    pub fn signal_group(&self, sig: Signal) {
        if !self.has_exited() {
            if let Err(e) = killpg(self.pid, sig) {
                warn!(signal = %sig, error = %e, "cannot signal the app's process group");
            }
        }
    }

    /// Sends the stop signal, waits up to the grace, then SIGKILLs; returns the exit code.
    pub async fn stop(&self, spec: &AppSpec) -> u8 {
        if !self.has_exited() {
            info!(signal = %spec.stop_signal, grace = ?spec.grace, "stopping the app");
            self.signal_group(spec.stop_signal);
            if tokio::time::timeout(spec.grace, self.exited()).await.is_err() {
                warn!(grace = ?spec.grace, "the app did not exit in time; sending SIGKILL");
                self.signal_group(Signal::SIGKILL);
            }
        }
        self.exited().await
    }
}

/// Reaps every child that exits, the app and, when we are PID 1, the orphans
/// the kernel hands us; reports the app's exit code.
async fn reap(app: Pid, mut sigchld: Signals, tx: watch::Sender<Option<u8>>) {
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == app => {
                    info!(code, "app exited");
                    let _ = tx.send(Some(code as u8));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == app => {
                    info!(signal = %sig, "app killed by a signal");
                    let _ = tx.send(Some(128 + sig as u8));
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(other) => debug!(status = ?other, "reaped a child"),
            }
        }
        if sigchld.next().await.is_none() {
            return;
        }
    }
}

/// `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>()
        .or_else(|_| s.parse::<i32>().map_err(|_| ()).and_then(|n| Signal::try_from(n).map_err(|_| ())))
        .map_err(|_| format!("invalid signal {s:?}: expected e.g. SIGTERM, INT or 15"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("quit").unwrap(), Signal::SIGQUIT);
        assert_eq!(parse_signal("2").unwrap(), Signal::SIGINT);
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
