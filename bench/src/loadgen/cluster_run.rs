//! The `cluster` target: one registry served by several replicas on Redis
//! (SPEC 9), loaded as through a round-robin balancer. It registers the
//! fleet (agent `i` through replica `i mod R`), opens one stream per agent
//! the same way, times fleet pushes (each through the next replica), has wrk
//! heartbeat every agent through every replica at once, reads Redis's
//! `used_memory` along the way, then SIGKILLs one replica and times until
//! every stream it held is open again through the others (each agent waits
//! the `retry:` its stream sent, jitter included), and pushes once more.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use futures_util::future::join_all;

use super::fleet;
use super::http::{HttpConnection, Server};
use super::latency::PushLatency;
use super::memory;
use super::protocol::{self, Audience, StreamTarget, now_us};
use super::push::{self, PushRequest};
use super::redis_info;
use super::register;
use super::registry_run;
use super::results::{
    ClusterHeartbeats, ClusterResult, FailoverResult, Phase, PushResult, RedisMemory, WrkResult,
};
use super::shards::Shards;
use super::streams::{self, ShardSettings, StreamOptions};

/// Options of the `cluster` target.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ClusterOptions {
    /// The replicas' base URLs, comma-separated (or the option repeated).
    #[arg(long = "url", value_delimiter = ',', required = true)]
    pub(crate) urls: Vec<String>,
    /// The replicas' process ids, in the same order: read for their memory,
    /// and the one of `--kill` is sent SIGKILL.
    #[arg(long = "replica-pid", value_delimiter = ',')]
    pub(crate) replica_pids: Vec<u32>,
    /// Redis (`HOST:PORT`) whose `INFO memory` is read along the run.
    #[arg(long)]
    pub(crate) redis: Option<String>,
    /// Agents to register, each with one stream.
    #[arg(long, short = 'n', default_value_t = 1_000)]
    pub(crate) agents: usize,
    /// Agent ids are this prefix and a 6-digit index.
    #[arg(long, default_value = "cluster-")]
    pub(crate) id_prefix: String,
    /// Groups the agents are spread over (agent i is in group i mod G).
    #[arg(long, default_value_t = 10)]
    pub(crate) groups: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) register_concurrency: usize,
    /// Size of the command's payload, in bytes.
    #[arg(long, default_value_t = 128)]
    pub(crate) payload_bytes: usize,
    /// The command type pushed.
    #[arg(long, default_value = "config-update")]
    pub(crate) command_type: String,
    /// Seconds of heartbeats by wrk through every replica at once (0: none).
    #[arg(long, default_value_t = 10)]
    pub(crate) wrk_seconds: u64,
    /// wrk's connections in all, spread evenly over the replicas.
    #[arg(long, default_value_t = 64)]
    pub(crate) wrk_connections: usize,
    /// wrk's Lua script that heartbeats the agents.
    #[arg(long, default_value = "bench/wrk/heartbeat.lua")]
    pub(crate) wrk_script: PathBuf,
    /// The replica to SIGKILL after the pushes (its index in `--url`); none: no failover.
    #[arg(long)]
    pub(crate) kill: Option<usize>,
    /// How long the killed replica's streams may take to open again, in seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) failover_timeout_s: u64,
    /// How streams are held and pushes timed.
    #[command(flatten)]
    pub(crate) streams: StreamOptions,
}

