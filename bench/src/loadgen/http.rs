//! The cheapest HTTP/1.1 client that does the job: raw requests written on a
//! `TcpStream`, responses parsed with `httparse`, one keep-alive connection
//! reused request after request. Sockets may be bound to a chosen loopback
//! source address first, so that many thousands of them don't exhaust one
//! address's ephemeral ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::chunked::ChunkedDecoder;

/// The largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How many headers a response may have.
const MAX_HEADERS: usize = 32;

/// Where a server is: its socket address and the `Host` header to send.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Server {
    /// The address to connect to.
    pub(crate) addr: SocketAddr,
    /// `host:port`, sent as `Host`.
    pub(crate) host: String,
}

impl Server {
    /// Parses `http://HOST:PORT` (a trailing `/` is allowed; nothing else may follow).
    pub(crate) fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            return Err(format!("{url}: give the server's base URL, without a path"));
        }
        let addr = host
            .to_socket_addrs()
            .map_err(|err| format!("{url}: {err}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("{url}: no IPv4 address"))?;
        Ok(Self {
            addr,
            host: host.to_owned(),
        })
    }
}

/// Connects to `server`, from `source` (any port) when given.
pub(crate) async fn connect(server: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source.into(), 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The head of a response, and where its body starts in the bytes read so far.
#[derive(Debug)]
pub(crate) struct Head {
    /// The status code.
    pub(crate) status: u16,
    /// The `Content-Length`, if any.
    pub(crate) content_length: Option<usize>,
    /// Whether the body is chunked.
    pub(crate) chunked: bool,
    /// Whether the server will close the connection after this response.
    pub(crate) closes: bool,
    /// The `Content-Type`, if any.
    pub(crate) content_type: Option<String>,
    /// How many bytes the head took.
    pub(crate) length: usize,
}

/// Parses a response head at the start of `bytes`; `None` while it is incomplete.
pub(crate) fn parse_head(bytes: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD_BYTES => {
            return Err(invalid("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(invalid(&format!("bad response head: {err}"))),
    };
    let mut head = Head {
        status: response.code.unwrap_or(0),
        content_length: None,
        chunked: false,
        closes: response.version == Some(0),
        content_type: None,
        length,
    };
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("bad Content-Length"))?,
            );
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            head.closes = value.contains("close") || (head.closes && !value.contains("keep-alive"));
        } else if header.name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.into_owned());
        }
    }
    Ok(Some(head))
}

/// A complete response.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The whole body.
    pub(crate) body: Vec<u8>,
}

/// One keep-alive connection on which requests are sent one after another.
/// It reconnects by itself when the server closed it.
#[derive(Debug)]
pub(crate) struct HttpConnection {
    server: Server,
    stream: Option<TcpStream>,
    /// Bytes read but not yet consumed.
    pending: Vec<u8>,
    request: Vec<u8>,
}

impl HttpConnection {
    /// A connection to `server`, opened at its first request.
    pub(crate) fn new(server: Server) -> Self {
        Self {
            server,
            stream: None,
            pending: Vec::new(),
            request: Vec::new(),
        }
    }

