//! File descriptors and load, at the process level: `max_streams` derived from
//! the open-file limit answers 503 past it while heartbeats and pushes go on;
//! at the limit itself the server keeps serving what it has and resumes
//! accepting once descriptors are freed; SIGTERM with 1,000 streams open and
//! commands flowing ends within the grace period.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{PROMPTLY, Process, WorkDir};
use registry_testkit::{Head, KeepAlive, open_stream, read_head, read_until};

/// Registers `count` agents `agent-N` over one connection.
fn register_many(addr: SocketAddr, count: usize) {
    let mut client = KeepAlive::connect(addr).expect("connect");
    for n in 0..count {
        let body = format!(r#"{{"agentId": "agent-{n}", "name": "svc", "group": "grp"}}"#);
        let answer = client
            .request("POST", "/api/v1/agents/register", Some(&body))
            .expect("an answer");
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
}

/// Sends the request for `agent_id`'s stream and waits at most `within` for its
/// head: the connection, and the head if it came.
fn try_open_stream(
    addr: SocketAddr,
    agent_id: &str,
    within: Duration,
) -> (TcpStream, Option<Head>) {
    let mut tcp = open_stream(addr, agent_id).expect("connect");
    tcp.set_read_timeout(Some(within)).expect("a read timeout");
    let head = read_head(&mut tcp).ok();
    tcp.set_read_timeout(Some(PROMPTLY))
        .expect("a read timeout");
    (tcp, head)
}

/// Asserts that `operator` heartbeats `agent-0` and pushes a command of `kind`
/// to `agent-N`, which its open `stream` receives.
fn heartbeat_and_push(operator: &mut KeepAlive, n: usize, kind: &str, stream: &mut TcpStream) {
    let heartbeat = operator
        .request("POST", "/api/v1/agents/agent-0/heartbeat", None)
        .expect("an answer");
    assert_eq!(heartbeat.status, 204);
    let command = format!(r#"{{"type": "{kind}"}}"#);
    let pushed = operator
        .request(
            "POST",
            &format!("/api/v1/agents/agent-{n}/commands"),
            Some(&command),
        )
        .expect("an answer");
    assert_eq!(pushed.status, 202);
    assert!(
        pushed.body.contains(r#""status":"DELIVERED""#),
        "{}",
        pushed.body
    );
    read_until(stream, &format!("event: {kind}")).expect("the command");
}

#[test]
fn past_max_streams_from_the_open_file_limit_a_stream_is_503_while_heartbeats_and_pushes_work() {
    // 200 descriptors less 64 leave 136 connections, less 1/32 of them 132 streams.
    let (process, addr) = Process::serve_limited(WorkDir::new(), Some(200), &[], &[]);
    assert!(
        process
            .log()
            .contains("max_connections=136 max_streams=132"),
        "{}",
        process.log()
    );
    register_many(addr, 140);
    let mut streams: Vec<TcpStream> = (0..132)
        .map(|n| {
            let (tcp, head) = try_open_stream(addr, &format!("agent-{n}"), PROMPTLY);
            assert_eq!(head.expect("a head").status, 200, "stream {n}");
            tcp
        })
        .collect();

    let (_, refused) = try_open_stream(addr, "agent-132", PROMPTLY);
    let refused = refused.expect("an answer");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert!(
        refused
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/problem+json")),
        "{refused:?}"
    );

    let mut operator = KeepAlive::connect(addr).expect("connect");
    heartbeat_and_push(&mut operator, 1, "replay", &mut streams[1]);
    process.terminate();
}

#[test]
fn at_the_open_file_limit_it_keeps_serving_and_resumes_accepting_when_descriptors_free_up() {
    let (mut process, addr) = Process::serve_limited(
        WorkDir::new(),
        Some(200),
        &[],
        // Past the open-file limit on purpose, to reach it.
        &[
            ("REGISTRY_SERVER__MAX_CONNECTIONS", "10000"),
            ("REGISTRY_SERVER__MAX_STREAMS", "10000"),
        ],
    );
    register_many(addr, 250);
    // Opened before the limit is reached, and kept.
    let mut operator = KeepAlive::connect(addr).expect("connect");
    let mut streams = Vec::new();
    let waiting = loop {
        let n = streams.len();
        assert!(n < 250, "200 descriptors never ran out");
        let (tcp, head) = try_open_stream(addr, &format!("agent-{n}"), Duration::from_millis(500));
        match head {
            Some(head) => {
                assert_eq!(head.status, 200, "stream {n}");
                streams.push(tcp);
            }
            // Accepted by the kernel, not by the server: it is out of descriptors.
            None => break tcp,
        }
    };
    process.wait_for_line("cannot accept connections");

    // What is open keeps working.
    heartbeat_and_push(&mut operator, 0, "deep-trace", &mut streams[0]);

    // Freeing descriptors lets the waiting connection in.
    streams.truncate(streams.len() - 10);
    let mut waiting = waiting;
    assert_eq!(read_head(&mut waiting).expect("a head").status, 200);
    process.terminate();
}

#[test]
fn sigterm_with_a_thousand_streams_open_and_commands_flowing_exits_within_the_grace_period() {
    const STREAMS: usize = 1_000;
    let (mut process, addr) = Process::serve(WorkDir::new(), &[], &[]);
    register_many(addr, STREAMS);
    let streams: Vec<TcpStream> = (0..STREAMS)
        .map(|n| {
            let (tcp, head) = try_open_stream(addr, &format!("agent-{n}"), PROMPTLY);
            assert_eq!(head.map(|head| head.status), Some(200), "stream {n}");
            tcp
        })
        .collect();

    let pushing = Arc::new(AtomicBool::new(true));
    let pusher = {
        let pushing = pushing.clone();
        thread::spawn(move || {
            let Ok(mut operator) = KeepAlive::connect(addr) else {
                return 0;
            };
            let mut pushed = 0;
            while pushing.load(Ordering::Relaxed) {
                let pushed_one = operator.request(
                    "POST",
                    "/api/v1/agents/commands",
                    Some(r#"{"type": "replay"}"#),
                );
                if pushed_one.map_or(true, |answer| answer.status != 202) {
                    break;
                }
                pushed += 1;
            }
            pushed
        })
    };
    // Let a few fleet commands go out before the signal.
    let mut first = streams[0].try_clone().expect("a clone");
    read_until(&mut first, "event: replay").expect("a fleet command");

    let started = Instant::now();
    process.signal("TERM");
    let status = process.wait_exit();
    let took = started.elapsed();
    pushing.store(false, Ordering::Relaxed);
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        process.log()
    );
    // The default shutdown_grace is 5 s.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(process.log().contains("shutting down"));
    for mut stream in streams {
        let mut rest = Vec::new();
        stream
            .set_read_timeout(Some(PROMPTLY))
            .expect("a read timeout");
        // Ended: the server closed it (cleanly, or reset if unread data was left).
        let _ = stream.read_to_end(&mut rest);
    }
    // The pusher stops on the first refused or failed request.
    let _ = pusher.join();
}
