//! The `nchan` target: subscribes N EventSource clients to one nginx+nchan
//! channel, publishes messages of a chosen size to it, and times their
//! arrival exactly as for our server. Reads nginx's memory before and after.

use std::io;
use std::path::PathBuf;

use super::fleet;
use super::http::{HttpConnection, Server};
use super::memory;
use super::protocol::{self, Audience, StreamTarget};
use super::push::{self, PushRequest};
use super::registry_run::log_stats;
use super::results::{Phase, ResultFile, RunResult, Target};
use super::streams::{self, ShardSettings, StreamOptions};

/// Options of the `nchan` target.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct NchanOptions {
    /// nginx's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub(crate) url: String,
    /// The nginx master's process id; its workers' memory is read from /proc.
    #[arg(long)]
    pub(crate) nginx_pid: Option<u32>,
    /// Subscribers.
    #[arg(long, short = 'n', default_value_t = 1_000)]
    pub(crate) subscribers: usize,
    /// The channel every subscriber shares.
    #[arg(long, default_value = "bench")]
    pub(crate) channel: String,
    /// Size of each published message, in bytes.
    #[arg(long, default_value_t = 300)]
    pub(crate) message_bytes: usize,
    /// Use the data size of the command events of this registry result file instead.
    #[arg(long)]
    pub(crate) match_message_of: Option<PathBuf>,
    /// How streams are held and pushes timed.
    #[command(flatten)]
    pub(crate) streams: StreamOptions,
}

/// Runs the `nchan` target and returns what it measured.
pub(crate) async fn run(options: &NchanOptions) -> io::Result<RunResult> {
    let server = Server::from_url(&options.url).map_err(io::Error::other)?;
    let message_bytes = match &options.match_message_of {
        Some(path) => data_bytes_of(path)?,
        None => options.message_bytes,
    };
    let read_memory = |pid: Option<u32>| pid.and_then(|pid| memory::of_nginx(pid).ok());
    let memory_before = read_memory(options.nginx_pid);
    let target = StreamTarget::Nchan {
        channel: options.channel.clone(),
    };
    let settings = ShardSettings {
        heartbeat_every_ms: 0,
        request_connections: 0,
        ack: false,
        reconnect: false,
    };
    let subscribers = options.subscribers;
    let opened = streams::open_streams(
        std::slice::from_ref(&server),
        target,
        subscribers,
        &options.streams,
        settings,
    )
    .await?;
    let mut shards = opened.shards;
    options.streams.settle().await;
    let memory_after_streams = read_memory(options.nginx_pid);
    let opened_count = opened.outcome.opened;
    if let (Some(before), Some(after)) = (memory_before, memory_after_streams) {
        eprintln!(
            "  nginx workers: RSS {} -> {} KiB ({:.0} B per subscriber), PSS of all {} -> {} KiB ({:.0} B per subscriber)",
            before.rss_kib,
            after.rss_kib,
            memory::per_item_bytes(before.rss_kib, after.rss_kib, opened_count),
            before.pss_kib,
            after.pss_kib,
            memory::per_item_bytes(before.pss_kib, after.pss_kib, opened_count),
        );
    }

    let mut publisher = HttpConnection::new(server.clone());
    let mut pushes = Vec::new();
    eprintln!(
        "publishing {} message(s) of {message_bytes} bytes",
        options.streams.pushes
    );
    // nginx's master and its workers, who serve the channel.
    let nginx_pids: Vec<u32> = options
        .nginx_pid
        .into_iter()
        .flat_map(|master| {
            let workers = memory::children_of(master).unwrap_or_default();
            std::iter::once(master).chain(workers)
        })
        .collect();
    let first = protocol::first_push_number();
    for number in (first + 1)..=(first + options.streams.pushes) {
        let request = PushRequest {
            number,
            audience: Audience::All,
            label: "channel",
            phase: Phase::Burst,
            path: format!("/pub/{}", options.channel),
            body: fleet::marked_message(number, message_bytes).into_bytes(),
            timeout: options.streams.push_timeout(),
        };
        let result = push::timed_push(&mut publisher, &mut shards, request, &nginx_pids).await?;
        push::log_push(&result);
        pushes.push(result);
        tokio::time::sleep(options.streams.push_interval()).await;
    }
    let stats = shards.stats().await?;
    shards.stop().await;
    log_stats(&stats);

    let per_stream = |pick: fn(&memory::Memory) -> u64| {
        let before = memory_before?;
        let after = memory_after_streams?;
        Some(memory::per_item_bytes(
            pick(&before),
            pick(&after),
            opened_count,
        ))
    };
    Ok(RunResult {
        target: Target::Nchan,
        streams: subscribers,
        processes: opened.processes,
        registered: None,
        registrations_per_s: None,
        streams_opened: opened_count,
        streams_failed: opened.outcome.failed,
        first_error: opened.outcome.first_error,
        open_seconds: opened.seconds,
        memory_before,
        memory_after_register: None,
        memory_after_streams,
        rss_per_stream_bytes: per_stream(|memory| memory.rss_kib),
        pss_per_stream_bytes: per_stream(|memory| memory.pss_kib),
        pushes,
        stats,
        heartbeat_every_s: 0.0,
        soak_seconds: 0,
    })
}

/// The data size of the first fleet push received in a registry result file.
fn data_bytes_of(path: &PathBuf) -> io::Result<usize> {
    let text = std::fs::read_to_string(path)?;
    let file: ResultFile = serde_json::from_str(text.trim())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    let ResultFile::Run(run) = file else {
        return Err(io::Error::other(format!(
            "{}: not a push run",
            path.display()
        )));
    };
    run.pushes
        .iter()
        .find_map(|push| push.data_bytes)
        .ok_or_else(|| io::Error::other(format!("{}: no push was received", path.display())))
}
