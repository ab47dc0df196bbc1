//! Replicas on Redis as a user meets them (SPEC 9): several processes of the
//! built binary on one `redis-server` of the test's own (a free port, its
//! append-only file with `appendfsync always` in a temporary folder).
//!
//! - The rules of sections 2 to 4, with requests spread over three replicas,
//!   agent tokens issued by one and presented to another.
//! - A command pushed through any replica reaches the agent's stream
//!   wherever it is open; one stream per agent across replicas; `connected`
//!   from any.
//! - Each transition and expiry takes effect once: counted once across all
//!   replicas' `/metrics`, logged once across their logs.
//! - A replica SIGKILLed under load loses nothing it answered; its streams'
//!   agents read `connected: false` on the others.
//! - The log's connections killed (`CLIENT KILL`: there is no pub/sub, the
//!   log is a Redis Stream read with `XREAD`), then a push: still delivered.
//! - Redis stopped and started again from its file; every replica restarted.
//! - A replica that would sign with another key than a live one's exits 2.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use registry_signing::ServerKey;
use registry_testkit::redis::RedisServer;
use registry_testkit::{metric, read_until, request_as};
use serde_json::Value;

const OPERATOR: &str = "operator-s3cret";
const ENROLLMENT: &str = "enrollment-s3cret";

/// One replica: its process and address.
struct Replica {
    process: Process,
    addr: SocketAddr,
}

/// The environment of a replica of the registry at `prefix` on `redis`, with
/// `extra` settings (`REGISTRY_*`).
fn replica_env(redis: &RedisServer, prefix: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("REGISTRY_STORAGE__ENGINE".to_owned(), "redis".to_owned()),
        ("REGISTRY_STORAGE__REDIS_URL".to_owned(), redis.url()),
        (
            "REGISTRY_STORAGE__REDIS_PREFIX".to_owned(),
            prefix.to_owned(),
        ),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

fn start_in(dir: WorkDir, env: &[(String, String)]) -> Replica {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (process, addr) = Process::serve(dir, &[], &pairs);
    Replica { process, addr }
}

/// `count` replicas, started one after another.
fn replicas(
    redis: &RedisServer,
    prefix: &str,
    extra: &[(&str, &str)],
    count: usize,
) -> Vec<Replica> {
    let env = replica_env(redis, prefix, extra);
    (0..count).map(|_| start_in(WorkDir::new(), &env)).collect()
}

/// A folder holding token files, and the settings that name them.
fn with_tokens(dir: &WorkDir) -> [(&'static str, String); 2] {
    let operators = dir.write("operators.txt", &format!("{OPERATOR}\n"));
    let enrollment = dir.write("enrollment.txt", &format!("{ENROLLMENT}\n"));
    [
        (
            "REGISTRY_AUTH__OPERATOR_TOKENS_FILE",
            operators.display().to_string(),
        ),
        (
            "REGISTRY_AUTH__ENROLLMENT_TOKENS_FILE",
            enrollment.display().to_string(),
        ),
    ]
}

/// One request with `token`; the status and the JSON body (`Null` if none).
fn http(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let answer = request_as(addr, token, method, path, body).expect("an answer");
    let value = if answer.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&answer.body).unwrap_or(Value::String(answer.body))
    };
    (answer.status, value)
}

/// An operator's request, without a token.
fn op(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    http(addr, None, method, path, body)
}

/// Registers `agent_id` in `group`; the status and the body.
fn register_in(addr: SocketAddr, token: Option<&str>, agent_id: &str, group: &str) -> (u16, Value) {
    let body = format!(r#"{{"agentId": "{agent_id}", "name": "n", "group": "{group}"}}"#);
    http(addr, token, "POST", "/api/v1/agents/register", Some(&body))
}

/// Opens `agent_id`'s stream with `token` (on a connection that closes when
/// the stream ends); returns it once its head said 200.
fn stream_as(addr: SocketAddr, agent_id: &str, token: Option<&str>) -> TcpStream {
    let mut tcp = registry_testkit::connect(addr).expect("connect");
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "GET /api/v1/agents/{agent_id}/events HTTP/1.1\r\nHost: {addr}\r\n\
         Accept: text/event-stream\r\nConnection: close\r\n{authorization}\r\n"
    )
    .expect("a request sent");
    let head = read_head(&mut tcp).expect("the stream's head");
    assert_eq!(head.status, 200, "{head:?}");
    read_until(&mut tcp, ": open").expect("the stream opens");
    tcp
}

