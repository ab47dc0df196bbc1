//! File descriptors and load, at the process level: `max_streams` derived from
//! the open-file limit answers 503 past it while heartbeats and pushes go on;
//! at the limit itself the server keeps serving what it has and resumes
//! accepting once descriptors are freed; SIGTERM with 1,000 streams open and
//! commands flowing ends within the grace period.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Registers `count` agents `agent-N` over one connection.
fn register_many(addr: SocketAddr, count: usize) {
    let mut client = KeepAlive::connect(addr);
    for n in 0..count {
        let body = format!(r#"{{"agentId": "agent-{n}", "name": "svc", "group": "grp"}}"#);
        let (status, text) = client.request("POST", "/api/v1/agents/register", Some(&body));
        assert_eq!(status, 201, "{text}");
    }
}

/// Sends the request for `agent_id`'s stream and waits at most `within` for its
/// head: the connection, and whether the head came.
fn try_open_stream(
    addr: SocketAddr,
    agent_id: &str,
    within: Duration,
) -> (TcpStream, Option<String>) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(within)).expect("a read timeout");
    tcp.write_all(
        format!("GET /api/v1/agents/{agent_id}/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .expect("write");
    let mut head = [0_u8; 1024];
    let head = match tcp.read(&mut head) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&head[..n]).into_owned()),
        _ => None,
    };
    (tcp, head)
}

/// Reads from `stream` until `needle` appears.
fn read_until(stream: &mut TcpStream, needle: &str) {
    stream
        .set_read_timeout(Some(PROMPTLY))
        .expect("a read timeout");
    let mut seen = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = stream.read(&mut buffer).expect("more of the stream");
        assert!(n > 0, "the stream ended before {needle:?}");
        seen.extend_from_slice(&buffer[..n]);
    }
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
            let head = head.expect("a head");
            assert!(head.starts_with("HTTP/1.1 200"), "stream {n}: {head}");
            tcp
        })
        .collect();

    let (_, refused) = try_open_stream(addr, "agent-132", PROMPTLY);
    let refused = refused.expect("an answer");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.to_lowercase().contains("retry-after:"), "{refused}");
    assert!(refused.contains("application/problem+json"), "{refused}");

    let mut operator = KeepAlive::connect(addr);
    let (status, _) = operator.request("POST", "/api/v1/agents/agent-0/heartbeat", None);
    assert_eq!(status, 204);
    let (status, command) = operator.request(
        "POST",
        "/api/v1/agents/agent-1/commands",
        Some(r#"{"type": "replay"}"#),
    );
    assert_eq!(status, 202);
    assert!(command.contains(r#""status":"DELIVERED""#), "{command}");
    read_until(&mut streams[1], "event: replay");
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
    let mut operator = KeepAlive::connect(addr);
    let mut streams = Vec::new();
    let waiting = loop {
        let n = streams.len();
        assert!(n < 250, "200 descriptors never ran out");
        let (tcp, head) = try_open_stream(addr, &format!("agent-{n}"), Duration::from_millis(500));
        match head {
            Some(head) => {
                assert!(head.starts_with("HTTP/1.1 200"), "stream {n}: {head}");
                streams.push(tcp);
            }
            // Accepted by the kernel, not by the server: it is out of descriptors.
            None => break tcp,
        }
    };
    process.wait_for_line("cannot accept connections");

    // What is open keeps working.
    let (status, _) = operator.request("POST", "/api/v1/agents/agent-0/heartbeat", None);
    assert_eq!(status, 204);
    let (status, _) = operator.request(
        "POST",
        "/api/v1/agents/agent-0/commands",
        Some(r#"{"type": "deep-trace"}"#),
    );
    assert_eq!(status, 202);
    read_until(&mut streams[0], "event: deep-trace");

    // Freeing descriptors lets the waiting connection in.
    streams.truncate(streams.len() - 10);
    let mut waiting = waiting;
    read_until(&mut waiting, "HTTP/1.1 200");
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
            assert!(head.is_some_and(|head| head.starts_with("HTTP/1.1 200")));
            tcp
        })
        .collect();

    let pushing = Arc::new(AtomicBool::new(true));
    let pusher = {
        let pushing = pushing.clone();
        thread::spawn(move || {
            let mut operator = KeepAlive::connect(addr);
            let mut pushed = 0;
            while pushing.load(Ordering::Relaxed) {
                let (status, _) = operator.request(
                    "POST",
                    "/api/v1/agents/commands",
                    Some(r#"{"type": "replay"}"#),
                );
                if status != 202 {
                    break;
                }
                pushed += 1;
            }
            pushed
        })
    };
    // Let a few fleet commands go out before the signal.
    let mut first = streams[0].try_clone().expect("a clone");
    read_until(&mut first, "event: replay");

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
