//! A shard: the child process that holds a slice of the SSE streams (at most
//! ~9,500, well inside one process's 20,000 open files), heartbeats and acks
//! for its agents, and reports to the coordinator when each stream got each
//! push. With several servers (a cluster's replicas) it places its streams
//! round robin over them, and, when told to, reopens a stream that ended
//! after its `retry:` on the next server that accepts it, and reports how
//! the streams of a killed server came back. It reads its plan and orders on
//! stdin and reports on stdout, one JSON object a line; it exits on `stop` or
//! when stdin closes.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::chunked::ChunkedDecoder;
use super::fleet;
use super::http::{self, HttpConnection, Server};
use super::protocol::{Audience, FromShard, ShardPlan, ShardStats, StreamTarget, ToShard, now_us};
use super::sse::{self, SseParser};

/// Bytes read from a stream at a time.
const STREAM_READ_BYTES: usize = 4096;

/// How long a stream that ended before any `retry:` waits to open again
/// (browsers' EventSource waits about 3 s).
const DEFAULT_RETRY_MS: u64 = 3_000;

/// The shard's counters, shared by its tasks.
#[derive(Default)]
struct Counters {
    open: AtomicU64,
    dropped: AtomicU64,
    heartbeats_ok: AtomicU64,
    heartbeats_failed: AtomicU64,
    acks_ok: AtomicU64,
    acks_failed: AtomicU64,
    unexpected_events: AtomicU64,
    comments: AtomicU64,
    reopen_failures: AtomicU64,
    first_heartbeat_failure: Mutex<Option<String>>,
    first_ack_failure: Mutex<Option<String>>,
    first_reopen_failure: Mutex<Option<String>>,
}

impl Counters {
    fn snapshot(&self) -> ShardStats {
        ShardStats {
            open: self.open.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            heartbeats_ok: self.heartbeats_ok.load(Ordering::Relaxed),
            heartbeats_failed: self.heartbeats_failed.load(Ordering::Relaxed),
            acks_ok: self.acks_ok.load(Ordering::Relaxed),
            acks_failed: self.acks_failed.load(Ordering::Relaxed),
            unexpected_events: self.unexpected_events.load(Ordering::Relaxed),
            comments: self.comments.load(Ordering::Relaxed),
            reopen_failures: self.reopen_failures.load(Ordering::Relaxed),
            first_heartbeat_failure: first_of(&self.first_heartbeat_failure),
            first_ack_failure: first_of(&self.first_ack_failure),
            first_reopen_failure: first_of(&self.first_reopen_failure),
        }
    }
}

fn first_of(failure: &Mutex<Option<String>>) -> Option<String> {
    failure.lock().map_or(None, |failure| failure.clone())
}

