//! The Redis engine against a `redis-server` of the test's own, as the
//! registry's writer and two replicas use it: versioned commits (written,
//! unchanged, conflicts all or nothing), heartbeats, streams, fetch, load
//! (versions, position, streams of live replicas), Redis emptied, the
//! signing key of live replicas, a commit whose reply was lost.

mod common;

use common::*;
use registry_core::replication::{Commit, Entity};
use registry_core::storage::{Change, Storage};
use registry_core::{AgentId, Timestamp};
use registry_redis::JoinError;
use registry_testkit::redis::RedisServer;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

#[test]
fn a_commit_writes_versions_and_the_log_and_a_load_reads_them_back() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "w:");
    a.load().unwrap();
    let command = command_record("a-1", 1);
    let written = a
        .commit_versioned(
            &[
                Change::Agent(agent_record("a-1", "one")),
                Change::Command(command.clone()),
            ],
            &[0, 0],
        )
        .unwrap();
    assert_eq!(
        written,
        Commit::Written {
            version: 1,
            unchanged: vec![]
        }
    );
    let written = a
        .commit_versioned(&[Change::Agent(agent_record("a-1", "two"))], &[1])
        .unwrap();
    assert_eq!(
        written,
        Commit::Written {
            version: 2,
            unchanged: vec![]
        }
    );

    let mut b = open(&redis, "w:");
    let snapshot = b.load().unwrap();
    assert_eq!(snapshot.position, 2);
    assert_eq!(snapshot.agents, vec![agent_record("a-1", "two")]);
    assert_eq!(snapshot.commands, vec![command.clone()]);
    let mut versions = snapshot.versions.clone();
    versions.sort();
    assert_eq!(
        versions,
        vec![
            (Entity::Agent(agent_id("a-1")), 2),
            (Entity::Command(command.command_id), 1)
        ]
    );
    assert_eq!(query::<u64>(&redis, &["XLEN", "w:log"]), 2);
}

#[test]
fn a_conflict_writes_nothing_of_the_batch_and_names_the_entity() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "c:");
    let mut b = open(&redis, "c:");
    a.load().unwrap();
    b.load().unwrap();
    a.commit_versioned(&[Change::Agent(agent_record("a-1", "by a"))], &[0])
        .unwrap();

    let command = command_record("a-1", 1);
    let answer = b
        .commit_versioned(
            &[
                Change::Command(command.clone()),
                Change::Agent(agent_record("a-1", "by b")),
            ],
            &[0, 0],
        )
        .unwrap();
    assert_eq!(
        answer,
        Commit::Conflict(vec![Entity::Agent(agent_id("a-1"))])
    );
    let fetched = b
        .fetch(&[
            Entity::Agent(agent_id("a-1")),
            Entity::Command(command.command_id),
        ])
        .unwrap();
    assert_eq!(
        format!("{fetched:?}"),
        format!(
            "{:?}",
            [
                (1, Change::Agent(agent_record("a-1", "by a"))),
                (0, Change::CommandRemoved(command.command_id)),
            ]
        ),
        "the winner's record, and nothing of the refused batch"
    );
    assert_eq!(query::<u64>(&redis, &["GET", "c:seq"]), 1);

    // Built on the version fetched, it is written.
    let answer = b
        .commit_versioned(
            &[
                Change::Command(command),
                Change::Agent(agent_record("a-1", "by b")),
            ],
            &[0, 1],
        )
        .unwrap();
    assert!(
        matches!(answer, Commit::Written { version: 2, .. }),
        "{answer:?}"
    );
}

