//! The embedded engine as a user meets it (SPEC 8): a SIGKILL right after the
//! answers loses none of them and agent tokens still work after the restart;
//! a second server on the same file, and a file it cannot read, exit 2 naming
//! `storage.path` and leave the file as it was; the file does not grow when the
//! same load runs again; after a restart agents have `stale_after` to heartbeat
//! and a command that expired while the server was down is EXPIRED.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use registry_testkit::{KeepAlive, request_as};
use serde_json::Value;

const OPERATOR: &str = "operator-secret";
const ENROLMENT: &str = "enrolment-secret";
const TOKENS: [(&str, &str); 2] = [
    ("REGISTRY_AUTH__OPERATOR_TOKENS", OPERATOR),
    ("REGISTRY_AUTH__ENROLLMENT_TOKENS", ENROLMENT),
];

/// One request, with a bearer token when given: the status and the body.
fn http_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let answer = request_as(addr, token, method, path, body).expect("an answer");
    (answer.status, answer.body)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("a JSON body ({err}): {text:?}"))
}

/// Registers `agent_id` with the enrolment token; returns its agent token.
fn enrol(addr: SocketAddr, agent_id: &str) -> String {
    let body =
        format!(r#"{{"agentId": "{agent_id}", "name": "order-service", "group": "orders"}}"#);
    let (status, text) = http_as(
        addr,
        Some(ENROLMENT),
        "POST",
        "/api/v1/agents/register",
        Some(&body),
    );
    assert_eq!(status, 201, "{text}");
    json(&text)["agentToken"]
        .as_str()
        .expect("an agent token")
        .to_owned()
}

fn operator(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, text) = http_as(addr, Some(OPERATOR), method, path, body);
    let value = if text.is_empty() {
        Value::Null
    } else {
        json(&text)
    };
    (status, value)
}

