//! Accepts TCP connections and serves HTTP/1.1 on each: socket options that
//! notice a vanished peer, a deadline for request heads, a cap on their size,
//! a descriptor shortage survived rather than spun on, and graceful shutdown.

use std::io;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// The largest request head (request line and headers); larger is 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Idle time before TCP keepalive probes start, their interval, and how many go
/// unanswered before the connection is dropped.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
/// How long written data may stay unacknowledged before the peer is taken for
/// gone. A stream writes at least a keepalive comment every `sse.keepalive`, so
/// a peer that vanished is noticed within this long after that.
const UNACKED_DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed accept (such as running out of descriptors), and how
/// often such failures are logged at most.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on every connection `listener` accepts until `stopping` is
/// cancelled; then waits for open connections to finish, at most `grace`. A
/// connection without a complete request head for `idle_timeout` is closed.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    idle_timeout: Duration,
    stopping: CancellationToken,
    grace: Duration,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // hyper's head timer also runs while a kept-alive connection waits for
        // its next request, so it is the idle timeout too.
        .header_read_timeout(idle_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(err) => {
                accept_errors.record(&err);
                // Out of descriptors, most often: serve what is open, and try
                // again once some have been freed.
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        configure(&tcp);
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(%err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            ?grace,
            "connections still open after the grace period; exiting anyway"
        );
    }
}

/// Sets the options every accepted socket gets.
fn configure(tcp: &TcpStream) {
    // Commands are small and must go out at once: no Nagle delay.
    if let Err(err) = tcp.set_nodelay(true) {
        debug!(%err, "TCP_NODELAY could not be set");
    }
    let socket = SockRef::from(tcp);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(err) = socket.set_tcp_keepalive(&keepalive) {
        debug!(%err, "TCP keepalive could not be set");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket.set_tcp_user_timeout(Some(UNACKED_DATA_TIMEOUT)) {
        debug!(%err, "TCP_USER_TIMEOUT could not be set");
    }
}

/// Logs accept failures at most once every `ACCEPT_ERROR_LOG_EVERY`, with a
/// count of those not logged, so that a descriptor shortage does not flood the log.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn record(&mut self, err: &io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < ACCEPT_ERROR_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        error!(%err, since_last_logged = self.unlogged, "cannot accept connections; serving those open, retrying");
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}
