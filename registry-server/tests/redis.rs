//! The Redis engine as a user meets it (SPEC 8 and 9), on a `redis-server`
//! of its own (from PATH, on a free port, its append-only file in a temporary
//! folder): a SIGKILL of the server right after the answers loses none of
//! them; Redis stopped and started again from its file answers 503 with
//! `Retry-After` meanwhile (`/readyz` too) and is served again by itself with
//! nothing lost; Redis emptied is noticed and served as an empty registry;
//! another prefix is another registry. Several replicas: `replicas.rs`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use registry_testkit::redis::RedisServer;
use serde_json::Value;

/// The server's environment for the registry at `prefix` on `redis`.
fn env(redis: &RedisServer, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REGISTRY_STORAGE__ENGINE", "redis".into()),
        ("REGISTRY_STORAGE__REDIS_URL", redis.url()),
        ("REGISTRY_STORAGE__REDIS_PREFIX", prefix.into()),
    ]
}

fn serve(dir: WorkDir, env: &[(&'static str, String)]) -> (Process, SocketAddr) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Process::serve(dir, &[], &env)
}

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let answer = request(addr, method, path, body).expect("an answer");
    let value = if answer.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&answer.body).unwrap_or(Value::String(answer.body))
    };
    (answer.status, value)
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sigkill_right_after_the_answers_loses_none_of_them() {
    let redis = RedisServer::start();
    let env = env(&redis, "kill:");
    let (process, addr) = serve(WorkDir::new(), &env);
    assert_eq!(register(addr, "a-1").0, 201);
    assert_eq!(register(addr, "gone").0, 201);
    let (status, pushed) = http(
        addr,
        "POST",
        "/api/v1/agents/a-1/commands",
        Some(r#"{"type": "deep-trace", "payload": {"routeId": "r-1", "n": 1.5}}"#),
    );
    assert_eq!(status, 202, "{pushed}");
    let id = pushed["commandId"].as_str().unwrap().to_owned();
    let (status, acked) = http(
        addr,
        "POST",
        &format!("/api/v1/agents/a-1/commands/{id}/ack"),
        Some(r#"{"result": "FAILURE", "message": "no such route"}"#),
    );
    assert_eq!(status, 200, "{acked}");
    let (status, rollout) = http(
        addr,
        "POST",
        "/api/v1/agents/commands",
        Some(r#"{"type": "replay", "payload": {"z": 1, "a": [true, null]}}"#),
    );
    assert_eq!(status, 202, "{rollout}");
    assert_eq!(http(addr, "DELETE", "/api/v1/agents/gone", None).0, 204);
    let (_, before) = http(addr, "GET", "/api/v1/agents/a-1", None);
    let (_, commands_before) = http(addr, "GET", "/api/v1/agents/a-1/commands", None);

    let dir = process.kill();
    let (process, addr) = serve(dir, &env);

    let (status, after) = http(addr, "GET", "/api/v1/agents/a-1", None);
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before, "the agent as it was, not connected");
    assert_eq!(http(addr, "GET", "/api/v1/agents/gone", None).0, 404);
    let (_, commands) = http(addr, "GET", "/api/v1/agents/a-1/commands", None);
    assert_eq!(commands, commands_before, "every command as it was");
    assert_eq!(
        commands[0]["payload"],
        serde_json::json!({"a": [true, null], "z": 1})
    );
    assert_eq!(commands[1]["result"], "FAILURE");
    let rollout_path = format!(
        "/api/v1/rollouts/{}",
        rollout["rolloutId"].as_str().unwrap()
    );
    assert_eq!(http(addr, "GET", &rollout_path, None).0, 200);
    process.terminate();
}

#[test]
fn redis_stopped_answers_503_then_serves_again_from_its_file_with_nothing_lost() {
    let redis = RedisServer::start();
    let env = env(&redis, "outage:");
    let (process, addr) = serve(WorkDir::new(), &env);
    assert_eq!(register(addr, "a-1").0, 201);
    let (status, pushed) = http(
        addr,
        "POST",
        "/api/v1/agents/a-1/commands",
        Some(r#"{"type": "replay"}"#),
    );
    assert_eq!(status, 202, "{pushed}");

    let (port, dir) = redis.stop();
    eventually(Duration::from_secs(5), "503 on /readyz", || {
        http(addr, "GET", "/readyz", None).0 == 503
    });
    assert_eq!(http(addr, "GET", "/livez", None).0, 200);
    let answer = request(
        addr,
        "POST",
        "/api/v1/agents/register",
        Some(r#"{"agentId": "a-2", "name": "n", "group": "g"}"#),
    )
    .expect("an answer");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert!(answer.header("retry-after").is_some(), "{answer:?}");

    let redis = RedisServer::start_on(port, dir);
    eventually(Duration::from_secs(10), "ready again", || {
        http(addr, "GET", "/readyz", None).0 == 200
    });
    let (status, agent) = http(addr, "GET", "/api/v1/agents/a-1", None);
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["status"], "LIVE");
    let path = format!(
        "/api/v1/agents/a-1/commands/{}",
        pushed["commandId"].as_str().unwrap()
    );
    assert_eq!(http(addr, "GET", &path, None).0, 200);
    assert_eq!(register(addr, "a-2").0, 201, "served again");
    assert_eq!(http(addr, "GET", "/api/v1/agents/a-2", None).0, 200);
    process.terminate();
    drop(redis);
}

#[test]
fn another_prefix_on_the_same_redis_is_another_registry() {
    let redis = RedisServer::start();
    let (first, addr) = serve(WorkDir::new(), &env(&redis, "one:"));
    assert_eq!(register(addr, "a-1").0, 201);
    let (second, second_addr) = serve(WorkDir::new(), &env(&redis, "two:"));
    assert_eq!(http(second_addr, "GET", "/api/v1/agents/a-1", None).0, 404);
    assert_eq!(http(addr, "GET", "/api/v1/agents/a-1", None).0, 200);
    second.terminate();
    first.terminate();
}

#[test]
fn redis_emptied_is_noticed_logged_at_error_and_served_as_an_empty_registry() {
    let redis = RedisServer::start();
    let env = env(&redis, "flushed:");
    let (mut process, addr) = serve(WorkDir::new(), &env);
    assert_eq!(register(addr, "a-1").0, 201);

    let client = redis::Client::open(redis.url()).unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    // Nothing is written meanwhile: the keeper notices by itself.
    let line = process.wait_for_line("Redis lost the registry's data");
    assert!(line.contains("ERROR"), "{line}");
    eventually(Duration::from_secs(5), "an empty registry", || {
        http(addr, "GET", "/api/v1/agents/a-1", None).0 == 404
    });
    eventually(Duration::from_secs(5), "ready", || {
        http(addr, "GET", "/readyz", None).0 == 200
    });
    assert_eq!(register(addr, "a-1").0, 201, "the agent comes back");
    process.terminate();
}