/// Pushes a command of `kind` to `agent_id` through `addr`; its id.
fn push(addr: SocketAddr, token: Option<&str>, agent_id: &str, kind: &str) -> String {
    let body = format!(r#"{{"type": "{kind}", "payload": {{"n": 1}}}}"#);
    let path = format!("/api/v1/agents/{agent_id}/commands");
    let (status, command) = http(addr, token, "POST", &path, Some(&body));
    assert_eq!(status, 202, "{command}");
    command["commandId"]
        .as_str()
        .expect("a commandId")
        .to_owned()
}

/// Polls `check` every 20 ms until it holds, for at most `within`.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of the sample `series` over the replicas' `/metrics`.
fn summed(replicas: &[Replica], series: &str) -> f64 {
    replicas
        .iter()
        .map(|replica| {
            metric(replica.addr, series)
                .expect("/metrics answers")
                .unwrap_or(0.0)
        })
        .sum()
}

#[test]
fn the_rules_hold_with_requests_spread_over_three_replicas() {
    let redis = RedisServer::start();
    let tokens = WorkDir::new();
    let [operators, enrollment] = with_tokens(&tokens);
    let extra = [
        (operators.0, operators.1.as_str()),
        (enrollment.0, enrollment.1.as_str()),
    ];
    let cluster = replicas(&redis, "rules:", &extra, 3);
    let [a, b, c] = [cluster[0].addr, cluster[1].addr, cluster[2].addr];
    let operator = Some(OPERATOR);

    // Registered through A; its token works on B and C at once.
    let (status, registered) = register_in(a, Some(ENROLLMENT), "a-1", "g");
    assert_eq!(status, 201, "{registered}");
    let token = registered["agentToken"]
        .as_str()
        .expect("a token")
        .to_owned();
    let agent = Some(token.as_str());
    let heartbeat = "/api/v1/agents/a-1/heartbeat";
    assert_eq!(http(b, agent, "POST", heartbeat, None).0, 204);
    let (status, seen) = http(c, operator, "GET", "/api/v1/agents/a-1", None);
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["status"], "LIVE");
    assert_eq!(seen["connected"], false);
    let (_, listed) = http(c, operator, "GET", "/api/v1/agents?group=g", None);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // Registered again through C: resumed (200), and A's token is replaced.
    let (status, again) = register_in(c, Some(ENROLLMENT), "a-1", "g");
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        http(a, agent, "POST", heartbeat, None).0,
        401,
        "the old token"
    );
    let token = again["agentToken"].as_str().expect("a token").to_owned();
    let agent = Some(token.as_str());
    assert_eq!(http(a, agent, "POST", heartbeat, None).0, 204);

    // A command pushed through B, to a stream on C, acknowledged through A.
    let mut stream = stream_as(c, "a-1", agent);
    let id = push(b, operator, "a-1", "config-update");
    let events = read_until(&mut stream, &id).expect("the command on the stream");
    assert!(events.contains("event: config-update"), "{events}");
    let ack = format!("/api/v1/agents/a-1/commands/{id}/ack");
    let (status, acked) = http(
        a,
        agent,
        "POST",
        &ack,
        Some(r#"{"result": "FAILURE", "message": "no"}"#),
    );
    assert_eq!(status, 200, "{acked}");
    let command = format!("/api/v1/agents/a-1/commands/{id}");
    let (status, read) = http(b, operator, "GET", &command, None);
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["status"], "ACKNOWLEDGED");
    assert_eq!(read["result"], "FAILURE");
    // Acknowledged twice, through C: the first result stands.
    let (status, twice) = http(c, agent, "POST", &ack, Some(r#"{"result": "SUCCESS"}"#));
    assert_eq!(status, 200, "{twice}");
    assert_eq!(twice["result"], "FAILURE");

    // A group command through C targets the agent registered through A.
    assert_eq!(register_in(b, Some(ENROLLMENT), "a-2", "g").0, 201);
    let (status, rollout) = http(
        c,
        operator,
        "POST",
        "/api/v1/agents/groups/g/commands",
        Some(r#"{"type": "replay"}"#),
    );
    assert_eq!(status, 202, "{rollout}");
    assert_eq!(rollout["targeted"], 2, "{rollout}");
    let path = format!(
        "/api/v1/rollouts/{}",
        rollout["rolloutId"].as_str().unwrap()
    );
    let (status, progress) = http(a, operator, "GET", &path, None);
    assert_eq!(status, 200, "{progress}");
    read_until(&mut stream, "replay").expect("the group's command on the stream");
    let (_, commands) = http(a, operator, "GET", "/api/v1/agents/a-2/commands", None);
    assert_eq!(commands.as_array().map(Vec::len), Some(1), "{commands}");

    // Deleted through B: gone everywhere, its stream ended; it comes back through C.
    assert_eq!(
        http(b, operator, "DELETE", "/api/v1/agents/a-1", None).0,
        204
    );
    expect_stream_end(stream);
    assert_eq!(http(a, operator, "GET", "/api/v1/agents/a-1", None).0, 404);
    assert_eq!(
        http(c, operator, "GET", "/api/v1/agents/a-1/commands", None).0,
        404
    );
    assert_eq!(http(c, agent, "POST", heartbeat, None).0, 401);
    assert_eq!(register_in(c, Some(ENROLLMENT), "a-1", "g").0, 201);
    for replica in cluster {
        replica.process.terminate();
    }
}

#[test]
fn a_command_reaches_the_stream_wherever_it_is_and_one_stream_per_agent() {
    let redis = RedisServer::start();
    let cluster = replicas(&redis, "streams:", &[], 3);
    let [a, b, c] = [cluster[0].addr, cluster[1].addr, cluster[2].addr];
    assert_eq!(register_in(a, None, "a-1", "g").0, 201);

    let mut on_a = stream_as(a, "a-1", None);
    // The stream answered, every replica reads the agent connected at once.
    for replica in [a, b, c] {
        let (_, agent) = op(replica, "GET", "/api/v1/agents/a-1", None);
        assert_eq!(agent["connected"], true, "{agent}");
    }
    for from in [a, b, c] {
        let id = push(from, None, "a-1", "replay");
        read_until(&mut on_a, &id).expect("the command on A's stream");
    }

    // A stream opened on C ends A's: one stream per agent across replicas.
    let mut on_c = stream_as(c, "a-1", None);
    read_until(&mut on_a, ": replaced").expect("A's stream replaced");
    expect_stream_end(on_a);
    let id = push(a, None, "a-1", "replay");
    read_until(&mut on_c, &id).expect("the command on C's stream");
    assert_eq!(
        op(b, "GET", "/api/v1/agents/a-1", None).1["connected"],
        true
    );

    // Its reader gone, the agent reads not connected everywhere.
    drop(on_c);
    for replica in [a, b, c] {
        eventually(PROMPTLY, "not connected", || {
            op(replica, "GET", "/api/v1/agents/a-1", None).1["connected"] == false
        });
    }
    for replica in cluster {
        replica.process.terminate();
    }
}

#[test]
fn each_transition_and_expiry_takes_effect_once_across_replicas() {
    const AGENTS: usize = 30;
    let redis = RedisServer::start();
    let extra = [
        ("REGISTRY_LIFECYCLE__STALE_AFTER", "1s"),
        ("REGISTRY_LIFECYCLE__DEAD_AFTER", "1s"),
        ("REGISTRY_LIFECYCLE__BRAKE_THRESHOLD", "1"),
        ("REGISTRY_COMMANDS__EXPIRY", "1s"),
    ];
    let mut cluster = replicas(&redis, "once:", &extra, 3);
    for n in 0..AGENTS {
        let replica = cluster[n % 3].addr;
        assert_eq!(register_in(replica, None, &format!("a-{n}"), "g").0, 201);
        push(replica, None, &format!("a-{n}"), "replay");
    }
    let total = AGENTS as f64;
    let series = [
        r#"registry_transitions_total{from="LIVE",to="STALE"}"#,
        r#"registry_transitions_total{from="STALE",to="DEAD"}"#,
    ];
    eventually(Duration::from_secs(10), "every agent DEAD", || {
        series
            .iter()
            .all(|series| summed(&cluster, series) >= total)
    });
    for series in series {
        assert_eq!(summed(&cluster, series), total, "{series}");
    }
    for replica in &cluster {
        let (_, dead) = op(replica.addr, "GET", "/api/v1/agents?status=DEAD", None);
        assert_eq!(dead.as_array().map(Vec::len), Some(AGENTS), "{dead}");
        let gauge = metric(replica.addr, r#"registry_commands{status="EXPIRED"}"#).unwrap();
        assert_eq!(
            gauge,
            Some(total),
            "every replica counts every expired command"
        );
    }

    // Stopped, each has written what it had: the logs say each once.
    let (mut changes, mut expiries) = (0, 0);
    for replica in cluster.drain(..) {
        let mut process = replica.process;
        process.signal("TERM");
        process.wait_exit();
        let log = process.log();
        let count = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
        changes += count("agent status changed");
        expiries += count("command expired");
    }
    assert_eq!(
        changes,
        2 * AGENTS,
        "LIVE -> STALE and STALE -> DEAD, once each"
    );
    assert_eq!(expiries, AGENTS, "each command expired once");
}

#[test]
fn a_replica_killed_under_load_loses_nothing_it_answered() {
    let redis = RedisServer::start();
    let mut cluster = replicas(&redis, "kill:", &[], 3);
    let c = cluster[2].addr;
    assert_eq!(register_in(c, None, "streaming", "g").0, 201);
    let on_b = stream_as(cluster[1].addr, "streaming", None);
    eventually(PROMPTLY, "connected on C", || {
        op(c, "GET", "/api/v1/agents/streaming", None).1["connected"] == true
    });

    // Two clients, one on A and one on B, register agents and push to them.
    let load = |addr: SocketAddr, name: &'static str| {
        thread::spawn(move || {
            let mut answered = Vec::new();
            for n in 0.. {
                let agent = format!("{name}-{n}");
                let Ok(answer) = request_as(
                    addr,
                    None,
                    "POST",
                    "/api/v1/agents/register",
                    Some(&format!(
                        r#"{{"agentId": "{agent}", "name": "n", "group": "g"}}"#
                    )),
                ) else {
                    break;
                };
                if answer.status != 201 {
                    break;
                }
                let Ok(pushed) = request_as(
                    addr,
                    None,
                    "POST",
                    &format!("/api/v1/agents/{agent}/commands"),
                    Some(r#"{"type": "replay"}"#),
                ) else {
                    answered.push((agent, None));
                    break;
                };
                let command = (pushed.status == 202)
                    .then(|| serde_json::from_str::<Value>(&pushed.body).ok())
                    .flatten()
                    .and_then(|body| body["commandId"].as_str().map(str::to_owned));
                let failed = command.is_none();
                answered.push((agent, command));
                if failed {
                    break;
                }
            }
            answered
        })
    };
    let on_a = load(cluster[0].addr, "via-a");
    let on_b_load = load(cluster[1].addr, "via-b");
    eventually(PROMPTLY, "load under way", || {
        op(c, "GET", "/api/v1/agents?group=g", None)
            .1
            .as_array()
            .is_some_and(|agents| agents.len() > 20)
    });
    let killed = cluster.remove(1);
    drop(killed.process.kill());
    let answered_by_b = on_b_load.join().unwrap();
    // A is stopped too (gracefully: what it answered is kept).
    let a = cluster.remove(0);
    a.process.terminate();
    let answered_by_a = on_a.join().unwrap();
    drop(on_b);

    assert!(!answered_by_b.is_empty());
    for (agent, command) in answered_by_a.iter().chain(&answered_by_b) {
        let (status, seen) = op(c, "GET", &format!("/api/v1/agents/{agent}"), None);
        assert_eq!(status, 200, "{agent}: {seen}");
        if let Some(command) = command {
            let path = format!("/api/v1/agents/{agent}/commands/{command}");
            assert_eq!(op(c, "GET", &path, None).0, 200, "{agent}'s command");
        }
    }
    // B's stream ended with it: within its liveness (3 s).
    eventually(Duration::from_secs(5), "not connected", || {
        op(c, "GET", "/api/v1/agents/streaming", None).1["connected"] == false
    });
    cluster.remove(0).process.terminate();
}

#[test]
fn the_log_s_connections_killed_then_a_push_still_reaches_the_stream() {
    let redis = RedisServer::start();
    let cluster = replicas(&redis, "client-kill:", &[], 2);
    let [a, b] = [cluster[0].addr, cluster[1].addr];
    assert_eq!(register_in(a, None, "a-1", "g").0, 201);
    let mut on_a = stream_as(a, "a-1", None);
    read_until(&mut on_a, ": open").ok();

    // No pub/sub to kill: the replicas follow a Redis Stream. Every client
    // connection of theirs is killed: the log's, the writer's, the keeper's.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let pubsub: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .query(&mut connection)
        .unwrap();
    assert_eq!(pubsub, 0, "no pub/sub connection");
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query(&mut connection)
        .unwrap();
    assert!(killed >= 4, "{killed} connections killed");

    let id = push(b, None, "a-1", "replay");
    read_until(&mut on_a, &id).expect("the command on A's stream");
    for replica in cluster {
        replica.process.terminate();
    }
}

#[test]
fn redis_stopped_and_started_again_from_its_file_loses_nothing_and_keeps_streams() {
    let redis = RedisServer::start();
    let cluster = replicas(&redis, "outage:", &[], 2);
    let [a, b] = [cluster[0].addr, cluster[1].addr];
    assert_eq!(register_in(a, None, "a-1", "g").0, 201);
    let mut on_a = stream_as(a, "a-1", None);
    let pushed = push(b, None, "a-1", "replay");
    read_until(&mut on_a, &pushed).expect("the command on A's stream");

    let (port, dir) = redis.stop();
    for replica in [a, b] {
        eventually(Duration::from_secs(5), "/readyz 503", || {
            op(replica, "GET", "/readyz", None).0 == 503
        });
        assert_eq!(op(replica, "GET", "/livez", None).0, 200);
        let refused = request_as(
            replica,
            None,
            "POST",
            "/api/v1/agents/a-1/commands",
            Some(r#"{"type": "replay"}"#),
        )
        .expect("an answer");
        assert_eq!(refused.status, 503, "{refused:?}");
        assert!(refused.header("retry-after").is_some(), "{refused:?}");
    }

    let redis = RedisServer::start_on(port, dir);
    for replica in [a, b] {
        eventually(Duration::from_secs(10), "ready again", || {
            op(replica, "GET", "/readyz", None).0 == 200
        });
        let (status, agent) = op(replica, "GET", "/api/v1/agents/a-1", None);
        assert_eq!(status, 200, "{agent}");
        assert_eq!(agent["status"], "LIVE", "the grace after Redis came back");
        let path = format!("/api/v1/agents/a-1/commands/{pushed}");
        assert_eq!(op(replica, "GET", &path, None).0, 200);
    }
    // The stream stayed open through the outage, and a push still reaches it.
    let id = push(b, None, "a-1", "replay");
    read_until(&mut on_a, &id).expect("the command on A's stream");
    for replica in cluster {
        replica.process.terminate();
    }
    drop(redis);
}

#[test]
fn every_replica_restarted_keeps_the_registry() {
    let redis = RedisServer::start();
    let env = replica_env(&redis, "restart:", &[]);
    let mut cluster = replicas(&redis, "restart:", &[], 3);
    assert_eq!(register_in(cluster[0].addr, None, "a-1", "g").0, 201);
    let pushed = push(cluster[1].addr, None, "a-1", "replay");
    let (_, before) = op(cluster[2].addr, "GET", "/api/v1/agents/a-1", None);
    let key = register_in(cluster[2].addr, None, "a-2", "g").1["serverPublicKey"].clone();

    // Stopped one by one (SIGTERM on two, SIGKILL on the last), then started.
    let dirs: Vec<WorkDir> = cluster
        .drain(..)
        .enumerate()
        .map(|(n, replica)| {
            if n < 2 {
                replica.process.stop()
            } else {
                replica.process.kill()
            }
        })
        .collect();
    let cluster: Vec<Replica> = dirs.into_iter().map(|dir| start_in(dir, &env)).collect();
    for replica in &cluster {
        let (status, after) = op(replica.addr, "GET", "/api/v1/agents/a-1", None);
        assert_eq!(status, 200, "{after}");
        assert_eq!(after, before);
        let path = format!("/api/v1/agents/a-1/commands/{pushed}");
        assert_eq!(op(replica.addr, "GET", &path, None).0, 200);
        let (status, resumed) = register_in(replica.addr, None, "a-2", "g");
        assert_eq!(status, 200, "{resumed}");
        assert_eq!(resumed["serverPublicKey"], key, "one signing key");
    }
    for replica in cluster {
        replica.process.terminate();
    }
}

#[test]
fn a_delivery_through_one_replica_reads_delivered_with_its_time_through_every_one_and_after_restarts()
 {
    let redis = RedisServer::start();
    let env = replica_env(&redis, "delivered:", &[]);
    let cluster = replicas(&redis, "delivered:", &[], 3);
    let [a, b, c] = [cluster[0].addr, cluster[1].addr, cluster[2].addr];
    assert_eq!(register_in(a, None, "a-1", "g").0, 201);
    let mut on_b = stream_as(b, "a-1", None);
    let pushed = push(a, None, "a-1", "replay");
    read_until(&mut on_b, &pushed).expect("the command on B's stream");

    // B writes the delivery behind (a mark beside the record A wrote), and
    // every replica reads the command DELIVERED at the same moment.
    let path = format!("/api/v1/agents/a-1/commands/{pushed}");
    let read = |replica: SocketAddr| {
        let (status, command) = op(replica, "GET", &path, None);
        assert_eq!(status, 200, "{command}");
        command
    };
    eventually(PROMPTLY, "delivered on every replica", || {
        [a, b, c]
            .iter()
            .all(|replica| read(*replica)["status"] == "DELIVERED")
    });
    let delivered = read(b);
    assert!(delivered["deliveredAt"].is_string(), "{delivered}");
    for replica in [a, c] {
        assert_eq!(read(replica), delivered);
    }

    // Every replica restarted reads it so from Redis.
    drop(on_b);
    let dirs: Vec<WorkDir> = cluster
        .into_iter()
        .map(|replica| replica.process.stop())
        .collect();
    let cluster: Vec<Replica> = dirs.into_iter().map(|dir| start_in(dir, &env)).collect();
    for replica in &cluster {
        assert_eq!(read(replica.addr), delivered);
    }
    for replica in cluster {
        replica.process.terminate();
    }
}

#[test]
fn a_replica_that_would_sign_with_another_key_exits_2_naming_signing_key_file() {
    let redis = RedisServer::start();
    let first = WorkDir::new();
    let key = ServerKey::generate().unwrap();
    first.write("signing.pem", &key.to_pkcs8_pem());
    let env = replica_env(
        &redis,
        "keys:",
        &[("REGISTRY_SIGNING__KEY_FILE", "signing.pem")],
    );
    let first = start_in(first, &env);

    let other = WorkDir::new();
    other.write(
        "signing.pem",
        &ServerKey::generate().unwrap().to_pkcs8_pem(),
    );
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut refused = Process::spawn(other, &["--bind", "127.0.0.1:0"], &pairs);
    let status = refused.wait_exit();
    let log = refused.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("signing.key_file"), "{log}");
    assert!(log.contains(&key.public_key().to_base64()), "{log}");
    assert!(!log.contains("listening on"), "{log}");

    // The same key file is welcome.
    let same = WorkDir::new();
    same.write("signing.pem", &key.to_pkcs8_pem());
    let second = start_in(same, &env);
    let (_, registered) = register_in(second.addr, None, "a-1", "g");
    assert_eq!(registered["serverPublicKey"], key.public_key().to_base64());
    second.process.terminate();
    first.process.terminate();
}

#[test]
fn redis_emptied_is_served_as_one_empty_registry_by_every_replica() {
    let redis = RedisServer::start();
    let mut cluster = replicas(&redis, "emptied:", &[], 2);
    let [a, b] = [cluster[0].addr, cluster[1].addr];
    for n in 0..3 {
        assert_eq!(register_in(a, None, &format!("a-{n}"), "g").0, 201);
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    for replica in &mut cluster {
        let line = replica
            .process
            .wait_for_line("Redis lost the registry's data");
        assert!(line.contains("ERROR"), "{line}");
    }
    for replica in [a, b] {
        eventually(Duration::from_secs(5), "an empty registry, served", || {
            op(replica, "GET", "/api/v1/agents/a-0", None).0 == 404
                && op(replica, "GET", "/readyz", None).0 == 200
        });
    }
    // One registry again: what one replica answers, the other reads.
    assert_eq!(register_in(b, None, "a-0", "g").0, 201);
    assert_eq!(op(a, "GET", "/api/v1/agents/a-0", None).0, 200);
    let mut on_a = stream_as(a, "a-0", None);
    let id = push(b, None, "a-0", "replay");
    read_until(&mut on_a, &id).expect("the command on A's stream");
    for replica in cluster {
        replica.process.terminate();
    }
}

#[test]
fn a_replica_whose_liveness_ran_out_and_came_back_has_its_streams_read_connected_again() {
    let redis = RedisServer::start();
    let cluster = replicas(&redis, "lapse:", &[], 2);
    let [a, b] = [cluster[0].addr, cluster[1].addr];
    assert_eq!(register_in(a, None, "a-1", "g").0, 201);
    let mut on_b = stream_as(b, "a-1", None);
    eventually(PROMPTLY, "connected on A", || {
        op(a, "GET", "/api/v1/agents/a-1", None).1["connected"] == true
    });
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let on: String = redis::cmd("HGET")
        .arg("lapse:streams")
        .arg("a-1")
        .query(&mut connection)
        .unwrap();
    // B's liveness runs out (its keeper stalled, or Redis was away for
    // longer than it lasts): A ends B's streams.
    eventually(Duration::from_secs(10), "not connected on A", || {
        let _: u64 = redis::cmd("ZREM")
            .arg("lapse:replicas")
            .arg(&on)
            .query(&mut connection)
            .unwrap();
        op(a, "GET", "/api/v1/agents/a-1", None).1["connected"] == false
    });
    // B's keeper renews it: B's stream, still open, reads connected again on A.
    eventually(Duration::from_secs(5), "connected on A again", || {
        op(a, "GET", "/api/v1/agents/a-1", None).1["connected"] == true
    });
    let id = push(a, None, "a-1", "replay");
    read_until(&mut on_b, &id).expect("the command on B's stream");
    for replica in cluster {
        replica.process.terminate();
    }
}