#[test]
fn the_same_record_written_by_two_replicas_is_unchanged_for_the_second() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "u:");
    let mut b = open(&redis, "u:");
    a.load().unwrap();
    b.load().unwrap();
    let command = command_record("a-1", 1);
    a.commit_versioned(
        &[
            Change::Agent(agent_record("a-1", "same")),
            Change::Command(command.clone()),
        ],
        &[0, 0],
    )
    .unwrap();
    // A deadline that fired on both: the same records, built from version 0.
    let answer = b
        .commit_versioned(
            &[
                Change::Agent(agent_record("a-1", "same")),
                Change::Command(command.clone()),
            ],
            &[0, 0],
        )
        .unwrap();
    assert_eq!(
        answer,
        Commit::Written {
            version: 1,
            unchanged: vec![(0, 1), (1, 1)]
        }
    );
    assert_eq!(
        query::<u64>(&redis, &["XLEN", "u:log"]),
        1,
        "nothing logged"
    );

    // Removed on A; B's removal, built on its old version, is unchanged.
    a.commit_versioned(&[Change::CommandRemoved(command.command_id)], &[1])
        .unwrap();
    let answer = b
        .commit_versioned(
            &[
                Change::CommandRemoved(command.command_id),
                Change::Meta("brake".into(), Some(b"on".to_vec())),
            ],
            &[1, 0],
        )
        .unwrap();
    assert_eq!(
        answer,
        Commit::Written {
            version: 3,
            unchanged: vec![(0, 0)]
        }
    );
}

#[test]
fn a_heartbeat_moves_the_version_and_conflicts_when_its_agent_is_gone_or_written_since() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "h:");
    let mut b = open(&redis, "h:");
    a.load().unwrap();
    b.load().unwrap();
    let at = Timestamp::from_unix_millis(1_700_000_000_000);
    let answer = a
        .commit_versioned(&[Change::Heartbeat(agent_id("gone"), at)], &[0])
        .unwrap();
    assert_eq!(
        answer,
        Commit::Conflict(vec![Entity::Agent(agent_id("gone"))])
    );

    a.commit_versioned(&[Change::Agent(agent_record("a-1", "n"))], &[0])
        .unwrap();
    // B's heartbeat built on a version older than the record (a STALE
    // written a moment before it) conflicts: it must run again on the record.
    let answer = b
        .commit_versioned(&[Change::Heartbeat(agent_id("a-1"), at)], &[0])
        .unwrap();
    assert_eq!(
        answer,
        Commit::Conflict(vec![Entity::Agent(agent_id("a-1"))])
    );
    // On the record's version it is written.
    let answer = b
        .commit_versioned(&[Change::Heartbeat(agent_id("a-1"), at)], &[1])
        .unwrap();
    assert!(
        matches!(answer, Commit::Written { version: 2, .. }),
        "{answer:?}"
    );
    let fetched = a.fetch(&[Entity::Agent(agent_id("a-1"))]).unwrap();
    assert_eq!(
        format!("{fetched:?}"),
        format!(
            "{:?}",
            [
                (2, Change::Agent(agent_record("a-1", "n"))),
                (2, Change::Heartbeat(agent_id("a-1"), at)),
            ]
        )
    );
    // A's record built on version 1 conflicts now.
    let answer = a
        .commit_versioned(&[Change::Agent(agent_record("a-1", "m"))], &[1])
        .unwrap();
    assert_eq!(
        answer,
        Commit::Conflict(vec![Entity::Agent(agent_id("a-1"))])
    );
    // On version 2 it is written, and takes the heartbeat time's place.
    a.commit_versioned(&[Change::Agent(agent_record("a-1", "m"))], &[2])
        .unwrap();
    assert_eq!(
        query::<Option<String>>(&redis, &["HGET", "h:heartbeats", "a-1"]),
        None
    );
}

