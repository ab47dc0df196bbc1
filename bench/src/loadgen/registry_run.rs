//! The `registry` target: registers a fleet, opens one SSE stream per agent,
//! then plays operators (timed pushes to the fleet, a group, single agents)
//! and optionally soaks: streams held with heartbeats, a fleet push now and
//! then. Reads the server's memory before registering, after, and with the
//! streams open.

use std::io;
use std::time::{Duration, Instant};

use super::fleet;
use super::http::{HttpConnection, Server};
use super::memory::{self, Memory};
use super::protocol::{self, Audience, ShardStats, StreamTarget};
use super::push::{self, PushRequest};
use super::register;
use super::results::{Phase, PushResult, RunResult, Target};
use super::shards::Shards;
use super::streams::{self, ShardSettings, StreamOptions};

/// Options of the `registry` target.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct RegistryOptions {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// The server's process id, to read its memory from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Agents to register, each with one stream.
    #[arg(long, short = 'n', default_value_t = 1_000)]
    pub(crate) agents: usize,
    /// Agent ids are this prefix and a 6-digit index.
    #[arg(long, default_value = "bench-")]
    pub(crate) id_prefix: String,
    /// Groups the agents are spread over (agent i is in group i mod G).
    #[arg(long, default_value_t = 10)]
    pub(crate) groups: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) register_concurrency: usize,
    /// Timed pushes to group 0 after the fleet pushes.
    #[arg(long, default_value_t = 0)]
    pub(crate) group_pushes: u32,
    /// Timed pushes to single agents after those.
    #[arg(long, default_value_t = 0)]
    pub(crate) agent_pushes: u32,
    /// Size of the command's payload (the JSON object carrying the push marker), in bytes.
    #[arg(long, default_value_t = 128)]
    pub(crate) payload_bytes: usize,
    /// The command type pushed.
    #[arg(long, default_value = "config-update")]
    pub(crate) command_type: String,
    /// Every agent heartbeats this often, spread evenly (0: no heartbeats).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) heartbeat_every_s: f64,
    /// Keep-alive connections per process for heartbeats and acks.
    #[arg(long, default_value_t = 8)]
    pub(crate) request_connections: usize,
    /// Every agent acknowledges every command it receives.
    #[arg(long)]
    pub(crate) ack: bool,
    /// After the pushes, hold the streams this many seconds (with heartbeats;
    /// 30 s apart unless --heartbeat-every-s says otherwise).
    #[arg(long, default_value_t = 0)]
    pub(crate) soak: u64,
    /// During the soak, push to the fleet this often, in seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) soak_push_every_s: u64,
    /// How streams are held and pushes timed.
    #[command(flatten)]
    pub(crate) streams: StreamOptions,
}

/// Runs the `registry` target and returns what it measured.
pub(crate) async fn run(options: &RegistryOptions) -> io::Result<RunResult> {
    let server = Server::from_url(&options.url).map_err(io::Error::other)?;
    let agents = options.agents;
    let read_memory = |pid: Option<u32>| pid.and_then(|pid| memory::of_process(pid).ok());
    let memory_before = read_memory(options.server_pid);

    eprintln!("registering {agents} agents on {}", server.host);
    let registered = register::register_fleet(
        std::slice::from_ref(&server),
        &options.id_prefix,
        agents,
        options.groups,
        options.register_concurrency,
    )
    .await?;
    registered.report();
    let registrations_per_s = registered.per_second();
    options.streams.settle().await;
    let memory_after_register = read_memory(options.server_pid);

    let heartbeat_every_s = if options.heartbeat_every_s > 0.0 {
        options.heartbeat_every_s
    } else if options.soak > 0 {
        30.0
    } else {
        0.0
    };
    let target = StreamTarget::Registry {
        id_prefix: options.id_prefix.clone(),
        groups: options.groups,
    };
    let settings = ShardSettings {
        heartbeat_every_ms: (heartbeat_every_s * 1000.0) as u64,
        request_connections: options.request_connections,
        ack: options.ack,
        reconnect: false,
    };
    let opened = streams::open_streams(
        std::slice::from_ref(&server),
        target,
        agents,
        &options.streams,
        settings,
    )
    .await?;
    let mut shards = opened.shards;
    options.streams.settle().await;
    let memory_after_streams = read_memory(options.server_pid);
    log_memory(
        memory_before,
        memory_after_register,
        memory_after_streams,
        opened.outcome.opened,
    );

    let mut operator = Operator {
        connection: HttpConnection::new(server.clone()),
        shards: &mut shards,
        options,
        pushes: Vec::new(),
        next_number: protocol::first_push_number(),
    };
    let interval = options.streams.push_interval();
    for _ in 0..options.streams.pushes {
        operator.push(Audience::All, Phase::Burst).await?;
        tokio::time::sleep(interval).await;
    }
    for _ in 0..options.group_pushes {
        operator.push(Audience::Group(0), Phase::Burst).await?;
        tokio::time::sleep(interval).await;
    }
    for push in 0..options.agent_pushes {
        let agent = (push as usize * 7_919 + 13) % agents.max(1);
        operator.push(Audience::Agent(agent), Phase::Burst).await?;
        tokio::time::sleep(interval).await;
    }
    if options.soak > 0 {
        operator.soak().await?;
    }
    let pushes = std::mem::take(&mut operator.pushes);
    let stats = shards.stats().await?;
    shards.stop().await;
    log_stats(&stats);

    let opened_count = opened.outcome.opened;
    let per_stream = |pick: fn(&Memory) -> u64| {
        let before = memory_before?;
        let after = memory_after_streams?;
        Some(memory::per_item_bytes(
            pick(&before),
            pick(&after),
            opened_count,
        ))
    };
    Ok(RunResult {
        target: Target::Registry,
        streams: agents,
        processes: opened.processes,
        registered: Some(registered.ok),
        registrations_per_s: Some(registrations_per_s),
        streams_opened: opened_count,
        streams_failed: opened.outcome.failed,
        first_error: opened.outcome.first_error,
        open_seconds: opened.seconds,
        memory_before,
        memory_after_register,
        memory_after_streams,
        rss_per_stream_bytes: per_stream(|memory| memory.rss_kib),
        pss_per_stream_bytes: per_stream(|memory| memory.pss_kib),
        pushes,
        stats,
        heartbeat_every_s,
        soak_seconds: options.soak,
    })
}

