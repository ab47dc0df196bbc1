//! What the process-level tests share: a `registry-server` process in a
//! directory of its own, its output read line by line, and plain HTTP/1.1 over
//! `std::net` to talk to it.

#![allow(dead_code, unreachable_pub)] // each test crate uses a part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the process may take to start, answer, or exit.
pub const PROMPTLY: Duration = Duration::from_secs(5);

/// A directory of its own for one process, removed afterwards, so that no
/// `config/registry.toml` is picked up unless a test puts one there.
pub struct WorkDir(pub PathBuf);

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
        Self(path)
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
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `registry-server` process and every line it has written, stdout and stderr.
pub struct Process {
    pub child: Child,
    lines: Receiver<String>,
    output: Vec<String>,
    exited: Option<ExitStatus>,
    _dir: WorkDir,
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
            _dir: dir,
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

/// An HTTP/1.1 exchange on a fresh connection: the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
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
pub fn register(addr: SocketAddr, agent_id: &str) -> (u16, Value) {
    let body = format!(
        r#"{{"agentId": "{agent_id}", "name": "order-service", "group": "order-service-prod"}}"#
    );
    let (status, text) = http(addr, "POST", "/api/v1/agents/register", Some(&body));
    let value =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("a JSON body ({err}): {text:?}"));
    (status, value)
}

/// Opens `agent_id`'s stream and reads until its head and first comment arrived.
pub fn open_stream(addr: SocketAddr, agent_id: &str) -> TcpStream {
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

/// One kept-alive HTTP/1.1 connection for many requests in a row.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl KeepAlive {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(PROMPTLY))
            .expect("a read timeout");
        Self {
            reader: BufReader::new(tcp),
            addr,
        }
    }

    /// Sends one request and reads its answer: the status and the body.
    pub fn request(&mut self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        let body = json.unwrap_or_default();
        let content_type = if json.is_some() {
            "Content-Type: application/json\r\n"
        } else {
            ""
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("write");
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("a status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a status line, got {status_line:?}"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("a header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a length");
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("the body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}
