//! What every black-box test needs: a real server on a free port of 127.0.0.1,
//! an HTTP client, an SSE reader, and waiting for a condition with a deadline
//! instead of sleeping.
//!
//! # Layout
//!
//! - [`TestServer`]: starts `registry_server::serve` on port 0 and stops it.
//! - [`EventStream`]: one agent's open SSE stream, read event by event or raw.
//! - [`exchange`]: one raw request on an open connection, its answer parsed.
//! - [`eventually`]: polls a condition until it holds or a deadline passes.
//! - [`unix_millis`] and [`now_millis`]: the API's timestamps and the test's
//!   wall clock, in milliseconds, to compare them.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use registry_server::{Config, ServeError};
use reqwest::header::HeaderMap;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use eventsource_stream::Event;
pub use registry_testkit::Answer;

/// How long a test waits for something that should happen at once.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// The built-in defaults, but kept in memory: tests never write `data/`.
pub fn memory_config() -> Config {
    let mut config = Config::default();
    config.storage.engine = registry_server::StorageEngine::Memory;
    config
}

/// A server running in this process on a real TCP socket.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// A client for it.
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// A server with the built-in defaults.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with the defaults changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local address");
        let mut config = memory_config();
        config.server.bind = addr.to_string();
        configure(&mut config);
        config.validate().expect("a valid test configuration");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(registry_server::serve(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{addr}"),
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            stop: Some(stop),
            task,
        }
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Asks the server to shut down, as SIGTERM does, and waits until it has.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the server task")
    }

    /// Sends a shutdown request without waiting for the server to finish.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for a server whose shutdown has begun to finish.
    pub async fn finished(&mut self) -> Result<(), ServeError> {
        (&mut self.task).await.expect("the server task")
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE")
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// `POST path` with no body.
    pub async fn post_empty(&self, path: &str) -> Response {
        self.client.post(self.url(path)).send().await.expect("POST")
    }

    /// Registers `agent_id` in `group`; returns the status and the body.
    pub async fn register(&self, agent_id: &str, group: &str) -> (StatusCode, Value) {
        let response = self
            .post_json(
                "/api/v1/agents/register",
                &json!({"agentId": agent_id, "name": "order-service", "group": group,
                        "version": "1.4.2", "routeIds": ["route-1"], "capabilities": ["replay"]}),
            )
            .await;
        let status = response.status();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Sends one heartbeat; returns the status.
    pub async fn heartbeat(&self, agent_id: &str) -> StatusCode {
        self.post_empty(&format!("/api/v1/agents/{agent_id}/heartbeat"))
            .await
            .status()
    }

    /// The agent view, or `None` if it answers 404.
    pub async fn agent(&self, agent_id: &str) -> Option<Value> {
        let response = self.get(&format!("/api/v1/agents/{agent_id}")).await;
        match response.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => Some(response.json().await.expect("a JSON agent")),
            other => panic!("GET agent answered {other}"),
        }
    }

    /// The agent's status, as a string.
    pub async fn status_of(&self, agent_id: &str) -> String {
        let agent = self.agent(agent_id).await.expect("a registered agent");
        agent["status"].as_str().expect("a status").to_owned()
    }

    /// Sends a command of `kind` to one agent; returns the status and the body.
    pub async fn send(&self, agent_id: &str, kind: &str, payload: Value) -> (StatusCode, Value) {
        let response = self
            .post_json(
                &format!("/api/v1/agents/{agent_id}/commands"),
                &json!({"type": kind, "payload": payload}),
            )
            .await;
        let status = response.status();
        (status, response.json().await.expect("a JSON body"))
    }

    /// The value of one series of `/metrics`, named with its labels exactly as
    /// printed (`registry_agents{status="LIVE"}`).
    pub async fn metric(&self, series: &str) -> f64 {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK, "/metrics");
        let text = response.text().await.expect("metrics text");
        registry_testkit::metric_value(&text, series)
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }

    /// Opens a TCP connection to the server, for what an HTTP client won't send.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        let addr = self.base.trim_start_matches("http://");
        tokio::net::TcpStream::connect(addr).await.expect("connect")
    }

    /// Writes `request` as raw bytes and reads the answer until the server
    /// closes the connection or `PROMPTLY` passes.
    pub async fn raw_exchange(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = self.connect().await;
        // The server may answer and close before it has read everything sent.
        let _ = tcp.write_all(request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PROMPTLY, tcp.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Opens the agent's SSE stream; panics unless it answers 200.
    pub async fn open_stream(&self, agent_id: &str) -> EventStream {
        self.open_stream_with(agent_id, &[]).await
    }

    /// Opens the agent's SSE stream sending `headers` too (`Last-Event-ID`, ...);
    /// panics unless it answers 200.
    pub async fn open_stream_with(&self, agent_id: &str, headers: &[(&str, &str)]) -> EventStream {
        self.open_event_stream(&format!("/api/v1/agents/{agent_id}/events"), headers)
            .await
    }

    /// Opens the fleet event stream (`/api/v1/events`); panics unless it answers 200.
    pub async fn open_fleet_stream(&self) -> EventStream {
        self.open_event_stream("/api/v1/events", &[]).await
    }

    async fn open_event_stream(&self, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let request = self
            .client
            .get(self.url(path))
            .timeout(Duration::from_secs(3600));
        let response = headers
            .iter()
            .fold(request, |request, (name, value)| {
                request.header(*name, *value)
            })
            .send()
            .await
            .expect("GET events");
        assert_eq!(response.status(), StatusCode::OK, "stream at {path}");
        EventStream::new(response)
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// An open SSE stream (an agent's or the fleet's), parsed by `eventsource-stream`.
pub struct EventStream {
    /// The response headers.
    pub headers: HeaderMap,
    events: Events,
}

impl EventStream {
    fn new(response: Response) -> Self {
        let headers = response.headers().clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|err| err.to_string()));
        Self {
            headers,
            events: Box::pin(events),
        }
    }

    /// The next event; `None` once the server ended the stream. Panics if
    /// nothing comes within `PROMPTLY`.
    pub async fn next_event(&mut self) -> Option<Event> {
        match tokio::time::timeout(PROMPTLY, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no event and no end of stream within {PROMPTLY:?}"),
        }
    }

    /// Asserts that no event arrives within `quiet`.
    pub async fn expect_nothing_for(&mut self, quiet: Duration) {
        if let Ok(item) = tokio::time::timeout(quiet, self.events.next()).await {
            panic!("expected nothing, got {item:?}");
        }
    }

    /// Asserts that the server ends the stream promptly, with no further event.
    pub async fn expect_end(&mut self) {
        if let Some(event) = self.next_event().await {
            panic!("expected the stream to end, got {event:?}");
        }
    }
}

/// An open SSE stream, read as raw text: comments included.
pub struct RawStream {
    chunks: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    /// Everything read so far.
    pub text: String,
}

impl RawStream {
    /// Opens the agent's stream for raw reading.
    pub async fn open(server: &TestServer, agent_id: &str) -> Self {
        Self::open_path(server, &format!("/api/v1/agents/{agent_id}/events")).await
    }

    /// Opens the stream at `path` for raw reading.
    pub async fn open_path(server: &TestServer, path: &str) -> Self {
        let response = server
            .client
            .get(server.url(path))
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .expect("GET events");
        assert_eq!(response.status(), StatusCode::OK);
        Self {
            chunks: Box::pin(response.bytes_stream()),
            text: String::new(),
        }
    }

    /// Reads until the text read so far holds `needle` `times` times, or `within` passes.
    pub async fn read_until(&mut self, needle: &str, times: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.text.matches(needle).count() < times {
            match tokio::time::timeout_at(deadline, self.chunks.next()).await {
                Ok(Some(Ok(chunk))) => self.text.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) | Err(_) => return false,
            }
        }
        true
    }
}

