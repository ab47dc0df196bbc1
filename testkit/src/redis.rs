//! A `redis-server` of a test's own: started from PATH on a free port of
//! 127.0.0.1 (never the machine's 6379), with its append-only file
//! (`appendfsync always`) in a temporary folder, so that it can be stopped and
//! started again from that file; killed when dropped.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::PROMPTLY;

/// A folder of one Redis's own, removed when the last handle to it goes.
#[derive(Debug)]
pub struct RedisDir(PathBuf);

impl RedisDir {
    fn new() -> io::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "registry-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RedisDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    /// Its folder; taken by [`stop`](Self::stop) to start it again there.
    dir: Option<RedisDir>,
}

impl RedisServer {
    /// Starts one on a free port in a new folder; panics if it does not answer
    /// `PING` within [`PROMPTLY`].
    pub fn start() -> Self {
        // A port free when asked may be taken by another test's Redis before
        // this one listens on it: this one then exits, and another is tried.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let dir = RedisDir::new().expect("a temporary folder");
            if let Ok(redis) = Self::try_start_on(port, dir) {
                return redis;
            }
        }
        panic!("redis-server found no free port in 10 tries");
    }

    /// Starts one on `port` in `dir`, reading the append-only file there if any.
    pub fn start_on(port: u16, dir: RedisDir) -> Self {
        Self::try_start_on(port, dir)
            .unwrap_or_else(|_| panic!("redis-server could not listen on port {port}"))
    }

    /// Starts one on `port` in `dir` and waits until it answers `PING` itself;
    /// gives the folder back if it exited first (the port was taken).
    fn try_start_on(port: u16, dir: RedisDir) -> Result<Self, RedisDir> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server from PATH starts");
        let mut redis = Self {
            child,
            port,
            dir: Some(dir),
        };
        let deadline = Instant::now() + PROMPTLY;
        // Another Redis on the port answers PING too: the one answering must
        // be this process.
        while !(redis.answers_ping() && redis.process_id_answering() == Some(redis.pid())) {
            if !matches!(redis.child.try_wait(), Ok(None)) {
                return Err(redis.dir.take().expect("its folder"));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(redis)
    }

    /// The `process_id` of `INFO server` of the Redis listening on its port.
    fn process_id_answering(&self) -> Option<u32> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        tcp.write_all(b"INFO server\r\n").ok()?;
        let mut seen = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            let text = String::from_utf8_lossy(&seen);
            let line = text
                .split_once("process_id:")
                .and_then(|(_, rest)| rest.split_once("\r\n"));
            if let Some((pid, _)) = line {
                return pid.parse().ok();
            }
            let read = tcp.read(&mut buffer).ok()?;
            if read == 0 {
                return None;
            }
            seen.extend_from_slice(&buffer[..read]);
        }
    }

    /// Whether it answers `PING` now.
    pub fn answers_ping(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0; 7];
        tcp.write_all(b"PING\r\n").is_ok()
            && tcp.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM (it writes its file and exits); returns its port
    /// and folder, to start it again with [`start_on`](Self::start_on).
    pub fn stop(mut self) -> (u16, RedisDir) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("the kill command");
        assert!(status.success());
        self.child.wait().expect("redis-server exits");
        (self.port, self.dir.take().expect("its folder"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
