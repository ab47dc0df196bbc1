//! What the process-level tests share: a `registry-server` process in a
//! directory of its own, its output read line by line, and the few requests
//! they all make, over `registry-testkit`'s plain HTTP/1.1.

#![allow(dead_code, unreachable_pub)] // each test crate uses a part of it

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::Instant;

pub use registry_testkit::{PROMPTLY, read_head, request};
use serde_json::Value;

/// A directory of its own for one process, removed afterwards, so that no
/// `config/registry.toml` is picked up unless a test puts one there. The
/// second field says whether this handle removes it (an [`alias`](Self::alias) does not).
pub struct WorkDir(pub PathBuf, bool);

impl WorkDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "registry-binary-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path, true)
    }

    /// The same directory for a second process; only the first handle removes it.
    pub fn alias(&self) -> Self {
        Self(self.0.clone(), false)
    }

    /// Writes `text` to `relative` under this directory; returns its path.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
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
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One `registry-server` process and every line it has written, stdout and stderr.
pub struct Process {
    pub child: Child,
    lines: Receiver<String>,
    output: Vec<String>,
    exited: Option<ExitStatus>,
    dir: Option<WorkDir>,
}

impl Process {
    /// Starts the binary in `dir` with `args` and `env` (and no inherited `REGISTRY_*`).
    pub fn spawn(dir: WorkDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_limited(dir, None, args, env)
    }

    /// Like [`spawn`](Self::spawn), with the open-file limit (soft and hard) set
    /// to `open_files` by the shell that execs the binary, when given.
    pub fn spawn_limited(
        dir: WorkDir,
        open_files: Option<u64>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let binary = env!("CARGO_BIN_EXE_registry-server");
        let mut command = match open_files {
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    binary,
                ]);
                shell
            }
            None => Command::new(binary),
        };
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
            dir: Some(dir),
        }
    }

    /// Starts the binary on a free port of 127.0.0.1 and waits until it listens.
    pub fn serve(dir: WorkDir, args: &[&str], env: &[(&str, &str)]) -> (Self, SocketAddr) {
        Self::serve_limited(dir, None, args, env)
    }

    /// Like [`serve`](Self::serve), with the open-file limit set to `open_files`.
    pub fn serve_limited(
        dir: WorkDir,
        open_files: Option<u64>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Self, SocketAddr) {
        let mut all = vec!["--bind", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut process = Self::spawn_limited(dir, open_files, &all, env);
        let line = process.wait_for_line("listening on http://");
        let addr = listening_addr(&line)
            .unwrap_or_else(|| panic!("an address in {line:?}; output:\n{}", process.log()));
        (process, addr)
    }

    /// The directory it runs in.
    pub fn dir(&self) -> &WorkDir {
        self.dir.as_ref().expect("the directory")
    }

    /// Everything written so far.
    pub fn log(&self) -> String {
        self.output.join("\n")
    }

    /// Waits for a line holding `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
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
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("the kill command");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to close its output and exit; returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
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

    /// Kills the process with SIGKILL, as a crash would; returns its directory
    /// with whatever it left there.
    pub fn kill(mut self) -> WorkDir {
        self.signal("KILL");
        let status = self.child.wait().expect("the exit status");
        self.exited = Some(status);
        self.dir.take().expect("the directory")
    }

    /// Stops the process with SIGTERM; asserts that it exits 0; returns its directory.
    pub fn stop(mut self) -> WorkDir {
        self.signal("TERM");
        let status = self.wait_exit();
        assert!(
            status.success(),
            "exit status {status}; output:\n{}",
            self.log()
        );
        self.dir.take().expect("the directory")
    }

    /// Stops the process with SIGTERM; asserts that it exits 0.
    pub fn terminate(mut self) {
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
pub fn strip_ansi(line: &str) -> String {
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
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on http://")?;
    rest.split_whitespace()
        .next()?
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// Registers `agent_id`; returns the status and the body.
pub fn register(addr: SocketAddr, agent_id: &str) -> (u16, Value) {
    let body = format!(
        r#"{{"agentId": "{agent_id}", "name": "order-service", "group": "order-service-prod"}}"#
    );
    let answer = request(addr, "POST", "/api/v1/agents/register", Some(&body)).expect("an answer");
    let value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|err| panic!("a JSON body ({err}): {:?}", answer.body));
    (answer.status, value)
}

/// Opens `agent_id`'s stream and reads its head; panics unless it is a 200
/// `text/event-stream`.
pub fn open_stream(addr: SocketAddr, agent_id: &str) -> TcpStream {
    let mut tcp = registry_testkit::open_stream(addr, agent_id).expect("connect");
    let head = read_head(&mut tcp).expect("the stream's head");
    assert_eq!(head.status, 200, "stream head: {head:?}");
    assert!(
        head.header("content-type")
            .is_some_and(|value| value.contains("text/event-stream")),
        "stream head: {head:?}"
    );
    tcp
}

/// Reads `stream` until the server closes it; panics if it stays open.
pub fn expect_stream_end(mut stream: TcpStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(err) => panic!(
            "the stream did not end within {PROMPTLY:?} ({err}); read {:?}",
            String::from_utf8_lossy(&rest)
        ),
    }
}
