// The registry's web page: the fleet live, from one listing and then the fleet
// event stream (GET /api/v1/events), read with fetch so that it can carry the
// operator's bearer token (EventSource can't send headers). No framework, no
// build step: the server embeds this file as it is.
'use strict';

const TOKEN_KEY = 'registry.operatorToken';
const STATUSES = ['LIVE', 'STALE', 'DEAD'];
/** Rows drawn at most: beyond that the filters narrow the table. */
const MAX_ROWS = 500;
/** Agents re-read one by one at most; past that the whole fleet is listed again. */
const MAX_SINGLE_REFRESH = 50;
/** The listing is read again this often, for heartbeat times (heartbeats send no
 * event): every 5 s for a small fleet, every 30 s past 1,000 agents. */
const RELIST_MS = { small: 5000, large: 30000, threshold: 1000 };
const RECONNECT_MS = 1000;

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  /** agentId -> agent view, as listed and then as events changed it. */
  agents: new Map(),
  /** rolloutId -> rollout view (or the answer to a push until rollouts are known). */
  rollouts: new Map(),
  /** Agents whose metadata changed and must be read again. */
  stale: new Set(),
  selected: null,
  groups: '',
  renderQueued: false,
  /** Agent events received while a listing is on its way, applied on top of it. */
  arrivedWhileListing: null,
  relisting: null,
};

class Unauthorized extends Error {}

