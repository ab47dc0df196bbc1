// Third-party EventSource clients against a running registry server (run.sh
// starts it): the `eventsource` npm package in its 2.x line (the most
// installed) and its current WHATWG line, and Node's own fetch reading the raw
// stream. For each EventSource client it shows, as an agent author would see it:
//
//   - events: a command arrives as one event of its type, with its id as
//     lastEventId and its data whole (CR/LF, U+2028 and a 200 KiB payload);
//   - keepalives: an idle stream stays open, with no error and no reconnect;
//   - retry: the client reconnects after the server's `retry:` (sse.retry plus
//     jitter), not after its own default;
//   - reconnect: after the connection is cut, it reconnects with
//     Last-Event-ID, and (sse.replay = "unacknowledged") gets the command pushed
//     while it was away, and not the one it had seen;
//   - duplicates: two clients sharing an agentId settle instead of flapping
//     (stream opens counted over FLAP_SECONDS);
//   - signatures: every command's data verifies with the registration
//     answer's serverPublicKey, by Node's crypto and the few lines of RFC 8785
//     that docs/signing.md gives (when the server signs: an older binary
//     answers null).
//
// Environment: REGISTRY_URL (http://host:port), RETRY_MS and KEEPALIVE_MS (the
// server's sse.retry and sse.keepalive), FLAP_SECONDS (default 5), FLAP_ONLY=1
// to run only the duplicate count (for a server that predates SPEC 10).

import assert from "node:assert/strict";
import { createPublicKey, verify } from "node:crypto";
import { createRequire } from "node:module";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

import { EventSource as EventSourceCurrent } from "eventsource";

const require = createRequire(import.meta.url);
const EventSource2 = require("eventsource2");

const BASE = process.env.REGISTRY_URL;
const RETRY_MS = Number(process.env.RETRY_MS ?? 250);
const KEEPALIVE_MS = Number(process.env.KEEPALIVE_MS ?? 300);
const FLAP_SECONDS = Number(process.env.FLAP_SECONDS ?? 5);
const FLAP_ONLY = process.env.FLAP_ONLY === "1";
const TYPES = ["config-update", "deep-trace", "replay"];
// Scheduling slack for timings measured on a busy 2-core machine.
const SLACK_MS = 400;

const CLIENTS = [
  { name: "eventsource@2.0.2", tag: "es2", open: (url) => new EventSource2(url) },
  { name: "eventsource@4.1.1", tag: "es4", open: (url) => new EventSourceCurrent(url) },
];

assert.ok(BASE, "REGISTRY_URL is set");

