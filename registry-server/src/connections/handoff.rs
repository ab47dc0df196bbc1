//! Streams written past hyper: hyper parses the request, the router and
//! every layer answer it as any other, hyper writes the response's head, and
//! then the connection leaves hyper. Its body (an SSE stream, open for
//! hours) is written straight to the socket by a small task of its own,
//! which notices the client leave by the socket turning readable.
//!
//! Why: while hyper serves a response it holds an 8 KiB write buffer and,
//! watching for the client closing, an 8 KiB read buffer, for as long as the
//! response lasts: most of what an open stream cost. What is left per stream
//! is the socket, the body and this task.
//!
//! The route marks its response with [`WrittenPastHyper`]; the connection's
//! service then answers hyper with the same head and a body that never
//! yields ([`HandOff::placeholder`]), and keeps the real body aside. Once
//! hyper has written the head and flushed it (the socket sees its flush),
//! the connection's task takes the socket back from hyper
//! (`http1::Connection::into_parts`) and hands it, with the body, to
//! [`write_stream`]. The head says `Connection: close`: the connection ends
//! with its stream.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use http_body::Body as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::tracked::InFlight;

/// Marks a response whose body is written past hyper (see the module's comment).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrittenPastHyper;

/// A body kept aside until the socket is taken back from hyper.
pub(super) struct PendingStream {
    pub(super) body: Body,
    /// Whether the body is sent in chunks (HTTP/1.1) or delimited by the
    /// connection's end (HTTP/1.0), as hyper announced it in the head.
    pub(super) chunked: bool,
    /// Keeps the request in progress, so the connection is never taken for idle.
    pub(super) _in_flight: InFlight,
}

/// One connection's hand-off, from its service (which arms it) through its
/// socket (which sees the head flushed) to its task (which takes it).
#[derive(Default)]
pub(super) struct HandOff {
    pending: Mutex<Option<PendingStream>>,
    /// hyper has the head in its buffer: its placeholder body was asked for a frame.
    head_written: AtomicBool,
    /// hyper has flushed what it buffered since, the head included.
    ready: AtomicBool,
}

impl HandOff {
    /// Keeps `stream` aside for the connection's task.
    pub(super) fn arm(&self, stream: PendingStream) {
        *self.lock() = Some(stream);
    }

    /// hyper asked the placeholder body for its first frame: the head is in its buffer.
    pub(super) fn head_written(&self) {
        self.head_written.store(true, Ordering::Release);
    }

    /// hyper flushed the socket, its buffer empty; returns whether that made
    /// the hand-off ready (the head was written before).
    pub(super) fn flushed(&self) -> bool {
        self.head_written.load(Ordering::Acquire) && !self.ready.swap(true, Ordering::AcqRel)
    }

    /// The stream to write, once hyper has written and flushed its head.
    pub(super) fn take_ready(&self) -> Option<PendingStream> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PendingStream>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `stream`'s body to `tcp` until the body ends, the client leaves,
/// or a write fails; then closes the connection. Each frame is written as
/// hyper would have: a chunk (or, for HTTP/1.0, as it is), the last chunk
/// after the body's end.
pub(super) async fn write_stream(mut tcp: TcpStream, stream: PendingStream) {
    // The request stays in progress until this returns.
    let PendingStream {
        mut body,
        chunked,
        _in_flight: _request,
    } = stream;
    if write_frames(&tcp, &mut body, chunked).await {
        let _ = tcp.shutdown().await;
    }
}

/// Writes `body`'s frames to `tcp`; returns whether the body ended (its
/// last chunk written), rather than the client leaving or a write failing.
async fn write_frames(tcp: &TcpStream, body: &mut Body, chunked: bool) -> bool {
    loop {
        let frame = tokio::select! {
            // The client leaving first: a stream whose reader left is not written to.
            biased;
            left = poll_fn(|cx| client_left(tcp, cx)) => {
                debug!(?left, "stream closed by the client");
                return false;
            }
            frame = poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)) => frame,
        };
        let written = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => write_all(tcp, &encode(data, chunked)).await,
                // Trailers: an SSE stream has none.
                Err(_) => Ok(()),
            },
            Some(Err(err)) => {
                debug!(%err, "stream body failed; closing its connection");
                return false;
            }
            None => {
                if chunked {
                    let _ = write_all(tcp, b"0\r\n\r\n").await;
                }
                return true;
            }
        };
        if let Err(err) = written {
            debug!(%err, "stream could not be written; closing its connection");
            return false;
        }
    }
}

/// Writes all of `bytes` to `tcp`, waiting for room when its buffer is full
/// (polled, for the reason `client_left` is).
async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match tcp.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                poll_fn(|cx| tcp.poll_write_ready(cx)).await?;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// One frame as it goes on the wire: `len CRLF data CRLF` when chunked,
/// made in one buffer of its size (written with one `send`).
fn encode(data: Bytes, chunked: bool) -> Bytes {
    if !chunked || data.is_empty() {
        return data;
    }
    let mut chunk = BytesMut::with_capacity(data.len() + CHUNK_SIZE_LINE_MAX + 2);
    put_chunk_size_line(&mut chunk, data.len());
    chunk.extend_from_slice(&data);
    chunk.extend_from_slice(b"\r\n");
    chunk.freeze()
}

/// The longest `len CRLF`: 16 hexadecimal digits and CRLF.
const CHUNK_SIZE_LINE_MAX: usize = 2 * size_of::<usize>() + 2;

/// Appends `len CRLF`, the length in hexadecimal, as a chunk starts.
fn put_chunk_size_line(chunk: &mut BytesMut, len: usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut line = [0_u8; CHUNK_SIZE_LINE_MAX];
    let mut start = line.len() - 2;
    line[start..].copy_from_slice(b"\r\n");
    let mut rest = len;
    loop {
        start -= 1;
        line[start] = HEX[rest % 16];
        rest /= 16;
        if rest == 0 {
            break;
        }
    }
    chunk.extend_from_slice(&line[start..]);
}

/// Resolves when the client has closed its side (or the socket failed). A
/// client sends nothing while its stream is open; anything it does send is
/// read and dropped, as the connection ends with the stream.
///
/// Polled, not awaited through `readable()`: the task's waker sits in the
/// socket's one slot for readers rather than in a waiter of its own kept in
/// every stream's state.
fn client_left(tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let mut discard = [0_u8; 64];
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        match tcp.try_read(&mut discard) {
            Ok(0) => return Poll::Ready(Ok(())),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Poll::Ready(Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_chunks_over_http_1_1_and_as_they_are_over_http_1_0() {
        let data = Bytes::from_static(b"data: x\n\n");
        assert_eq!(&encode(data.clone(), true)[..], b"9\r\ndata: x\n\n\r\n");
        assert_eq!(&encode(data, false)[..], b"data: x\n\n");
        assert!(encode(Bytes::new(), true).is_empty());
        let line = |len| {
            let mut line = BytesMut::new();
            put_chunk_size_line(&mut line, len);
            line
        };
        assert_eq!(&line(0x1A2F)[..], b"1A2F\r\n");
        assert_eq!(&line(usize::MAX)[..], b"FFFFFFFFFFFFFFFF\r\n");
    }
}