#[test]
fn a_delivery_is_a_mark_beside_the_record_checked_like_a_heartbeat_and_dropped_by_a_record() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "d:");
    let mut b = open(&redis, "d:");
    a.load().unwrap();
    b.load().unwrap();
    let command = command_record("a-1", 1);
    let id = command.command_id;
    let at = Timestamp::from_unix_millis(1_700_000_000_000);
    let answer = a
        .commit_versioned(&[Change::Delivered(id, at)], &[0])
        .unwrap();
    assert_eq!(
        answer,
        Commit::Conflict(vec![Entity::Command(id)]),
        "no record to mark"
    );
    a.commit_versioned(
        &[
            Change::Agent(agent_record("a-1", "n")),
            Change::Command(command.clone()),
        ],
        &[0, 0],
    )
    .unwrap();
    // Built on an older version than the record's, it conflicts.
    let answer = b
        .commit_versioned(&[Change::Delivered(id, at)], &[0])
        .unwrap();
    assert_eq!(answer, Commit::Conflict(vec![Entity::Command(id)]));
    let answer = b
        .commit_versioned(&[Change::Delivered(id, at)], &[1])
        .unwrap();
    assert!(
        matches!(answer, Commit::Written { version: 2, .. }),
        "{answer:?}"
    );
    // The record stays as written; the mark beside it, in the log too.
    assert_eq!(
        query::<String>(&redis, &["HGET", "d:delivered", &id.to_string()]),
        "1700000000000"
    );
    let mut c = open(&redis, "d:");
    let snapshot = c.load().unwrap();
    assert_eq!(snapshot.commands, vec![command.clone()]);
    assert_eq!(snapshot.deliveries, vec![(id, at)]);
    assert!(snapshot.versions.contains(&(Entity::Command(id), 2)));
    let fetched = c.fetch(&[Entity::Command(id)]).unwrap();
    assert_eq!(
        format!("{fetched:?}"),
        format!(
            "{:?}",
            [
                (2, Change::Command(command.clone())),
                (2, Change::Delivered(id, at))
            ]
        )
    );
    // The record written again (an ack) takes the mark's place.
    let mut acked = command.clone();
    acked.delivered(at);
    acked.status = registry_core::CommandStatus::Acknowledged;
    a.commit_versioned(&[Change::Command(acked.clone())], &[2])
        .unwrap();
    let snapshot = c.load().unwrap();
    assert_eq!(snapshot.commands, vec![acked]);
    assert!(snapshot.deliveries.is_empty());
    // And a removal takes it with the record.
    b.commit_versioned(&[Change::Delivered(id, at)], &[3])
        .unwrap();
    a.commit_versioned(&[Change::CommandRemoved(id)], &[4])
        .unwrap();
    assert_eq!(query::<u64>(&redis, &["HLEN", "d:delivered"]), 0);
}

#[test]
fn a_stream_is_listed_while_its_replica_is_live_and_closed_only_by_it() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "s:");
    let mut b = open(&redis, "s:");
    a.load().unwrap();
    b.load().unwrap();
    a.join(None).unwrap();
    a.commit_versioned(&[Change::Agent(agent_record("a-1", "n"))], &[0])
        .unwrap();
    a.commit_versioned(&[Change::Stream(agent_id("a-1"), true)], &[1])
        .unwrap();
    // B closing a stream it does not hold changes nothing.
    b.commit_versioned(&[Change::Stream(agent_id("a-1"), false)], &[1])
        .unwrap();

    let mut c = open(&redis, "s:");
    let snapshot = c.load().unwrap();
    assert_eq!(
        snapshot.streams,
        vec![(agent_id("a-1"), a.replica_id())],
        "the stream, on A"
    );
    assert_eq!(
        snapshot.versions,
        vec![(Entity::Agent(agent_id("a-1")), 1)],
        "a stream is no change of the agent's record"
    );
    drop(a);
    assert!(
        c.load().unwrap().streams.is_empty(),
        "A left: its streams are no more"
    );
}

#[test]
fn fetch_gives_each_entity_as_it_is_or_its_removal() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "f:");
    a.load().unwrap();
    let rollout = rollout_record();
    let payload = registry_core::Payload::from_stored(r#"{"a":[true,null],"z":1}"#).unwrap();
    a.commit_versioned(
        &[
            Change::Rollout(rollout.clone()),
            Change::RolloutPayload(rollout.rollout_id, payload.clone()),
            Change::Meta("brake".into(), Some(b"on".to_vec())),
        ],
        &[0, 0, 0],
    )
    .unwrap();
    let command = command_record("nobody", 1);
    let fetched = a
        .fetch(&[
            Entity::Agent(agent_id("nobody")),
            Entity::Command(command.command_id),
            Entity::Rollout(rollout.rollout_id),
            Entity::Meta("brake".into()),
            Entity::Meta("nothing".into()),
        ])
        .unwrap();
    assert_eq!(
        format!("{fetched:?}"),
        format!(
            "{:?}",
            [
                (0, Change::AgentRemoved(agent_id("nobody"))),
                (0, Change::CommandRemoved(command.command_id)),
                (0, Change::Rollout(rollout.clone())),
                (0, Change::RolloutPayload(rollout.rollout_id, payload)),
                (0, Change::Meta("brake".into(), Some(b"on".to_vec()))),
                (0, Change::Meta("nothing".into(), None)),
            ]
        )
    );
}

