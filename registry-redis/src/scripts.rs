//! The Lua scripts: what must be atomic in Redis. They move strings and
//! compare bytes and numbers; they never parse a record or decide what one
//! should say (the rules are the core's, in Rust, once).

use redis::Script;

/// What the commit script answers first: everything written (then the
/// version and the unchanged changes), a conflict (then the conflicted
/// changes), or the marker gone (Redis lost the registry).
pub(crate) const WRITTEN: u64 = 0;
pub(crate) const CONFLICT: u64 = 1;
pub(crate) const EMPTIED: u64 = 2;

/// One commit (`docs/replicas.md`, "A commit").
///
/// KEYS: marker, agents, heartbeats, commands, rollouts, payloads, meta, seq,
/// versions, streams, log, the origin's last reply, and delivered. ARGV: the marker
/// loaded, the origin replica, the log's length bound, the commit's token
/// (unique per commit the replica sends), then `(op, id, value, base)` per
/// change; an empty base is not checked.
///
/// 1. The marker must be the one loaded, else `{EMPTIED}`. A commit sent
///    again after its reply was lost (the connection dropped after the script
///    ran) finds its token in the last reply kept and gets that reply again,
///    as a list of strings: what it wrote is not found unchanged, so the
///    replica that wrote it announces its transitions.
/// 2. An agent or command change (`a A c C`) is written if its version in
///    `versions` is still its base; else it is unchanged if the store already
///    holds that record byte for byte (for a removal: no record), else a
///    conflict. A heartbeat is written if its agent is there and still at
///    its base (a heartbeat built on a record another replica replaced
///    since, a STALE written a moment before it, must run again on it); a
///    command's delivery mark (`d`) likewise if its command is there and
///    still at its base (the mark is read on the record of that version;
///    a record written drops it). Any conflict: `{CONFLICT, index...}`
///    (0-based), nothing written.
/// 3. With something to write: `seq` + 1 is the version; the log gets one
///    entry (id `version-0`, fields `o` origin and `c` the written changes'
///    frames, see `wire`), then the records are written and each written
///    agent's and command's version set (deleted with it). The log is written
///    first: if it refuses, nothing else was.
/// 4. `{WRITTEN, version, index, stored version...}` for the unchanged; with
///    nothing written, the version is `seq` as it is. A reply that wrote
///    something is kept, behind the token, for a minute.
pub(crate) const COMMIT: &str = r"
local WRITTEN, CONFLICT, EMPTIED = 0, 1, 2
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {EMPTIED} end
local reply, token = KEYS[12], ARGV[4]
if redis.call('LINDEX', reply, 0) == token then return redis.call('LRANGE', reply, 1, -1) end
local agents, heartbeats, commands, rollouts, payloads, meta, seq, versions, streams, log =
  KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local origin, delivered = ARGV[2], KEYS[13]
