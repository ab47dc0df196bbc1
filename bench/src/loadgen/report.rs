//! `loadgen report`: reads every result file of a comparison and prints one
//! markdown table: our figures and nchan's (and wrk's against nginx
//! `return 204;`) for each fleet size, medians over the runs, the ratios, the
//! issue's targets, and the machine they were measured on.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::latency::{PushLatency, median};
use super::results::{Phase, PushCpu, PushResult, ResultFile, RunResult, Target, WrkResult};

/// Picks one figure of a push's latency.
type LatencyField = fn(&PushLatency) -> u64;

/// Every result found in a directory.
#[derive(Default)]
struct Results {
    runs: Vec<RunResult>,
    wrk: Vec<WrkResult>,
}

/// Reads the `*.json` result files of `dir` and renders the table.
pub(crate) fn render_dir(dir: &Path) -> io::Result<String> {
    let mut results = Results::default();
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        match serde_json::from_str::<ResultFile>(text.trim()) {
            Ok(ResultFile::Run(run)) => results.runs.push(*run),
            Ok(ResultFile::Wrk(wrk)) => results.wrk.push(wrk),
            // `loadgen cluster-report` renders those.
            Ok(ResultFile::Cluster(_)) => {}
            Err(err) => eprintln!("skipping {}: {err}", path.display()),
        }
    }
    Ok(render(&results))
}

/// One row of the table.
struct Row {
    label: String,
    ours: String,
    theirs: String,
    ratio: String,
    target: String,
    met: String,
}

impl Row {
    fn new(label: impl Into<String>, ours: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            ours: ours.into(),
            theirs: String::new(),
            ratio: String::new(),
            target: String::new(),
            met: String::new(),
        }
    }
}

fn render(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", machine("server, nginx and load generator"));
    let sizes: BTreeSet<usize> = results
        .runs
        .iter()
        .filter(|run| run.soak_seconds == 0)
        .map(|run| run.streams)
        .collect();
    let mut rows = Vec::new();
    for &size in &sizes {
        rows.extend(size_rows(results, size));
    }
    rows.extend(wrk_rows(&results.wrk));
    rows.extend(soak_rows(&results.runs));
    let _ = writeln!(
        out,
        "| measure | ours | nchan / nginx | ours ÷ theirs | target | met |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- | --- |");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.label, row.ours, row.theirs, row.ratio, row.target, row.met
        );
    }
    let _ = writeln!(
        out,
        "\nLatency: from sending the push until the stream's reader has the event (client and server on the same 2 cores); \
         medians over every fleet push of every run. CPU: from `/proc` (10 ms ticks), over the same span, \
         the kernel's share mostly the sends, which over loopback run the reader's receive side too. Memory: server growth from before registering to all streams open, \
         divided by the streams (registry entry included); nginx: its workers' VmRSS summed, and the PSS of master and workers."
    );
    out
}

fn runs_of(results: &Results, target: Target, size: usize) -> Vec<&RunResult> {
    results
        .runs
        .iter()
        .filter(|run| run.target == target && run.streams == size && run.soak_seconds == 0)
        .collect()
}

fn pushes_of<'a>(runs: &[&'a RunResult], audience: &str) -> Vec<&'a PushResult> {
    runs.iter()
        .flat_map(|run| run.pushes.iter())
        .filter(|push| push.audience == audience && push.phase == Phase::Burst)
        .collect()
}

fn median_of(pushes: &[&PushResult], pick: LatencyField) -> Option<f64> {
    let values: Vec<f64> = pushes
        .iter()
        .map(|push| pick(&push.latency) as f64 / 1000.0)
        .collect();
    median(&values)
}