    /// Opens the TCP connection now rather than at the first request, so that
    /// a timed request does not include the handshake.
    pub(crate) async fn warm_up(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            self.stream = Some(connect(self.server.addr, None).await?);
            self.pending.clear();
        }
        Ok(())
    }

    /// Sends a request (a JSON body when `body` is given) and reads the whole
    /// response. When a reused connection turns out to have been closed by the
    /// server before it answered (an idle keep-alive connection it timed out),
    /// the request is sent again once on a new connection, as browsers do.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let reused = self.stream.is_some();
        match self.send_once(method, path, body).await {
            Err(err) if reused && is_unanswered(&err) => {
                self.close();
                self.send_once(method, path, body).await
            }
            result => result,
        }
    }

    async fn send_once(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        self.write_request(method, path, body).await?;
        self.read_response(method == "HEAD").await
    }

    /// Writes a request; the caller reads its response with
    /// [`HttpConnection::read_response`] (in between, the clock may be read).
    pub(crate) async fn write_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<()> {
        self.warm_up().await?;
        self.request.clear();
        self.request.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.server.host).as_bytes(),
        );
        match body {
            Some(body) => {
                self.request.extend_from_slice(
                    format!(
                        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                self.request.extend_from_slice(body);
            }
            None if method == "POST" || method == "PUT" => {
                self.request.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            }
            None => self.request.extend_from_slice(b"\r\n"),
        }
        let stream = self.stream.as_mut().ok_or_else(not_connected)?;
        if let Err(err) = stream.write_all(&self.request).await {
            self.stream = None;
            return Err(unanswered(&err));
        }
        Ok(())
    }

    /// Reads the response to the request written last.
    pub(crate) async fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        let result = self.read_response_inner(head_only).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn read_response_inner(&mut self, head_only: bool) -> io::Result<Response> {
        let head = loop {
            if let Some(head) = parse_head(&self.pending)? {
                break head;
            }
            if let Err(err) = self.read_more().await {
                if self.pending.is_empty() {
                    return Err(unanswered(&err));
                }
                return Err(err);
            }
        };
        self.pending.drain(..head.length);
        let no_body =
            head_only || head.status == 204 || head.status == 304 || head.status / 100 == 1;
        let body = if no_body {
            Vec::new()
        } else if head.chunked {
            self.read_chunked_body().await?
        } else if let Some(length) = head.content_length {
            while self.pending.len() < length {
                self.read_more().await?;
            }
            self.pending.drain(..length).collect()
        } else {
            // The body runs to the end of the connection.
            while self.read_more().await.is_ok() {}
            self.stream = None;
            std::mem::take(&mut self.pending)
        };
        if head.closes {
            self.stream = None;
            self.pending.clear();
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }

    async fn read_chunked_body(&mut self) -> io::Result<Vec<u8>> {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        loop {
            let consumed = decoder.feed(&self.pending, |data| body.extend_from_slice(data))?;
            self.pending.drain(..consumed);
            if decoder.is_done() {
                return Ok(body);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> io::Result<()> {
        let stream = self.stream.as_mut().ok_or_else(not_connected)?;
        let filled = self.pending.len();
        self.pending.resize(filled + 16 * 1024, 0);
        let read = stream.read(&mut self.pending[filled..]).await;
        match read {
            Ok(0) => {
                self.pending.truncate(filled);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ))
            }
            Ok(read) => {
                self.pending.truncate(filled + read);
                Ok(())
            }
            Err(err) => {
                self.pending.truncate(filled);
                Err(err)
            }
        }
    }

    /// Closes the connection (a later request opens a new one).
    pub(crate) fn close(&mut self) {
        self.stream = None;
        self.pending.clear();
    }
}

/// The error of a request the server closed the connection on without
/// answering a byte: safe to send again on a new connection.
fn unanswered(cause: &io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("closed without an answer: {cause}"),
    )
}

fn is_unanswered(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionAborted
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "not connected")
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_streaming_head() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nA\r\n";
        let head = parse_head(wire).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert!(head.chunked);
        assert!(!head.closes);
        assert_eq!(head.content_type.as_deref(), Some("text/event-stream"));
        assert_eq!(&wire[head.length..], b"A\r\n");
        assert!(parse_head(&wire[..20]).unwrap().is_none());
    }

    #[test]
    fn reads_the_base_url() {
        let server = Server::from_url("http://127.0.0.1:8080/").unwrap();
        assert_eq!(server.host, "127.0.0.1:8080");
        assert_eq!(server.addr.port(), 8080);
        assert!(Server::from_url("https://127.0.0.1:8080").is_err());
        assert!(Server::from_url("http://127.0.0.1:8080/api").is_err());
    }
}