async function api(method, path, body) {
  const response = await fetch(`${BASE}${path}`, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

// RFC 8785 as docs/signing.md writes it: JSON.stringify already writes strings
// and numbers canonically; members are sorted by UTF-16 code units.
const canonical = (value) =>
  value === null || typeof value !== "object"
    ? JSON.stringify(value)
    : Array.isArray(value)
      ? `[${value.map(canonical).join(",")}]`
      : `{${Object.keys(value)
          .sort()
          .map((name) => `${JSON.stringify(name)}:${canonical(value[name])}`)
          .join(",")}}`;

/// Whether a command's data verifies with the server's public key (docs/signing.md).
function verifies(data, serverPublicKey) {
  const { signature, ...unsigned } = JSON.parse(data);
  const key = createPublicKey({
    key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(serverPublicKey, "base64").toString("base64url") },
    format: "jwk",
  });
  return verify(null, Buffer.from(canonical(unsigned), "utf8"), key, Buffer.from(signature, "base64"));
}

async function register(agentId) {
  const { status, body } = await api("POST", "/api/v1/agents/register", {
    agentId,
    name: "interop",
    group: "interop",
  });
  assert.ok(status === 201 || status === 200, `register ${agentId}: ${status}`);
  return body;
}

async function push(agentId, type, payload) {
  const { status, body } = await api("POST", `/api/v1/agents/${agentId}/commands`, {
    type,
    payload,
  });
  assert.equal(status, 202, `push to ${agentId}`);
  return body;
}

async function connected(agentId) {
  return (await api("GET", `/api/v1/agents/${agentId}`)).body.connected;
}

async function metric(series) {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? null : Number(line.split(" ")[1]);
}

async function until(what, condition, withinMs = 5000) {
  const deadline = Date.now() + withinMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${withinMs} ms`);
    await sleep(5);
  }
}

/// A TCP proxy in front of the server that can cut every connection and
/// refuse new ones for a while, and that records each request head it relays.
async function proxy() {
  const { hostname, port } = new URL(BASE);
  const sockets = new Set();
  const heads = [];
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {});
    }
    client.once("data", (chunk) => heads.push({ at: Date.now(), head: chunk.toString() }));
    client.pipe(upstream).on("close", () => client.destroy());
    upstream.pipe(client).on("close", () => upstream.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    heads,
    cut() {
      refusing = true;
      for (const socket of sockets) socket.destroy();
    },
    resume() {
      refusing = false;
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

/// Opens `client` on `url` and records what it sees.
function watch(client, url) {
  const es = client.open(url);
  const seen = { es, opens: [], errors: 0, events: [] };
  es.onopen = () => seen.opens.push(Date.now());
  es.onerror = () => {
    seen.errors += 1;
  };
  for (const type of TYPES) {
    es.addEventListener(type, (event) =>
      seen.events.push({
        type,
        id: event.lastEventId,
        data: JSON.parse(event.data),
        raw: event.data,
      }),
    );
  }
  return seen;
}

async function checkClient(client) {
  const agentId = `interop-${client.tag}`;
  const { serverPublicKey } = await register(agentId);
  const relay = await proxy();
  const seen = watch(client, `${relay.url}/api/v1/agents/${agentId}/events`);
  try {
    await until(`${client.name} opens`, () => seen.opens.length === 1);

    // Events: type, id and data, whole.
    const payload = {
      text: "line one\r\nline two\nline three\u2028after U+2028 é",
      big: "x".repeat(200 * 1024),
    };
    const first = await push(agentId, "deep-trace", payload);
    await until("the first command arrives", () => seen.events.length === 1);
    const [event] = seen.events;
    assert.equal(event.type, "deep-trace");
    assert.equal(event.id, first.commandId);
    assert.equal(event.data.commandId, first.commandId);
    assert.equal(event.data.agentId, agentId);
    assert.deepEqual(event.data.payload, payload);
    assert.equal(event.data.expiresAt, first.expiresAt);

    // Keepalives: idle for several keepalive intervals, still the one connection.
    await sleep(KEEPALIVE_MS * 4);
    assert.equal(seen.opens.length, 1, "no reconnect while idle");
    assert.equal(seen.errors, 0, "no error while idle");

    // retry: 2.x shows the value it took; both are timed below.
    if (seen.es.reconnectInterval !== undefined) {
      assert.ok(
        seen.es.reconnectInterval >= RETRY_MS && seen.es.reconnectInterval <= 2 * RETRY_MS,
        `reconnectInterval ${seen.es.reconnectInterval} from retry:`,
      );
    }

    // Reconnect: cut the connection, push while the agent is away, let it back in.
    const cutAt = Date.now();
    relay.cut();
    await until("the server notices the cut", async () => !(await connected(agentId)));
    const missed = await push(agentId, "config-update", { n: 2 });
    assert.equal(missed.status, "PENDING");
    relay.resume();
    await until("the missed command arrives", () => seen.events.length === 2, 10_000);
    assert.equal(seen.events[1].id, missed.commandId, "the missed command, and not the seen one");
    const reconnect = relay.heads.find((h) => h.at > cutAt);
    assert.match(reconnect.head, new RegExp(`last-event-id: ${first.commandId}`, "i"));
    const delay = reconnect.at - cutAt;
    assert.ok(
      delay >= RETRY_MS - 50 && delay <= 2 * RETRY_MS + SLACK_MS,
      `reconnected after ${delay} ms; retry: was ${RETRY_MS} to ${2 * RETRY_MS} ms`,
    );
    const fresh = await push(agentId, "replay", { n: 3 });
    await until("a new command arrives", () => seen.events.length === 3);
    assert.deepEqual(
      seen.events.map((e) => e.id),
      [first.commandId, missed.commandId, fresh.commandId],
      "each command once, in order",
    );
    if (serverPublicKey !== null) {
      for (const event of seen.events) {
        assert.ok(verifies(event.raw, serverPublicKey), `signature of ${event.id}`);
      }
      const forged = seen.events[2].raw.replace('"n":3', '"n":4');
      assert.ok(!verifies(forged, serverPublicKey), "a changed payload does not verify");
    }
    console.log(
      `ok ${client.name}: events (CR/LF, U+2028, 200 KiB), keepalives, retry (reconnected after ${delay} ms), ` +
        `reconnect with Last-Event-ID and replay` +
        (serverPublicKey === null ? "" : ", every signature verified by Node's crypto"),
    );
  } finally {
    seen.es.close();
    relay.close();
  }
}

/// Node's own fetch reading the raw stream: the `retry:` line first, then
/// keepalive comments; and HEAD that leaves the stream open.
async function checkRawFetch() {
  const agentId = "interop-fetch";
  await register(agentId);
  const controller = new AbortController();
  const response = await fetch(`${BASE}/api/v1/agents/${agentId}/events`, {
    signal: controller.signal,
  });
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^text\/event-stream/);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const deadline = Date.now() + KEEPALIVE_MS * 4 + SLACK_MS;
  while ((text.match(/^: ?keepalive$/gm) ?? []).length < 3) {
    assert.ok(Date.now() < deadline, `three keepalives within ${KEEPALIVE_MS * 4} ms: ${text}`);
    const { value, done } = await reader.read();
    assert.ok(!done, "the stream stays open");
    text += value;
  }
  const retry = Number(/^retry: (\d+)$/m.exec(text.split("\n")[0])?.[1]);
  assert.ok(retry >= RETRY_MS && retry <= 2 * RETRY_MS, `first line ${text.split("\n")[0]}`);
  const head = await fetch(`${BASE}/api/v1/agents/${agentId}/events`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(await connected(agentId), true, "HEAD left the stream open");
  controller.abort();
  console.log(`ok node fetch: retry: ${retry} first, keepalive comments, HEAD leaves the stream open`);
}

/// Two clients sharing one agentId for FLAP_SECONDS: how many times a stream opened.
async function flap(client) {
  const agentId = `twin-${client.tag}`;
  await register(agentId);
  const url = `${BASE}/api/v1/agents/${agentId}/events`;
  const before = await metric("registry_stream_replacements_total");
  const twins = [watch(client, url), watch(client, url)];
  await sleep(FLAP_SECONDS * 1000);
  for (const twin of twins) twin.es.close();
  const opens = twins.reduce((sum, twin) => sum + twin.opens.length, 0);
  const after = await metric("registry_stream_replacements_total");
  const replacements = before === null ? "n/a" : after - before;
  console.log(
    `flap ${client.name}: ${opens} stream opens in ${FLAP_SECONDS} s for two clients sharing an agentId ` +
      `(replacements counted: ${replacements})`,
  );
  return opens;
}

let failed = false;
if (!FLAP_ONLY) {
  for (const check of [...CLIENTS.map((client) => () => checkClient(client)), checkRawFetch]) {
    try {
      await check();
    } catch (err) {
      failed = true;
      console.error(`FAILED: ${err.stack ?? err}`);
    }
  }
}
for (const client of CLIENTS) {
  const opens = await flap(client);
  // Settled: each twin opened once, and the replaced one waits sse.replaced_retry.
  if (!FLAP_ONLY && FLAP_SECONDS * 1000 < 60_000 && opens > 3) {
    failed = true;
    console.error(`FAILED: ${client.name} flapped: ${opens} opens in ${FLAP_SECONDS} s`);
  }
}
process.exit(failed ? 1 : 0);
