//! `registryctl` against the real server on a free port: each command's
//! output, as a table and as JSON, and its exit status, errors from the
//! server included.

use std::process::Stdio;
use std::time::Duration;

use registry_client::{Agent, Outcome};
use registry_tests::{PROMPTLY, TestServer, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::process::Command;

mod common;
use common::{QUICK, connected};

/// What one run of `registryctl` printed, and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("JSON on stdout ({err}): {}", self.stdout))
    }

    #[track_caller]
    fn succeeded(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn registryctl(server: &TestServer, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_registryctl"));
    command
        .args(args)
        .env("REGISTRY_URL", &server.base)
        .env_remove("REGISTRY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `registryctl args` against `server`, with `input` on its standard input.
async fn run_with(
    server: &TestServer,
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&str>,
) -> Run {
    let mut command = registryctl(server, args);
    for (name, value) in env {
        command.env(name, value);
    }
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().expect("registryctl starts");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("write stdin");
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("registryctl ends")
        .expect("its output");
    Run {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8"),
    }
}

async fn run(server: &TestServer, args: &[&str]) -> Run {
    run_with(server, args, &[], None).await
}

/// The first line is the header; the others are the rows, split in cells.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn agents_lists_the_fleet_as_a_table_or_json_filtered_by_status_and_group() {
    let server = TestServer::start().await;
    server.register("a-1", "orders").await;
    server.register("a-2", "billing").await;

    let table = run(&server, &["agents"]).await;
    table.succeeded();
    let rows = rows(&table.stdout);
    assert_eq!(
        rows[0],
        [
            "AGENT",
            "ID",
            "NAME",
            "GROUP",
            "VERSION",
            "STATUS",
            "CONNECTED",
            "LAST",
            "HEARTBEAT"
        ]
    );
    assert_eq!(rows.len(), 3, "{}", table.stdout);
    assert_eq!(
        rows[1][..6],
        ["a-1", "order-service", "orders", "1.4.2", "LIVE", "no"]
    );
    assert_eq!(rows[2][0], "a-2");

    let filtered = run(
        &server,
        &[
            "agents", "--status", "live", "--group", "billing", "-o", "json",
        ],
    )
    .await;
    let agents = filtered.succeeded().json();
    assert_eq!(agents.as_array().unwrap().len(), 1);
    assert_eq!(agents[0]["agentId"], "a-2");
    assert_eq!(agents[0]["status"], "LIVE");

    let none = run(&server, &["agents", "--group", "nobody"]).await;
    assert_eq!(none.succeeded().stdout, "no agent\n");

    let bad = run(&server, &["agents", "--status", "gone"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("'gone' is not one of LIVE, STALE, DEAD"),
        "{}",
        bad.stderr
    );
}

#[tokio::test]
async fn agent_shows_one_agent_and_an_unknown_one_is_the_servers_detail_and_exit_1() {
    let server = TestServer::start().await;
    server.register("a-1", "orders").await;

    let shown = run(&server, &["agent", "a-1"]).await;
    shown.succeeded();
    assert!(
        shown
            .stdout
            .lines()
            .any(|line| line.split_whitespace().eq(["agentId", "a-1"])),
        "{}",
        shown.stdout
    );
    assert!(
        shown
            .stdout
            .lines()
            .any(|line| line.split_whitespace().eq(["status", "LIVE"]))
    );
    assert!(
        shown.stdout.contains("capabilities     replay"),
        "{}",
        shown.stdout
    );
    let json = run(&server, &["agent", "a-1", "--output", "json"]).await;
    assert_eq!(json.succeeded().json()["group"], "orders");

    let unknown = run(&server, &["agent", "nobody"]).await;
    assert_eq!(unknown.code, 1);
    assert_eq!(unknown.stdout, "");
    assert_eq!(unknown.stderr, "error: agent 'nobody' is not registered\n");
}

#[tokio::test]
async fn delete_removes_an_agent() {
    let server = TestServer::start().await;
    server.register("a-1", "orders").await;
    let deleted = run(&server, &["delete", "a-1"]).await;
    assert_eq!(deleted.succeeded().stdout, "deleted agent a-1\n");
    assert!(server.agent("a-1").await.is_none());
    let again = run(&server, &["delete", "a-1"]).await;
    assert_eq!(again.code, 1);
    assert_eq!(again.stderr, "error: agent 'a-1' is not registered\n");
}

#[tokio::test]
async fn prune_dead_asks_first_and_deletes_only_on_yes() {
    let server = TestServer::start_with(|config| {
        config.lifecycle.stale_after = Duration::from_millis(50);
        config.lifecycle.dead_after = Duration::from_millis(50);
    })
    .await;
    server.register("gone", "orders").await;
    eventually(PROMPTLY, "the agent is DEAD", || async {
        server.status_of("gone").await == "DEAD"
    })
    .await;

    let no_answer = run(&server, &["prune-dead"]).await;
    assert_eq!(no_answer.code, 1);
    assert!(
        no_answer.stderr.contains("Delete 1 DEAD agent(s)? [y/N]"),
        "{}",
        no_answer.stderr
    );
    assert!(
        no_answer.stderr.contains("nothing deleted"),
        "{}",
        no_answer.stderr
    );
    let declined = run_with(&server, &["prune-dead"], &[], Some("n\n")).await;
    assert_eq!(declined.code, 1);
    assert!(server.agent("gone").await.is_some());

    let accepted = run_with(&server, &["prune-dead"], &[], Some("y\n")).await;
    assert_eq!(accepted.succeeded().stdout, "deleted 1 DEAD agent(s)\n");
    assert!(server.agent("gone").await.is_none());

    server.register("gone-too", "orders").await;
    eventually(PROMPTLY, "the agent is DEAD", || async {
        server.status_of("gone-too").await == "DEAD"
    })
    .await;
    let forced = run(&server, &["prune-dead", "--yes", "-o", "json"]).await;
    assert_eq!(forced.succeeded().json(), json!({"deleted": 1}));
    let nothing = run(&server, &["prune-dead"]).await;
    assert_eq!(nothing.succeeded().stdout, "no DEAD agent\n");
}

#[tokio::test]
async fn push_to_an_agent_prints_the_command_and_waits_for_its_acknowledgement() {
    let server = TestServer::start().await;
    let mut agent = Agent::builder(&server.base, "a-1", "order-service", "orders")
        .backoff(QUICK)
        .start()
        .unwrap();
    connected(&agent).await;

    let pushed = run(
        &server,
        &[
            "push",
            "deep-trace",
            "--agent",
            "a-1",
            "--payload",
            r#"{"routeId":"r-1"}"#,
        ],
    )
    .await;
    pushed.succeeded();
    assert!(
        pushed
            .stdout
            .lines()
            .any(|line| line.split_whitespace().eq(["type", "deep-trace"])),
        "{}",
        pushed.stdout
    );
    assert!(
        pushed
            .stdout
            .contains(r#"payload         {"routeId":"r-1"}"#),
        "{}",
        pushed.stdout
    );
    let command = tokio::time::timeout(PROMPTLY, agent.next_command())
        .await
        .unwrap()
        .unwrap();
    command.ack(Outcome::success("tracing")).await.unwrap();

    // --wait: the agent answers while registryctl waits.
    let answer = tokio::spawn(async move {
        let command = tokio::time::timeout(PROMPTLY, agent.next_command())
            .await
            .unwrap()
            .unwrap();
        command
            .ack(Outcome::failure("no such route"))
            .await
            .unwrap();
        agent
    });
    let waited = run(
        &server,
        &[
            "push",
            "deep-trace",
            "--agent",
            "a-1",
            "--wait",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(waited.code, 1, "a FAILURE exits 1: {}", waited.stderr);
    let command = waited.json();
    assert_eq!(command["status"], "ACKNOWLEDGED");
    assert_eq!(command["result"], "FAILURE");
    assert_eq!(command["message"], "no such route");
    answer.await.unwrap().shutdown().await.unwrap();

    let listed = run(&server, &["commands", "a-1"]).await;
    let rows = rows(&listed.succeeded().stdout);
    assert_eq!(
        rows[0],
        [
            "COMMAND", "ID", "TYPE", "STATUS", "CREATED", "RESULT", "MESSAGE"
        ]
    );
    assert_eq!(rows.len(), 3, "{}", listed.stdout);
    assert_eq!(rows[1][1..3], ["deep-trace", "ACKNOWLEDGED"]);
    assert!(rows[1].ends_with(&["FAILURE".into(), "no".into(), "such".into(), "route".into()]));
}

#[tokio::test]
async fn push_errors_are_the_servers_detail_or_the_arguments_fault() {
    let server = TestServer::start().await;
    server.register("a-1", "orders").await;
    let wrong_type = run(&server, &["push", "reboot", "--agent", "a-1"]).await;
    assert_eq!(wrong_type.code, 1);
    assert!(
        wrong_type.stderr.starts_with("error: "),
        "{}",
        wrong_type.stderr
    );
    assert!(
        wrong_type.stderr.contains("config-update"),
        "{}",
        wrong_type.stderr
    );
    assert_eq!(wrong_type.stderr.lines().count(), 1);

    let no_group = run(&server, &["push", "replay", "--group", "nobody"]).await;
    assert_eq!(no_group.code, 1);
    assert!(no_group.stderr.contains("nobody"), "{}", no_group.stderr);

    let bad_payload = run(
        &server,
        &["push", "replay", "--agent", "a-1", "--payload", "{nope"],
    )
    .await;
    assert_eq!(bad_payload.code, 2);
    assert!(
        bad_payload.stderr.contains("not JSON"),
        "{}",
        bad_payload.stderr
    );
    let two_targets = run(&server, &["push", "replay", "--agent", "a-1", "--fleet"]).await;
    assert_eq!(two_targets.code, 2);
    let no_target = run(&server, &["push", "replay"]).await;
    assert_eq!(no_target.code, 2);
}

/// Starts `registryctl watch` with `args`; answers its standard output once
/// it said it follows the fleet.
async fn watch(
    server: &TestServer,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = registryctl(server, args)
        .spawn()
        .expect("registryctl starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(PROMPTLY, stderr.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        said.as_deref(),
        Some(format!("following the fleet at {}/ (Ctrl-C to stop)", server.base).as_str())
    );
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(PROMPTLY, lines.next_line())
        .await
        .expect("a line within PROMPTLY")
        .expect("a line")
        .expect("watch keeps running")
}

#[tokio::test]
async fn watch_prints_the_fleets_events_as_they_happen() {
    let server = TestServer::start().await;
    let (mut child, mut lines) = watch(&server, &["watch"]).await;
    server.register("a-1", "orders").await;
    let line = next_line(&mut lines).await;
    assert!(
        line.contains("agent    a-1 (orders)  (new) -> LIVE"),
        "{line}"
    );
    assert_eq!(
        server.delete("/api/v1/agents/a-1").await.status(),
        StatusCode::NO_CONTENT
    );
    let line = next_line(&mut lines).await;
    assert!(line.contains("a-1 (orders)  LIVE -> (deleted)"), "{line}");
    child.kill().await.unwrap();

    let (mut child, mut lines) = watch(&server, &["watch", "-o", "json"]).await;
    server.register("a-2", "orders").await;
    let event: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
    assert_eq!(event["event"], "agent");
    assert_eq!(event["data"]["agentId"], "a-2");
    assert_eq!(event["data"]["from"], Value::Null);
    assert_eq!(event["data"]["to"], "LIVE");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn the_token_comes_from_the_flag_or_the_environment() {
    let server = TestServer::start_with(|config| {
        config.auth.operator_tokens = vec!["op-secret".into()];
        config.auth.enrollment_tokens = vec!["enrol-secret".into()];
    })
    .await;
    let refused = run(&server, &["agents"]).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.starts_with("error: "), "{}", refused.stderr);
    let by_flag = run(&server, &["agents", "--token", "op-secret"]).await;
    assert_eq!(by_flag.succeeded().stdout, "no agent\n");
    let by_env = run_with(
        &server,
        &["agents"],
        &[("REGISTRY_TOKEN", "op-secret")],
        None,
    )
    .await;
    assert_eq!(by_env.succeeded().stdout, "no agent\n");
}

#[tokio::test]
async fn an_unreachable_registry_is_one_line_and_exit_1() {
    // A port bound but not listening refuses every connection, and no other
    // test's server can take it meanwhile (a port freed by a server that
    // stopped could be, and then answer or reset).
    let unreachable = TcpSocket::new_v4().unwrap();
    unreachable.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", unreachable.local_addr().unwrap());
    let output = Command::new(env!("CARGO_BIN_EXE_registryctl"))
        .args(["agents", "--url", &url])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: cannot reach the registry"),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    let server = TestServer::start().await;
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = run(&server, &["completions", shell]).await;
        assert!(script.succeeded().stdout.contains("registryctl"), "{shell}");
        assert!(script.stdout.contains("prune-dead"), "{shell}");
    }
}

/// Starts an agent of `group` that acknowledges every command: FAILURE when
/// its payload says `"fail": true`, else SUCCESS.
async fn answering_agent(
    server: &TestServer,
    agent_id: &str,
    group: &str,
) -> tokio::task::JoinHandle<()> {
    let mut agent = Agent::builder(&server.base, agent_id, "order-service", group)
        .backoff(QUICK)
        .start()
        .unwrap();
    connected(&agent).await;
    tokio::spawn(async move {
        while let Some(command) = agent.next_command().await {
            let outcome = if command.payload["fail"] == true {
                Outcome::failure("refused by the test")
            } else {
                Outcome::success("applied")
            };
            command.ack(outcome).await.unwrap();
        }
    })
}

/// The value of `name` in a detail view (`name  value` lines).
fn field<'a>(view: &'a str, name: &str) -> &'a str {
    view.lines()
        .find_map(|line| {
            let (key, value) = line.split_once("  ")?;
            (key == name).then(|| value.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{view}"))
}

#[tokio::test]
async fn push_to_a_group_or_the_fleet_follows_the_rollout_until_done() {
    let server = TestServer::start().await;
    let agents = [
        answering_agent(&server, "a-1", "G").await,
        answering_agent(&server, "a-2", "G").await,
        answering_agent(&server, "b-1", "other").await,
    ];

    let pushed = run(
        &server,
        &[
            "push",
            "config-update",
            "--group",
            "G",
            "--payload",
            r#"{"sampling":0.5}"#,
        ],
    )
    .await;
    let started = pushed.succeeded().stdout.clone();
    assert_eq!(field(&started, "targeted"), "2");
    assert_eq!(field(&started, "skipped"), "0");
    assert_eq!(field(&started, "payload"), r#"{"sampling":0.5}"#);

    let waited = run(
        &server,
        &[
            "push",
            "config-update",
            "--group",
            "G",
            "--payload",
            r#"{"sampling":0.5}"#,
            "--wait",
        ],
    )
    .await;
    let done = &waited.succeeded().stdout;
    assert_eq!(field(done, "target"), "group:G");
    assert_eq!(field(done, "targeted"), "2");
    assert_eq!(field(done, "succeeded"), "2");
    assert_eq!(field(done, "failed"), "0");
    assert_eq!(field(done, "done"), "yes");
    let rollout_id = field(done, "rolloutId").to_owned();

    let fleet = run(
        &server,
        &[
            "push",
            "replay",
            "--fleet",
            "--payload",
            r#"{"fail":true}"#,
            "--wait",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(fleet.code, 1, "a FAILURE exits 1: {}", fleet.stderr);
    let fleet = fleet.json();
    assert_eq!(fleet["target"], "fleet");
    assert_eq!(fleet["targeted"], 3);
    assert_eq!(fleet["failed"], 3);
    assert_eq!(fleet["done"], true);

    let listed = run(&server, &["rollouts"]).await;
    let rows = rows(&listed.succeeded().stdout);
    assert_eq!(rows[0][..3], ["ROLLOUT", "ID", "TYPE"]);
    assert_eq!(rows.len(), 4, "{}", listed.stdout);
    assert_eq!(
        rows[1][..3],
        [fleet["rolloutId"].as_str().unwrap(), "replay", "fleet"]
    );
    // --output json is the server's answer, field for field.
    let commands = run(&server, &["commands", "a-1", "-o", "json"]).await;
    let commands = commands.succeeded().json();
    let served: Value = server
        .get("/api/v1/agents/a-1/commands")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(commands, served);
    assert!(
        commands
            .as_array()
            .unwrap()
            .iter()
            .any(|command| command["rolloutId"] == rollout_id.as_str())
    );
    let agent = run(&server, &["agent", "a-1", "-o", "json"]).await;
    let served: Value = server.get("/api/v1/agents/a-1").await.json().await.unwrap();
    assert_eq!(agent.succeeded().json(), served);
    let listed = run(&server, &["rollouts", "-o", "json"]).await;
    let served: Value = server.get("/api/v1/rollouts").await.json().await.unwrap();
    assert_eq!(listed.succeeded().json(), served);

    let shown = run(&server, &["rollout", &rollout_id]).await;
    assert_eq!(field(&shown.succeeded().stdout, "succeeded"), "2");
    let json = run(&server, &["rollout", &rollout_id, "-o", "json"]).await;
    assert_eq!(json.succeeded().json()["rolloutId"], rollout_id.as_str());
    let unknown = run(
        &server,
        &["rollout", "0190f0c2-0000-7000-8000-000000000000"],
    )
    .await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.starts_with("error: "), "{}", unknown.stderr);
    for agent in agents {
        agent.abort();
    }
}