#[test]
fn a_sigkill_right_after_the_answers_loses_none_of_them_and_tokens_still_work() {
    let (process, addr) = Process::serve(WorkDir::new(), &[], &TOKENS);
    let token = enrol(addr, "a-1");
    enrol(addr, "gone");
    let (status, acked) = operator(
        addr,
        "POST",
        "/api/v1/agents/a-1/commands",
        Some(r#"{"type": "deep-trace", "payload": {"routeId": "r-1"}}"#),
    );
    assert_eq!(status, 202, "{acked}");
    let acked_id = acked["commandId"].as_str().unwrap().to_owned();
    let (status, text) = http_as(
        addr,
        Some(&token),
        "POST",
        &format!("/api/v1/agents/a-1/commands/{acked_id}/ack"),
        Some(r#"{"result": "FAILURE", "message": "no such route"}"#),
    );
    assert_eq!(status, 200, "{text}");
    let (status, rollout) = operator(
        addr,
        "POST",
        "/api/v1/agents/groups/orders/commands",
        Some(r#"{"type": "replay"}"#),
    );
    assert_eq!(status, 202, "{rollout}");
    assert_eq!(operator(addr, "DELETE", "/api/v1/agents/gone", None).0, 204);
    let (_, before) = operator(addr, "GET", "/api/v1/agents/a-1", None);

    let dir = process.kill();
    let (process, addr) = Process::serve(dir, &[], &TOKENS);

    let (status, after) = operator(addr, "GET", "/api/v1/agents/a-1", None);
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before, "the agent as it was, not connected");
    assert_eq!(operator(addr, "GET", "/api/v1/agents/gone", None).0, 404);
    let (_, commands) = operator(addr, "GET", "/api/v1/agents/a-1/commands", None);
    let commands = commands.as_array().expect("a list").clone();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(commands[0]["type"], "replay");
    assert_eq!(commands[0]["status"], "PENDING");
    assert_eq!(commands[1]["commandId"], acked_id.as_str());
    assert_eq!(commands[1]["status"], "ACKNOWLEDGED");
    assert_eq!(commands[1]["result"], "FAILURE");
    assert_eq!(commands[1]["message"], "no such route");
    assert_eq!(commands[1]["payload"]["routeId"], "r-1");
    let heartbeat = "/api/v1/agents/a-1/heartbeat";
    assert_eq!(http_as(addr, Some(&token), "POST", heartbeat, None).0, 204);
    assert_eq!(
        http_as(addr, Some("not-a-token"), "POST", heartbeat, None).0,
        401
    );
    process.terminate();
}

#[test]
fn after_a_restart_agents_have_stale_after_to_heartbeat_and_what_expired_while_down_is_expired() {
    let env = [
        ("REGISTRY_LIFECYCLE__HEARTBEAT_INTERVAL", "500ms"),
        ("REGISTRY_LIFECYCLE__STALE_AFTER", "2s"),
        ("REGISTRY_COMMANDS__EXPIRY", "1s"),
    ];
    let (process, addr) = Process::serve(WorkDir::new(), &[], &env);
    assert_eq!(register(addr, "a-1").0, 201);
    let (status, text) = http_as(
        addr,
        None,
        "POST",
        "/api/v1/agents/a-1/commands",
        Some(r#"{"type": "replay"}"#),
    );
    assert_eq!(status, 202, "{text}");
    let pushed = json(&text);

    let dir = process.kill();
    // The server stays down past the agent's stale deadline and the command's
    // expiry: real time has to pass here, as it does in an outage.
    std::thread::sleep(Duration::from_millis(2_500));
    let restarting = Instant::now();
    let (process, addr) = Process::serve(dir, &[], &env);

    let agent = |addr| json(&http_as(addr, None, "GET", "/api/v1/agents/a-1", None).1);
    assert_eq!(agent(addr)["status"], "LIVE", "the grace holds it LIVE");
    let path = format!(
        "/api/v1/agents/a-1/commands/{}",
        pushed["commandId"].as_str().unwrap()
    );
    let command = json(&http_as(addr, None, "GET", &path, None).1);
    assert_eq!(command["status"], "EXPIRED", "{command}");
    assert_eq!(
        command["expiresAt"], pushed["expiresAt"],
        "expired at its expiresAt"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while agent(addr)["status"] == "LIVE" {
        assert!(
            Instant::now() < deadline,
            "still LIVE 10 s after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        restarting.elapsed() >= Duration::from_secs(2),
        "STALE {:?} after the restart, before stale_after",
        restarting.elapsed()
    );
    assert_eq!(agent(addr)["status"], "STALE");
    process.terminate();
}

#[test]
fn a_second_server_on_the_same_file_exits_2_naming_storage_path_and_the_file() {
    let (first, addr) = Process::serve(WorkDir::new(), &[], &[]);
    let (status, _) = register(addr, "a-1");
    assert_eq!(status, 201);

    let started = Instant::now();
    let mut second = Process::spawn(first_dir(&first), &["--bind", "127.0.0.1:0"], &[]);
    let status = second.wait_exit();
    let log = second.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    assert!(log.contains("storage.path"), "{log}");
    assert!(log.contains("data/registry.redb"), "{log}");
    assert!(!log.contains("listening on"), "{log}");

    assert_eq!(
        http_as(addr, None, "GET", "/api/v1/agents/a-1", None).0,
        200
    );
    first.terminate();
}

/// The working directory of a running process, for a second one.
fn first_dir(process: &Process) -> WorkDir {
    process.dir().alias()
}

#[test]
fn a_file_it_cannot_read_exits_2_naming_it_and_is_left_untouched() {
    for garbage in [
        b"not a registry file, just text\n".repeat(300),
        vec![0xff; 8192],
    ] {
        let dir = WorkDir::new();
        std::fs::create_dir_all(dir.0.join("data")).unwrap();
        let file = dir.0.join("data/registry.redb");
        std::fs::write(&file, &garbage).unwrap();
        let alias = dir.alias();
        let mut process = Process::spawn(dir, &["--bind", "127.0.0.1:0"], &[]);
        let status = process.wait_exit();
        let log = process.log();
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(log.contains("storage.path"), "{log}");
        assert!(log.contains("data/registry.redb"), "{log}");
        assert_eq!(
            std::fs::read(alias.0.join("data/registry.redb")).unwrap(),
            garbage
        );
    }
}

#[test]
fn a_load_run_again_after_a_restart_keeps_the_file_within_125_percent() {
    let env = [
        ("REGISTRY_COMMANDS__EXPIRY", "300ms"),
        ("REGISTRY_COMMANDS__RETENTION", "300ms"),
    ];
    let mut dir = WorkDir::new();
    let mut sizes = Vec::new();
    for _ in 0..2 {
        let (process, addr) = Process::serve(dir, &[], &env);
        run_load(addr);
        dir = process.stop();
        sizes.push(
            std::fs::metadata(dir.0.join("data/registry.redb"))
                .unwrap()
                .len(),
        );
    }
    assert!(
        sizes[1] * 4 <= sizes[0] * 5,
        "after the first run {} bytes, after the second {}",
        sizes[0],
        sizes[1]
    );
}

/// 100 agents (registered again on the second run, four clients at once),
/// 10 fleet commands of an 8 KiB payload to them, every command gone again
/// (expired and dropped) before it returns, and 10 more agents registered
/// and deleted. Each change is a commit (fsyncs): the load is kept small.
fn run_load(addr: SocketAddr) {
    std::thread::scope(|scope| {
        for client in 0..4 {
            scope.spawn(move || {
                let mut connection = KeepAlive::connect(addr).expect("a connection");
                for n in 0..25 {
                    let body =
                        format!(r#"{{"agentId": "a-{client}-{n}", "name": "n", "group": "g"}}"#);
                    let status = connection
                        .request("POST", "/api/v1/agents/register", Some(&body))
                        .expect("an answer")
                        .status;
                    assert!(status == 200 || status == 201, "{status}");
                }
            });
        }
    });
    let mut client = KeepAlive::connect(addr).expect("a connection");
    let mut send = |method: &str, path: &str, body: Option<&str>| {
        let answer = client.request(method, path, body).expect("an answer");
        (answer.status, answer.body)
    };
    let payload = format!(
        r#"{{"type": "replay", "payload": {{"blob": "{}"}}}}"#,
        "x".repeat(8192)
    );
    for _ in 0..10 {
        let (status, _) = send("POST", "/api/v1/agents/commands", Some(&payload));
        assert_eq!(status, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, commands) = send("GET", "/api/v1/agents/a-0-0/commands", None);
        if commands == "[]" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commands still retained: {commands}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in 0..10 {
        let body = format!(r#"{{"agentId": "b-{n}", "name": "n", "group": "g"}}"#);
        let (status, _) = send("POST", "/api/v1/agents/register", Some(&body));
        assert_eq!(status, 201);
        let (status, _) = send("DELETE", &format!("/api/v1/agents/b-{n}"), None);
        assert_eq!(status, 204);
    }
}
