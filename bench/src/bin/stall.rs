//! How long a heartbeat and `/livez` wait while the registry does bulk work
//! (SPEC 13: never more than 50 ms): a steady prober sends both, each on its
//! own kept-alive connection, every `--interval-ms`, while
//!
//! - `idle`: nothing else, to show what the machine's own load does;
//! - (a) `list`: the whole fleet is listed `--lists` times, `--listers` at once;
//! - (b) `push`: one fleet command goes to every agent;
//! - (c) `expire`: `--expire-pushes` fleet commands (a million with 100,000
//!   agents) expire in one tick: the server is paused (SIGSTOP) from the last
//!   push until every one of them is due, then resumed, so they all come due
//!   together instead of push by push.
//!
//! Latency is counted from the moment a probe was due, not from when the
//! previous one let it go (no coordinated omission): a stall of one second
//! shows as a second's worth of slow probes, not as one. Each run starts a
//! fresh release server per scenario set; `bench/stall.sh` builds and runs it.
//!
//! ```text
//! target/release/stall --server target/release/registry-server --agents 100000 --runs 3
//! ```

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use registry_testkit::{KeepAlive, connect, metric_value, read_head};

#[derive(Parser)]
#[command(
    about = "Heartbeat and /livez latency while the registry lists, pushes and expires in bulk"
)]
struct Args {
    /// The registry-server binary to start.
    #[arg(long)]
    server: PathBuf,
    /// LIVE agents registered before each scenario.
    #[arg(long, default_value_t = 100_000)]
    agents: usize,
    /// Runs of every scenario, each on fresh servers; medians are printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The storage engine; `embedded` writes under `--data`.
    #[arg(long, value_enum, default_value_t = Engine::Memory)]
    engine: Engine,
    /// Where the embedded engine's files go (one per server, removed after).
    #[arg(long, default_value = "target/bench-stall")]
    data: PathBuf,
    /// Which scenarios to run.
    #[arg(long, value_delimiter = ',', default_values = ["idle", "list", "push", "expire"])]
    scenarios: Vec<Scenario>,
    /// Full listings of the fleet in scenario `list`.
    #[arg(long, default_value_t = 4)]
    lists: usize,
    /// Listings in flight at once.
    #[arg(long, default_value_t = 2)]
    listers: usize,
    /// Fleet commands that expire together in scenario `expire`.
    #[arg(long, default_value_t = 10)]
    expire_pushes: usize,
    /// One heartbeat and one `/livez` are due every this many milliseconds.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Threads registering agents.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// More settings for the server, as environment variables (`KEY=VALUE`).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    Memory,
    Embedded,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Scenario {
    /// No bulk work: the machine's own noise.
    Idle,
    List,
    Push,
    Expire,
}

/// The expiry of scenario `expire`: long enough for every push to be answered first.
const EXPIRE_AFTER: Duration = Duration::from_secs(20);
/// Probing before the bulk work starts and after it ends.
const MARGIN: Duration = Duration::from_millis(300);
/// How long scenario `idle` does nothing: about as long as the others work.
const IDLE: Duration = Duration::from_secs(1);

/// What one scenario of one run measured.
struct Measured {
    heartbeat: Latencies,
    livez: Latencies,
    /// How long the bulk work took, as its client saw it.
    work_ms: f64,
    /// Anything that went wrong: statuses other than expected, failed probes.
    notes: Vec<String>,
}

/// Probe latencies in milliseconds, sorted, and how many probes failed.
#[derive(Default)]
struct Latencies {
    sorted: Vec<f64>,
    failed: usize,
}

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.sorted.len() as f64 * p).ceil() as usize).clamp(1, self.sorted.len());
        self.sorted[rank - 1]
    }

    fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(f64::NAN)
    }
}

fn main() {
    let args = Args::parse();
    let _ = std::fs::create_dir_all(&args.data);
    let mut results: Vec<(Scenario, Vec<Measured>)> =
        args.scenarios.iter().map(|s| (*s, Vec::new())).collect();
    for run in 1..=args.runs {
        for (scenario, measured) in &mut results {
            let m = measure(&args, *scenario, run);
            eprintln!(
                "run {run} {scenario:?}: {:.0} ms of work; heartbeat p50 {:.1} p99 {:.1} max {:.1} ms \
                 ({} probes, {} failed); livez p50 {:.1} p99 {:.1} max {:.1} ms ({} probes){}",
                m.work_ms,
                m.heartbeat.percentile(0.5),
                m.heartbeat.percentile(0.99),
                m.heartbeat.max(),
                m.heartbeat.sorted.len(),
                m.heartbeat.failed,
                m.livez.percentile(0.5),
                m.livez.percentile(0.99),
                m.livez.max(),
                m.livez.sorted.len(),
                if m.notes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", m.notes.join("; "))
                }
            );
            measured.push(m);
        }
    }
    print_table(&args, &results);
}

