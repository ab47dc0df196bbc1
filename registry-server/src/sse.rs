//! Server-Sent Events as they go on the wire (the `text/event-stream` format
//! of the HTML standard), for the agents' streams and the fleet's: each event
//! made in one buffer sized for it, its data written there in place (a
//! command's serialized and signed in it, with no copy), and a comment sent
//! when nothing else was for a while.
//!
//! Only what the streams send is written: events of one `data:` line, whose
//! data is compact JSON (which escapes line breaks: an event with a line break
//! in a field is refused, never split over lines), comments, and `retry:`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// What an event's field names and line ends take: `id: `, `event: `,
/// `data: `, three line ends and the blank line.
const FIELDS_ROOM: usize = 4 + 7 + 6 + 4;

/// An event being made: its `id:` and `event:` lines written, its data
/// appended to [`data`](Self::data), then [`finish`](Self::finish)ed.
pub(crate) struct EventFrame {
    buffer: Vec<u8>,
    /// Where the data starts in `buffer`.
    data_start: usize,
    /// The id or the name held a line break.
    broken: bool,
}

/// An event field held a line break, which would have ended the field early.
#[derive(Debug, thiserror::Error)]
#[error("an event field holds a line break")]
pub(crate) struct LineBreak;

impl EventFrame {
    /// The event `name`, with `id` when it has one, and room for `data_room`
    /// bytes of data.
    pub(crate) fn new(name: &str, id: Option<&str>, data_room: usize) -> Self {
        let id_room = id.map_or(0, str::len);
        let mut buffer = Vec::with_capacity(FIELDS_ROOM + id_room + name.len() + data_room);
        if let Some(id) = id {
            buffer.extend_from_slice(b"id: ");
            buffer.extend_from_slice(id.as_bytes());
            buffer.push(b'\n');
        }
        buffer.extend_from_slice(b"event: ");
        buffer.extend_from_slice(name.as_bytes());
        buffer.extend_from_slice(b"\ndata: ");
        Self {
            data_start: buffer.len(),
            buffer,
            broken: has_line_break(name.as_bytes())
                || id.is_some_and(|id| has_line_break(id.as_bytes())),
        }
    }

    /// Where the event's data is written: appended to this buffer.
    pub(crate) fn data(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// The event as it is sent, its data ended; refused if a field holds a
    /// line break (the fields' own line ends are the only ones).
    pub(crate) fn finish(mut self) -> Result<Bytes, LineBreak> {
        if self.broken || has_line_break(&self.buffer[self.data_start..]) {
            return Err(LineBreak);
        }
        self.buffer.extend_from_slice(b"\n\n");
        Ok(Bytes::from(self.buffer))
    }
}

/// Whether `field` holds a CR or LF, which would end it early.
fn has_line_break(field: &[u8]) -> bool {
    memchr::memchr2(b'\n', b'\r', field).is_some()
}

/// A comment alone: `: text`.
pub(crate) fn comment(text: &'static str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}

/// `retry: N` (milliseconds), then the comment `text`: how a stream opens.
pub(crate) fn retry_then_comment(retry: Duration, text: &'static str) -> Bytes {
    Bytes::from(format!("retry: {}\n: {text}\n\n", retry.as_millis()))
}

/// The comment `text`, then `retry: N` (milliseconds): how a replaced stream ends.
pub(crate) fn comment_then_retry(text: &'static str, retry: Duration) -> Bytes {
    Bytes::from(format!(": {text}\nretry: {}\n\n", retry.as_millis()))
}

pin_project! {
    /// `events`, with the comment `: keepalive` whenever nothing was sent for
    /// `interval`. An event does not move the timer (a fleet command would
    /// otherwise reset one per stream): when the timer fires after an event,
    /// it is set again from that event.
    pub(crate) struct WithKeepAlive<S> {
        #[pin]
        events: S,
        interval: Duration,
        last_sent: Instant,
        #[pin]
        timer: Sleep,
    }
}

impl<S> WithKeepAlive<S> {
    pub(crate) fn new(events: S, interval: Duration) -> Self {
        let now = Instant::now();
        Self {
            events,
            interval,
            last_sent: now,
            timer: tokio::time::sleep_until(now + interval),
        }
    }
}

impl<S: Stream<Item = Bytes>> Stream for WithKeepAlive<S> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Poll::Ready(event) = this.events.poll_next(cx) {
            if event.is_some() {
                *this.last_sent = Instant::now();
            }
            return Poll::Ready(event.map(Ok));
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let due = *this.last_sent + *this.interval;
            let now = Instant::now();
            if due <= now {
                *this.last_sent = now;
                this.timer.as_mut().reset(now + *this.interval);
                return Poll::Ready(Some(Ok(comment("keepalive"))));
            }
            this.timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn an_event_is_its_fields_then_a_blank_line() {
        let mut frame = EventFrame::new("restart", Some("0193-id"), 8);
        frame.data().extend_from_slice(br#"{"a":1}"#);
        assert_eq!(
            &frame.finish().unwrap()[..],
            b"id: 0193-id\nevent: restart\ndata: {\"a\":1}\n\n"
        );
        let mut frame = EventFrame::new("agent", None, 0);
        frame.data().extend_from_slice(b"{}");
        assert_eq!(&frame.finish().unwrap()[..], b"event: agent\ndata: {}\n\n");
    }

    #[test]
    fn a_line_break_in_a_field_refuses_the_event() {
        for (name, id, data) in [
            ("a", None, "x\ny"),
            ("a", None, "x\ry"),
            ("a\nb", None, "x"),
            ("a", Some("1\n2"), "x"),
        ] {
            let mut frame = EventFrame::new(name, id, 0);
            frame.data().extend_from_slice(data.as_bytes());
            assert!(frame.finish().is_err(), "{name:?} {id:?} {data:?}");
        }
    }

    #[test]
    fn comments_and_retry_read_as_written() {
        assert_eq!(&comment("open")[..], b": open\n\n");
        let retry = Duration::from_millis(5_250);
        assert_eq!(
            &retry_then_comment(retry, "open")[..],
            b"retry: 5250\n: open\n\n"
        );
        assert_eq!(
            &comment_then_retry("replaced", retry)[..],
            b": replaced\nretry: 5250\n\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_keepalive_comes_after_an_interval_with_nothing_sent() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let events = tokio_stream_of(receiver);
        let mut stream = Box::pin(WithKeepAlive::new(events, Duration::from_secs(10)));
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(6)).await;
        sender.send(Bytes::from_static(b"event\n\n")).unwrap();
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"event\n\n");
        // Ten seconds after the event, not after the start.
        assert_eq!(
            &stream.next().await.unwrap().unwrap()[..],
            b": keepalive\n\n"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(16));
        assert_eq!(
            &stream.next().await.unwrap().unwrap()[..],
            b": keepalive\n\n"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(26));
        drop(sender);
        assert!(stream.next().await.is_none());
    }

    fn tokio_stream_of(
        mut receiver: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ) -> impl Stream<Item = Bytes> {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