/// Runs the `cluster` target and returns what it measured.
pub(crate) async fn run(options: &ClusterOptions) -> io::Result<ClusterResult> {
    let servers = options
        .urls
        .iter()
        .map(|url| Server::from_url(url))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    if servers.is_empty() {
        return Err(io::Error::other("give the replicas with --url"));
    }
    if let Some(kill) = options.kill
        && options.replica_pids.get(kill).is_none()
    {
        return Err(io::Error::other(format!(
            "--kill {kill} needs the process id of replica {kill} in --replica-pid"
        )));
    }
    let replicas = servers.len();
    let agents = options.agents;
    let mut redis = RedisMemory {
        before: redis_used_memory(options).await,
        ..RedisMemory::default()
    };

    eprintln!("registering {agents} agents through {replicas} replica(s), round robin");
    let registered = register::register_fleet(
        &servers,
        &options.id_prefix,
        agents,
        options.groups,
        options.register_concurrency,
    )
    .await?;
    registered.report();
    let registrations_per_s = registered.per_second();
    options.streams.settle().await;
    redis.after_register = redis_used_memory(options).await;

    let target = StreamTarget::Registry {
        id_prefix: options.id_prefix.clone(),
        groups: options.groups,
    };
    let settings = ShardSettings {
        heartbeat_every_ms: 0,
        request_connections: 1,
        ack: false,
        reconnect: true,
    };
    let opened =
        streams::open_streams(&servers, target, agents, &options.streams, settings).await?;
    let mut shards = opened.shards;
    options.streams.settle().await;
    redis.after_streams = redis_used_memory(options).await;
    let streams_per_replica = join_all(servers.iter().map(open_streams_of)).await;
    let replica_rss_kib: Vec<Option<u64>> = options
        .replica_pids
        .iter()
        .map(|&pid| memory::of_process(pid).ok().map(|memory| memory.rss_kib))
        .collect();
    log_placement(
        &streams_per_replica,
        &replica_rss_kib,
        &redis,
        registered.ok,
    );

    let mut operator = Operator {
        connections: servers.iter().cloned().map(HttpConnection::new).collect(),
        options,
        pushes: Vec::new(),
        next_number: protocol::first_push_number(),
    };
    for push in 0..options.streams.pushes {
        operator
            .push(&mut shards, push as usize % replicas, Phase::Burst)
            .await?;
        tokio::time::sleep(options.streams.push_interval()).await;
    }
    redis.after_pushes = redis_used_memory(options).await;

    let heartbeats = if options.wrk_seconds > 0 {
        heartbeat_through_all(&servers, options).await
    } else {
        None
    };

    let failover = match options.kill {
        Some(kill) => {
            let result = fail_over(&mut shards, options, kill, replicas).await?;
            // The push that shows nothing was lost: through a replica alive
            // (the restarted one when it was the only one).
            tokio::time::sleep(options.streams.push_interval()).await;
            operator
                .push(&mut shards, (kill + 1) % replicas, Phase::AfterFailover)
                .await?;
            Some(result)
        }
        None => None,
    };

    let stats = shards.stats().await?;
    shards.stop().await;
    registry_run::log_stats(&stats);
    Ok(ClusterResult {
        replicas,
        agents,
        processes: opened.processes,
        registered: registered.ok,
        registration_failures: registered.failed,
        registrations_per_s,
        streams_opened: opened.outcome.opened,
        streams_failed: opened.outcome.failed,
        first_error: opened.outcome.first_error,
        open_seconds: opened.seconds,
        streams_per_replica,
        replica_rss_kib,
        redis,
        pushes: std::mem::take(&mut operator.pushes),
        heartbeats,
        failover,
        stats,
    })
}

/// Plays the operator: fleet pushes, each through the replica it is given.
struct Operator<'a> {
    connections: Vec<HttpConnection>,
    options: &'a ClusterOptions,
    pushes: Vec<PushResult>,
    next_number: u32,
}

impl Operator<'_> {
    async fn push(&mut self, shards: &mut Shards, replica: usize, phase: Phase) -> io::Result<()> {
        self.next_number += 1;
        let options = self.options;
        let request = PushRequest {
            number: self.next_number,
            audience: Audience::All,
            label: "fleet",
            phase,
            path: "/api/v1/agents/commands".to_owned(),
            body: fleet::command_body(
                &options.command_type,
                self.next_number,
                options.payload_bytes,
            ),
            timeout: options.streams.push_timeout(),
        };
        eprint!("  through replica {replica}:");
        // Every replica's: a push through one is delivered by all.
        let result = push::timed_push(
            &mut self.connections[replica],
            shards,
            request,
            &options.replica_pids,
        )
        .await?;
        push::log_push(&result);
        self.pushes.push(result);
        Ok(())
    }
}

/// SIGKILLs replica `kill` and waits until every stream it held is open again.
async fn fail_over(
    shards: &mut Shards,
    options: &ClusterOptions,
    kill: usize,
    replicas: usize,
) -> io::Result<FailoverResult> {
    let pid = options
        .replica_pids
        .get(kill)
        .copied()
        .ok_or_else(|| io::Error::other("no process id for the replica to kill"))?;
    let marked = shards.mark(kill).await?;
    let restarted = replicas == 1;
    eprintln!(
        "failover: SIGKILL of replica {kill} (pid {pid}), which holds {marked} streams{}",
        if restarted {
            "; it is the only one, so they come back when it is started again"
        } else {
            ""
        }
    );
    let since_us = now_us();
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await?;
    if !killed.success() {
        return Err(io::Error::other(format!("kill -KILL {pid} failed")));
    }
    let deadline_us = since_us + options.failover_timeout_s * 1_000_000;
    let recovery = shards.recovery(since_us, deadline_us).await?;
    let latency = PushLatency::of(since_us, recovery.marked, &recovery.reopened_us);
    eprintln!(
        "  {}/{} streams open again: p50 {:.2} s, p99 {:.2} s, all {:.2} s after the kill; {} other streams ended",
        latency.received,
        latency.expected,
        latency.p50_us as f64 / 1e6,
        latency.p99_us as f64 / 1e6,
        latency.max_us as f64 / 1e6,
        recovery.others_dropped,
    );
    Ok(FailoverResult {
        replica: kill,
        restarted,
        latency,
        others_dropped: recovery.others_dropped,
    })
}