/// Counts a request's outcome: `ok` when it was answered `expected`, else
/// `failed`, keeping the first failure's reason in `first_failure`.
fn count_outcome(
    outcome: &io::Result<http::Response>,
    expected: u16,
    ok: &AtomicU64,
    failed: &AtomicU64,
    first_failure: &Mutex<Option<String>>,
) {
    let failure = match outcome {
        Ok(response) if response.status == expected => {
            ok.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(response) => format!(
            "answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ),
        Err(err) => err.to_string(),
    };
    failed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut first) = first_failure.lock() {
        first.get_or_insert(failure);
    }
}

/// One stream received one push.
struct Arrival {
    local: usize,
    push: u32,
    at_us: u64,
    data_bytes: usize,
}

/// A stream opened (on server `server`) or ended.
enum StreamEvent {
    Opened {
        local: usize,
        server: usize,
        at_us: u64,
    },
    Ended {
        local: usize,
        at_us: u64,
    },
}

/// An ack to send.
struct AckOrder {
    local: usize,
    command_id: String,
}

/// What every stream task of the shard shares.
struct StreamContext {
    plan: ShardPlan,
    opening: Semaphore,
    counters: Arc<Counters>,
    /// The first opening of each stream, for the `opened` report.
    opened: mpsc::UnboundedSender<(usize, Result<(), String>)>,
    /// Every opening and ending, for the failover's report.
    events: mpsc::UnboundedSender<StreamEvent>,
    /// The balancer's turn: the server a reopened stream tries first.
    next_server: AtomicUsize,
    arrivals: mpsc::UnboundedSender<Arrival>,
    acks: Vec<mpsc::UnboundedSender<AckOrder>>,
}

/// Runs a shard on this process's stdin and stdout until told to stop.
pub(crate) async fn run() -> io::Result<()> {
    let mut orders = BufReader::new(tokio::io::stdin()).lines();
    let plan_line = orders
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no plan on stdin"))?;
    let plan: ShardPlan = serde_json::from_str(&plan_line)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    if plan.servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the plan names no server",
        ));
    }
    let counters = Arc::new(Counters::default());
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (arrivals_tx, mut arrivals_rx) = mpsc::unbounded_channel();
    let mut ack_senders = Vec::new();
    if plan.ack {
        for worker in 0..plan.request_connections.max(1) {
            let (sender, receiver) = mpsc::unbounded_channel();
            ack_senders.push(sender);
            tokio::spawn(send_acks(
                receiver,
                plan.clone(),
                server_of_worker(&plan, worker),
                counters.clone(),
            ));
        }
    }
    let context = Arc::new(StreamContext {
        opening: Semaphore::new(plan.open_concurrency.max(1)),
        plan: plan.clone(),
        counters: counters.clone(),
        opened: opened_tx,
        events: events_tx,
        next_server: AtomicUsize::new(plan.first),
        arrivals: arrivals_tx,
        acks: ack_senders,
    });
    for local in 0..plan.count {
        tokio::spawn(hold_stream(context.clone(), local));
    }
    drop(context);

    let mut reporter = Reporter::new();
    let mut collector = Collector::new(&plan);
    let mut failover = Failover::new(plan.count);
    let mut tried = 0;
    let mut failed = 0;
    let mut first_error = None;
    if plan.count == 0 {
        reporter
            .send(&FromShard::Opened {
                opened: 0,
                failed: 0,
                first_error: None,
            })
            .await?;
    }
    loop {
        let next_deadline = match (collector.next_deadline(), failover.deadline()) {
            (Some(one), Some(other)) => Some(one.min(other)),
            (one, other) => one.or(other),
        };
        tokio::select! {
            order = orders.next_line() => {
                let Some(order) = order? else { break };
                let order: ToShard = serde_json::from_str(&order)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
                match order {
                    ToShard::Collect { push, audience, deadline_us } => {
                        collector.start(push, audience, deadline_us);
                    }
                    ToShard::Stats => reporter.send(&FromShard::Stats(counters.snapshot())).await?,
                    ToShard::Mark { server } => {
                        let streams = failover.mark(server);
                        reporter.send(&FromShard::Marked { streams }).await?;
                    }
                    ToShard::Recovery { since_us, deadline_us } => {
                        failover.start(since_us, deadline_us);
                    }
                    ToShard::Stop => break,
                }
            }
            Some((local, result)) = opened_rx.recv(), if tried < plan.count => {
                tried += 1;
                match result {
                    Ok(()) => collector.opened[local] = true,
                    Err(err) => {
                        failed += 1;
                        first_error.get_or_insert(err);
                    }
                }
                if tried == plan.count {
                    reporter.send(&FromShard::Opened {
                        opened: tried - failed,
                        failed,
                        first_error: first_error.take(),
                    }).await?;
                    let registry = matches!(plan.target, StreamTarget::Registry { .. });
                    if plan.heartbeat_every_ms > 0 && registry {
                        start_heartbeats(&plan, &counters);
                    }
                }
            }
            Some(arrival) = arrivals_rx.recv() => collector.record(arrival),
            Some(event) = events_rx.recv() => failover.record(&event),
            () = sleep_until_deadline(next_deadline) => {}
        }
        let now = now_us();
        for report in collector.finished(now) {
            reporter.send(&report).await?;
        }
        if let Some(report) = failover.finished(now) {
            reporter.send(&report).await?;
        }
    }
    reporter.flush().await?;
    // Exiting closes every stream at once; dropping the runtime would only be slower.
    std::process::exit(0);
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes reports to stdout, one JSON line each.
struct Reporter {
    stdout: tokio::io::Stdout,
}

impl Reporter {
    fn new() -> Self {
        Self {
            stdout: tokio::io::stdout(),
        }
    }

    async fn send(&mut self, report: &FromShard) -> io::Result<()> {
        let mut line = serde_json::to_vec(report).map_err(io::Error::other)?;
        line.push(b'\n');
        self.stdout.write_all(&line).await?;
        self.stdout.flush().await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush().await
    }
}

