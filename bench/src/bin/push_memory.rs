//! What one fleet command costs a fresh server process: the size of its
//! answer, how long the answer took, and the server's resident memory before
//! the push and at its peak (`VmHWM`, polled every 5 ms while the push runs, so
//! that a server that dies of it still shows how far it got). Each run starts
//! the server anew, keeping its state in memory (so that the figure is the
//! push's, not a file's page cache); medians are printed.
//!
//! ```text
//! cargo build --release -p registry-server -p registry-bench
//! target/release/push_memory --server target/release/registry-server --agents 10000 --payload-kib 256
//! ```
//!
//! Pass `--server` a build of an older commit to compare (see the README).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use registry_bench::memory;

#[derive(Parser)]
#[command(about = "Measure a fleet command's answer and the server's memory for it")]
struct Args {
    /// The registry-server binary to start.
    #[arg(long)]
    server: PathBuf,
    /// LIVE agents registered before the push.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Size of the payload, in KiB.
    #[arg(long, default_value_t = 256)]
    payload_kib: usize,
    /// Runs, each on a fresh server.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Threads registering agents.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// More settings for the server, as environment variables (`KEY=VALUE`).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
}

/// What one run measured.
struct Run {
    /// 0 when the connection closed without an answer.
    status: u16,
    answer_bytes: usize,
    push_ms: f64,
    rss_before_kib: u64,
    peak_kib: u64,
    /// Whether the server was still running after the push.
    survived: bool,
}

fn main() {
    let args = Args::parse();
    let runs: Vec<Run> = (0..args.runs).map(|n| run(&args, n)).collect();
    println!(
        "| fleet command, {} KiB payload to {} agents | median of {} runs | runs |",
        args.payload_kib, args.agents, args.runs
    );
    println!("| --- | --- | --- |");
    let joined = |values: Vec<String>| values.join(", ");
    println!(
        "| status | | {} |",
        joined(runs.iter().map(|r| r.status.to_string()).collect())
    );
    println!(
        "| server still running after it | | {} |",
        joined(runs.iter().map(|r| r.survived.to_string()).collect())
    );
    let row = |name: &str, unit: &str, values: Vec<f64>| {
        let all: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
        println!(
            "| {name} | {:.1} {unit} | {} |",
            median(values),
            joined(all)
        );
    };
    row(
        "answer size",
        "MiB",
        runs.iter()
            .map(|r| r.answer_bytes as f64 / 1_048_576.0)
            .collect(),
    );
    row(
        "answer time",
        "ms",
        runs.iter().map(|r| r.push_ms).collect(),
    );
    row(
        "server RSS before the push",
        "MiB",
        runs.iter()
            .map(|r| r.rss_before_kib as f64 / 1024.0)
            .collect(),
    );
    row(
        "server peak RSS (VmHWM)",
        "MiB",
        runs.iter().map(|r| r.peak_kib as f64 / 1024.0).collect(),
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn run(args: &Args, n: usize) -> Run {
    let addr = free_port();
    let mut server = start_server(args, addr);
    let pid = server.id();
    wait_until_serving(addr);
    register_fleet(addr, args.agents, args.workers);
    let rss_before_kib = memory::of_process(pid).map(|m| m.rss_kib).unwrap_or(0);

    // The peak is read while the push runs: a server that dies of it leaves no /proc to read after.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, peak) = (stop.clone(), peak.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match peak_kib(pid) {
                    Some(kib) => peak.fetch_max(kib, Ordering::Relaxed),
                    None => break,
                };
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let body = command_body(args.payload_kib * 1024);
    let started = Instant::now();
    let (status, answer_bytes) = TcpStream::connect(addr)
        .and_then(|mut tcp| exchange(&mut tcp, "POST", "/api/v1/agents/commands", &body, false))
        .unwrap_or((0, 0));
    let push_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(kib) = peak_kib(pid) {
        peak.fetch_max(kib, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let survived = matches!(server.try_wait(), Ok(None));
    let _ = server.kill();
    let _ = server.wait();

    let run = Run {
        status,
        answer_bytes,
        push_ms,
        rss_before_kib,
        peak_kib: peak.load(Ordering::Relaxed),
        survived,
    };
    eprintln!(
        "run {}: status {}, answer {} bytes in {:.0} ms, RSS {} KiB before, peak {} KiB, server {}",
        n + 1,
        run.status,
        run.answer_bytes,
        run.push_ms,
        run.rss_before_kib,
        run.peak_kib,
        if run.survived { "running" } else { "gone" }
    );
    run
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

fn start_server(args: &Args, addr: SocketAddr) -> Child {
    let mut command = Command::new(&args.server);
    command
        // Not the repository's folder: its config/registry.toml would be read,
        // and an older build refuses the keys it does not know.
        .current_dir(std::env::temp_dir())
        .arg("--bind")
        .arg(addr.to_string())
        .env("REGISTRY_STORAGE__ENGINE", "memory")
        .env("REGISTRY_SERVER__MAX_BODY_BYTES", "4194304")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for setting in &args.env {
        if let Some((key, value)) = setting.split_once('=') {
            command.env(key, value);
        }
    }
    command.spawn().expect("start the server")
}

fn wait_until_serving(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut tcp) = TcpStream::connect(addr)
            && exchange(&mut tcp, "GET", "/livez", b"", true).is_ok_and(|(status, _)| status == 200)
        {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("the server did not serve within 10 s");
}

fn register_fleet(addr: SocketAddr, agents: usize, workers: usize) {
    let workers = workers.max(1);
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            thread::spawn(move || {
                let mut tcp = TcpStream::connect(addr).expect("connect");
                for n in (worker..agents).step_by(workers) {
                    let body = format!(
                        r#"{{"agentId":"agent-{n:07}","name":"bench","group":"g-{}"}}"#,
                        n % 16
                    );
                    let answered = exchange(
                        &mut tcp,
                        "POST",
                        "/api/v1/agents/register",
                        body.as_bytes(),
                        true,
                    );
                    assert!(
                        answered.is_ok_and(|(status, _)| status == 201),
                        "register agent-{n:07}"
                    );
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a registering thread");
    }
}

fn command_body(payload_bytes: usize) -> Vec<u8> {
    let pad = payload_bytes.saturating_sub(r#"{"pad":""}"#.len());
    format!(
        r#"{{"type":"config-update","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

/// Sends one request and reads its answer; returns the status and the body's
/// size (read and dropped as it comes, so the client holds no copy).
fn exchange(
    tcp: &mut TcpStream,
    method: &str,
    path: &str,
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<(u16, usize)> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes())?;
    tcp.write_all(body)?;
    let mut reader = BufReader::new(tcp);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let read = reader.read_until(b'\n', &mut head)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response
        .parse(&head)
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    let status = response.code.unwrap_or(0);
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        });
    let read = match length {
        Some(length) => std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink())?,
        None => std::io::copy(&mut reader, &mut std::io::sink())?,
    };
    Ok((status, usize::try_from(read).unwrap_or(usize::MAX)))
}

/// The process's peak resident memory so far (`VmHWM`), in KiB; `None` once it is gone.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
