//! The tasks that run beside the registry, against a `redis-server` of the
//! test's own, with a follower that records what they hand it (and plays the
//! writer's part when asked to check storage): the tail delivers every other
//! replica's commit, decoded, in order, and its own as positions only; it
//! resumes after its connection is killed without missing an entry; a log
//! trimmed past it has the registry load, after which it reads on; the
//! keeper says which replicas are alive, and notices Redis emptied.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use registry_core::replication::{LogEntry, ReplicaId};
use registry_core::storage::{Change, Storage};
use registry_redis::{Follower, RedisEngine, Replica};
use registry_testkit::redis::RedisServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the tasks handed over.
#[derive(Clone)]
struct Recorder {
    entries: mpsc::UnboundedSender<LogEntry>,
    alive: mpsc::UnboundedSender<Vec<ReplicaId>>,
    checks: mpsc::UnboundedSender<()>,
    /// The replica's engine, on which a check commits and, if that fails,
    /// loads, as the registry's writer does.
    engine: Arc<Mutex<RedisEngine>>,
}

struct Recorded {
    entries: mpsc::UnboundedReceiver<LogEntry>,
    alive: mpsc::UnboundedReceiver<Vec<ReplicaId>>,
    checks: mpsc::UnboundedReceiver<()>,
}

impl Follower for Recorder {
    async fn apply(&self, entries: Vec<LogEntry>) {
        for entry in entries {
            let _ = self.entries.send(entry);
        }
    }

    fn replicas_alive(&self, replicas: &[ReplicaId]) {
        let _ = self.alive.send(replicas.to_vec());
    }

    fn announce_streams(&self) {}

    async fn check_storage(&self) {
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || {
            let mut engine = engine.lock().unwrap();
            if engine.commit_versioned(&[], &[]).is_err() {
                engine.load().unwrap();
            }
        })
        .await
        .unwrap();
        let _ = self.checks.send(());
    }
}

/// A replica at `prefix`, loaded and joined; its tasks not started.
async fn loaded(redis: &RedisServer, prefix: &str) -> Replica {
    let url = redis.url();
    let prefix = prefix.to_owned();
    blocking(move || {
        let mut replica = registry_redis::open(&url, &prefix).unwrap();
        replica.engine.load().unwrap();
        replica.engine.join(None).unwrap();
        replica
    })
    .await
}

/// A replica running its tasks until the token is cancelled.
struct Following {
    id: ReplicaId,
    engine: Arc<Mutex<RedisEngine>>,
    recorded: Recorded,
    stop: CancellationToken,
}

fn start(replica: Replica) -> Following {
    let id = replica.engine.replica_id();
    let engine = Arc::new(Mutex::new(replica.engine));
    let (entries, entries_read) = mpsc::unbounded_channel();
    let (alive, alive_read) = mpsc::unbounded_channel();
    let (checks, checks_read) = mpsc::unbounded_channel();
    let recorder = Recorder {
        entries,
        alive,
        checks,
        engine: Arc::clone(&engine),
    };
    let stop = CancellationToken::new();
    tokio::spawn(replica.tasks.run(recorder, stop.clone()));
    Following {
        id,
        engine,
        recorded: Recorded {
            entries: entries_read,
            alive: alive_read,
            checks: checks_read,
        },
        stop,
    }
}

async fn follow(redis: &RedisServer, prefix: &str) -> Following {
    start(loaded(redis, prefix).await)
}

/// Commits `changes` (each on version 0) on `engine`.
async fn commit(engine: &Arc<Mutex<RedisEngine>>, changes: Vec<Change>) {
    let engine = Arc::clone(engine);
    blocking(move || {
        let bases = vec![0; changes.len()];
        engine
            .lock()
            .unwrap()
            .commit_versioned(&changes, &bases)
            .unwrap()
    })
    .await;
}

fn engine(replica: Replica) -> Arc<Mutex<RedisEngine>> {
    Arc::new(Mutex::new(replica.engine))
}

async fn next<T>(receiver: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("within 5 s")
        .expect("the task runs")
}

