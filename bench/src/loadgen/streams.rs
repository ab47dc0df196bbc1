//! Options and steps both targets share: how streams are spread over
//! processes and source addresses, opening them, the burst of timed pushes,
//! and where the result goes.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::http::Server;
use super::protocol::{ShardPlan, StreamTarget};
use super::results::{ResultFile, RunResult};
use super::shards::{self, OpenOutcome, Shards};

/// How the streams are held and the pushes timed.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct StreamOptions {
    /// Streams one process holds at most; more streams are split over several
    /// processes (each process may open 20,000 files here).
    #[arg(long, default_value_t = 9_500)]
    pub(crate) streams_per_process: usize,
    /// Spread streams over source addresses 127.0.0.1 ..= 127.0.0.K
    /// (0: one per 1,000 streams, at least 2).
    #[arg(long, default_value_t = 0)]
    pub(crate) source_ips: usize,
    /// Streams being opened at once, per process.
    #[arg(long, default_value_t = 128)]
    pub(crate) open_concurrency: usize,
    /// How long all streams may take to open, in seconds.
    #[arg(long, default_value_t = 180)]
    pub(crate) open_timeout_s: u64,
    /// Timed pushes to every stream, one after another.
    #[arg(long, default_value_t = 3)]
    pub(crate) pushes: u32,
    /// Pause between two pushes, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) push_interval_ms: u64,
    /// How long the streams have to receive a push, in seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) push_timeout_s: u64,
    /// Pause before reading the server's memory, in milliseconds, so that it settles.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) settle_ms: u64,
    /// Also write the result (one JSON object) to this file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

impl StreamOptions {
    /// The number of source addresses for `streams` streams.
    pub(crate) fn source_ip_count(&self, streams: usize) -> usize {
        if self.source_ips > 0 {
            self.source_ips.min(254)
        } else {
            streams.div_ceil(1_000).clamp(2, 254)
        }
    }

    /// The pause between pushes.
    pub(crate) fn push_interval(&self) -> Duration {
        Duration::from_millis(self.push_interval_ms)
    }

    /// How long a push may take.
    pub(crate) fn push_timeout(&self) -> Duration {
        Duration::from_secs(self.push_timeout_s)
    }

    /// Waits for the server's memory to settle.
    pub(crate) async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(self.settle_ms)).await;
    }
}

/// What opening the streams gave.
pub(crate) struct OpenedStreams {
    /// The shards holding them.
    pub(crate) shards: Shards,
    /// How many opened and failed.
    pub(crate) outcome: OpenOutcome,
    /// How many processes hold them.
    pub(crate) processes: usize,
    /// How long opening took, in seconds.
    pub(crate) seconds: f64,
}

/// The per-run settings of the shards.
pub(crate) struct ShardSettings {
    /// Heartbeat period in milliseconds (0: none).
    pub(crate) heartbeat_every_ms: u64,
    /// Connections for heartbeats and acks, per process.
    pub(crate) request_connections: usize,
    /// Acknowledge every command.
    pub(crate) ack: bool,
    /// Open an ended stream again after its `retry:`.
    pub(crate) reconnect: bool,
}

/// Spawns the shards and waits until all `streams` streams have been tried,
/// stream `i` on `servers[i mod len]`.
pub(crate) async fn open_streams(
    servers: &[Server],
    target: StreamTarget,
    streams: usize,
    options: &StreamOptions,
    settings: ShardSettings,
) -> io::Result<OpenedStreams> {
    let template = ShardPlan {
        servers: servers.to_vec(),
        target,
        first: 0,
        count: 0,
        total: streams,
        source_ips: options.source_ip_count(streams),
        open_concurrency: options.open_concurrency,
        heartbeat_every_ms: settings.heartbeat_every_ms,
        request_connections: settings.request_connections,
        ack: settings.ack,
        reconnect: settings.reconnect,
    };
    let plans = shards::split(streams, options.streams_per_process, &template);
    eprintln!(
        "opening {streams} streams on {} server(s) from {} process(es), source addresses 127.0.0.1..=127.0.0.{}",
        servers.len(),
        plans.len(),
        template.source_ips
    );
    let started = Instant::now();
    let mut shards = Shards::spawn(&plans).await?;
    let outcome =
        tokio::time::timeout(Duration::from_secs(options.open_timeout_s), shards.opened())
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "streams took too long to open")
            })??;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {} open, {} failed, in {seconds:.1} s{}",
        outcome.opened,
        outcome.failed,
        outcome
            .first_error
            .as_deref()
            .map(|err| format!(" (first failure: {err})"))
            .unwrap_or_default()
    );
    Ok(OpenedStreams {
        shards,
        outcome,
        processes: plans.len(),
        seconds,
    })
}

/// Prints the result as one JSON line on stdout, and writes it to `--out`.
pub(crate) fn emit(result: RunResult, options: &StreamOptions) -> io::Result<()> {
    let json =
        serde_json::to_string(&ResultFile::Run(Box::new(result))).map_err(io::Error::other)?;
    if let Some(path) = &options.out {
        std::fs::write(path, format!("{json}\n"))?;
    }
    println!("{json}");
    Ok(())
}
