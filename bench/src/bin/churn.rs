//! Churn and stalled readers against a running server, with its resident memory
//! measured before and after: 10,000 stream connect-disconnect cycles, 10,000
//! register-command-delete cycles, then what a reader that stops reading costs.
//! `bench/churn.sh` builds and starts the server and runs this.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use registry_bench::memory;
use registry_testkit::{Answer, open_stream, read_until};

#[derive(Parser)]
#[command(about = "Churn streams and agents on a running registry and report memory and leftovers")]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// The server's process id, to read its resident memory.
    #[arg(long)]
    pid: u32,
    /// Cycles of each kind.
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Threads sharing the cycles.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Commands pushed to the stalled reader, and the size of each payload in bytes.
    #[arg(long, default_value_t = 2_000)]
    stalled_commands: usize,
    #[arg(long, default_value_t = 16_384)]
    stalled_payload: usize,
}

fn main() {
    let args = Args::parse();
    let rss_start = resident_kib(args.pid);
    // A first round lets the allocator and the runtime reach their working size.
    streams_churn(&args, args.cycles / 10, "warm");
    agents_churn(&args, args.cycles / 10, "warm");
    let rss_before = resident_kib(args.pid);

    let started = Instant::now();
    streams_churn(&args, args.cycles, "churn");
    let streams_took = started.elapsed();
    let started = Instant::now();
    agents_churn(&args, args.cycles, "cycle");
    let agents_took = started.elapsed();
    wait_for_metric(args.server, "registry_open_streams", 0.0);
    let rss_after = resident_kib(args.pid);

    println!("| churn | figure |");
    println!("| --- | --- |");
    println!("| resident memory at start | {rss_start} KiB |");
    println!(
        "| after a warm-up of {} cycles of each kind | {rss_before} KiB |",
        args.cycles / 10
    );
    println!(
        "| after {} stream connect-disconnect cycles ({:.1} s) and {} register-command-delete cycles ({:.1} s) | {rss_after} KiB ({:+.1} %) |",
        args.cycles,
        streams_took.as_secs_f64(),
        args.cycles,
        agents_took.as_secs_f64(),
        percent(rss_before, rss_after)
    );
    for series in [
        "registry_open_streams",
        r#"registry_agents{status="LIVE"}"#,
        r#"registry_commands{status="PENDING"}"#,
        r#"registry_commands{status="DELIVERED"}"#,
        "registry_scheduled_deadlines",
    ] {
        println!(
            "| left behind: `{series}` | {} |",
            metric(args.server, series)
        );
    }
    println!(
        "(the {} agents of the stream churn and its warm-up are kept: one LIVE agent and one deadline each)",
        2 * args.workers
    );

    stalled_reader(&args);
}

/// `cycles` times, spread over the workers: open a stream, wait for its first comment, drop it.
fn streams_churn(args: &Args, cycles: usize, prefix: &str) {
    let agents: Vec<String> = (0..args.workers).map(|n| format!("{prefix}-{n}")).collect();
    for agent in &agents {
        request(
            args.server,
            "POST",
            "/api/v1/agents/register",
            Some(&registration(agent)),
        );
    }
    thread::scope(|scope| {
        for agent in &agents {
            scope.spawn(move || {
                for _ in 0..cycles / args.workers {
                    let mut stream = open_stream(args.server, agent).expect("connect");
                    read_until(&mut stream, ": open").expect("the stream's first comment");
                }
            });
        }
    });
}

/// `cycles` times, spread over the workers: register an agent, send it a command, delete it.
fn agents_churn(args: &Args, cycles: usize, prefix: &str) {
    thread::scope(|scope| {
        for worker in 0..args.workers {
            scope.spawn(move || {
                for n in 0..cycles / args.workers {
                    let agent = format!("{prefix}-{worker}-{n}");
                    request(
                        args.server,
                        "POST",
                        "/api/v1/agents/register",
                        Some(&registration(&agent)),
                    );
                    let path = format!("/api/v1/agents/{agent}/commands");
                    request(
                        args.server,
                        "POST",
                        &path,
                        Some(r#"{"type":"config-update"}"#),
                    );
                    request(
                        args.server,
                        "DELETE",
                        &format!("/api/v1/agents/{agent}"),
                        None,
                    );
                }
            });
        }
    });
}

/// An agent opens its stream and never reads it while commands keep coming; the
/// same commands sent to an agent with no stream tell apart what the command
/// table holds anyway from what the stalled stream costs.
fn stalled_reader(args: &Args) {
    let payload = format!(
        r#"{{"type":"replay","payload":{{"bulk":"{}"}}}}"#,
        "x".repeat(args.stalled_payload)
    );
    let push = |agent: &str| {
        let mut held_back = None;
        let mut peak = 0;
        let path = format!("/api/v1/agents/{agent}/commands");
        for n in 0..args.stalled_commands {
            let answer = request(args.server, "POST", &path, Some(&payload));
            if held_back.is_none() && answer.body.contains(r#""status":"PENDING""#) {
                held_back = Some(n + 1);
            }
            peak = peak.max(resident_kib(args.pid));
        }
        (held_back, peak)
    };
    for agent in ["unstreamed", "stalled"] {
        request(
            args.server,
            "POST",
            "/api/v1/agents/register",
            Some(&registration(agent)),
        );
    }
    let start = resident_kib(args.pid);
    let (_, unstreamed_peak) = push("unstreamed");
    let unstreamed = resident_kib(args.pid) - start;
    let before = resident_kib(args.pid);
    let _stream = open_stream(args.server, "stalled").expect("connect");
    let (held_back, stalled_peak) = push("stalled");
    let stalled = resident_kib(args.pid) - before;
    println!();
    println!(
        "| {} commands of {} B to one agent | figure |",
        args.stalled_commands, args.stalled_payload
    );
    println!("| --- | --- |");
    println!(
        "| memory they take in the command table, no stream (peak) | {unstreamed} KiB ({unstreamed_peak} KiB) |"
    );
    println!(
        "| the same to an agent whose reader stalls (peak) | {stalled} KiB ({stalled_peak} KiB) |"
    );
    println!(
        "| so the stalled stream itself costs | {} KiB |",
        stalled.saturating_sub(unstreamed)
    );
    match held_back {
        Some(n) => {
            println!("| its stream was closed, and commands stayed PENDING, from command | {n} |")
        }
        None => println!("| its stream was closed | never |"),
    }
    println!(
        "| streams closed for falling behind | {} |",
        metric(args.server, "registry_slow_streams_closed_total")
    );
}

fn registration(agent: &str) -> String {
    format!(r#"{{"agentId":"{agent}","name":"churn","group":"churn"}}"#)
}

fn percent(before: u64, after: u64) -> f64 {
    (after as f64 - before as f64) * 100.0 / before as f64
}

/// VmRSS of `pid`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    memory::of_process(pid)
        .expect("the server's /proc status")
        .rss_kib
}

/// One request on its own connection; panics if the server does not answer.
fn request(server: SocketAddr, method: &str, path: &str, json: Option<&str>) -> Answer {
    registry_testkit::request(server, method, path, json).expect("an answer")
}

/// The value of one series of `/metrics`; NaN when it is missing.
fn metric(server: SocketAddr, series: &str) -> f64 {
    registry_testkit::metric(server, series)
        .expect("/metrics")
        .unwrap_or(f64::NAN)
}

fn wait_for_metric(server: SocketAddr, series: &str, wanted: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(server, series) != wanted && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}
