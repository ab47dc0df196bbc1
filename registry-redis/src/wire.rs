//! How a [`Change`] travels: as an `(op, id, value)` triple to the commit
//! script, and back, from the log, as the frame the script made of it.
//!
//! The op is one byte, lower case for a record written and upper case for a
//! removal (`a`/`A` agent, `c`/`C` command, `r`/`R` rollout, `m`/`M` named
//! value, `s`/`S` stream opened/closed), plus `h`, a heartbeat time, `d`, a
//! command's delivery mark, and `p`, a rollout's payload. Values are the
//! embedded engine's records (JSON, by `serde_json`), a payload's canonical
//! text, a heartbeat's or a delivery's Unix ms.
//!
//! A log entry holds the written changes of one commit in one field, each as
//! `op`, the id's length, `:`, the id, the value's length, `:`, the value:
//! one string the script joins, since a Redis command called from Lua takes
//! at most a few thousand arguments and a fleet command writes a hundred
//! thousand changes.

use registry_core::storage::{AgentRecord, Change, CommandRecord, RolloutRecord};
use registry_core::{AgentId, Payload, Timestamp};

/// The triple the commit script reads for `change`.
pub(crate) fn encode(change: &Change) -> (u8, String, Vec<u8>) {
    match change {
        Change::Agent(record) => (b'a', record.agent_id.to_string(), to_json(record)),
        Change::AgentRemoved(id) => (b'A', id.to_string(), Vec::new()),
        Change::Heartbeat(id, at) => (
            b'h',
            id.to_string(),
            at.unix_millis().to_string().into_bytes(),
        ),
        Change::Command(record) => (b'c', record.command_id.to_string(), to_json(record)),
        Change::CommandRemoved(id) => (b'C', id.to_string(), Vec::new()),
        Change::Delivered(id, at) => (
            b'd',
            id.to_string(),
            at.unix_millis().to_string().into_bytes(),
        ),
        Change::Rollout(record) => (b'r', record.rollout_id.to_string(), to_json(record)),
        Change::RolloutPayload(id, payload) => {
            (b'p', id.to_string(), payload.get().as_bytes().to_vec())
        }
        Change::RolloutRemoved(id) => (b'R', id.to_string(), Vec::new()),
        Change::Meta(key, Some(value)) => (b'm', key.clone(), value.clone()),
        Change::Meta(key, None) => (b'M', key.clone(), Vec::new()),
        Change::Stream(id, true) => (b's', id.to_string(), Vec::new()),
        Change::Stream(id, false) => (b'S', id.to_string(), Vec::new()),
    }
}

/// A record as the embedded engine writes it.
fn to_json(record: &impl serde::Serialize) -> Vec<u8> {
    // The records are plain data: serializing them can't fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// The change a triple stands for; what is wrong with it, if it is not one.
pub(crate) fn decode(op: u8, id: &[u8], value: &[u8]) -> Result<Change, String> {
    let id = std::str::from_utf8(id).map_err(|_| "an id that is not UTF-8".to_owned())?;
    let agent = || AgentId::parse(id).map_err(|err| format!("agent {id:?}: {err}"));
    let bad = |what: &str, err: &dyn std::fmt::Display| format!("{what} {id}: {err}");
    let unreadable = |what: &str| format!("{what} {id}: not what this version writes");
    Ok(match op {
        b'a' => Change::Agent(
            serde_json::from_slice::<AgentRecord>(value).map_err(|err| bad("agent", &err))?,
        ),
        b'A' => Change::AgentRemoved(agent()?),
        b'h' => Change::Heartbeat(
            agent()?,
            millis(value).ok_or_else(|| unreadable("heartbeat"))?,
        ),
        b'c' => Change::Command(
            serde_json::from_slice::<CommandRecord>(value).map_err(|err| bad("command", &err))?,
        ),
        b'C' => Change::CommandRemoved(id.parse().map_err(|err| bad("command", &err))?),
        b'd' => Change::Delivered(
            id.parse().map_err(|err| bad("delivery of command", &err))?,
            millis(value).ok_or_else(|| unreadable("delivery of command"))?,
        ),
        b'r' => Change::Rollout(
            serde_json::from_slice::<RolloutRecord>(value).map_err(|err| bad("rollout", &err))?,
        ),
        b'p' => Change::RolloutPayload(
            id.parse().map_err(|err| bad("payload of rollout", &err))?,
            std::str::from_utf8(value)
                .ok()
                .and_then(|text| Payload::from_stored(text).ok())
                .ok_or_else(|| unreadable("payload of rollout"))?,
        ),
        b'R' => Change::RolloutRemoved(id.parse().map_err(|err| bad("rollout", &err))?),
        b'm' => Change::Meta(id.to_owned(), Some(value.to_vec())),
        b'M' => Change::Meta(id.to_owned(), None),
        b's' => Change::Stream(agent()?, true),
        b'S' => Change::Stream(agent()?, false),
        other => return Err(format!("an unknown change {:?}", char::from(other))),
    })
}

/// A heartbeat or delivery time as stored: Unix ms in decimal.
pub(crate) fn millis(value: &[u8]) -> Option<Timestamp> {
    std::str::from_utf8(value)
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Timestamp::from_unix_millis)
}

/// The changes of a log entry's frames, in order.
pub(crate) fn decode_frames(mut frames: &[u8]) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    while let Some((&op, rest)) = frames.split_first() {
        let (id, rest) = sized(rest).ok_or("a damaged frame")?;
        let (value, rest) = sized(rest).ok_or("a damaged frame")?;
        changes.push(decode(op, id, value)?);
        frames = rest;
    }
    Ok(changes)
}

/// Splits `bytes` after a `length:bytes` part: the bytes, and what follows.
fn sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = bytes.iter().position(|&byte| byte == b':')?;
    let length: usize = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
    let rest = &bytes[colon + 1..];
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame the commit script makes of a triple.
    fn frame(op: u8, id: &str, value: &[u8]) -> Vec<u8> {
        let mut frame = vec![op];
        frame.extend(format!("{}:{id}{}:", id.len(), value.len()).bytes());
        frame.extend_from_slice(value);
        frame
    }

    #[test]
    fn frames_give_back_the_changes_in_order() {
        let agent = AgentId::parse("a-1").unwrap();
        let changes = [
            Change::Heartbeat(
                agent.clone(),
                Timestamp::from_unix_millis(1_700_000_000_123),
            ),
            Change::Meta("brake".into(), Some(b"1:2".to_vec())),
            Change::Delivered(
                "01900000-0000-7000-8000-000000000001".parse().unwrap(),
                Timestamp::from_unix_millis(1_700_000_000_456),
            ),
            Change::Stream(agent.clone(), false),
            Change::Meta("empty".into(), Some(Vec::new())),
            Change::AgentRemoved(agent),
        ];
        let mut frames = Vec::new();
        for change in &changes {
            let (op, id, value) = encode(change);
            frames.extend(frame(op, &id, &value));
        }
        let decoded = decode_frames(&frames).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{changes:?}"));
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic() {
        for damaged in [
            &b"h3:a-1"[..],
            b"h3:a-15:17",
            b"x3:a-10:",
            b"h99:a-1",
            b"A3:a-",
            b"h:a-10:",
        ] {
            assert!(decode_frames(damaged).is_err(), "{damaged:?}");
        }
        assert!(decode_frames(b"").unwrap().is_empty());
    }
}
