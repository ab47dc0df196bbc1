//! Accepts TCP connections and serves HTTP/1.1 on each: at most
//! `server.max_connections` open (the one idle longest closed to admit a new
//! one), a request head due within `server.head_timeout` of its first byte, an
//! idle connection closed after `server.idle_timeout`, a cap on head size,
//! socket options that notice a vanished peer, a descriptor shortage survived
//! rather than spun on, and graceful shutdown.
//!
//! # Layout
//!
//! - `slots`: the cap, and the index of idle connections by age.
//! - `tracked`: the socket and service wrappers that tell a connection its phase.
//! - `handoff`: streams written past hyper once it wrote their head.

mod handoff;
mod slots;
mod tracked;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::http::Request;
use axum::response::Response;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::metrics::{CloseReason, ConnectionMetrics};
pub(crate) use handoff::WrittenPastHyper;
pub(crate) use slots::Timeouts;
use slots::{Admission, Connection, Phase, Slots};
use tracked::{TrackedService, WatchedSocket};

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

/// What answers each request: the routes and the layers in front of them.
pub(crate) trait App:
    tower::Service<
        Request<Incoming>,
        Response = Response,
        Error = Infallible,
        Future: Unpin + Send + 'static,
    > + Clone
    + Send
    + Sync
    + Unpin
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Unpin + Send + 'static,
        > + Clone
        + Send
        + Sync
        + Unpin
        + 'static
{
}

/// How connections are served.
pub(crate) struct ConnectionSettings {
    /// Open connections at most.
    pub(crate) max_connections: usize,
    /// The head and idle timeouts.
    pub(crate) timeouts: Timeouts,
    /// How long shutdown waits for open connections.
    pub(crate) grace: Duration,
}