/// Sends `request` on `tcp` and reads one answer whose body has a
/// `Content-Length`, leaving the connection open for the next. An interim
/// `100 Continue` would be the answer read.
pub async fn exchange(tcp: &mut tokio::net::TcpStream, request: &[u8]) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(request).await.expect("write");
    let mut bytes = Vec::new();
    let mut buffer = [0_u8; 4096];
    let read = tokio::time::timeout(PROMPTLY, async {
        loop {
            if let Some((answer, _)) = Answer::parse(&bytes).expect("an HTTP answer") {
                return answer;
            }
            let n = tcp.read(&mut buffer).await.expect("read");
            assert!(n > 0, "closed before the answer was complete: {bytes:?}");
            bytes.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    read.unwrap_or_else(|_| panic!("no answer within {PROMPTLY:?}"))
}

/// Asserts that `response` is an RFC 9457 problem (`application/problem+json`,
/// `type` about:blank, the status's `title`, `status`, a `detail`) answering
/// `status`; returns the problem.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "Content-Type {content_type:?}"
    );
    let body: Value = response.json().await.expect("a JSON problem");
    assert_eq!(body["type"], "about:blank", "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(
        body["title"],
        status.canonical_reason().unwrap_or_default(),
        "{body}"
    );
    assert!(body["detail"].is_string(), "{body}");
    body
}

/// Polls `condition` every few milliseconds until it holds; panics after `within`.
/// For what happens on the server's own clock (a deadline passing), where there
/// is no event to wait for.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Milliseconds since the Unix epoch of a timestamp as the API writes it:
/// RFC 3339 in UTC with milliseconds, `2026-03-11T18:10:15.123Z`; panics on
/// anything else.
pub fn unix_millis(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp string, got {value}"));
    // humantime takes any number of fractional digits; the API writes three.
    assert!(
        text.len() == 24 && text.as_bytes()[19] == b'.',
        "not YYYY-MM-DDTHH:MM:SS.mmmZ: {text:?}"
    );
    let at = humantime::parse_rfc3339(text)
        .unwrap_or_else(|err| panic!("not an RFC 3339 UTC timestamp ({err}): {text:?}"));
    let since = at.duration_since(UNIX_EPOCH).expect("after the epoch");
    i64::try_from(since.as_millis()).expect("a sane timestamp")
}

/// The test's wall clock, in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch");
    i64::try_from(since.as_millis()).expect("a sane clock")
}
