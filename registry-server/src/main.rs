//! `registry-server`: reads the configuration and serves until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use registry_server::{Cli, Config};
use tokio::net::TcpListener;
use tracing::error;
use tracing_subscriber::EnvFilter;

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

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    error!(%err, "SIGTERM can't be handled; only SIGINT will stop the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
