//! The binary: config (exit 2 on error) → logs on stderr → run until the signals say stop → exit.

use std::process::ExitCode;

use drainproxy::config::{self, Command};
use tracing::error;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Exits 2 with one clear line on any config error, before anything binds.
    let (command, config) = config::from_args();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match (command, config) {
            (Some(Command::Drain { admin, wait, timeout }), _) => {
                drainproxy::drain_client::drain(admin.0, wait, timeout).await
            }
            (None, Ok(config)) => {
                let signals = drainproxy::signal::events()?;
                drainproxy::run(config, signals).await.map(drop)
            }
            (None, Err(())) => unreachable!("from_args returns a config when there is no subcommand"),
        }
    });
    // Whatever is still open is closed with the process, without waiting.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