fn size_rows(results: &Results, size: usize) -> Vec<Row> {
    let ours = runs_of(results, Target::Registry, size);
    let theirs = runs_of(results, Target::Nchan, size);
    let our_pushes = pushes_of(&ours, "fleet");
    let their_pushes = pushes_of(&theirs, "channel");
    let mut rows = vec![Row {
        theirs: format!("runs: {}", theirs.len()),
        ..Row::new(
            format!("**N = {}** streams", thousands(size)),
            format!("runs: {}", ours.len()),
        )
    }];
    let limit_ms = match size {
        10_000 => Some(150.0),
        19_000 => Some(300.0),
        _ => None,
    };
    let percentiles: [(&str, LatencyField); 3] = [
        ("p50", |latency| latency.p50_us),
        ("p99", |latency| latency.p99_us),
        ("100%", |latency| latency.max_us),
    ];
    for (name, pick) in percentiles {
        let our_ms = median_of(&our_pushes, pick);
        let their_ms = median_of(&their_pushes, pick);
        let mut row = compare_row(
            format!("fleet push reaches {name}, ms"),
            our_ms,
            their_ms,
            |ms| format!("{ms:.1}"),
        );
        if name == "100%" {
            if let Some(limit) = limit_ms {
                row.target = format!("< {limit:.0} ms and ≤ 0.5× nchan");
                row.met = verdict(our_ms.zip(their_ms).map(|(ours, theirs)| {
                    let ratio = ours / theirs;
                    (
                        ours < limit && ratio <= 0.5,
                        format!("{ours:.0} ms, {ratio:.2}×"),
                    )
                }));
            } else {
                row.target = "≤ 0.5× nchan".into();
                row.met = verdict(our_ms.zip(their_ms).map(|(ours, theirs)| {
                    let ratio = ours / theirs;
                    (ratio <= 0.5, format!("{ratio:.2}×"))
                }));
            }
        }
        rows.push(row);
    }
    rows.extend(cpu_rows(&our_pushes, &their_pushes));
    rows.push(Row {
        theirs: reached(&their_pushes),
        ..Row::new(
            "arrivals / streams expected, all pushes",
            reached(&our_pushes),
        )
    });
    let our_rss = median_field(&ours, |run| run.rss_per_stream_bytes);
    let their_rss = median_field(&theirs, |run| run.rss_per_stream_bytes);
    let mut memory = compare_row(
        "memory per stream, KiB (RSS)",
        our_rss.map(|bytes| bytes / 1024.0),
        their_rss.map(|bytes| bytes / 1024.0),
        |kib| format!("{kib:.2}"),
    );
    memory.target = "≤ 8 KiB".into();
    memory.met = verdict(our_rss.map(|bytes| {
        let kib = bytes / 1024.0;
        (kib <= 8.0, format!("{kib:.1} KiB"))
    }));
    rows.push(memory);
    rows.push(compare_row(
        "memory per stream, KiB (PSS)",
        median_field(&ours, |run| run.pss_per_stream_bytes).map(|bytes| bytes / 1024.0),
        median_field(&theirs, |run| run.pss_per_stream_bytes).map(|bytes| bytes / 1024.0),
        |kib| format!("{kib:.2}"),
    ));
    rows.push(Row {
        theirs: count_streams(&theirs),
        ..Row::new("streams opened / failed / dropped", count_streams(&ours))
    });
    for (audience, label) in [
        ("group", "group push reaches 100%, ms"),
        ("agent", "single-agent push reaches 100%, ms"),
    ] {
        let pushes = pushes_of(&ours, audience);
        if let Some(ms) = median_of(&pushes, |latency| latency.max_us) {
            rows.push(Row::new(label, format!("{ms:.1} ({})", reached(&pushes))));
        }
    }
    if let Some(rate) = median_field(&ours, |run| run.registrations_per_s) {
        rows.push(Row::new("registrations per second", format!("{rate:.0}")));
    }
    rows
}

/// What a fleet push cost in CPU, from the send to the last stream reached:
/// the server's (user and kernel), and the load generator's, which shares the
/// cores. None when the runs did not measure it.
fn cpu_rows(ours: &[&PushResult], theirs: &[&PushResult]) -> Vec<Row> {
    let median_cpu = |pushes: &[&PushResult], pick: fn(&PushCpu) -> u64| {
        let values: Vec<f64> = pushes
            .iter()
            .filter_map(|push| push.cpu.as_ref())
            .map(|cpu| pick(cpu) as f64)
            .collect();
        median(&values)
    };
    let server_total = |cpu: &PushCpu| cpu.server.total_ms();
    if median_cpu(ours, server_total).is_none() && median_cpu(theirs, server_total).is_none() {
        return Vec::new();
    }
    let split = |pushes: &[&PushResult]| match (
        median_cpu(pushes, |cpu| cpu.server.user_ms),
        median_cpu(pushes, |cpu| cpu.server.system_ms),
    ) {
        (Some(user), Some(kernel)) => format!("{user:.0} + {kernel:.0}"),
        _ => "–".into(),
    };
    let format_ms = |ms: f64| format!("{ms:.0}");
    vec![
        compare_row(
            "CPU per fleet push, server, ms",
            median_cpu(ours, server_total),
            median_cpu(theirs, server_total),
            format_ms,
        ),
        Row {
            theirs: split(theirs),
            ..Row::new("of which user + kernel, ms", split(ours))
        },
        compare_row(
            "CPU per fleet push, load generator, ms",
            median_cpu(ours, |cpu| cpu.load_generator.total_ms()),
            median_cpu(theirs, |cpu| cpu.load_generator.total_ms()),
            format_ms,
        ),
    ]
}

