//! `loadgen`: plays a fleet of agents and its operators against the agent
//! registry, and the same number of EventSource subscribers against nginx with
//! nchan, and reports push latency (p50, p99, 100%), streams dropped, memory
//! per stream, heartbeats and acks. `bench/compare.sh` runs both and prints
//! the table (`loadgen report`). `loadgen cluster` plays the fleet against
//! several replicas of one registry on Redis, as through a balancer, and
//! kills one; `bench/cluster.sh` runs it (`loadgen cluster-report`).
//!
//! Streams are held by child processes (`loadgen shard`, at most
//! `--streams-per-process` each) because one process may open only 20,000
//! files here; they report to this process as JSON lines.

#[path = "../loadgen/mod.rs"]
mod loadgen;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use loadgen::cluster_run::{self, ClusterOptions};
use loadgen::http::Server;
use loadgen::nchan_run::{self, NchanOptions};
use loadgen::registry_run::{self, RegistryOptions};
use loadgen::results::{ResultFile, WrkResult};
use loadgen::{cluster_report, register, report, shard, streams};

/// Load generator for the agent registry, and for nginx+nchan beside it.
#[derive(Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register N agents, open their streams, time pushes (and optionally soak).
    Registry(RegistryOptions),
    /// Spread N agents over a cluster's replicas, time fleet pushes,
    /// heartbeats and Redis's memory, then kill a replica.
    Cluster(ClusterOptions),
    /// Subscribe N clients to one nchan channel and time publishes.
    Nchan(NchanOptions),
    /// Only register agents (e.g. for wrk to heartbeat them).
    Register {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Agents to register.
        #[arg(long, short = 'n', default_value_t = 1_000)]
        agents: usize,
        /// Agent ids are this prefix and a 6-digit index.
        #[arg(long, default_value = "bench-")]
        id_prefix: String,
    },
    /// Turn wrk's output (on stdin) into a result file.
    WrkResult {
        /// `registry` or `nginx`.
        #[arg(long)]
        target: String,
        /// The wrk settings, for the table.
        #[arg(long, default_value = "")]
        settings: String,
        /// Where to write the result.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the markdown table of every result file in a directory.
    Report {
        /// The directory holding the `*.json` result files.
        dir: PathBuf,
    },
    /// Print the markdown table of every cluster result file in a directory.
    ClusterReport {
        /// The directory holding the `*.json` result files.
        dir: PathBuf,
    },
    /// (internal) Hold a slice of the streams; plan and orders on stdin.
    #[command(hide = true)]
    Shard,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Registry(options) => {
            let result = registry_run::run(&options).await?;
            streams::emit(result, &options.streams)?;
        }
        Command::Cluster(options) => {
            let result = cluster_run::run(&options).await?;
            let json = serde_json::to_string(&ResultFile::Cluster(Box::new(result)))?;
            if let Some(path) = &options.streams.out {
                std::fs::write(path, format!("{json}\n"))?;
            }
            println!("{json}");
        }
        Command::Nchan(options) => {
            let result = nchan_run::run(&options).await?;
            streams::emit(result, &options.streams)?;
        }
        Command::Register {
            url,
            agents,
            id_prefix,
        } => {
            let server = Server::from_url(&url)?;
            let registered =
                register::register_fleet(std::slice::from_ref(&server), &id_prefix, agents, 1, 64)
                    .await?;
            eprintln!(
                "{} registered, {} failed in {:.1} s",
                registered.ok, registered.failed, registered.seconds
            );
            if registered.failed > 0 {
                return Err(registered
                    .first_error
                    .unwrap_or_else(|| "registration failed".into())
                    .into());
            }
        }
        Command::WrkResult {
            target,
            settings,
            out,
        } => {
            let output = std::io::read_to_string(std::io::stdin())?;
            let result = WrkResult::parse(&target, &settings, &output)?;
            std::fs::write(out, serde_json::to_string(&ResultFile::Wrk(result))? + "\n")?;
        }
        Command::Report { dir } => print!("{}", report::render_dir(&dir)?),
        Command::ClusterReport { dir } => print!("{}", cluster_report::render_dir(&dir)?),
        Command::Shard => shard::run().await?,
    }
    Ok(())
}
