//! `registry-server`: reads the configuration and serves until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use registry_server::{Cli, Config};
use tokio::net::TcpListener;
use tracing::error;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's allocator: a fleet command allocates and
/// frees a few small buffers per stream on both workers at once, which
/// jemalloc's thread caches serve without the `mprotect` calls glibc makes
/// growing a thread's arena a page at a time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Colours only for a person at a terminal, never in a log file or pipe.
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(colour)
        // A log nobody reads any more (`| tee` ended by the same Ctrl-C) must
        // not stop the server: tracing's report of the failed write goes to
        // stderr with eprintln!, which panics when stderr is gone too, and the
        // panic would end the shutdown task before it began.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(err) => {
            error!("{err}");
            return ExitCode::from(2);
        }
    };
    // Before the port: a second server on the same file is told so, whatever its port.
    let storage = match registry_server::open_storage(&config) {
        Ok(storage) => storage,
        Err(err) => {
            error!("{err}");
            return ExitCode::from(2);
        }
    };
    let addr = match config.bind_addr() {
        Ok(addr) => addr,
        Err(err) => {
            error!("{err}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            error!("cannot listen on {addr}: {err}");
            return ExitCode::FAILURE;
        }
    };
    match registry_server::serve_with_storage(listener, config, storage, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            err
            @ (registry_server::ServeError::Config(_) | registry_server::ServeError::Storage(_)),
        ) => {
            error!("{err}");
            ExitCode::from(2)
        }
        Err(err) => {
            error!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, before the server logs that it listens: a signal sent right after
/// that line must start the shutdown, not end the process by the default
/// action (an `async fn` would install them only when first polled, by a task
/// the runtime may not have run yet).
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                (Ok(mut only), Err(err)) | (Err(err), Ok(mut only)) => {
                    error!(%err, "SIGTERM or SIGINT can't be handled; only the other will stop the server");
                    only.recv().await;
                }
                (Err(err), Err(_)) => {
                    error!(%err, "neither SIGTERM nor SIGINT can be handled; only SIGKILL will stop the server");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
