//! Plain HTTP/1.1 over `std::net`, for what talks to a `registry-server` from
//! outside: the binary's tests, the black-box tests and the bench tools.
//! Requests are written by hand (so a test can send what a client library
//! would not); answers are parsed with `httparse`.
//!
//! # Layout
//!
//! - [`request`] and [`KeepAlive`]: one request on a fresh connection, or many
//!   on one kept-alive connection; both give an [`Answer`].
//! - [`Head`] and [`Answer::parse`]: a response head, and a whole answer whose
//!   body has a `Content-Length`, parsed from bytes (async callers read
//!   their own socket and parse with these).
//! - [`open_stream`], [`read_head`] and [`read_until`]: an agent's SSE stream,
//!   read as raw text.
//! - [`metric_value`] and [`metric`]: one sample of `/metrics`.
//! - [`redis`]: a `redis-server` of a test's own, on a free port.

pub mod redis;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a read may wait for the server before a call gives up.
pub const PROMPTLY: Duration = Duration::from_secs(5);
/// The largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How many headers an answer may have.
const MAX_HEADERS: usize = 64;

/// A response head: the status, the headers, and its length in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The headers in the order received, names in lower case.
    pub headers: Vec<(String, String)>,
    /// How many bytes of the input the head took.
    pub length: usize,
}

impl Head {
    /// Parses the head at the start of `bytes`; `None` while it is incomplete.
    /// An interim `100 Continue` is a head like any other, so a test sees it.
    pub fn parse(bytes: &[u8]) -> io::Result<Option<Self>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(bytes) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD_BYTES => {
                return Err(invalid("a response head over 64 KiB"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(invalid(&format!("a malformed response head: {err}"))),
        };
        Ok(Some(Self {
            status: response.code.unwrap_or_default(),
            headers: response
                .headers
                .iter()
                .map(|header| {
                    (
                        header.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(header.value).into_owned(),
                    )
                })
                .collect(),
            length,
        }))
    }

    /// The value of the first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The `Content-Length`, 0 when there is none.
    pub fn content_length(&self) -> io::Result<usize> {
        self.header("content-length").map_or(Ok(0), |value| {
            value
                .trim()
                .parse()
                .map_err(|_| invalid(&format!("a Content-Length of {value:?}")))
        })
    }
}

/// An HTTP answer: its head and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers in the order received, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// Parses the answer at the start of `bytes`, whose body is as long as its
    /// `Content-Length` says (none: empty); `None` while it is incomplete.
    /// Returns the answer and how many bytes it took.
    pub fn parse(bytes: &[u8]) -> io::Result<Option<(Self, usize)>> {
        let Some(head) = Head::parse(bytes)? else {
            return Ok(None);
        };
        let end = head.length + head.content_length()?;
        let Some(body) = bytes.get(head.length..end) else {
            return Ok(None);
        };
        Ok(Some((
            Self {
                status: head.status,
                body: String::from_utf8_lossy(body).into_owned(),
                headers: head.headers,
            },
            end,
        )))
    }

    /// The value of the first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The value of the first of `headers` named `name` (any case).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The text of a request: `json`, when given, is its body, sent as JSON.
fn request_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    close: bool,
) -> String {
    request_text_as(addr, None, method, path, json, close)
}

/// Like [`request_text`], with `Authorization: Bearer <token>` when a token is given.
fn request_text_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    json: Option<&str>,
    close: bool,
) -> String {
    let body = json.unwrap_or_default();
    let content_type = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let connection = if close { "Connection: close\r\n" } else { "" };
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{connection}{content_type}\
         {authorization}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Connects to `addr`, with reads that give up after [`PROMPTLY`].
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PROMPTLY))?;
    Ok(tcp)
}

/// One request on a fresh connection (`Connection: close`); `json`, when
/// given, is its body. The answer is read until the server closes.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> io::Result<Answer> {
    request_as(addr, None, method, path, json)
}

/// Like [`request`], with `Authorization: Bearer <token>` when a token is given.
pub fn request_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> io::Result<Answer> {
    let mut tcp = connect(addr)?;
    tcp.write_all(request_text_as(addr, token, method, path, json, true).as_bytes())?;
    let mut bytes = Vec::new();
    tcp.read_to_end(&mut bytes)?;
    let head = Head::parse(&bytes)?.ok_or_else(|| invalid("an incomplete response head"))?;
    Ok(Answer {
        status: head.status,
        body: String::from_utf8_lossy(&bytes[head.length..]).into_owned(),
        headers: head.headers,
    })
}

