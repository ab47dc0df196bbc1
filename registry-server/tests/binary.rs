//! The `registry-server` binary as a process (SPEC 5): it logs `listening on
//! http://ADDR`, serves, exits 0 on SIGTERM or SIGINT even with a stream open
//! or with nothing reading its log any more,
//! stops at start on an invalid setting or a missing `--config` file naming it,
//! and reads its settings from the file, the environment and the flags.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use common::*;

fn stopping_on(signal: &str) {
    let (mut process, addr) = Process::serve(WorkDir::new(), &[], &[]);
    let (status, _) = register(addr, "order-1");
    assert_eq!(status, 201);
    let stream = open_stream(addr, "order-1");

    let started = Instant::now();
    process.signal(signal);
    expect_stream_end(stream);
    let status = process.wait_exit();
    assert!(
        status.success(),
        "SIG{signal}: exit status {status}; output:\n{}",
        process.log()
    );
    assert!(
        started.elapsed() < PROMPTLY,
        "exited in {:?}",
        started.elapsed()
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is closed once the process exited"
    );
}

#[test]
fn it_logs_the_address_it_listens_on_and_answers_livez_and_readyz() {
    let (process, addr) = Process::serve(WorkDir::new(), &[], &[]);
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0, "the real port, not 0");
    assert_eq!(
        request(addr, "GET", "/livez", None)
            .expect("an answer")
            .status,
        200
    );
    assert_eq!(
        request(addr, "GET", "/readyz", None)
            .expect("an answer")
            .status,
        200
    );
    process.terminate();
}

#[test]
fn sigterm_ends_an_open_stream_and_exits_0_promptly() {
    stopping_on("TERM");
}

#[test]
fn sigint_ends_an_open_stream_and_exits_0_promptly() {
    stopping_on("INT");
}