#[test]
fn a_fleet_sized_commit_is_one_script_and_one_entry() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "big:");
    a.load().unwrap();
    let changes: Vec<Change> = (0..20_000)
        .map(|n| Change::Command(command_record(&format!("agent-{n}"), n)))
        .collect();
    let bases = vec![0; changes.len()];
    let answer = a.commit_versioned(&changes, &bases).unwrap();
    assert!(
        matches!(answer, Commit::Written { version: 1, .. }),
        "{answer:?}"
    );
    assert_eq!(query::<u64>(&redis, &["XLEN", "big:log"]), 1);
    assert_eq!(query::<u64>(&redis, &["HLEN", "big:commands"]), 20_000);
}

#[test]
fn redis_emptied_refuses_the_commit_and_loads_as_an_empty_registry() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "e:");
    a.load().unwrap();
    a.commit_versioned(&[Change::Agent(agent_record("a-1", "n"))], &[0])
        .unwrap();
    query::<()>(&redis, &["FLUSHALL"]);
    let refused = a
        .commit_versioned(&[Change::Agent(agent_record("a-2", "n"))], &[0])
        .unwrap_err();
    assert!(refused.0.contains("lost"), "{refused}");
    let snapshot = a.load().unwrap();
    assert!(snapshot.agents.is_empty());
    assert_eq!(snapshot.position, 0);
    let answer = a
        .commit_versioned(&[Change::Agent(agent_record("a-2", "n"))], &[0])
        .unwrap();
    assert!(
        matches!(answer, Commit::Written { version: 1, .. }),
        "{answer:?}"
    );
}

#[test]
fn a_replica_with_another_signing_key_is_refused_while_one_is_live() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "k:");
    let mut b = open(&redis, "k:");
    a.join(Some("key-one")).unwrap();
    let refused = b.join(Some("key-two")).unwrap_err();
    assert_eq!(
        refused,
        JoinError::OtherKey {
            replica: a.replica_id().to_string(),
            public_key: "key-one".into()
        }
    );
    b.join(Some("key-one")).unwrap();
    drop(a);
    let mut c = open(&redis, "k:");
    assert!(c.join(Some("key-two")).is_err(), "B is live");
    drop(b);
    c.join(Some("key-two")).unwrap();
}

#[test]
fn agent_ids_with_any_character_allowed_round_trip() {
    let redis = RedisServer::start();
    let mut a = open(&redis, "id:");
    a.load().unwrap();
    let id = "a:b.c_d-9";
    a.commit_versioned(&[Change::Agent(agent_record(id, "n"))], &[0])
        .unwrap();
    let snapshot = open(&redis, "id:").load().unwrap();
    assert_eq!(
        snapshot.versions,
        vec![(Entity::Agent(AgentId::parse(id).unwrap()), 1)]
    );
}