/** Fetches `path` with the operator token; throws Unauthorized on 401. */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set('Authorization', `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) throw new Unauthorized();
  return response;
}

async function json(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
  }
  return body;
}

// --- signing in -------------------------------------------------------------

function askForToken(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message || '';
  $('token').focus();
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  state.token = $('token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $('token').value = '';
  start();
});

$('forget-token').addEventListener('click', () => {
  stopFollowing();
  askForToken();
});

// --- the fleet: list, then follow -------------------------------------------

let following = null;

function stopFollowing() {
  if (following) following.abort();
  following = null;
}

async function start() {
  stopFollowing();
  try {
    await loadCommandTypes();
    // Listing answers 401 at once when a token is needed: ask before following.
    await api('/api/v1/agents?status=DEAD&group=-');
  } catch (error) {
    if (error instanceof Unauthorized) return askForToken(state.token ? 'That token was refused.' : '');
    throw error;
  }
  $('login').hidden = true;
  $('app').hidden = false;
  $('forget-token').hidden = !state.token;
  follow();
  if (!state.relisting) {
    state.relisting = true;
    const again = () => setTimeout(async () => {
      await relist().catch(() => {});
      again();
    }, state.agents.size > RELIST_MS.threshold ? RELIST_MS.large : RELIST_MS.small);
    again();
  }
  loadRollouts();
}

/** Holds the fleet stream open, listing the fleet each time it (re)opens. */
async function follow() {
  const controller = new AbortController();
  following = controller;
  for (;;) {
    showStream('connecting');
    try {
      const response = await api('/api/v1/events', { signal: controller.signal });
      if (!response.ok) throw new Error(`${response.status}`);
      await readEvents(response.body, controller.signal);
    } catch (error) {
      if (error instanceof Unauthorized) return askForToken('The token was refused.');
      if (controller.signal.aborted) return;
    }
    if (controller.signal.aborted) return;
    // The stream ended (shutdown, or this page fell behind): list again, then follow.
    showStream('reconnecting');
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

/** Reads SSE blocks off `body`; lists the fleet once the stream is open. */
async function readEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener('abort', () => reader.cancel().catch(() => {}));
  let buffer = '';
  let listed = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      handleBlock(block);
    }
    if (!listed) {
      // Subscribed: a listing now misses nothing, and events older than it are
      // told apart by their time (see applyAgentEvent).
      listed = true;
      await relist();
      showStream('live');
    }
  }
}

function handleBlock(block) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return;
  let payload;
  try {
    payload = JSON.parse(data.join('\n'));
  } catch {
    return;
  }
  if (name === 'agent') applyAgentEvent(payload);
  else if (name === 'rollout') applyRollout(payload);
  else if (name === 'brake') showBrake(payload);
}

async function relist() {
  const arrived = [];
  state.arrivedWhileListing = arrived;
  let agents;
  try {
    agents = await json('/api/v1/agents');
  } finally {
    if (state.arrivedWhileListing === arrived) state.arrivedWhileListing = null;
  }
  state.agents = new Map(agents.map((agent) => [agent.agentId, agent]));
  state.stale.clear();
  // The listing may predate some of them: each applies only if it is not older.
  for (const event of arrived) applyAgentEvent(event);
  render();
}

/** Applies one `agent` event; an event older than what is shown is ignored. */
function applyAgentEvent(event) {
  if (state.arrivedWhileListing) state.arrivedWhileListing.push(event);
  const known = state.agents.get(event.agentId);
  if (known && event.at < known.statusChangedAt) return;
  if (event.to === null) {
    state.agents.delete(event.agentId);
    if (state.selected === event.agentId) selectAgent(null);
    return render();
  }
  const agent = known || { agentId: event.agentId, version: null, lastHeartbeatAt: event.at };
  const connectedBefore = agent.connected;
  agent.group = event.group;
  agent.status = event.to;
  agent.statusChangedAt = event.at;
  if (typeof event.connected === 'boolean') agent.connected = event.connected;
  // Becoming LIVE is a heartbeat or a registration at that moment.
  if (event.to === 'LIVE' && event.from !== 'LIVE') agent.lastHeartbeatAt = event.at;
  state.agents.set(event.agentId, agent);
  // New, or the same status and connection: its metadata changed. Read it.
  if (!known || (event.from === event.to && agent.connected === connectedBefore)) {
    state.stale.add(event.agentId);
    scheduleRefresh();
  }
  render();
}

let refreshTimer = null;
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const ids = [...state.stale];
    state.stale.clear();
    try {
      if (ids.length > MAX_SINGLE_REFRESH) return await relist();
      await Promise.all(ids.map(async (id) => {
        const response = await api(`/api/v1/agents/${encodeURIComponent(id)}`);
        if (response.ok) {
          const agent = await response.json();
          const shown = state.agents.get(id);
          if (!shown || agent.statusChangedAt >= shown.statusChangedAt) state.agents.set(id, agent);
        }
      }));
      render();
    } catch {
      // The next listing catches up.
    }
  }, 250);
}

function showStream(what) {
  const pill = $('stream-state');
  pill.dataset.state = what;
  pill.textContent = what === 'live' ? 'live' : what;
}

function showBrake(brake) {
  $('brake').hidden = !brake.engaged;
  $('brake').title = brake.at ? `since ${brake.at}` : '';
}

// --- drawing ----------------------------------------------------------------

function render() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    draw();
  });
}

function draw() {
  const counts = { LIVE: 0, STALE: 0, DEAD: 0 };
  let connected = 0;
  const groups = new Set();
  for (const agent of state.agents.values()) {
    counts[agent.status] += 1;
    if (agent.connected) connected += 1;
    groups.add(agent.group);
  }
  for (const status of STATUSES) $(`count-${status}`).textContent = counts[status];
  $('count-all').textContent = state.agents.size;
  $('count-connected').textContent = connected;
  drawGroups([...groups].sort());
  drawAgents();
}

function drawGroups(groups) {
  const key = groups.join('\n');
  if (key === state.groups) return;
  state.groups = key;
  const select = $('filter-group');
  const chosen = select.value;
  select.replaceChildren(option('', 'any'), ...groups.map((group) => option(group, group)));
  select.value = groups.includes(chosen) ? chosen : '';
  if (targetKind() === 'group') fillTargetNames();
}

function drawAgents() {
  const status = $('filter-status').value;
  const group = $('filter-group').value;
  const matching = [...state.agents.values()]
    .filter((agent) => (!status || agent.status === status) && (!group || agent.group === group))
    .sort((a, b) => (a.agentId < b.agentId ? -1 : a.agentId > b.agentId ? 1 : 0));
  const rows = matching.slice(0, MAX_ROWS).map((agent) => {
    const row = document.createElement('tr');
    row.dataset.agentId = agent.agentId;
    row.dataset.status = agent.status;
    if (agent.agentId === state.selected) row.classList.add('selected');
    row.append(
      cell(agent.agentId, 'id'),
      cell(agent.status, 'status'),
      cell(agent.group),
      cell(agent.version || '—'),
      cell(ago(agent.lastHeartbeatAt), '', agent.lastHeartbeatAt),
      cell(agent.connected ? 'yes' : 'no', agent.connected ? 'yes' : 'no'),
    );
    return row;
  });
  $('agent-rows').replaceChildren(...rows);
  $('shown').textContent = matching.length > MAX_ROWS
    ? `first ${MAX_ROWS} of ${matching.length}: filter to narrow`
    : `${matching.length} shown`;
}

function cell(text, className, title) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  if (title) td.title = title;
  return td;
}

function option(value, text) {
  const element = document.createElement('option');
  element.value = value;
  element.textContent = text;
  return element;
}

function ago(timestamp) {
  if (!timestamp) return '—';
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(timestamp)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return timestamp.replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

$('filter-status').addEventListener('change', drawAgents);
for (const card of document.querySelectorAll('.count[data-status]')) {
  card.addEventListener('click', () => {
    const select = $('filter-status');
    select.value = select.value === card.dataset.status ? '' : card.dataset.status;
    drawAgents();
  });
}
$('filter-group').addEventListener('change', drawAgents);
// Ages move on even when nothing changes.
setInterval(drawAgents, 5000);

$('agent-rows').addEventListener('click', (event) => {
  const row = event.target.closest('tr');
  if (row) selectAgent(row.dataset.agentId);
});

// --- an agent's commands ----------------------------------------------------

async function selectAgent(agentId) {
  state.selected = agentId;
  drawAgents();
  $('commands-agent').textContent = agentId || '…';
  $('commands-hint').hidden = !!agentId;
  $('commands-refresh').hidden = !agentId;
  $('commands-table').hidden = !agentId;
  if (!agentId) return;
  if (targetKind() === 'agent') $('target-name').value = agentId;
  try {
    const commands = await json(`/api/v1/agents/${encodeURIComponent(agentId)}/commands`);
    if (state.selected !== agentId) return;
    $('command-rows').replaceChildren(...commands.map((command) => {
      const row = document.createElement('tr');
      row.dataset.status = command.status;
      row.append(
        cell(ago(command.createdAt), '', `${command.commandId}\n${command.createdAt}`),
        cell(command.type),
        cell(command.status, 'status'),
        cell([command.result, command.message].filter(Boolean).join(': ') || '—'),
      );
      return row;
    }));
  } catch (error) {
    $('command-rows').replaceChildren();
    $('commands-hint').hidden = false;
    $('commands-hint').textContent = error.message;
  }
}

$('commands-refresh').addEventListener('click', () => selectAgent(state.selected));

// --- pushing a command ------------------------------------------------------

function targetKind() {
  return document.querySelector('input[name=target]:checked').value;
}

function fillTargetNames() {
  const kind = targetKind();
  const names = kind === 'agent' ? [...state.agents.keys()].sort().slice(0, MAX_ROWS)
    : kind === 'group' ? state.groups.split('\n').filter(Boolean) : [];
  $('target-names').replaceChildren(...names.map((name) => option(name, name)));
}

for (const radio of document.querySelectorAll('input[name=target]')) {
  radio.addEventListener('change', () => {
    const fleet = targetKind() === 'fleet';
    $('target-name-label').hidden = fleet;
    $('target-name').required = !fleet;
    $('target-name').value = '';
    fillTargetNames();
  });
}
$('target-name').addEventListener('focus', fillTargetNames);

/** The allowed command types, read from the OpenAPI document (open, no token). */
async function loadCommandTypes() {
  let types = ['config-update', 'deep-trace', 'replay'];
  try {
    const document = await (await fetch('/api/v1/openapi.json')).json();
    const listed = document.components.schemas.CommandRequest.properties.type.enum;
    if (Array.isArray(listed) && listed.length) types = listed;
  } catch {
    // The defaults, then: the server names the allowed types if one is wrong.
  }
  $('command-type').replaceChildren(...types.map((type) => option(type, type)));
}

$('push-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('push-result');
  let payload;
  try {
    payload = JSON.parse($('payload').value || '{}');
  } catch (error) {
    result.textContent = `The payload is not JSON: ${error.message}`;
    result.className = 'error';
    return;
  }
  const kind = targetKind();
  const name = encodeURIComponent($('target-name').value.trim());
  const path = kind === 'agent' ? `/api/v1/agents/${name}/commands`
    : kind === 'group' ? `/api/v1/agents/groups/${name}/commands` : '/api/v1/agents/commands';
  try {
    const answer = await json(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ type: $('command-type').value, payload }),
    });
    result.className = 'muted';
    if (kind === 'agent') {
      result.textContent = `Command ${answer.commandId}: ${answer.status}`;
      selectAgent(answer.agentId);
    } else {
      result.textContent = `Pushed to ${answer.targeted} agent${answer.targeted === 1 ? '' : 's'}`
        + (answer.skipped ? ` (${answer.skipped} skipped)` : '');
      const target = kind === 'group' ? `group:${decodeURIComponent(name)}` : 'fleet';
      trackRollout({ type: $('command-type').value, ...answer }, target);
    }
  } catch (error) {
    if (error instanceof Unauthorized) return askForToken('The token was refused.');
    result.textContent = error.message;
    result.className = 'error';
  }
});

// --- rollouts ---------------------------------------------------------------

/** Shows the rollout a push started, then reads its counts (events keep them current). */
async function trackRollout(answer, target) {
  const id = answer.rolloutId || `push-${Date.now()}`;
  if (!state.rollouts.has(id)) {
    state.rollouts.set(id, {
      rolloutId: answer.rolloutId || null, type: answer.type, target,
      createdAt: answer.createdAt, targeted: answer.targeted, skipped: answer.skipped || 0,
      pending: answer.targeted, delivered: 0, acknowledged: 0, succeeded: 0, failed: 0,
      expired: 0, done: answer.targeted === 0, counted: false,
    });
  }
  drawRollouts();
  if (!answer.rolloutId) return;
  try {
    applyRollout(await json(`/api/v1/rollouts/${answer.rolloutId}`));
  } catch {
    // Events bring the counts.
  }
}

/** Commands that reached a final status: a rollout's progress never goes back. */
const finished = (view) => view.acknowledged + view.expired;

function applyRollout(view) {
  const known = state.rollouts.get(view.rolloutId);
  // The answer to GET and the stream's events may cross: an older view (a
  // `done` one is final) arriving late changes nothing.
  if (known && known.counted && (known.done || finished(view) < finished(known))) return;
  state.rollouts.set(view.rolloutId, { ...view, counted: true });
  drawRollouts();
}

function drawRollouts() {
  const views = [...state.rollouts.values()]
    .sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1))
    .slice(0, 5);
  if (!views.length) return;
  $('rollout-list').replaceChildren(...views.map(drawRollout));
}

function drawRollout(view) {
  const box = document.createElement('div');
  box.className = 'rollout';
  box.dataset.rolloutId = view.rolloutId || '';
  box.dataset.done = String(!!view.done);
  const title = document.createElement('div');
  title.className = 'rollout-title';
  title.textContent = `${view.type} → ${view.target}`;
  const bar = document.createElement('div');
  bar.className = 'bar';
  const total = Math.max(1, view.targeted);
  for (const [part, count] of [['succeeded', view.succeeded], ['failed', view.failed],
    ['expired', view.expired], ['delivered', view.delivered], ['pending', view.pending]]) {
    const span = document.createElement('span');
    span.className = part;
    span.style.width = `${(100 * count) / total}%`;
    bar.append(span);
  }
  const line = document.createElement('div');
  line.className = 'rollout-counts';
  line.textContent = view.counted
    ? `${view.acknowledged}/${view.targeted} acknowledged (${view.succeeded} ok, ${view.failed} failed),`
      + ` ${view.delivered} delivered, ${view.pending} pending, ${view.expired} expired`
      + (view.done ? ' — done' : '')
    : `${view.targeted} targeted`;
  box.append(title, bar, line);
  return box;
}

// --- rollouts already running, when the server keeps them --------------------

async function loadRollouts() {
  try {
    const response = await api('/api/v1/rollouts');
    if (!response.ok) return;
    for (const view of await response.json()) applyRollout(view);
  } catch {
    // A server without rollouts: only pushes from this page are shown.
  }
}

start().catch((error) => {
  document.body.append(Object.assign(document.createElement('p'), {
    className: 'error', textContent: `The page could not start: ${error.message}`,
  }));
});