#[test]
fn sigterm_stops_it_even_when_nothing_reads_its_log_any_more() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    // `registry-server | tee log` and Ctrl-C: tee is gone before the server
    // logs its shutdown, and writing the log fails.
    let dir = WorkDir::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_registry-server"))
        .args(["--bind", "127.0.0.1:0"])
        .current_dir(&dir.0)
        .env("REGISTRY_STORAGE__ENGINE", "memory")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut log = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("listening on http://") {
        line.clear();
        assert!(
            log.read_line(&mut line).expect("a log line") > 0,
            "no listening line"
        );
    }
    drop(log);
    drop(child.stderr.take());
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("the kill command");
    assert!(status.success());
    let exited = loop {
        if let Some(status) = child.try_wait().expect("its status") {
            break Some(status);
        }
        if started.elapsed() > PROMPTLY {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let status = exited.expect("exited within PROMPTLY of SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn an_invalid_setting_stops_the_start_with_a_message_naming_its_key() {
    for (name, value, key) in [
        (
            "REGISTRY_LIFECYCLE__STALE_AFTER",
            "soon",
            "lifecycle.stale_after",
        ),
        (
            "REGISTRY_LIFECYCLE__DEAD_AFTER",
            "0s",
            "lifecycle.dead_after",
        ),
        (
            "REGISTRY_SERVER__MAX_BODY_BYTES",
            "lots",
            "server.max_body_bytes",
        ),
        ("REGISTRY_SSE__KEEPALIVE", "-1s", "sse.keepalive"),
        ("REGISTRY_COMMANDS__TYPES", "a b", "commands.types"),
        // Durations over a year: accepted, they would panic a later request.
        ("REGISTRY_COMMANDS__EXPIRY", "10000y", "commands.expiry"),
        (
            "REGISTRY_COMMANDS__EXPIRY",
            "300000000000y",
            "commands.expiry",
        ),
        ("REGISTRY_COMMANDS__RETENTION", "367d", "commands.retention"),
        (
            "REGISTRY_LIFECYCLE__STALE_AFTER",
            "2y",
            "lifecycle.stale_after",
        ),
        ("REGISTRY_SERVER__HEAD_TIMEOUT", "0s", "server.head_timeout"),
        (
            "REGISTRY_SERVER__IDLE_TIMEOUT",
            "400d",
            "server.idle_timeout",
        ),
        (
            "REGISTRY_SERVER__SHUTDOWN_GRACE",
            "10000y",
            "server.shutdown_grace",
        ),
        // Ranges.
        (
            "REGISTRY_SERVER__MAX_BODY_BYTES",
            "0",
            "server.max_body_bytes",
        ),
        (
            "REGISTRY_SERVER__MAX_CONNECTIONS",
            "-1",
            "server.max_connections",
        ),
        ("REGISTRY_SSE__QUEUE", "0", "sse.queue"),
        ("REGISTRY_SSE__QUEUE", "4611686018427387904", "sse.queue"),
        // EventSource's own event names can't be command types (SPEC 10).
        (
            "REGISTRY_COMMANDS__TYPES",
            "config-update,error",
            "commands.types",
        ),
        ("REGISTRY_COMMANDS__TYPES", "message", "commands.types"),
        ("REGISTRY_COMMANDS__TYPES", "open,replay", "commands.types"),
        ("REGISTRY_SSE__REPLAY", "everything", "sse.replay"),
        ("REGISTRY_SSE__RETRY", "0s", "sse.retry"),
        ("REGISTRY_SERVER__CORS_ORIGINS", "*", "server.cors_origins"),
    ] {
        let mut process =
            Process::spawn(WorkDir::new(), &["--bind", "127.0.0.1:0"], &[(name, value)]);
        let status = process.wait_exit();
        let log = process.log();
        assert_eq!(
            status.code(),
            Some(2),
            "{name}={value}: exit status {status}; output:\n{log}"
        );
        assert!(
            log.contains(key),
            "{name}={value}: the message names {key}:\n{log}"
        );
        assert!(
            !log.contains("listening on"),
            "{name}={value}: it served:\n{log}"
        );
    }
}

#[test]
fn a_bind_address_that_is_not_one_stops_the_start_naming_server_bind() {
    let mut process = Process::spawn(WorkDir::new(), &["--bind", "nowhere"], &[]);
    let status = process.wait_exit();
    let log = process.log();
    assert!(!status.success(), "exit status {status}; output:\n{log}");
    assert!(log.contains("server.bind"), "{log}");
}

#[test]
fn a_missing_config_file_stops_the_start_naming_it() {
    let dir = WorkDir::new();
    let missing = dir.0.join("nowhere").join("registry.toml");
    let missing = missing.to_str().expect("a UTF-8 path").to_owned();
    let mut process = Process::spawn(dir, &["--bind", "127.0.0.1:0", "--config", &missing], &[]);
    let status = process.wait_exit();
    let log = process.log();
    assert!(!status.success(), "exit status {status}; output:\n{log}");
    assert!(
        log.contains(&missing),
        "the message names {missing}:\n{log}"
    );
}

#[test]
fn a_config_file_given_with_config_changes_a_setting() {
    let dir = WorkDir::new();
    let file = dir.write(
        "elsewhere/custom.toml",
        "[lifecycle]\nheartbeat_interval = \"7s\"\n",
    );
    let file = file.to_str().expect("a UTF-8 path").to_owned();
    let (process, addr) = Process::serve(dir, &["--config", &file], &[]);
    let (status, body) = register(addr, "order-1");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["heartbeatIntervalMs"], 7000, "{body}");
    process.terminate();
}

#[test]
fn config_registry_toml_of_the_working_directory_is_read_without_config() {
    let dir = WorkDir::new();
    dir.write(
        "config/registry.toml",
        "[lifecycle]\nheartbeat_interval = \"9s\"\n",
    );
    let (process, addr) = Process::serve(dir, &[], &[]);
    let (_, body) = register(addr, "order-1");
    assert_eq!(body["heartbeatIntervalMs"], 9000, "{body}");
    process.terminate();
}

#[test]
fn without_any_file_the_built_in_defaults_apply() {
    let (process, addr) = Process::serve(WorkDir::new(), &[], &[]);
    let (_, body) = register(addr, "order-1");
    assert_eq!(body["heartbeatIntervalMs"], 30000, "{body}");
    process.terminate();
}

#[test]
fn the_environment_overrides_the_file_and_the_bind_flag_overrides_both() {
    let dir = WorkDir::new();
    let file = dir.write(
        "custom.toml",
        "[server]\nbind = \"127.0.0.1:9\"\n\n[lifecycle]\nheartbeat_interval = \"7s\"\n",
    );
    let file = file.to_str().expect("a UTF-8 path").to_owned();
    let (process, addr) = Process::serve(
        dir,
        &["--config", &file],
        &[
            ("REGISTRY_LIFECYCLE__HEARTBEAT_INTERVAL", "8s"),
            ("REGISTRY_SERVER__BIND", "127.0.0.1:10"),
        ],
    );
    assert_ne!(addr.port(), 9, "--bind wins over the file");
    assert_ne!(addr.port(), 10, "--bind wins over the environment");
    let (_, body) = register(addr, "order-1");
    assert_eq!(body["heartbeatIntervalMs"], 8000, "{body}");
    process.terminate();
}

#[test]
fn a_token_file_that_cannot_be_read_stops_the_start_naming_its_key() {
    let dir = WorkDir::new();
    let missing = dir.0.join("no-such-tokens.txt");
    let missing = missing.to_str().expect("a UTF-8 path").to_owned();
    let mut process = Process::spawn(
        dir,
        &["--bind", "127.0.0.1:0"],
        &[("REGISTRY_AUTH__OPERATOR_TOKENS_FILE", &missing)],
    );
    let status = process.wait_exit();
    let log = process.log();
    assert!(!status.success(), "exit status {status}; output:\n{log}");
    assert!(log.contains("auth.operator_tokens_file"), "{log}");
}

#[test]
fn without_tokens_it_refuses_to_serve_beyond_loopback() {
    let mut process = Process::spawn(WorkDir::new(), &["--bind", "0.0.0.0:0"], &[]);
    let status = process.wait_exit();
    let log = process.log();
    assert!(!status.success(), "exit status {status}; output:\n{log}");
    assert!(!log.contains("listening on"), "it served:\n{log}");
    assert!(
        log.contains("allow_open"),
        "the message says how to allow it:\n{log}"
    );
}

#[test]
fn ansi_sequences_are_stripped_and_the_address_is_parsed() {
    let line = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m registry_server: listening on http://127.0.0.1:4321";
    let plain = strip_ansi(line);
    assert!(!plain.contains('\u{1b}'), "{plain}");
    assert_eq!(
        listening_addr(&plain),
        Some("127.0.0.1:4321".parse().unwrap())
    );
    assert!(Path::new(env!("CARGO_BIN_EXE_registry-server")).is_file());
}

#[test]
fn more_streams_than_connections_stops_the_start_naming_server_max_streams() {
    let mut process = Process::spawn(
        WorkDir::new(),
        &["--bind", "127.0.0.1:0"],
        &[
            ("REGISTRY_SERVER__MAX_CONNECTIONS", "100"),
            ("REGISTRY_SERVER__MAX_STREAMS", "101"),
        ],
    );
    let status = process.wait_exit();
    let log = process.log();
    assert_eq!(status.code(), Some(2), "output:\n{log}");
    assert!(log.contains("server.max_streams"), "{log}");
}

#[test]
fn a_config_error_never_prints_a_token() {
    for (file, key) in [
        // A token where a list belongs.
        (
            "[auth]\noperator_tokens = \"s3cr3t-token\"\n",
            "auth.operator_tokens",
        ),
        // A list item that is not a string.
        (
            "[auth]\nenrollment_tokens = [{ s3cr3t-token = 1 }]\n",
            "auth.enrollment_tokens",
        ),
        // A TOML syntax error on the token's own line: named by line only.
        ("[auth]\noperator_tokens = [\"s3cr3t-token\"\n", "line 2"),
    ] {
        let dir = WorkDir::new();
        let path = dir.write("registry.toml", file);
        let path = path.to_str().expect("a UTF-8 path").to_owned();
        let mut process = Process::spawn(dir, &["--bind", "127.0.0.1:0", "--config", &path], &[]);
        let status = process.wait_exit();
        let log = process.log();
        assert_eq!(status.code(), Some(2), "{file:?}: output:\n{log}");
        assert!(log.contains(key), "{file:?}: names {key}:\n{log}");
        assert!(
            !log.contains("s3cr3t"),
            "{file:?}: printed the token:\n{log}"
        );
    }
}
