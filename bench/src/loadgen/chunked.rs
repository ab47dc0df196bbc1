//! An incremental decoder of HTTP/1.1 `Transfer-Encoding: chunked` bodies:
//! bytes go in as they arrive from the socket, the body's data comes out.
//! Both hyper and nginx send a streaming response such as SSE this way.

use std::io;

/// Where the decoder is within the chunked framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the chunk size's hex digits.
    Size,
    /// Skipping a chunk extension up to the end of the size line.
    SizeLineRest,
    /// Reading chunk data; this many bytes are left.
    Data(u64),
    /// Expecting the CR (or LF) after a chunk's data.
    DataEnd,
    /// Expecting the LF after that CR.
    DataEndLf,
    /// At the start of a trailer line (after the last, empty chunk).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// Expecting the LF that ends the body.
    EndLf,
    /// The body is complete.
    Done,
}

/// Decodes one chunked body.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size,
            size: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Whether the body's last chunk and trailer have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing each piece of body data to `on_data`; returns
    /// how many bytes of `input` belonged to the body (less than its length
    /// only when the body ended within it).
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            match self.state {
                State::Size => {
                    at += 1;
                    match byte {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = u64::from(hex_value(byte));
                            self.size = self
                                .size
                                .checked_mul(16)
                                .and_then(|size| size.checked_add(digit))
                                .ok_or_else(|| invalid("chunk size overflows"))?;
                        }
                        b'\n' => self.end_size_line(),
                        b';' | b' ' | b'\t' | b'\r' => self.state = State::SizeLineRest,
                        _ => return Err(invalid("bad chunk size")),
                    }
                }
                State::SizeLineRest => {
                    at += 1;
                    if byte == b'\n' {
                        self.end_size_line();
                    }
                }
                State::Data(left) => {
                    let available = input.len() - at;
                    let take = usize::try_from(left).map_or(available, |left| left.min(available));
                    on_data(&input[at..at + take]);
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    at += 1;
                    self.state = match byte {
                        b'\r' => State::DataEndLf,
                        b'\n' => State::Size,
                        _ => return Err(invalid("chunk data not followed by CRLF")),
                    };
                }
                State::DataEndLf => {
                    at += 1;
                    if byte != b'\n' {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    at += 1;
                    self.state = match byte {
                        b'\r' => State::EndLf,
                        b'\n' => State::Done,
                        _ => State::TrailerLine,
                    };
                }
                State::TrailerLine => {
                    at += 1;
                    if byte == b'\n' {
                        self.state = State::TrailerStart;
                    }
                }
                State::EndLf => {
                    at += 1;
                    if byte != b'\n' {
                        return Err(invalid("trailer not ended by CRLF"));
                    }
                    self.state = State::Done;
                }
                State::Done => return Ok(at),
            }
        }
        Ok(at)
    }

    fn end_size_line(&mut self) {
        self.state = if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data(self.size)
        };
        self.size = 0;
    }
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        _ => byte - b'A' + 10,
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(wire: &[u8], piece: usize) -> (Vec<u8>, bool, usize) {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut consumed = 0;
        for part in wire.chunks(piece) {
            consumed += decoder
                .feed(part, |data| body.extend_from_slice(data))
                .unwrap();
            if decoder.is_done() {
                break;
            }
        }
        (body, decoder.is_done(), consumed)
    }

    #[test]
    fn decodes_a_body_split_anywhere() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in 1..wire.len() {
            let (body, done, consumed) = decode_in_pieces(wire, piece);
            assert_eq!(body, b"hello, world", "piece size {piece}");
            assert!(done);
            assert_eq!(consumed, wire.len() - 4, "piece size {piece}");
        }
    }

    #[test]
    fn an_open_stream_is_not_done() {
        let (body, done, _) = decode_in_pieces(b"A\r\n: open\r\n\r\n", 3);
        assert_eq!(body, b": open\r\n\r\n");
        assert!(!done);
    }

    #[test]
    fn refuses_garbage() {
        let mut decoder = ChunkedDecoder::default();
        assert!(decoder.feed(b"zz\r\n", |_| {}).is_err());
    }
}