/// wrk against every replica at once, the connections spread evenly, every
/// agent heartbeated; `None` (and why, on stderr) when wrk could not run.
async fn heartbeat_through_all(
    servers: &[Server],
    options: &ClusterOptions,
) -> Option<ClusterHeartbeats> {
    let connections = (options.wrk_connections / servers.len()).max(1);
    let settings = format!("wrk -t1 -c{connections} -d{}s", options.wrk_seconds);
    eprintln!(
        "heartbeats: `{settings}` against each of the {} replicas at once",
        servers.len()
    );
    let runs = join_all(servers.iter().map(|server| async {
        let output = tokio::process::Command::new("wrk")
            .args(["-t1", &format!("-c{connections}")])
            .arg(format!("-d{}s", options.wrk_seconds))
            .arg("-s")
            .arg(&options.wrk_script)
            .arg(format!("http://{}", server.host))
            .env("WRK_AGENTS", options.agents.to_string())
            .env("WRK_PREFIX", &options.id_prefix)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .await
            .map_err(|err| format!("wrk: {err}"))?;
        WrkResult::parse(
            "registry",
            &settings,
            &String::from_utf8_lossy(&output.stdout),
        )
    }))
    .await;
    let mut per_replica = Vec::new();
    for run in runs {
        match run {
            Ok(result) => per_replica.push(result),
            Err(err) => {
                eprintln!("  heartbeats not measured: {err}");
                return None;
            }
        }
    }
    let requests_per_s: f64 = per_replica.iter().map(|run| run.requests_per_s).sum();
    let non_2xx: u64 = per_replica.iter().map(|run| run.non_2xx).sum();
    let heartbeats = ClusterHeartbeats {
        requests_per_s,
        ok_per_s: (requests_per_s - non_2xx as f64 / options.wrk_seconds as f64).max(0.0),
        non_2xx,
        socket_errors: per_replica.iter().map(|run| run.socket_errors).sum(),
        per_replica,
    };
    eprintln!(
        "  {:.0} heartbeats/s answered 204 in all, of {:.0} sent ({} not 2xx, {} socket errors)",
        heartbeats.ok_per_s,
        heartbeats.requests_per_s,
        heartbeats.non_2xx,
        heartbeats.socket_errors
    );
    Some(heartbeats)
}

/// Redis's `used_memory`, when `--redis` names it and it answers.
async fn redis_used_memory(options: &ClusterOptions) -> Option<u64> {
    let addr = options.redis.as_deref()?;
    match redis_info::used_memory(addr).await {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            eprintln!("  Redis's memory not read: {err}");
            None
        }
    }
}

/// The replica's `registry_open_streams` gauge.
async fn open_streams_of(server: &Server) -> Option<u64> {
    let mut connection = HttpConnection::new(server.clone());
    let response = connection.send("GET", "/metrics", None).await.ok()?;
    connection.close();
    gauge(
        &String::from_utf8_lossy(&response.body),
        "registry_open_streams",
    )
}

/// The value of an unlabelled gauge in Prometheus's text format.
fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|value| value as u64)
    })
}

fn log_placement(
    streams_per_replica: &[Option<u64>],
    replica_rss_kib: &[Option<u64>],
    redis: &RedisMemory,
    agents: usize,
) {
    let show = |values: &[Option<u64>]| {
        values
            .iter()
            .map(|value| value.map_or("?".to_owned(), |value| value.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!("  streams open per replica: {}", show(streams_per_replica));
    if !replica_rss_kib.is_empty() {
        eprintln!("  replicas' RSS, KiB: {}", show(replica_rss_kib));
    }
    if let (Some(before), Some(after), Some(streams)) =
        (redis.before, redis.after_register, redis.after_streams)
    {
        eprintln!(
            "  Redis used_memory: {before} B before, {after} B registered, {streams} B with the streams open: {:.0} B per agent",
            per_agent(before, streams, agents),
        );
    }
}

/// `(after - before) / agents`, bytes.
pub(crate) fn per_agent(before: u64, after: u64, agents: usize) -> f64 {
    (after as f64 - before as f64) / agents.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_gauge() {
        let metrics = "# HELP registry_open_streams Agent streams open now\n# TYPE registry_open_streams gauge\nregistry_open_streams 16667\nregistry_open_streams_total 3\n";
        assert_eq!(gauge(metrics, "registry_open_streams"), Some(16_667));
        assert_eq!(gauge(metrics, "registry_agents"), None);
    }
}
