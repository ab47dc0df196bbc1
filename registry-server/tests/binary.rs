//! The `registry-server` binary as a process (SPEC 5): it logs `listening on
//! http://ADDR`, serves, exits 0 on SIGTERM or SIGINT even with a stream open,
//! stops at start on an invalid setting or a missing `--config` file naming it,
//! and reads its settings from the file, the environment and the flags.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the process may take to start, answer, or exit.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A directory of its own for one process, removed afterwards, so that no
/// `config/registry.toml` is picked up unless a test puts one there.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "registry-binary-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }

    /// Writes `text` to `relative` under this directory; returns its path.
    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a directory");
        }
        std::fs::write(&path, text).expect("a file");
        path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `registry-server` process and every line it has written, stdout and stderr.
struct Process {
    child: Child,
    lines: Receiver<String>,
    output: Vec<String>,
    exited: Option<ExitStatus>,
    _dir: WorkDir,
}

impl Process {
    /// Starts the binary in `dir` with `args` and `env` (and no inherited `REGISTRY_*`).
    fn spawn(dir: WorkDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_registry-server"));
        command
            .args(args)
            .current_dir(&dir.0)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("REGISTRY_") {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the registry-server binary starts");
        let (sender, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        ] {
            let sender = sender.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(strip_ansi(&line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            output: Vec::new(),
            exited: None,
            _dir: dir,
        }
    }

    /// Starts the binary on a free port of 127.0.0.1 and waits until it listens.
    fn serve(dir: WorkDir, args: &[&str], env: &[(&str, &str)]) -> (Self, SocketAddr) {
        let mut all = vec!["--bind", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut process = Self::spawn(dir, &all, env);
        let line = process.wait_for_line("listening on http://");
        let addr = listening_addr(&line)
            .unwrap_or_else(|| panic!("an address in {line:?}; output:\n{}", process.log()));
        (process, addr)
    }

    /// Everything written so far.
    fn log(&self) -> String {
        self.output.join("\n")
    }

    /// Waits for a line holding `needle`; returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {needle:?} within {PROMPTLY:?}; output:\n{}",
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the process closed its output before writing {needle:?} ({:?}); output:\n{}",
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }
    }

    /// Sends `signal` (`TERM`, `INT`) with the `kill` command.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("the kill command");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to close its output and exit; returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.output.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "the process did not exit within {PROMPTLY:?}; output:\n{}",
                        self.log()
                    );
                }
            }
        }
        let status = self.child.wait().expect("the exit status");
        self.exited = Some(status);
        status
    }

    /// Stops the process with SIGTERM; asserts that it exits 0.
    fn terminate(mut self) {
        self.signal("TERM");
        let status = self.wait_exit();
        assert!(
            status.success(),
            "exit status {status}; output:\n{}",
            self.log()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `line` without terminal colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address of a `listening on http://ADDR` line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on http://")?;
    rest.split_whitespace()
        .next()?
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// An HTTP/1.1 exchange on a fresh connection: the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(PROMPTLY))
        .expect("a read timeout");
    let body = json.unwrap_or_default();
    let content_type = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{content_type}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("an answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Registers `agent_id`; returns the status and the body.
fn register(addr: SocketAddr, agent_id: &str) -> (u16, Value) {
    let body = format!(
        r#"{{"agentId": "{agent_id}", "name": "order-service", "group": "order-service-prod"}}"#
    );
    let (status, text) = http(addr, "POST", "/api/v1/agents/register", Some(&body));
    let value =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("a JSON body ({err}): {text:?}"));
    (status, value)
}

/// Opens `agent_id`'s stream and reads until its head and first comment arrived.
fn open_stream(addr: SocketAddr, agent_id: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(PROMPTLY))
        .expect("a read timeout");
    let request = format!(
        "GET /api/v1/agents/{agent_id}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).expect("write");
    let mut seen = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = tcp.read(&mut buffer).expect("the stream's head");
        assert!(
            n > 0,
            "the stream closed at once: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    let head = String::from_utf8_lossy(&seen);
    assert!(head.starts_with("HTTP/1.1 200"), "stream head: {head}");
    assert!(
        head.to_lowercase().contains("text/event-stream"),
        "stream head: {head}"
    );
    tcp
}

/// Reads `stream` until the server closes it; panics if it stays open.
fn expect_stream_end(mut stream: TcpStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(err) => panic!(
            "the stream did not end within {PROMPTLY:?} ({err}); read {:?}",
            String::from_utf8_lossy(&rest)
        ),
    }
}

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
    assert_eq!(http(addr, "GET", "/livez", None).0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None).0, 200);
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
    ] {
        let mut process =
            Process::spawn(WorkDir::new(), &["--bind", "127.0.0.1:0"], &[(name, value)]);
        let status = process.wait_exit();
        let log = process.log();
        assert!(
            !status.success(),
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