fn wrk_rows(wrk: &[WrkResult]) -> Vec<Row> {
    let rates = |target: &str| -> Vec<f64> {
        wrk.iter()
            .filter(|result| result.target == target)
            .map(|result| result.requests_per_s)
            .collect()
    };
    let ours = median(&rates("registry"));
    let theirs = median(&rates("nginx"));
    if ours.is_none() && theirs.is_none() {
        return Vec::new();
    }
    let settings = wrk
        .first()
        .map(|result| result.settings.clone())
        .unwrap_or_default();
    let mut row = compare_row(
        format!(
            "**heartbeats/s** vs nginx `return 204;` (`{settings}`, {} runs)",
            rates("registry").len()
        ),
        ours,
        theirs,
        |rate| format!("{rate:.0}"),
    );
    row.target = "≥ 0.8× nginx".into();
    row.met = verdict(ours.zip(theirs).map(|(ours, theirs)| {
        let ratio = ours / theirs;
        (ratio >= 0.8, format!("{ratio:.2}×"))
    }));
    let failures: u64 = wrk
        .iter()
        .map(|result| result.non_2xx + result.socket_errors)
        .sum();
    let mut rows = vec![row];
    if failures > 0 {
        rows.push(Row::new(
            "wrk non-2xx answers and socket errors",
            failures.to_string(),
        ));
    }
    rows
}

fn soak_rows(runs: &[RunResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    for run in runs.iter().filter(|run| run.soak_seconds > 0) {
        let soak_pushes: Vec<&PushResult> = run
            .pushes
            .iter()
            .filter(|push| push.phase == Phase::Soak)
            .collect();
        let mut row = Row::new(
            format!(
                "**soak**: {} streams for {} s, heartbeats every {:.0} s",
                thousands(run.streams),
                run.soak_seconds,
                run.heartbeat_every_s
            ),
            format!(
                "{} opened, {} failed, {} dropped",
                run.streams_opened, run.streams_failed, run.stats.dropped
            ),
        );
        row.target = "none dropped".into();
        row.met = verdict(Some((
            run.stats.dropped == 0 && run.streams_failed == 0,
            format!("{} dropped", run.stats.dropped),
        )));
        rows.push(row);
        let mut heartbeats = Row::new(
            "soak: heartbeats accepted / failed",
            format!(
                "{} / {}",
                run.stats.heartbeats_ok, run.stats.heartbeats_failed
            ),
        );
        heartbeats.met = verdict(Some((
            run.stats.heartbeats_failed == 0,
            format!("{} failed", run.stats.heartbeats_failed),
        )));
        rows.push(heartbeats);
        if !soak_pushes.is_empty() {
            let worst = soak_pushes
                .iter()
                .map(|push| push.latency.max_us)
                .max()
                .unwrap_or(0);
            rows.push(Row::new(
                "soak: fleet pushes, worst 100%, ms",
                format!("{:.1} ({})", worst as f64 / 1000.0, reached(&soak_pushes)),
            ));
        }
        if run.stats.acks_ok + run.stats.acks_failed > 0 {
            rows.push(Row::new(
                "soak: acks accepted / failed",
                format!("{} / {}", run.stats.acks_ok, run.stats.acks_failed),
            ));
        }
    }
    rows
}

fn compare_row(
    label: impl Into<String>,
    ours: Option<f64>,
    theirs: Option<f64>,
    format: fn(f64) -> String,
) -> Row {
    let ratio = match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs != 0.0 => format!("{:.2}", ours / theirs),
        _ => String::new(),
    };
    Row {
        theirs: theirs.map(format).unwrap_or_else(|| "–".into()),
        ratio,
        ..Row::new(label, ours.map(format).unwrap_or_else(|| "–".into()))
    }
}

fn verdict(outcome: Option<(bool, String)>) -> String {
    match outcome {
        Some((true, detail)) => format!("yes ({detail})"),
        Some((false, detail)) => format!("**no** ({detail})"),
        None => "–".into(),
    }
}

fn median_field(runs: &[&RunResult], pick: fn(&RunResult) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = runs.iter().filter_map(|run| pick(run)).collect();
    median(&values)
}

fn reached(pushes: &[&PushResult]) -> String {
    if pushes.is_empty() {
        return "–".into();
    }
    let received: usize = pushes.iter().map(|push| push.latency.received).sum();
    let expected: usize = pushes.iter().map(|push| push.latency.expected).sum();
    format!("{} / {}", thousands(received), thousands(expected))
}

fn count_streams(runs: &[&RunResult]) -> String {
    if runs.is_empty() {
        return "–".into();
    }
    let opened: usize = runs.iter().map(|run| run.streams_opened).sum();
    let failed: usize = runs.iter().map(|run| run.streams_failed).sum();
    let dropped: u64 = runs.iter().map(|run| run.stats.dropped).sum();
    format!("{} / {failed} / {dropped}", thousands(opened))
}

pub(crate) fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The machine, as /proc describes it, and who shares its cores (`sharing`).
pub(crate) fn machine(sharing: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let open_files = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(4).map(str::to_owned))
        })
        .unwrap_or_default();
    format!(
        "Machine: {cores} cores ({cpu}), {memory_gib:.0} GiB, Linux {kernel}, {open_files} open files per process; \
         {sharing} share the cores."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(thousands(19_000), "19,000");
        assert_eq!(thousands(200), "200");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn an_empty_directory_renders_the_machine() {
        let text = render(&Results::default());
        assert!(text.contains("Machine:"));
    }
}