/// A push being collected: who should get it, how many still haven't, and until when.
struct Collection {
    push: u32,
    audience: Audience,
    expected: usize,
    missing: usize,
    deadline_us: u64,
    deadline: Instant,
}

/// Records arrivals by push and tells when a collection is complete.
struct Collector {
    first: usize,
    groups: usize,
    opened: Vec<bool>,
    /// Per push, the arrival time of each local stream (0: not yet).
    arrivals: HashMap<u32, Vec<u64>>,
    data_bytes: HashMap<u32, usize>,
    collections: Vec<Collection>,
}

impl Collector {
    fn new(plan: &ShardPlan) -> Self {
        let groups = match &plan.target {
            StreamTarget::Registry { groups, .. } => *groups,
            StreamTarget::Nchan { .. } => 1,
        };
        Self {
            first: plan.first,
            groups,
            opened: vec![false; plan.count],
            arrivals: HashMap::new(),
            data_bytes: HashMap::new(),
            collections: Vec::new(),
        }
    }

    fn is_audience(&self, audience: Audience, local: usize) -> bool {
        match audience {
            Audience::All => true,
            Audience::Group(group) => fleet::group_of(self.first + local, self.groups) == group,
            Audience::Agent(index) => self.first + local == index,
        }
    }

    fn record(&mut self, arrival: Arrival) {
        let count = self.opened.len();
        let times = self
            .arrivals
            .entry(arrival.push)
            .or_insert_with(|| vec![0; count]);
        if times[arrival.local] != 0 {
            return;
        }
        times[arrival.local] = arrival.at_us;
        self.data_bytes
            .entry(arrival.push)
            .or_insert(arrival.data_bytes);
        let local = arrival.local;
        let audiences: Vec<(usize, Audience)> = self
            .collections
            .iter()
            .enumerate()
            .filter(|(_, collection)| collection.push == arrival.push)
            .map(|(at, collection)| (at, collection.audience))
            .collect();
        for (at, audience) in audiences {
            if self.is_audience(audience, local) && self.opened[local] {
                self.collections[at].missing = self.collections[at].missing.saturating_sub(1);
            }
        }
    }