/// A blocking call off the test's runtime.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(call).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_hands_over_other_replicas_commits_decoded_and_its_own_as_positions() {
    let redis = RedisServer::start();
    let mut a = follow(&redis, "t:").await;
    let b = loaded(&redis, "t:").await;
    let b_id = b.engine.replica_id();
    let b = engine(b);
    commit(
        &b,
        vec![
            Change::Agent(agent_record("a-1", "n")),
            Change::Stream(agent_id("a-1"), true),
        ],
    )
    .await;
    let entry = next(&mut a.recorded.entries).await;
    assert_eq!(entry.version, 1);
    assert_eq!(entry.origin, b_id);
    assert_eq!(
        format!("{:?}", entry.changes),
        format!(
            "{:?}",
            [
                Change::Agent(agent_record("a-1", "n")),
                Change::Stream(agent_id("a-1"), true)
            ]
        )
    );

    commit(&a.engine, vec![Change::Agent(agent_record("a-2", "n"))]).await;
    let entry = next(&mut a.recorded.entries).await;
    assert_eq!(entry.version, 2);
    assert_eq!(entry.origin, a.id);
    assert!(entry.changes.is_empty(), "A holds what it wrote");
    a.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_resumes_after_its_connection_is_killed_and_misses_nothing() {
    let redis = RedisServer::start();
    let mut a = follow(&redis, "kill:").await;
    let b = engine(loaded(&redis, "kill:").await);
    commit(&b, vec![Change::Meta("first".into(), None)]).await;
    // Read: the tail is connected.
    assert_eq!(next(&mut a.recorded.entries).await.version, 1);
    let name = format!("name=registry-tail-{}", a.id);
    let clients: String = query(&redis, &["CLIENT", "LIST"]);
    let id = clients
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("id="))
        })
        .expect("the tail's connection")
        .to_owned();
    let killed: u64 = query(&redis, &["CLIENT", "KILL", "ID", &id]);
    assert_eq!(killed, 1);
    for n in 0..3 {
        commit(
            &b,
            vec![Change::Agent(agent_record(&format!("a-{n}"), "n"))],
        )
        .await;
    }
    for version in 2..=4 {
        assert_eq!(next(&mut a.recorded.entries).await.version, version);
    }
    a.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_trimmed_past_the_tail_has_the_registry_load_then_the_tail_reads_on() {
    let redis = RedisServer::start();
    // A loaded at 0, and does not read meanwhile.
    let a = loaded(&redis, "trim:").await;
    let b = engine(loaded(&redis, "trim:").await);
    for n in 0..3 {
        commit(
            &b,
            vec![Change::Agent(agent_record(&format!("a-{n}"), "n"))],
        )
        .await;
    }
    let trimmed: u64 = query(&redis, &["XTRIM", "trim:log", "MINID", "3-0"]);
    assert_eq!(trimmed, 2);

    let mut a = start(a);
    next(&mut a.recorded.checks).await;
    commit(&b, vec![Change::Meta("brake".into(), None)]).await;
    let entry = next(&mut a.recorded.entries).await;
    assert_eq!(
        entry.version, 4,
        "loaded at 3 (entry 3 is in the load), read on from there"
    );
    a.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_says_which_replicas_are_alive_and_notices_redis_emptied() {
    let redis = RedisServer::start();
    let mut a = follow(&redis, "live:").await;
    let b = follow(&redis, "live:").await;
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    loop {
        let mut alive = next(&mut a.recorded.alive).await;
        alive.sort();
        if alive == both {
            break;
        }
    }
    // B stops cleanly: it leaves at once.
    b.stop.cancel();
    drop(b.engine);
    loop {
        if next(&mut a.recorded.alive).await == [a.id.clone()] {
            break;
        }
    }
    query::<()>(&redis, &["FLUSHALL"]);
    next(&mut a.recorded.checks).await;
    a.stop.cancel();
}

/// Rewrites `P log` from entry `from` on, as a Redis restarted from an
/// append-only file that lost its last writes, then written by another
/// replica, shows it: the entries before `from` kept, `from` and the next
/// one committed anew by another replica. Atomic with killing the tail's
/// connection (`tail`), as the restart would.
fn rewrite_history(redis: &RedisServer, prefix: &str, from: u64, tail: &str) {
    const REWRITE: &str = r"
local log, seq, from = KEYS[1], KEYS[2], tonumber(ARGV[1])
local kept = redis.call('XRANGE', log, '-', (from - 1) .. '-0')
local frames = redis.call('XRANGE', log, from .. '-0', from .. '-0')[1][2][4]
redis.call('DEL', log)
for _, entry in ipairs(kept) do redis.call('XADD', log, entry[1], unpack(entry[2])) end
redis.call('XADD', log, from .. '-0', 'o', 'replica-elsewhere', 'c', frames)
redis.call('XADD', log, (from + 1) .. '-0', 'o', 'replica-elsewhere', 'c', frames)
redis.call('SET', seq, from + 1)
return 1
";
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    redis::pipe()
        .atomic()
        .cmd("EVAL")
        .arg(REWRITE)
        .arg(2)
        .arg(format!("{prefix}log"))
        .arg(format!("{prefix}seq"))
        .arg(from)
        .cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tail)
        .query::<()>(&mut connection)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_rewritten_behind_the_tail_has_the_registry_load_though_it_is_as_long() {
    let redis = RedisServer::start();
    let mut a = follow(&redis, "back:").await;
    let b = engine(loaded(&redis, "back:").await);
    for n in 0..3 {
        commit(
            &b,
            vec![Change::Agent(agent_record(&format!("a-{n}"), "n"))],
        )
        .await;
    }
    for version in 1..=3 {
        assert_eq!(next(&mut a.recorded.entries).await.version, version);
    }
    let name = format!("name=registry-tail-{}", a.id);
    let clients: String = query(&redis, &["CLIENT", "LIST"]);
    let tail = clients
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("id="))
        })
        .expect("the tail's connection")
        .to_owned();
    // Redis lost commit 3 and another replica's commits took numbers 3
    // and 4: by the time the tail is connected again, the log is as long
    // as what it applied, but entry 3 is not the one it applied.
    rewrite_history(&redis, "back:", 3, &tail);

    next(&mut a.recorded.checks).await;
    a.stop.cancel();
}