fn print_table(args: &Args, results: &[(Scenario, Vec<Measured>)]) {
    let engine = match args.engine {
        Engine::Memory => "memory",
        Engine::Embedded => "embedded",
    };
    println!();
    println!(
        "{} agents, {engine} engine, a probe of each kind due every {} ms; medians of {} runs (ms)",
        args.agents, args.interval_ms, args.runs
    );
    println!();
    println!(
        "| while | work | heartbeat p50 | p99 | max | `/livez` p50 | p99 | max | failed probes |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (scenario, runs) in results {
        let med = |f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        let what = match scenario {
            Scenario::Idle => "nothing else (the machine's noise)".to_owned(),
            Scenario::List => format!(
                "{} agents listed {} times, {} at once",
                args.agents, args.lists, args.listers
            ),
            Scenario::Push => format!("a fleet command to {} agents", args.agents),
            Scenario::Expire => format!(
                "{} commands expire at once",
                args.agents * args.expire_pushes
            ),
        };
        let failed: usize = runs
            .iter()
            .map(|m| m.heartbeat.failed + m.livez.failed)
            .sum();
        println!(
            "| {what} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {failed} |",
            med(&|m| m.work_ms),
            med(&|m| m.heartbeat.percentile(0.5)),
            med(&|m| m.heartbeat.percentile(0.99)),
            med(&|m| m.heartbeat.max()),
            med(&|m| m.livez.percentile(0.5)),
            med(&|m| m.livez.percentile(0.99)),
            med(&|m| m.livez.max()),
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Starts a fresh server, registers the fleet, and measures one scenario.
fn measure(args: &Args, scenario: Scenario, run: usize) -> Measured {
    let mut extra = Vec::new();
    if scenario == Scenario::Expire {
        extra.push((
            "REGISTRY_COMMANDS__EXPIRY".to_owned(),
            format!("{}ms", EXPIRE_AFTER.as_millis()),
        ));
    }
    let data_file = args.data.join(format!(
        "stall-{}-{scenario:?}-{run}.redb",
        std::process::id()
    ));
    let server = Server::start(args, &data_file, &extra);
    register_fleet(server.addr, args.agents, args.workers);
    let measured = match scenario {
        Scenario::Idle => idle(args, &server),
        Scenario::List => list(args, &server),
        Scenario::Push => push(args, &server),
        Scenario::Expire => expire(args, &server),
    };
    if std::env::var_os("STALL_SLOW_MS").is_some()
        && let Ok(answer) =
            KeepAlive::connect(server.addr).and_then(|mut tcp| tcp.request("GET", "/metrics", None))
    {
        for line in answer
            .body
            .lines()
            .filter(|l| l.contains("heartbeat") && l.contains("bucket"))
        {
            eprintln!("  {line}");
        }
    }
    drop(server);
    let _ = std::fs::remove_file(&data_file);
    measured
}

/// No bulk work, for as long as the others take: what the machine's load
/// alone does to the probes.
fn idle(args: &Args, server: &Server) -> Measured {
    let prober = Prober::start(server.addr, args.agents, args.interval_ms);
    thread::sleep(MARGIN + IDLE + MARGIN);
    prober.finish(IDLE.as_secs_f64() * 1000.0, Vec::new())
}

/// (a) The whole fleet listed `lists` times, `listers` at once.
fn list(args: &Args, server: &Server) -> Measured {
    let addr = server.addr;
    let prober = Prober::start(addr, args.agents, args.interval_ms);
    thread::sleep(MARGIN);
    let started = Instant::now();
    let listers = args.listers.clamp(1, args.lists.max(1));
    let per_lister = args.lists.div_ceil(listers);
    let handles: Vec<_> = (0..listers)
        .map(|_| {
            thread::spawn(move || {
                let mut notes = Vec::new();
                for _ in 0..per_lister {
                    match list_once(addr) {
                        Ok(200) => {}
                        Ok(status) => notes.push(format!("a list answered {status}")),
                        Err(err) => notes.push(format!("a list failed: {err}")),
                    }
                }
                notes
            })
        })
        .collect();
    let notes: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let work_ms = started.elapsed().as_secs_f64() * 1000.0;
    thread::sleep(MARGIN);
    prober.finish(work_ms, notes)
}

/// Lists the fleet on a connection of its own and drops the answer as it
/// comes: the bench's own work stays small beside the server's.
fn list_once(addr: SocketAddr) -> std::io::Result<u16> {
    let mut tcp = connect(addr)?;
    write!(
        tcp,
        "GET /api/v1/agents HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let head = read_head(&mut tcp)?;
    std::io::copy(&mut tcp, &mut std::io::sink())?;
    Ok(head.status)
}

/// (b) One fleet command to every agent.
fn push(args: &Args, server: &Server) -> Measured {
    let prober = Prober::start(server.addr, args.agents, args.interval_ms);
    thread::sleep(MARGIN);
    let started = Instant::now();
    let mut notes = Vec::new();
    fleet_command(server.addr, &mut notes);
    let work_ms = started.elapsed().as_secs_f64() * 1000.0;
    thread::sleep(MARGIN);
    prober.finish(work_ms, notes)
}

/// (c) `expire_pushes` fleet commands, paused until all are due, then resumed.
fn expire(args: &Args, server: &Server) -> Measured {
    let mut notes = Vec::new();
    let first_push = Instant::now();
    for _ in 0..args.expire_pushes {
        fleet_command(server.addr, &mut notes);
    }
    let pushed = first_push.elapsed();
    if pushed + Duration::from_secs(1) > EXPIRE_AFTER {
        notes.push(format!(
            "the pushes took {:.1} s, too close to the expiry: some expired before the pause",
            pushed.as_secs_f64()
        ));
    }
    let last_push = Instant::now();
    server.signal("STOP");
    // Every command is due once the last push's expiry passed.
    let due = last_push + EXPIRE_AFTER + Duration::from_millis(200);
    thread::sleep(due.saturating_duration_since(Instant::now()));
    let prober = Prober::start(server.addr, args.agents, args.interval_ms);
    let started = Instant::now();
    server.signal("CONT");
    // A read shows a command EXPIRED as soon as it is due; the work is done
    // when the counts of /metrics, which the scheduler keeps, say so.
    wait_expired(server.addr, args.agents * args.expire_pushes, &mut notes);
    let work_ms = started.elapsed().as_secs_f64() * 1000.0;
    thread::sleep(MARGIN);
    prober.finish(work_ms, notes)
}

/// Sends one fleet command and reads its answer whole.
fn fleet_command(addr: SocketAddr, notes: &mut Vec<String>) {
    let body = r#"{"type":"config-update","payload":{"sampling":0.5,"note":"stall bench"}}"#;
    let answered = KeepAlive::connect(addr)
        .and_then(|mut tcp| tcp.request("POST", "/api/v1/agents/commands", Some(body)));
    match answered {
        Ok(answer) if answer.status == 202 => {}
        Ok(answer) => notes.push(format!(
            "a fleet command answered {}: {}",
            answer.status,
            answer.body.chars().take(200).collect::<String>()
        )),
        Err(err) => notes.push(format!("a fleet command failed: {err}")),
    }
}

/// Polls `/metrics` until `expected` commands are EXPIRED.
fn wait_expired(addr: SocketAddr, expected: usize, notes: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = r#"registry_commands{status="EXPIRED"}"#;
    while Instant::now() < deadline {
        if KeepAlive::connect(addr)
            .and_then(|mut tcp| tcp.request("GET", "/metrics", None))
            .ok()
            .and_then(|answer| metric_value(&answer.body, series))
            .is_some_and(|expired| expired >= expected as f64)
        {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    notes.push(format!("{expected} commands were not EXPIRED within 60 s"));
}

fn agent_id(n: usize) -> String {
    format!("agent-{n:07}")
}

/// Registers agents `0..agents` with some metadata, from `workers` threads.
fn register_fleet(addr: SocketAddr, agents: usize, workers: usize) {
    let workers = workers.max(1);
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            thread::spawn(move || {
                let mut tcp = KeepAlive::connect(addr).expect("connect to register");
                for n in (worker..agents).step_by(workers) {
                    let body = format!(
                        r#"{{"agentId":"{}","name":"order-service","group":"order-service-{}","version":"1.4.{}","routeIds":["orders-in","orders-out","payments-{n}","audit"],"capabilities":["deep-trace","replay","config-update"]}}"#,
                        agent_id(n),
                        n % 16,
                        n % 10,
                    );
                    let answer = tcp
                        .request("POST", "/api/v1/agents/register", Some(&body))
                        .expect("register");
                    assert_eq!(answer.status, 201, "register {}: {}", agent_id(n), answer.body);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a registering thread");
    }
}

/// Sends a heartbeat and a `/livez` every interval, each on its own
/// connection, until finished.
struct Prober {
    stop: Arc<AtomicBool>,
    heartbeat: thread::JoinHandle<Latencies>,
    livez: thread::JoinHandle<Latencies>,
}

impl Prober {
    fn start(addr: SocketAddr, agents: usize, interval_ms: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_millis(interval_ms.max(1));
        let heartbeat = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0;
                probe("heartbeat", addr, interval, &stop, move |tcp| {
                    n = (n + 7919) % agents.max(1);
                    let path = format!("/api/v1/agents/{}/heartbeat", agent_id(n));
                    Ok(tcp.request("POST", &path, None)?.status == 204)
                })
            })
        };
        let livez = {
            let stop = stop.clone();
            thread::spawn(move || {
                probe("livez", addr, interval, &stop, |tcp| {
                    Ok(tcp.request("GET", "/livez", None)?.status == 200)
                })
            })
        };
        Self {
            stop,
            heartbeat,
            livez,
        }
    }

    fn finish(self, work_ms: f64, notes: Vec<String>) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        Measured {
            heartbeat: self.heartbeat.join().unwrap_or_default(),
            livez: self.livez.join().unwrap_or_default(),
            work_ms,
            notes,
        }
    }
}

/// Sends one probe when due, every `interval`; a probe's latency runs from
/// when it was due. A failed probe reconnects. With `STALL_SLOW_MS` set, every
/// probe slower than that is printed with when it was due.
fn probe(
    name: &'static str,
    addr: SocketAddr,
    interval: Duration,
    stop: &AtomicBool,
    mut send: impl FnMut(&mut KeepAlive) -> std::io::Result<bool>,
) -> Latencies {
    let slow_ms: Option<f64> = std::env::var("STALL_SLOW_MS")
        .ok()
        .and_then(|ms| ms.parse().ok());
    let mut latencies = Latencies::default();
    let Ok(mut tcp) = KeepAlive::connect(addr) else {
        latencies.failed += 1;
        return latencies;
    };
    let start = Instant::now();
    let mut due = start;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < due {
            thread::sleep(due - now);
        }
        match send(&mut tcp) {
            Ok(true) => {
                let ms = due.elapsed().as_secs_f64() * 1000.0;
                if slow_ms.is_some_and(|slow| ms > slow) {
                    let at = (due - start).as_secs_f64() * 1000.0;
                    eprintln!("  {name} due at {at:.0} ms took {ms:.1} ms");
                }
                latencies.sorted.push(ms);
            }
            failed => {
                eprintln!("  {name} failed: {failed:?}");
                latencies.failed += 1;
                if let Ok(fresh) = KeepAlive::connect(addr) {
                    tcp = fresh;
                }
            }
        }
        due += interval;
    }
    latencies.sorted.sort_by(f64::total_cmp);
    latencies
}

/// A release server on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &Args, data_file: &Path, extra: &[(String, String)]) -> Self {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let mut command = Command::new(&args.server);
        let engine = match args.engine {
            Engine::Memory => "memory",
            Engine::Embedded => "embedded",
        };
        command
            .arg("--bind")
            .arg(addr.to_string())
            .env("REGISTRY_STORAGE__ENGINE", engine)
            .env("REGISTRY_STORAGE__PATH", data_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in extra {
            command.env(key, value);
        }
        for setting in &args.env {
            if let Some((key, value)) = setting.split_once('=') {
                command.env(key, value);
            }
        }
        let child = command.spawn().expect("start the server");
        let server = Self { child, addr };
        server.wait_until_serving();
        server
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if KeepAlive::connect(self.addr)
                .and_then(|mut tcp| tcp.request("GET", "/readyz", None))
                .is_ok_and(|answer| answer.status == 200)
            {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not serve within 10 s");
    }

    /// Sends the server `SIG<name>` (STOP, CONT).
    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(sent.is_ok_and(|status| status.success()), "kill -{name}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
