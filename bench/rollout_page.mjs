// How long a rollout to N agents takes to show `done` on the web page after the
// last ack: the release server (state in memory), N agents registered over HTTP,
// the page open in Debian's headless Chromium, a fleet command pushed from the
// page's form, all commands but one acknowledged from Node (32 at a time), then
// the last one alone; the moment the page draws the rollout as done (a
// MutationObserver in the page) is compared with the moment that last ack was
// sent and the moment it was answered. Each run starts a fresh server; medians
// are printed. Run from the repository's root:
//
//   cargo build --release -p registry-server
//   (cd tests/browser && npm ci)
//   node bench/rollout_page.mjs --agents 10000 --runs 3 [--embedded]
import { launchBrowser, startServer } from '../tests/browser/support.mjs';

const option = (name, fallback) => {
  const at = process.argv.indexOf(name);
  return at >= 0 ? Number(process.argv[at + 1]) : fallback;
};
const AGENTS = option('--agents', 10000);
/** `--embedded`: the server keeps its state in its file (in a temporary folder), as by default. */
const ENGINE = process.argv.includes('--embedded') ? 'embedded' : 'memory';
const RUNS = option('--runs', 3);
const CONCURRENCY = 32;
const WITHIN = { timeout: 120000 };

/** Runs `task(i)` for i in 0..count, `CONCURRENCY` at a time. */
async function inParallel(count, task) {
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < count) await task(next++);
  }));
}

async function post(url, body) {
  const response = await fetch(url, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`POST ${url}: ${response.status} ${await response.text()}`);
  return response;
}

async function run(browser) {
  const server = await startServer({ REGISTRY_STORAGE__ENGINE: ENGINE }, 'release');
  try {
    await inParallel(AGENTS, (n) => post(`${server.base}/api/v1/agents/register`,
      { agentId: `agent-${String(n).padStart(6, '0')}`, name: 'bench', group: `g-${n % 16}` }));
    const page = await browser.context.newPage();
    await page.goto(`${server.base}/`);
    await page.waitForSelector('#stream-state[data-state="live"]', WITHIN);
    await page.waitForFunction((n) => document.getElementById('count-LIVE').textContent === String(n),
      AGENTS, WITHIN);
    // The page notes when it first draws a rollout as done.
    await page.evaluate(() => {
      window.doneDrawnAt = null;
      new MutationObserver(() => {
        if (!window.doneDrawnAt && document.querySelector('#rollout-list .rollout[data-done="true"]')) {
          window.doneDrawnAt = Date.now();
        }
      }).observe(document.getElementById('rollout-list'), { childList: true, subtree: true, attributes: true });
    });

    await page.check('input[name=target][value=fleet]');
    await page.selectOption('#command-type', 'config-update');
    await page.fill('#payload', '{"sampling": 0.25}');
    const answered = page.waitForResponse((r) => r.url().endsWith('/api/v1/agents/commands'), WITHIN);
    const pushedAt = Date.now();
    await page.click('#push-form button[type=submit]');
    const rollout = await (await answered).json();
    const pushMs = Date.now() - pushedAt;
    if (rollout.targeted !== AGENTS) throw new Error(`targeted ${rollout.targeted}`);

    const ack = ({ commandId, agentId }) =>
      post(`${server.base}/api/v1/agents/${agentId}/commands/${commandId}/ack`, { result: 'SUCCESS' });
    const acksFrom = Date.now();
    await inParallel(AGENTS - 1, (n) => ack(rollout.commands[n]));
    const acksMs = Date.now() - acksFrom;
    const lastSentAt = Date.now();
    await ack(rollout.commands[AGENTS - 1]);
    const lastAnsweredAt = Date.now();
    const doneDrawnAt = await (await page.waitForFunction(() => window.doneDrawnAt, null, WITHIN)).jsonValue();
    const shown = await page.textContent('#rollout-list .rollout[data-done="true"] .rollout-counts');
    await page.close();
    return {
      pushMs, acksMs, lastAckMs: lastAnsweredAt - lastSentAt,
      doneMs: doneDrawnAt - lastSentAt, doneAfterAnswerMs: doneDrawnAt - lastAnsweredAt, shown,
    };
  } finally {
    await server.stop();
  }
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

const browser = await launchBrowser();
try {
  const runs = [];
  for (let i = 0; i < RUNS; i += 1) {
    const result = await run(browser);
    console.error(`run ${i + 1}: push answered in ${result.pushMs} ms, ${AGENTS - 1} acks in ${result.acksMs} ms, `
      + `the last answered in ${result.lastAckMs} ms, done drawn ${result.doneMs} ms after it was sent `
      + `(${result.doneAfterAnswerMs} ms after its answer): ${result.shown}`);
    runs.push(result);
  }
  console.log(`| rollout to ${AGENTS} agents, storage ${ENGINE} | median of ${RUNS} runs | runs |`);
  console.log('| --- | --- | --- |');
  for (const [name, key] of [['push answered (from the form)', 'pushMs'],
    [`${AGENTS - 1} acks answered, 32 at a time`, 'acksMs'], ['the last ack answered', 'lastAckMs'],
    ['`done` drawn on the page, from the last ack sent', 'doneMs'],
    ['`done` drawn on the page, from the last ack answered', 'doneAfterAnswerMs']]) {
    const values = runs.map((r) => r[key]);
    console.log(`| ${name} | ${median(values)} ms | ${values.join(', ')} |`);
  }
} finally {
  await browser.close();
}