/// Plays the operator: pushes commands and times their arrival.
struct Operator<'a> {
    connection: HttpConnection,
    shards: &'a mut Shards,
    options: &'a RegistryOptions,
    pushes: Vec<PushResult>,
    next_number: u32,
}

impl Operator<'_> {
    async fn push(&mut self, audience: Audience, phase: Phase) -> io::Result<()> {
        self.next_number += 1;
        let options = self.options;
        let (path, label) = match audience {
            Audience::All => ("/api/v1/agents/commands".to_owned(), "fleet"),
            Audience::Group(group) => (
                format!(
                    "/api/v1/agents/groups/{}/commands",
                    fleet::group_name(&options.id_prefix, group)
                ),
                "group",
            ),
            Audience::Agent(index) => (
                format!(
                    "/api/v1/agents/{}/commands",
                    fleet::agent_id(&options.id_prefix, index)
                ),
                "agent",
            ),
        };
        let request = PushRequest {
            number: self.next_number,
            audience,
            label,
            phase,
            path,
            body: fleet::command_body(
                &options.command_type,
                self.next_number,
                options.payload_bytes,
            ),
            timeout: options.streams.push_timeout(),
        };
        let server_pids = options.server_pid.as_slice();
        let result =
            push::timed_push(&mut self.connection, self.shards, request, server_pids).await?;
        push::log_push(&result);
        self.pushes.push(result);
        Ok(())
    }

    /// Holds the streams for the soak's duration, pushing to the fleet every
    /// `soak_push_every_s` and logging the counters every 30 s.
    async fn soak(&mut self) -> io::Result<()> {
        let options = self.options;
        eprintln!("soaking for {} s", options.soak);
        let started = Instant::now();
        let end = started + Duration::from_secs(options.soak);
        let push_every = Duration::from_secs(options.soak_push_every_s.max(1));
        let log_every = Duration::from_secs(30);
        let mut next_push = started + push_every;
        let mut next_log = started + log_every;
        loop {
            let wake = end.min(next_push).min(next_log);
            tokio::time::sleep_until(wake.into()).await;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            if now >= next_push {
                self.push(Audience::All, Phase::Soak).await?;
                next_push += push_every;
            }
            if now >= next_log {
                let stats = self.shards.stats().await?;
                eprintln!(
                    "  {:>4} s: {} open, {} dropped, heartbeats {} ok / {} failed{}",
                    started.elapsed().as_secs(),
                    stats.open,
                    stats.dropped,
                    stats.heartbeats_ok,
                    stats.heartbeats_failed,
                    stats
                        .first_heartbeat_failure
                        .map(|failure| format!(" (first: {failure})"))
                        .unwrap_or_default()
                );
                next_log += log_every;
            }
        }
    }
}

fn log_memory(
    before: Option<Memory>,
    after_register: Option<Memory>,
    after_streams: Option<Memory>,
    streams: usize,
) {
    let (Some(before), Some(after_register), Some(after_streams)) =
        (before, after_register, after_streams)
    else {
        return;
    };
    eprintln!(
        "  server RSS: {} KiB before registering, {} KiB after, {} KiB with {streams} streams: {:.0} B per agent, {:.0} B per stream with its agent",
        before.rss_kib,
        after_register.rss_kib,
        after_streams.rss_kib,
        memory::per_item_bytes(before.rss_kib, after_register.rss_kib, streams),
        memory::per_item_bytes(before.rss_kib, after_streams.rss_kib, streams),
    );
}

pub(crate) fn log_stats(stats: &ShardStats) {
    eprintln!(
        "  at the end: {} open, {} dropped, heartbeats {} ok / {} failed, acks {} ok / {} failed, {} unexpected events, {} comments (keepalives)",
        stats.open,
        stats.dropped,
        stats.heartbeats_ok,
        stats.heartbeats_failed,
        stats.acks_ok,
        stats.acks_failed,
        stats.unexpected_events,
        stats.comments
    );
    if let Some(failure) = &stats.first_heartbeat_failure {
        eprintln!("  first failed heartbeat: {failure}");
    }
    if let Some(failure) = &stats.first_ack_failure {
        eprintln!("  first failed ack: {failure}");
    }
}