/// Serves `app` on every connection `listener` accepts until `stopping` is
/// cancelled; then closes idle connections, lets the others finish the
/// request they are receiving or answering, and waits for them at most
/// `settings.grace`.
pub(crate) async fn serve_connections<S>(
    listener: TcpListener,
    app: S,
    settings: ConnectionSettings,
    stopping: CancellationToken,
    metrics: ConnectionMetrics,
) where
    S: App,
{
    let mut http = http1::Builder::new();
    // Heads are timed here, from their first byte: hyper's own timer would
    // also run while a kept-alive connection waits for its next request.
    http.header_read_timeout(None).max_buf_size(MAX_HEAD_BYTES);
    let slots = Slots::new(settings.max_connections, settings.timeouts);
    let tasks = TaskTracker::new();
    let mut accept_errors = Throttled::default();
    let mut refusals = Throttled::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping.cancelled() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(err) => {
                accept_errors.log(|unlogged| {
                    error!(%err, since_last_logged = unlogged, "cannot accept connections; serving those open, retrying");
                });
                // Out of descriptors, most often: serve what is open, and try
                // again once some have been freed.
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let connection = match slots.admit() {
            Admission::Admitted(connection) => connection,
            Admission::AdmittedByEviction(connection) => {
                metrics.closed(CloseReason::Evicted);
                connection
            }
            Admission::Refused => {
                metrics.closed(CloseReason::Refused);
                refusals.log(|unlogged| {
                    warn!(
                        max_connections = settings.max_connections,
                        since_last_logged = unlogged,
                        "connection limit reached with every connection busy; closing new connections"
                    );
                });
                drop(tcp);
                continue;
            }
        };
        metrics.set_open(slots.open());
        configure(&tcp);
        let served = http.serve_connection(
            TokioIo::new(WatchedSocket::new(tcp, connection.clone())),
            TrackedService::new(app.clone(), connection.clone()),
        );
        let stopping = stopping.clone();
        let metrics = metrics.clone();
        let slots = slots.clone();
        let streams = tasks.clone();
        let closing = metrics.clone();
        tasks.spawn(async move {
            let ended = serve_one(served, &connection, &stopping).await;
            let release = move || {
                connection.release();
                metrics.set_open(slots.open());
            };
            match ended {
                Ended::Closed(reason) => {
                    if let Some(reason) = reason {
                        closing.closed(reason);
                    }
                    release();
                }
                // A task of its own, so that what served the head is freed.
                Ended::HandedOff(tcp, stream) => {
                    streams.spawn(async move {
                        handoff::write_stream(tcp, stream).await;
                        release();
                    });
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(settings.grace, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            grace = ?settings.grace,
            "connections still open after the grace period; exiting anyway"
        );
    }
}

/// How hyper's part of a connection ended.
enum Ended {
    /// The connection is closed; why, if the server closed it.
    Closed(Option<CloseReason>),
    /// A stream's head is written: its body is to be written past hyper.
    HandedOff(TcpStream, handoff::PendingStream),
}

/// Serves one connection until it ends, is evicted, times out, or shutdown
/// finds it idle (returns why the server closed it, if it did), or until a
/// stream's head is written and the socket leaves hyper.
async fn serve_one<S>(
    mut served: http1::Connection<TokioIo<WatchedSocket>, TrackedService<S>>,
    connection: &Connection,
    stopping: &CancellationToken,
) -> Ended
where
    S: App,
{
    let timeouts = connection.timeouts();
    let timer = tokio::time::sleep(Duration::ZERO);
    // Made once, not on every turn of the loop: each would register with its
    // token or its `Notify` when first polled and unregister when dropped, a
    // few times a request.
    let evicted = connection.evict.cancelled();
    let stopped = stopping.cancelled();
    let changed = connection.changed.notified();
    tokio::pin!(timer, evicted, stopped, changed);
    // The signals above are polled with a waker of their own, and only when
    // one of them woke it (or was just made or reset): not on every turn of
    // hyper, where each poll took a lock (the shutdown token's and its
    // `Notify`'s shared by every connection) for nothing.
    let signals = Arc::new(Signals::default());
    let signal_waker = Waker::from(signals.clone());
    let mut poll_signals = true;
    let mut shutting_down = false;
    let mut set_to: Option<Instant> = None;
    loop {
        let event = std::future::poll_fn(|cx| {
            // The connection first, so what it has to write is flushed before
            // it is closed for any of the reasons below.
            if let Poll::Ready(ended) = Pin::new(&mut served).poll(cx) {
                return Poll::Ready(Event::Ended(ended));
            }
            signals.task.register(cx.waker());
            // Its phase changes only while hyper runs it, just above: the
            // timer follows it here, with no wake-up of its own. A later
            // deadline (each request's end moves the idle one) leaves the
            // timer as it is: when it fires, the deadline is looked at again.
            let deadline = connection.deadline();
            if let Some(at) = deadline
                && (set_to.is_none_or(|armed| at < armed) || timer.is_elapsed())
            {
                timer.as_mut().reset(at);
                set_to = Some(at);
                poll_signals = true;
            }
            let fired = signals.fired.swap(false, Ordering::AcqRel);
            if !std::mem::take(&mut poll_signals) && !fired {
                return Poll::Pending;
            }
            let mut cx = Context::from_waker(&signal_waker);
            let cx = &mut cx;
            if evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Evicted);
            }
            if !shutting_down && stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stopping);
            }
            if changed.as_mut().poll(cx).is_ready() {
                changed.set(connection.changed.notified());
                return Poll::Ready(Event::Changed);
            }
            if deadline.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Deadline);
            }
            Poll::Pending
        })
        .await;
        // Whatever happened, every signal is polled on the next turn (a new
        // `Notified` must be, to be registered).
        poll_signals = true;
        match event {
            Event::Ended(ended) => {
                if let Err(err) = ended {
                    debug!(%err, "connection ended with an error");
                }
                return Ended::Closed(None);
            }
            Event::Evicted => {
                debug!("closed, idle longest, to admit a new connection");
                // Counted when the new connection was admitted.
                return Ended::Closed(None);
            }
            Event::Stopping => {
                shutting_down = true;
                if let Phase::Idle { .. } = connection.phase() {
                    return Ended::Closed(None);
                }
                // Finish the request in progress, or begun (bounded by the
                // head timeout), then close.
                Pin::new(&mut served).graceful_shutdown();
            }
            Event::Changed => {
                if let Some(stream) = connection.handoff.take_ready() {
                    // hyper wrote the head and flushed it: nothing of it is
                    // left in hyper's buffer, and what it read past the head
                    // (a client sends nothing while its stream is open) is dropped.
                    let tcp = served.into_parts().io.into_inner().into_tcp();
                    return Ended::HandedOff(tcp, stream);
                }
            }
            Event::Deadline => match connection.phase() {
                Phase::Idle { since } if Instant::now() >= since + timeouts.idle => {
                    debug!("closed after server.idle_timeout idle");
                    return Ended::Closed(Some(CloseReason::IdleTimeout));
                }
                Phase::Head { since } if Instant::now() >= since + timeouts.head => {
                    debug!("closed: the request head did not arrive within server.head_timeout");
                    return Ended::Closed(Some(CloseReason::HeadTimeout));
                }
                _ => {}
            },
        }
    }
}

/// The waker a connection's signals (eviction, shutdown, a stream ready, the
/// timer) are polled with: it marks that one of them fired, and wakes the
/// connection's task.
#[derive(Default)]
struct Signals {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signals {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What woke a connection's task and needs more than hyper's turn.
enum Event {
    /// hyper is done with the connection.
    Ended(hyper::Result<()>),
    /// Closed to admit a new connection.
    Evicted,
    /// The server is shutting down.
    Stopping,
    /// A stream is ready to leave hyper, perhaps.
    Changed,
    /// The timer fired: a deadline may have passed.
    Deadline,
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

/// Logs a recurring failure at most once every `ACCEPT_ERROR_LOG_EVERY`, with
/// a count of those not logged, so that a descriptor shortage or a full
/// connection table does not flood the log.
#[derive(Default)]
struct Throttled {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    fn log(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < ACCEPT_ERROR_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        log(self.unlogged);
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}
