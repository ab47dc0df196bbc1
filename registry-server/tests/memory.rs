//! What a group command costs the server process, read from `/proc`: a
//! 200 KiB payload sent to 1,500 LIVE agents answers with the payload once and
//! a `{commandId, agentId}` per agent, and the server's resident memory grows
//! by far less than one copy of the payload per agent would take (300 MiB).

mod common;

use std::net::SocketAddr;

use common::{Process, WorkDir};
use registry_testkit::KeepAlive;
use serde_json::Value;

const AGENTS: usize = 1_500;
const PAYLOAD_BYTES: usize = 200 * 1024;
/// What the server's resident memory may grow by, at its peak, for the push.
const GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// `VmRSS` (now) or `VmHWM` (the peak so far) of process `pid`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn register_group(addr: SocketAddr) {
    let mut client = KeepAlive::connect(addr).expect("connect");
    for n in 0..AGENTS {
        let body = format!(r#"{{"agentId": "agent-{n:04}", "name": "svc", "group": "big"}}"#);
        let answer = client
            .request("POST", "/api/v1/agents/register", Some(&body))
            .expect("an answer");
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
}

#[test]
fn a_200_kib_payload_to_1500_agents_answers_it_once_and_costs_the_server_under_64_mib() {
    // Kept in memory, so that the figure is the rollout's and not a file's
    // page cache (the embedded engine stores the payload once too: the
    // core's storage tests check it).
    let (process, addr) = Process::serve(
        WorkDir::new(),
        &[],
        &[("REGISTRY_STORAGE__ENGINE", "memory")],
    );
    let pid = process.child.id();
    register_group(addr);
    let before = memory_kib(pid, "VmRSS");

    let pad = "x".repeat(PAYLOAD_BYTES - r#"{"blob":""}"#.len());
    let body = format!(r#"{{"type": "config-update", "payload": {{"blob": "{pad}"}}}}"#);
    let mut client = KeepAlive::connect(addr).expect("connect");
    let answer = client
        .request("POST", "/api/v1/agents/groups/big/commands", Some(&body))
        .expect("an answer");
    let peak = memory_kib(pid, "VmHWM");

    assert_eq!(answer.status, 202, "{}", &answer.body[..200]);
    let limit = 2 * PAYLOAD_BYTES + 400 * AGENTS;
    assert!(
        answer.body.len() < limit,
        "the answer has {} bytes, over 2 x payload + 400 per agent ({limit})",
        answer.body.len()
    );
    let rollout: Value = serde_json::from_str(&answer.body).expect("a JSON answer");
    assert_eq!(rollout["targeted"], AGENTS);
    assert_eq!(
        rollout["payload"]["blob"].as_str().map(str::len),
        Some(pad.len())
    );
    let growth = peak.saturating_sub(before);
    eprintln!(
        "answer {} bytes; VmRSS before {before} KiB, VmHWM after {peak} KiB: +{growth} KiB",
        answer.body.len()
    );
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "the server's resident memory grew by {growth} KiB for one push"
    );
    process.terminate();
}
