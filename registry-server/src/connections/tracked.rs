//! What tells a [`Connection`] its phase: the socket, which reports bytes
//! arriving (the start of a head), and the service, which marks a request in
//! progress from its parsed head until its response body is finished or
//! dropped. They also carry a stream's hand-off past hyper (`handoff`): the
//! service keeps the body aside, the socket reports the head flushed.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, Version, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::App;
use super::handoff::{PendingStream, WrittenPastHyper};
use super::slots::Connection;

/// A socket that tells its connection when bytes arrive.
pub(super) struct WatchedSocket {
    tcp: TcpStream,
    connection: Arc<Connection>,
}

impl WatchedSocket {
    pub(super) fn new(tcp: TcpStream, connection: Arc<Connection>) -> Self {
        Self { tcp, connection }
    }

    /// The socket, once hyper has let go of it.
    pub(super) fn into_tcp(self) -> TcpStream {
        self.tcp
    }
}

impl AsyncRead for WatchedSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.connection.bytes_arrived();
        }
        poll
    }
}

impl AsyncWrite for WatchedSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.tcp).poll_flush(cx);
        // hyper flushes the socket once its own buffer is written out.
        if matches!(poll, Poll::Ready(Ok(()))) && self.connection.handoff.flushed() {
            self.connection.changed.notify_one();
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The application, marking each request in progress on its connection.
/// The connection's own copy of it answers every request of the connection
/// (hyper calls it by `&self`, tower by `&mut self`, hence the cell): what
/// it keeps of a request, such as the last valid Host, serves the next.
pub(super) struct TrackedService<S> {
    app: RefCell<S>,
    connection: Arc<Connection>,
}

impl<S> TrackedService<S> {
    pub(super) fn new(app: S, connection: Arc<Connection>) -> Self {
        Self {
            app: RefCell::new(app),
            connection,
        }
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for TrackedService<S>
where
    S: App,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(self.connection.clone());
        // hyper announces a body of unknown length in chunks, but to HTTP/1.0.
        let chunked = request.version() != Version::HTTP_10;
        // `S` is always ready (the router is): called at once, not cloned
        // into a `oneshot` as `TowerToHyperService` does. hyper calls one
        // request at a time, and `call` returns before the next: the cell
        // is never borrowed twice.
        let answer = self.app.borrow_mut().call(request);
        Tracked {
            answer,
            in_flight: Some(in_flight),
            chunked,
            connection: self.connection.clone(),
        }
    }
}

/// A request's answer, then its body made to keep the request in progress,
/// or kept aside to be written past hyper. A plain value, not a boxed future.
pub(super) struct Tracked<F> {
    answer: F,
    in_flight: Option<InFlight>,
    chunked: bool,
    connection: Arc<Connection>,
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Ok(response) = ready!(Pin::new(&mut this.answer).poll(cx));
        let Some(in_flight) = this.in_flight.take() else {
            // Polled again after it answered: hyper never does.
            return Poll::Pending;
        };
        if response.extensions().get::<WrittenPastHyper>().is_none() {
            return Poll::Ready(Ok(response.map(|body| TrackedBody::Served {
                body,
                _in_flight: in_flight,
            })));
        }
        let (mut head, body) = response.into_parts();
        // The connection ends with the stream: no client should wait to reuse it.
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let connection = this.connection.clone();
        connection.handoff.arm(PendingStream {
            body,
            chunked: this.chunked,
            _in_flight: in_flight,
        });
        Poll::Ready(Ok(Response::from_parts(
            head,
            TrackedBody::HandedOff { connection },
        )))
    }
}

/// A request in progress: from its parsed head until dropped.
pub(super) struct InFlight(Arc<Connection>);

impl InFlight {
    fn start(connection: Arc<Connection>) -> Self {
        connection.request_started();
        Self(connection)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body as hyper sees it.
pub(super) enum TrackedBody {
    /// Written by hyper; keeps its request in progress until hyper is done with it.
    Served { body: Body, _in_flight: InFlight },
    /// Written past hyper: hyper writes the head, and is never given a frame.
    HandedOff { connection: Arc<Connection> },
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut() {
            Self::Served { body, .. } => Pin::new(body).poll_frame(cx),
            Self::HandedOff { connection } => {
                // Asked only once the head is in hyper's buffer. The
                // connection's task takes the socket from hyper when it is
                // flushed, and never polls hyper again.
                connection.handoff.head_written();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Served { body, .. } => body.is_end_stream(),
            Self::HandedOff { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Served { body, .. } => body.size_hint(),
            // Unknown: hyper announces chunks (or, to HTTP/1.0, the connection's end).
            Self::HandedOff { .. } => SizeHint::default(),
        }
    }
}
