//! What the engine's tests share: engines opened on a test's own Redis, and
//! records to write.

#![allow(dead_code, unreachable_pub)] // each test crate uses a part of it

use std::sync::Arc;

use registry_core::storage::{AgentRecord, CommandRecord, RolloutRecord};
use registry_core::{
    AgentId, AgentMetadata, AgentStatus, CommandStatus, GroupName, RolloutCounts, Target, Timestamp,
};
use registry_redis::{RedisEngine, Replica};
use registry_testkit::redis::RedisServer;

/// A replica of the registry at `prefix`.
pub fn replica(redis: &RedisServer, prefix: &str) -> Replica {
    registry_redis::open(&redis.url(), prefix).expect("the registry opens")
}

/// The engine of a replica of the registry at `prefix`.
pub fn open(redis: &RedisServer, prefix: &str) -> RedisEngine {
    replica(redis, prefix).engine
}

/// One Redis command, as `redis-cli` would send it.
pub fn query<T: redis::FromRedisValue>(redis: &RedisServer, command: &[&str]) -> T {
    let client = redis::Client::open(redis.url()).expect("a client");
    let mut connection = client.get_connection().expect("a connection");
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection).expect("an answer")
}

pub fn agent_id(id: &str) -> AgentId {
    AgentId::parse(id).expect("an agent id")
}

fn at(seconds: u64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + seconds * 1000)
}

/// An agent named `name`.
pub fn agent_record(id: &str, name: &str) -> AgentRecord {
    AgentRecord {
        agent_id: agent_id(id),
        metadata: AgentMetadata {
            name: name.into(),
            group: GroupName::parse("g").expect("a group"),
            version: None,
            route_ids: Vec::new(),
            capabilities: Vec::new(),
        },
        status: AgentStatus::Live,
        registered_at: at(0),
        last_heartbeat_at: at(1),
        status_changed_at: at(0),
        credential: None,
    }
}

/// Command number `seq` of `agent`, PENDING; its id follows from `seq`.
pub fn command_record(agent: &str, seq: u64) -> CommandRecord {
    CommandRecord {
        command_id: format!("01900000-0000-7000-8000-{seq:012x}")
            .parse()
            .expect("a command id"),
        seq,
        agent_id: agent_id(agent),
        kind: Arc::from("replay"),
        payload: None,
        rollout_id: None,
        status: CommandStatus::Pending,
        created_at: at(2),
        expires_at: at(300),
        delivered_at: None,
        acknowledged_at: None,
        ack: None,
    }
}

/// A rollout to the fleet.
pub fn rollout_record() -> RolloutRecord {
    RolloutRecord {
        rollout_id: "01900000-0000-7000-9000-000000000001"
            .parse()
            .expect("a rollout id"),
        kind: Arc::from("replay"),
        target: Target::Fleet,
        created_at: at(2),
        expires_at: at(300),
        targeted: 3,
        skipped: 0,
        counts: RolloutCounts::default(),
        done_at: None,
    }
}