local checked = {a = agents, A = agents, c = commands, C = commands}
local writes, answer, conflicts = {}, {WRITTEN, 0}, {CONFLICT}
for i = 5, #ARGV, 4 do
  local op, id, value, base = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local index = (i - 5) / 4
  local records = checked[op]
  if records then
    local stored = tonumber(redis.call('HGET', versions, string.lower(op) .. ':' .. id) or '0')
    if base == '' or stored == tonumber(base) then
      writes[#writes + 1] = i
    else
      local record = redis.call('HGET', records, id)
      local removal = op == 'A' or op == 'C'
      if (removal and not record) or (not removal and record == value) then
        answer[#answer + 1] = index
        answer[#answer + 1] = stored
      else
        conflicts[#conflicts + 1] = index
      end
    end
  elseif op == 'h' or op == 'd' then
    local kind, records = 'a:', agents
    if op == 'd' then kind, records = 'c:', commands end
    local stored = tonumber(redis.call('HGET', versions, kind .. id) or '0')
    if redis.call('HEXISTS', records, id) == 1 and (base == '' or stored == tonumber(base)) then
      writes[#writes + 1] = i
    else
      conflicts[#conflicts + 1] = index
    end
  else
    writes[#writes + 1] = i
  end
end
if #conflicts > 1 then return conflicts end
local version = tonumber(redis.call('GET', seq) or '0')
if #writes == 0 then
  answer[2] = version
  return answer
end
version = version + 1
local frames = {}
for n, i in ipairs(writes) do
  local id, value = ARGV[i + 1], ARGV[i + 2]
  frames[n] = ARGV[i] .. #id .. ':' .. id .. #value .. ':' .. value
end
redis.call('XADD', log, 'MAXLEN', '~', ARGV[3], version .. '-0',
  'o', origin, 'c', table.concat(frames))
redis.call('SET', seq, version)
for _, i in ipairs(writes) do
  local op, id, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  -- Built on version 0 (checked: no record), a record has no heartbeat or
  -- delivery mark beside it to clear: a fleet command's new commands skip it.
  local existed = ARGV[i + 3] ~= '0'
  if op == 'a' then
    redis.call('HSET', agents, id, value)
    if existed then redis.call('HDEL', heartbeats, id) end
    redis.call('HSET', versions, 'a:' .. id, version)
  elseif op == 'A' then
    redis.call('HDEL', agents, id)
    redis.call('HDEL', heartbeats, id)
    redis.call('HDEL', streams, id)
    redis.call('HDEL', versions, 'a:' .. id)
  elseif op == 'h' then
    redis.call('HSET', heartbeats, id, value)
    redis.call('HSET', versions, 'a:' .. id, version)
  elseif op == 'c' then
    redis.call('HSET', commands, id, value)
    if existed then redis.call('HDEL', delivered, id) end
    redis.call('HSET', versions, 'c:' .. id, version)
  elseif op == 'd' then
    redis.call('HSET', delivered, id, value)
    redis.call('HSET', versions, 'c:' .. id, version)
  elseif op == 'C' then
    redis.call('HDEL', commands, id)
    redis.call('HDEL', delivered, id)
    redis.call('HDEL', versions, 'c:' .. id)
  elseif op == 'r' then
    redis.call('HSET', rollouts, id, value)
  elseif op == 'p' then
    redis.call('HSET', payloads, id, value)
  elseif op == 'R' then
    redis.call('HDEL', rollouts, id)
    redis.call('HDEL', payloads, id)
  elseif op == 'm' then
    redis.call('HSET', meta, id, value)
  elseif op == 'M' then
    redis.call('HDEL', meta, id)
  elseif op == 's' then
    redis.call('HSET', streams, id, origin)
  elseif op == 'S' then
    if redis.call('HGET', streams, id) == origin then redis.call('HDEL', streams, id) end
  end
end
answer[2] = version
redis.call('DEL', reply)
redis.call('RPUSH', reply, token)
for first = 1, #answer, 1000 do
  redis.call('RPUSH', reply, unpack(answer, first, math.min(first + 999, #answer)))
end
redis.call('PEXPIRE', reply, 60000)
return answer
";

/// A new registry gets its format and a marker; answers both as stored.
const ENSURE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}
";

/// The stored value, storing `ARGV[2]` as `ARGV[1]` first if there is none.
const META_OR_INSERT: &str = r"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
";

/// A replica joins: KEYS replicas, keys; ARGV its id, its liveness in ms, the
/// public key it signs with (empty: none). When a live replica publishes
/// another key: `{0, that replica, its key}`, and it does not join. Else its
/// liveness and key are set: `{1}`.
const JOIN: &str = r"
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
if ARGV[3] ~= '' then
  for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
    local key = redis.call('HGET', KEYS[2], replica)
    if key and key ~= ARGV[3] and replica ~= ARGV[1] then return {0, replica, key} end
  end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
redis.call('ZADD', KEYS[1], now + ARGV[2], ARGV[1])
return {1}
";

/// Every second: KEYS replicas, keys, marker; ARGV the replica's id, its
/// liveness in ms, its public key (empty: none), the marker it loaded.
/// Renews its liveness and key, forgets the replicas whose liveness ran out,
/// and answers `{marker still the one loaded (1) or not (0), its liveness
/// had run out (1: it was forgotten, and the others ended its streams) or
/// not (0), live replicas...}`.
const KEEP: &str = r"
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
local lapsed = redis.call('ZADD', KEYS[1], now + ARGV[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[1], replica)
  redis.call('HDEL', KEYS[2], replica)
end
local answer = {redis.call('GET', KEYS[3]) == ARGV[4] and 1 or 0, lapsed}
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  answer[#answer + 1] = replica
end
return answer
";

/// The replicas live now: KEYS replicas.
const LIVE: &str = r"
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

/// A replica leaves on a clean stop: KEYS replicas, keys; ARGV its id.
const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// The engine's scripts, each sent once and then run by its digest (`EVALSHA`).
pub(crate) struct Scripts {
    pub(crate) commit: Script,
    pub(crate) ensure: Script,
    pub(crate) meta_or_insert: Script,
    pub(crate) join: Script,
    pub(crate) live: Script,
    pub(crate) leave: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            commit: Script::new(COMMIT),
            ensure: Script::new(ENSURE),
            meta_or_insert: Script::new(META_OR_INSERT),
            join: Script::new(JOIN),
            live: Script::new(LIVE),
            leave: Script::new(LEAVE),
        }
    }
}

/// The keeper's script.
pub(crate) fn keep() -> Script {
    Script::new(KEEP)
}