/// One kept-alive HTTP/1.1 connection for many requests in a row.
#[derive(Debug)]
pub struct KeepAlive {
    tcp: TcpStream,
    addr: SocketAddr,
    /// Bytes read past the last answer.
    buffered: Vec<u8>,
}

impl KeepAlive {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            tcp: connect(addr)?,
            addr,
            buffered: Vec::new(),
        })
    }

    /// Sends one request and reads its answer, whose body has a `Content-Length`.
    pub fn request(&mut self, method: &str, path: &str, json: Option<&str>) -> io::Result<Answer> {
        let text = request_text(self.addr, method, path, json, false);
        self.tcp.write_all(text.as_bytes())?;
        loop {
            if let Some((answer, taken)) = Answer::parse(&self.buffered)? {
                self.buffered.drain(..taken);
                return Ok(answer);
            }
            let mut chunk = [0_u8; 8192];
            let n = match self.tcp.read(&mut chunk) {
                // A signal to this process (a child's exit) is no answer.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                read => read?,
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buffered.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Connects and sends the request for `agent_id`'s stream; reads nothing.
/// Reads on it give up after [`PROMPTLY`] unless the caller sets otherwise.
pub fn open_stream(addr: SocketAddr, agent_id: &str) -> io::Result<TcpStream> {
    let mut tcp = connect(addr)?;
    write!(
        tcp,
        "GET /api/v1/agents/{agent_id}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    Ok(tcp)
}

/// Reads `stream` until a whole response head arrived, and no further, so
/// that what follows (a stream's events, an answer's body) is left to read.
pub fn read_head(stream: &mut impl Read) -> io::Result<Head> {
    let mut seen = Vec::new();
    let mut byte = [0_u8; 1];
    // Byte by byte: a buffered read would take what follows the head too.
    loop {
        let read = match stream.read(&mut byte) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            read => read?,
        };
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before a whole head: {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            ));
        }
        seen.push(byte[0]);
        if seen.ends_with(b"\r\n\r\n") {
            return Head::parse(&seen)?.ok_or_else(|| invalid("an incomplete response head"));
        }
    }
}

/// Reads `stream` until `needle` appears in what was read; returns all of it.
pub fn read_until(stream: &mut impl Read, needle: &str) -> io::Result<String> {
    let mut seen = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "ended before {needle:?}: {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            ));
        }
        seen.extend_from_slice(&buffer[..n]);
    }
    Ok(String::from_utf8_lossy(&seen).into_owned())
}

/// The value of the sample `series` (its name and labels exactly as printed,
/// `registry_agents{status="LIVE"}`) in a `/metrics` text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// The value of the sample `series` of the server at `addr` now; `None` if
/// `/metrics` has no such sample.
pub fn metric(addr: SocketAddr, series: &str) -> io::Result<Option<f64>> {
    let answer = request(addr, "GET", "/metrics", None)?;
    Ok(metric_value(&answer.body, series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_complete() {
        let wire = b"HTTP/1.1 204 No Content\r\nRetry-After: 5\r\n\r\nrest";
        assert!(Head::parse(&wire[..20]).unwrap().is_none());
        let head = Head::parse(wire).unwrap().unwrap();
        assert_eq!(head.status, 204);
        assert_eq!(head.header("Retry-After"), Some("5"));
        assert_eq!(head.length, wire.len() - 4);
    }

    #[test]
    fn an_answer_is_complete_once_its_content_length_arrived() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbodyHTTP/1.1";
        assert!(Answer::parse(&wire[..40]).unwrap().is_none());
        let (answer, taken) = Answer::parse(wire).unwrap().unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "body"));
        assert_eq!(&wire[taken..], b"HTTP/1.1");
        assert!(Answer::parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn reading_a_head_leaves_what_follows() {
        let mut wire: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: open\n\n";
        let head = read_head(&mut wire).unwrap();
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(read_until(&mut wire, ": open").unwrap(), ": open\n\n");
        assert!(read_until(&mut wire, "event:").is_err());
    }

    #[test]
    fn a_sample_is_found_by_its_name_and_labels() {
        let text = "# TYPE registry_agents gauge\nregistry_agents{status=\"LIVE\"} 3\n\
                    registry_agents{status=\"DEAD\"} 1\nregistry_heartbeats_total 7 1700000000\n";
        assert_eq!(
            metric_value(text, "registry_agents{status=\"DEAD\"}"),
            Some(1.0)
        );
        assert_eq!(metric_value(text, "registry_heartbeats_total"), Some(7.0));
        assert_eq!(metric_value(text, "registry_agents"), None);
    }
}