    fn start(&mut self, push: u32, audience: Audience, deadline_us: u64) {
        let times = self.arrivals.get(&push);
        let mut expected = 0;
        let mut arrived = 0;
        for local in 0..self.opened.len() {
            if self.opened[local] && self.is_audience(audience, local) {
                expected += 1;
                if times.is_some_and(|times| times[local] != 0) {
                    arrived += 1;
                }
            }
        }
        let wait = Duration::from_micros(deadline_us.saturating_sub(now_us()));
        self.collections.push(Collection {
            push,
            audience,
            expected,
            missing: expected - arrived,
            deadline_us,
            deadline: Instant::now() + wait,
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.collections
            .iter()
            .map(|collection| collection.deadline)
            .min()
    }

    /// The reports of the collections that are complete or past their deadline.
    fn finished(&mut self, now_us: u64) -> Vec<FromShard> {
        let mut reports = Vec::new();
        let mut at = 0;
        while at < self.collections.len() {
            let collection = &self.collections[at];
            if collection.missing > 0 && collection.deadline_us > now_us {
                at += 1;
                continue;
            }
            let collection = self.collections.swap_remove(at);
            let times = self.arrivals.remove(&collection.push).unwrap_or_default();
            let arrivals_us = times
                .iter()
                .enumerate()
                .filter(|&(local, &time)| {
                    time != 0 && self.opened[local] && self.is_audience(collection.audience, local)
                })
                .map(|(_, &time)| time)
                .collect();
            reports.push(FromShard::Arrivals {
                push: collection.push,
                expected: collection.expected,
                arrivals_us,
                data_bytes: self.data_bytes.remove(&collection.push),
            });
        }
        reports
    }
}

/// Where each stream is open, and how the streams of a killed server come back.
struct Failover {
    /// The server each stream is open on now (`None`: not open).
    server: Vec<Option<usize>>,
    /// When each stream last opened.
    opened_at_us: Vec<u64>,
    /// When each stream last ended (0: never).
    ended_at_us: Vec<u64>,
    /// The streams that were open on the server marked last.
    marked: Vec<usize>,
    /// The recovery being waited for: since when, until when.
    recovery: Option<(u64, u64, Instant)>,
}

impl Failover {
    fn new(count: usize) -> Self {
        Self {
            server: vec![None; count],
            opened_at_us: vec![0; count],
            ended_at_us: vec![0; count],
            marked: Vec::new(),
            recovery: None,
        }
    }

    fn record(&mut self, event: &StreamEvent) {
        match *event {
            StreamEvent::Opened {
                local,
                server,
                at_us,
            } => {
                self.server[local] = Some(server);
                self.opened_at_us[local] = at_us;
            }
            StreamEvent::Ended { local, at_us } => {
                self.server[local] = None;
                self.ended_at_us[local] = at_us;
            }
        }
    }

    fn mark(&mut self, server: usize) -> usize {
        self.marked = (0..self.server.len())
            .filter(|&local| self.server[local] == Some(server))
            .collect();
        self.marked.len()
    }

    fn start(&mut self, since_us: u64, deadline_us: u64) {
        let wait = Duration::from_micros(deadline_us.saturating_sub(now_us()));
        self.recovery = Some((since_us, deadline_us, Instant::now() + wait));
    }

    fn deadline(&self) -> Option<Instant> {
        self.recovery.map(|(_, _, deadline)| deadline)
    }

    fn is_back(&self, local: usize, since_us: u64) -> bool {
        self.server[local].is_some() && self.opened_at_us[local] > since_us
    }

    /// The report, once every marked stream is back or the deadline passed.
    fn finished(&mut self, now_us: u64) -> Option<FromShard> {
        let (since_us, deadline_us, _) = self.recovery?;
        let all_back = self
            .marked
            .iter()
            .all(|&local| self.is_back(local, since_us));
        if !all_back && now_us < deadline_us {
            return None;
        }
        self.recovery = None;
        let reopened_us = self
            .marked
            .iter()
            .filter(|&&local| self.is_back(local, since_us))
            .map(|&local| self.opened_at_us[local])
            .collect();
        let mut is_marked = vec![false; self.server.len()];
        for &local in &self.marked {
            is_marked[local] = true;
        }
        let others_dropped = (0..self.server.len())
            .filter(|&local| !is_marked[local] && self.ended_at_us[local] > since_us)
            .count();
        Some(FromShard::Recovered {
            marked: self.marked.len(),
            reopened_us,
            others_dropped,
        })
    }
}

/// The path a stream subscribes to, and what an event for it must contain.
fn stream_route(plan: &ShardPlan, local: usize) -> (String, Option<Vec<u8>>) {
    match &plan.target {
        StreamTarget::Registry { id_prefix, .. } => {
            let id = fleet::agent_id(id_prefix, plan.first + local);
            let needle = format!("\"agentId\":\"{id}\"").into_bytes();
            (format!("/api/v1/agents/{id}/events"), Some(needle))
        }
        StreamTarget::Nchan { channel } => (format!("/sub/{channel}"), None),
    }
}

/// Opens one stream on its server and reads it until it ends; then, when the
/// plan says so, waits its `retry:` and opens it again (on the balancer's
/// next server), for as long as the shard runs.
async fn hold_stream(context: Arc<StreamContext>, local: usize) {
    let global = context.plan.first + local;
    let (path, agent_needle) = stream_route(&context.plan, local);
    let source = fleet::source_ip(global, context.plan.source_ips);
    let mut server = global % context.plan.servers.len();
    let opened = {
        let Ok(_permit) = context.opening.acquire().await else {
            return;
        };
        open_stream(&context.plan.servers[server], source, &path).await
    };
    let mut connection = match opened {
        Ok(opened) => opened,
        Err(err) => {
            let _ = context.opened.send((local, Err(err.to_string())));
            return;
        }
    };
    let _ = context.opened.send((local, Ok(())));
    let mut retry_ms = DEFAULT_RETRY_MS;
    loop {
        context.counters.open.fetch_add(1, Ordering::Relaxed);
        let _ = context.events.send(StreamEvent::Opened {
            local,
            server,
            at_us: now_us(),
        });
        let sent_retry = read_stream(&context, local, agent_needle.as_deref(), connection).await;
        retry_ms = sent_retry.unwrap_or(retry_ms);
        context.counters.open.fetch_sub(1, Ordering::Relaxed);
        context.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let _ = context.events.send(StreamEvent::Ended {
            local,
            at_us: now_us(),
        });
        if !context.plan.reconnect {
            return;
        }
        (connection, server) = reopen(&context, source, &path, retry_ms).await;
    }
}

/// Opens a stream again as an EventSource client behind a balancer does:
/// after `retry_ms`, on the server whose turn it is, passed on to the next
/// when one refuses the connection; when every server refused, or one
/// answered with something else than a stream, waits `retry_ms` again.
async fn reopen(
    context: &StreamContext,
    source: std::net::Ipv4Addr,
    path: &str,
    retry_ms: u64,
) -> (OpenStream, usize) {
    let servers = &context.plan.servers;
    loop {
        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
        let Ok(_permit) = context.opening.acquire().await else {
            // The semaphore is never closed; wait as if refused.
            continue;
        };
        let turn = context.next_server.fetch_add(1, Ordering::Relaxed);
        let mut failure = None;
        for attempt in 0..servers.len() {
            let server = (turn + attempt) % servers.len();
            match open_stream(&servers[server], source, path).await {
                Ok(opened) => return (opened, server),
                Err(OpenError::Connect(err)) => failure = Some(err),
                Err(OpenError::Answer(err)) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        context
            .counters
            .reopen_failures
            .fetch_add(1, Ordering::Relaxed);
        if let (Ok(mut first), Some(failure)) =
            (context.counters.first_reopen_failure.lock(), failure)
        {
            first.get_or_insert(failure.to_string());
        }
    }
}

/// Reads an open stream until it ends; returns the last `retry:` it sent.
async fn read_stream(
    context: &StreamContext,
    local: usize,
    agent_needle: Option<&[u8]>,
    connection: OpenStream,
) -> Option<u64> {
    let OpenStream {
        mut stream,
        leftover,
        chunked,
    } = connection;
    let mut reader = StreamReader {
        decoder: chunked.then(ChunkedDecoder::default),
        parser: SseParser::default(),
    };
    let mut on_event = |event: &sse::SseEvent<'_>, at_us: u64| {
        on_stream_event(context, local, agent_needle, event, at_us);
    };
    let mut ended = reader.feed(&leftover, now_us(), &mut on_event);
    let mut buffer = vec![0; STREAM_READ_BYTES];
    let mut comments = 0;
    while !ended {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => ended = reader.feed(&buffer[..read], now_us(), &mut on_event),
        }
        let seen = reader.parser.comments();
        if seen != comments {
            context
                .counters
                .comments
                .fetch_add(seen - comments, Ordering::Relaxed);
            comments = seen;
        }
    }
    reader.parser.retry_ms()
}

/// Handles one event of stream `local`: records the arrival, queues the ack.
fn on_stream_event(
    context: &StreamContext,
    local: usize,
    agent_needle: Option<&[u8]>,
    event: &sse::SseEvent<'_>,
    at_us: u64,
) {
    // On our server, an event names the command type and its data the agent.
    let for_us = agent_needle
        .is_none_or(|needle| !event.event.is_empty() && sse::find(event.data, needle).is_some());
    let push = sse::push_marker(event.data);
    match push {
        Some(push) if for_us => {
            let _ = context.arrivals.send(Arrival {
                local,
                push,
                at_us,
                data_bytes: event.data.len(),
            });
        }
        _ => {
            context
                .counters
                .unexpected_events
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    if !context.acks.is_empty() && !event.id.is_empty() {
        let worker = local % context.acks.len();
        let _ = context.acks[worker].send(AckOrder {
            local,
            command_id: String::from_utf8_lossy(event.id).into_owned(),
        });
    }
}

/// The chunked decoder (when the body is chunked) feeding the SSE parser.
struct StreamReader {
    decoder: Option<ChunkedDecoder>,
    parser: SseParser,
}

impl StreamReader {
    /// Feeds bytes read at `at_us`; returns whether the stream has ended.
    fn feed(
        &mut self,
        bytes: &[u8],
        at_us: u64,
        on_event: &mut impl FnMut(&sse::SseEvent<'_>, u64),
    ) -> bool {
        let parser = &mut self.parser;
        let mut dispatch = |event: &sse::SseEvent<'_>| on_event(event, at_us);
        match &mut self.decoder {
            Some(decoder) => {
                let fed = decoder.feed(bytes, |data| parser.feed(data, &mut dispatch));
                fed.is_err() || decoder.is_done()
            }
            None => {
                parser.feed(bytes, &mut dispatch);
                false
            }
        }
    }
}

/// An open stream: the connection, the body bytes already read with the
/// head, and whether the body is chunked.
struct OpenStream {
    stream: TcpStream,
    leftover: Vec<u8>,
    chunked: bool,
}

/// Why a stream did not open: the connection was refused (a balancer tries
/// the next server), or the server answered otherwise (the client sees it).
#[derive(Debug)]
enum OpenError {
    Connect(io::Error),
    Answer(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(err) => write!(formatter, "connecting: {err}"),
            Self::Answer(err) => err.fmt(formatter),
        }
    }
}

/// Connects from `source`, asks for the event stream and reads the response head.
async fn open_stream(
    server: &Server,
    source: std::net::Ipv4Addr,
    path: &str,
) -> Result<OpenStream, OpenError> {
    let stream = http::connect(server.addr, Some(source))
        .await
        .map_err(OpenError::Connect)?;
    request_stream(stream, server, path)
        .await
        .map_err(OpenError::Answer)
}

async fn request_stream(
    mut stream: TcpStream,
    server: &Server,
    path: &str,
) -> io::Result<OpenStream> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        server.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut received = Vec::with_capacity(1024);
    let mut buffer = [0; 1024];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
        received.extend_from_slice(&buffer[..read]);
        if let Some(head) = http::parse_head(&received)? {
            let is_stream = head
                .content_type
                .as_deref()
                .is_some_and(|kind| kind.starts_with("text/event-stream"));
            if head.status != 200 || !is_stream {
                return Err(io::Error::other(format!(
                    "answered {} ({}) instead of an event stream",
                    head.status,
                    head.content_type.as_deref().unwrap_or("no content type")
                )));
            }
            let leftover = received.split_off(head.length);
            return Ok(OpenStream {
                stream,
                leftover,
                chunked: head.chunked,
            });
        }
    }
}

/// The server worker `worker`'s requests go to: the workers of a shard are
/// spread over the servers as a balancer spreads connections.
fn server_of_worker(plan: &ShardPlan, worker: usize) -> Server {
    plan.servers[(plan.first + worker) % plan.servers.len()].clone()
}

/// Starts the heartbeat workers: each agent heartbeats every period, agents
/// spread evenly over it by their global index.
fn start_heartbeats(plan: &ShardPlan, counters: &Arc<Counters>) {
    let workers = plan.request_connections.max(1);
    let start = Instant::now();
    for worker in 0..workers {
        tokio::spawn(heartbeat_worker(
            worker,
            workers,
            plan.clone(),
            server_of_worker(plan, worker),
            counters.clone(),
            start,
        ));
    }
}

async fn heartbeat_worker(
    worker: usize,
    workers: usize,
    plan: ShardPlan,
    server: Server,
    counters: Arc<Counters>,
    start: Instant,
) {
    let StreamTarget::Registry { id_prefix, .. } = &plan.target else {
        return;
    };
    let period = Duration::from_millis(plan.heartbeat_every_ms);
    let agents: Vec<(usize, String)> = (worker..plan.count)
        .step_by(workers)
        .map(|local| {
            let global = plan.first + local;
            let path = format!(
                "/api/v1/agents/{}/heartbeat",
                fleet::agent_id(id_prefix, global)
            );
            (global, path)
        })
        .collect();
    let total = plan.total.max(1) as f64;
    let mut connection = HttpConnection::new(server);
    for cycle in 0u32.. {
        let cycle_start = start + period * cycle;
        for (global, path) in &agents {
            let offset = period.mul_f64(*global as f64 / total);
            tokio::time::sleep_until(cycle_start + offset).await;
            let outcome = connection.send("POST", path, None).await;
            count_outcome(
                &outcome,
                204,
                &counters.heartbeats_ok,
                &counters.heartbeats_failed,
                &counters.first_heartbeat_failure,
            );
        }
    }
}

/// Sends the acks queued for one worker on one keep-alive connection.
async fn send_acks(
    mut orders: mpsc::UnboundedReceiver<AckOrder>,
    plan: ShardPlan,
    server: Server,
    counters: Arc<Counters>,
) {
    let StreamTarget::Registry { id_prefix, .. } = &plan.target else {
        return;
    };
    let mut connection = HttpConnection::new(server);
    while let Some(order) = orders.recv().await {
        let path = format!(
            "/api/v1/agents/{}/commands/{}/ack",
            fleet::agent_id(id_prefix, plan.first + order.local),
            order.command_id
        );
        let outcome = connection
            .send("POST", &path, Some(br#"{"result":"SUCCESS"}"#))
            .await;
        count_outcome(
            &outcome,
            200,
            &counters.acks_ok,
            &counters.acks_failed,
            &counters.first_ack_failure,
        );
    }
}
