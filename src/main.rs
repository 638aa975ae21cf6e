//! The binary: config (exit 2 on error) → logs on stderr → run until the signals say stop → exit.

use std::{
    alloc::{GlobalAlloc, Layout},
    io::IsTerminal,
    process::ExitCode,
};

use libmimalloc_sys as mi;

use drainproxy::{
    config::{self, Command, Config, Invocation, LogFormat},
    supervisor::SpawnError,
};
use tracing::error;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, asked for explicit alignment only when the layout needs more
/// than `mi_malloc` always gives (as std's `System` does with `malloc`).
/// `mimalloc::MiMalloc` calls `mi_malloc_aligned` for everything, whose slow
/// path over-allocates blocks above 1 KiB that are not a power of two
/// (hyper's buffers, boxed futures): ~540 instructions per request
/// (`bench/callgrind.sh`).
struct Mimalloc;

/// The alignment `mi_malloc` guarantees (mimalloc's `MI_MAX_ALIGN_SIZE`);
/// a layout's size is a multiple of its alignment, so smaller blocks need no more.
const MI_MAX_ALIGN: usize = 16;

// SAFETY: every call forwards to the mimalloc function with the same
// contract; the plain ones only when `layout.align() <= MI_MAX_ALIGN`, which
// they satisfy. Memory from any of them is freed by `mi_free`.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MI_MAX_ALIGN {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MI_MAX_ALIGN {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _: Layout) {
        unsafe { mi::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MI_MAX_ALIGN {
            unsafe { mi::mi_realloc(ptr.cast(), new_size) as *mut u8 }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()) as *mut u8 }
        }
    }
}

fn main() -> ExitCode {
    // SAFETY: `mi_collect` only returns mimalloc's free pages to the OS; it
    // may be called at any time, from any thread.
    drainproxy::park::set_memory_release(|| unsafe { mi::mi_collect(true) });
    // Exits 2 with one clear line on any config error, before anything binds.
    let invocation = config::from_args();
    // A panic in one connection's task is caught by the runtime and ends
    // only that connection; make sure it is never silent.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
    }));
    if let Invocation::Serve(config) = &invocation {
        init_logs(config);
    }
    // On one CPU (a pinned sidecar, a 1-core limit) a single-threaded
    // runtime skips work-stealing and cross-thread wake-ups entirely.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drainproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match invocation {
            Invocation::Serve(config) => {
                let signals = drainproxy::signal::events()?;
                drainproxy::run(*config, signals).await.map(|outcome| outcome.exit_code)
            }
            Invocation::Client(Command::Drain { admin, wait, timeout }) => {
                drainproxy::drain_client::drain(admin.0, wait, timeout).await.map(|()| 0)
            }
            Invocation::Client(Command::Health { admin }) => {
                drainproxy::drain_client::health(admin.0).await.map(|()| 0)
            }
        }
    });
    // Whatever is still open is closed with the process, without waiting.
    runtime.shutdown_background();
    let e = match result {
        Ok(code) => return ExitCode::from(code),
        Err(e) => e,
    };
    if tracing::dispatcher::has_been_set() {
        error!("{e:#}");
    } else {
        eprintln!("drainproxy: {e:#}");
    }
    // A shell's codes for an app that cannot start: 127 not found, 126 not executable.
    e.downcast_ref::<SpawnError>().map_or(ExitCode::FAILURE, |spawn| ExitCode::from(spawn.code))
}

/// Logs go to stderr; `--log-level` wins over RUST_LOG, which wins over `info`.
fn init_logs(config: &Config) {
    let filter = match &config.log_level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("error: invalid --log-level {level:?}: {e}");
            std::process::exit(2)
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
