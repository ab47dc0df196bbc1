//! An incremental parser of `text/event-stream` (the `id:`, `event:` and
//! `data:` lines of Server-Sent Events), and the marker the generator puts in
//! every message it pushes so that each arrival is matched to its push.

/// One dispatched event. `id` and `event` are empty when the event had none.
#[derive(Debug)]
pub(crate) struct SseEvent<'a> {
    /// The `id:` field.
    pub(crate) id: &'a [u8],
    /// The `event:` field (the command type on our server).
    pub(crate) event: &'a [u8],
    /// The `data:` lines, joined by LF.
    pub(crate) data: &'a [u8],
}

/// Collects lines across reads and dispatches events at each blank line.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    id: Vec<u8>,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    comments: u64,
    retry_ms: Option<u64>,
}

impl SseParser {
    /// How many comment lines (`: ...`, keepalives) have been seen.
    pub(crate) fn comments(&self) -> u64 {
        self.comments
    }

    /// The last `retry:` the stream sent (milliseconds), if any: how long an
    /// EventSource client waits before it reconnects.
    pub(crate) fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Parses `bytes`, calling `on_event` for each complete event.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], on_event: &mut impl FnMut(&SseEvent<'_>)) {
        while let Some(end) = bytes.iter().position(|&byte| byte == b'\n') {
            if self.line.is_empty() {
                self.process_line(&bytes[..end], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.process_line(&line, on_event);
                line.clear();
                self.line = line;
            }
            bytes = &bytes[end + 1..];
        }
        self.line.extend_from_slice(bytes);
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&SseEvent<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                on_event(&SseEvent {
                    id: &self.id,
                    event: &self.event,
                    data: &self.data,
                });
            }
            self.id.clear();
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" => {
                self.id.clear();
                self.id.extend_from_slice(value);
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // As the EventSource standard says: only ASCII digits, else ignored.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value)
                    .ok()
                    .and_then(|digits| digits.parse().ok());
            }
            _ => {}
        }
    }
}

/// The key of the marker in a pushed message's JSON: `"push":K`.
const PUSH_MARKER: &[u8] = b"\"push\":";

/// The push number `K` of the first `"push":K` in `data`, if any.
pub(crate) fn push_marker(data: &[u8]) -> Option<u32> {
    let start = find(data, PUSH_MARKER)? + PUSH_MARKER.len();
    let digits = data[start..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    std::str::from_utf8(&data[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// The position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut from = 0;
    while from <= last_start {
        let offset = haystack[from..=last_start]
            .iter()
            .position(|&byte| byte == first)?;
        let at = from + offset;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(wire: &[u8], piece: usize) -> (Vec<(String, String, String)>, u64) {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for part in wire.chunks(piece) {
            parser.feed(part, &mut |event| {
                events.push((
                    String::from_utf8_lossy(event.id).into_owned(),
                    String::from_utf8_lossy(event.event).into_owned(),
                    String::from_utf8_lossy(event.data).into_owned(),
                ));
            });
        }
        (events, parser.comments())
    }

    #[test]
    fn parses_events_split_anywhere() {
        let wire = b": open\n\nid: c-1\nevent: config-update\ndata: {\"push\":7}\n\n:keepalive\n\nid:c-2\r\ndata: a\r\ndata: b\r\n\r\n";
        for piece in 1..wire.len() {
            let (events, comments) = events_of(wire, piece);
            assert_eq!(
                events,
                vec![
                    (
                        "c-1".to_owned(),
                        "config-update".to_owned(),
                        "{\"push\":7}".to_owned()
                    ),
                    ("c-2".to_owned(), String::new(), "a\nb".to_owned()),
                ],
                "piece size {piece}"
            );
            assert_eq!(comments, 2);
        }
    }

    #[test]
    fn keeps_the_last_retry() {
        let mut parser = SseParser::default();
        parser.feed(b"retry: 7012\n: open\n\n", &mut |_| {});
        assert_eq!(parser.retry_ms(), Some(7_012));
        parser.feed(b"retry: soon\nretry:60000\n\n", &mut |_| {});
        assert_eq!(parser.retry_ms(), Some(60_000));
    }

    #[test]
    fn finds_the_push_marker() {
        assert_eq!(
            push_marker(b"{\"payload\":{\"push\":42,\"pad\":\"x\"}}"),
            Some(42)
        );
        assert_eq!(push_marker(b"{\"payload\":{}}"), None);
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"ab", b"abc"), None);
    }
}