#[test]
fn a_load_while_another_replica_writes_never_pairs_a_record_with_a_newer_version() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let redis = RedisServer::start();
    let mut a = open(&redis, "l:");
    a.load().unwrap();
    let count = 5_000;
    let ids: Vec<String> = (0..count).map(|n| format!("a-{n}")).collect();
    let all: Vec<Change> = ids
        .iter()
        .map(|id| Change::Agent(agent_record(id, "n0")))
        .collect();
    a.commit_versioned(&all, &vec![0; count]).unwrap();
    // A rewrites its agents one commit at a time, noting what each version
    // wrote, while B loads.
    let written: Arc<Mutex<HashMap<u64, (String, String)>>> = Arc::default();
    let (stop, started) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (written, stop, started) = (written.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            let mut versions = vec![1_u64; count];
            let mut n = 0_usize;
            while !stop.load(Ordering::SeqCst) {
                let index = n % count;
                let name = format!("n{}", n + 1);
                let change = Change::Agent(agent_record(&ids[index], &name));
                let answer = a.commit_versioned(&[change], &[versions[index]]).unwrap();
                let Commit::Written { version, .. } = answer else {
                    panic!("{answer:?}");
                };
                versions[index] = version;
                written
                    .lock()
                    .unwrap()
                    .insert(version, (ids[index].clone(), name));
                n += 1;
                if n == 10 {
                    started.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let mut b = open(&redis, "l:");
    let snapshot = b.load().unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // Each record loaded is at least as new as the version it is loaded
    // with: B's commits built on it conflict rather than overwrite a newer
    // record, and the log after the load's position brings the rest.
    let written = written.lock().unwrap();
    let versions: HashMap<Entity, u64> = snapshot.versions.iter().cloned().collect();
    let mut newer = 0;
    for record in &snapshot.agents {
        let version = versions[&Entity::Agent(record.agent_id.clone())];
        let name = match written.get(&version) {
            Some((id, name)) => {
                assert_eq!(id, record.agent_id.as_str());
                name.as_str()
            }
            None => "n0",
        };
        let loaded: u64 = record.metadata.name[1..].parse().unwrap();
        let at_version: u64 = name[1..].parse().unwrap();
        if loaded < at_version {
            newer += 1;
        }
    }
    assert_eq!(newer, 0, "records loaded with the version of a later write");
}

/// A TCP proxy in front of Redis that, once armed, passes the next
/// `EVALSHA` on and drops the connection instead of its reply: the script
/// ran, its reply is lost.
struct LosingProxy {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl LosingProxy {
    fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = Arc::clone(&armed);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(("127.0.0.1", redis_port)).unwrap();
                let lose = Arc::new(AtomicBool::new(false));
                let (armed, losing) = (Arc::clone(&arm), Arc::clone(&lose));
                let (from, to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || {
                    copy(from, to, |bytes| {
                        if armed.load(Ordering::SeqCst)
                            && bytes.windows(7).any(|word| word == b"EVALSHA")
                        {
                            armed.store(false, Ordering::SeqCst);
                            losing.store(true, Ordering::SeqCst);
                        }
                        true
                    });
                });
                thread::spawn(move || copy(server, client, |_| !lose.load(Ordering::SeqCst)));
            }
        });
        Self { port, armed }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// Copies `from` to `to` while `pass` lets each read through, then closes both.
fn copy(mut from: TcpStream, mut to: TcpStream, mut pass: impl FnMut(&[u8]) -> bool) {
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read) = from.read(&mut buffer) {
        if read == 0 || !pass(&buffer[..read]) || to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[test]
fn a_commit_whose_reply_was_lost_is_answered_as_written_when_sent_again() {
    let redis = RedisServer::start();
    let proxy = LosingProxy::start(redis.port());
    let mut a = registry_redis::open(&proxy.url(), "l:").unwrap().engine;
    a.load().unwrap();
    a.commit_versioned(&[Change::Agent(agent_record("a-1", "one"))], &[0])
        .unwrap();
    proxy.armed.store(true, Ordering::SeqCst);
    let answer = a
        .commit_versioned(&[Change::Agent(agent_record("a-1", "two"))], &[1])
        .unwrap();
    assert!(!proxy.armed.load(Ordering::SeqCst), "the reply was lost");
    // Sent again, the commit is answered as written, not found unchanged:
    // its transitions are announced by this replica.
    assert_eq!(
        answer,
        Commit::Written {
            version: 2,
            unchanged: vec![]
        }
    );
    assert_eq!(query::<u64>(&redis, &["GET", "l:seq"]), 2, "written once");
    assert_eq!(query::<u64>(&redis, &["XLEN", "l:log"]), 2);
}
