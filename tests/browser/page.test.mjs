// The web page end to end, as an operator uses it: Debian's headless Chromium
// (playwright-core, executablePath /usr/bin/chromium) against the real
// registry-server binary, with agents played from Node over HTTP and SSE.
//
//   cargo build -p registry-server && cd tests/browser && npm ci && npm test
//
// The screenshot goes to target/browser/fleet-page.png (SCREENSHOT overrides
// it; docs/fleet-page.png is the one the README shows).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { Agent, ROOT, launchBrowser, startServer } from './support.mjs';

const SCREENSHOT = process.env.SCREENSHOT || join(ROOT, 'target', 'browser', 'fleet-page.png');
/** Long enough to wait for a change the server makes on its own clock. */
const WITHIN = { timeout: 15000 };

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const row = (agentId) => `#agent-rows tr[data-agent-id="${agentId}"]`;

test('the page shows the fleet live, pushes a group command and shows its rollout reach done', async () => {
  const server = await startServer({
    REGISTRY_LIFECYCLE__STALE_AFTER: '2s',
    REGISTRY_LIFECYCLE__DEAD_AFTER: '3s',
  });
  const agents = [];
  try {
    const page = await browser.context.newPage();
    await page.goto(`${server.base}/`);
    await page.waitForSelector('#stream-state[data-state="live"]', WITHIN);
    // Set once: a reload would lose it.
    await page.evaluate(() => { window.notReloaded = true; });

    // Agents that register after the page loaded appear in it.
    for (const [agentId, group, version] of [
      ['checkout-1', 'checkout-prod', '2.3.0'], ['checkout-2', 'checkout-prod', '2.3.0'],
      ['checkout-3', 'checkout-prod', '2.3.1'], ['search-1', 'search-prod', '5.0.2'],
      ['search-2', 'search-prod', '5.0.2'],
    ]) {
      const agent = new Agent(server.base, agentId, group, { version });
      agents.push(agent);
      await agent.register();
      agent.heartbeatEvery(500);
      await agent.stream();
    }
    // These never heartbeat: STALE after 2 s, DEAD 3 s later.
    for (const [agentId, group] of [['batch-1', 'batch-nightly'], ['batch-2', 'batch-nightly']]) {
      const agent = new Agent(server.base, agentId, group, { version: '0.9.7' });
      agents.push(agent);
      await agent.register();
    }
    for (const agent of agents) await page.waitForSelector(row(agent.agentId), WITHIN);
    await page.waitForSelector(`${row('checkout-1')} td.yes`, WITHIN);
    // A new agent's event names no version: the page reads it a moment later.
    await page.waitForFunction(
      (cell) => document.querySelector(cell)?.textContent === '2.3.1',
      `${row('checkout-3')} td:nth-child(4)`,
      WITHIN,
    );

    // One turns STALE without a reload, and the counts follow.
    await page.waitForSelector(`${row('batch-1')}[data-status="STALE"]`, WITHIN);
    await page.waitForFunction(() => document.getElementById('count-STALE').textContent === '2', null, WITHIN);
    assert.equal(await page.textContent('#count-LIVE'), '5');

    // The filters narrow the table.
    await page.selectOption('#filter-status', 'STALE');
    assert.equal(await page.locator('#agent-rows tr').count(), 2);
    await page.selectOption('#filter-status', '');
    await page.selectOption('#filter-group', 'checkout-prod');
    assert.equal(await page.locator('#agent-rows tr').count(), 3);

    // A group command from the form; the agents ack what their streams bring.
    await page.check('input[name=target][value=group]');
    await page.fill('#target-name', 'checkout-prod');
    await page.selectOption('#command-type', 'config-update');
    await page.fill('#payload', '{"sampling": 0.25}');
    await page.click('#push-form button[type=submit]');
    await page.waitForFunction(
      () => document.getElementById('push-result').textContent.startsWith('Pushed to 3 agents'),
      null, WITHIN);
    await page.waitForSelector('#rollout-list .rollout', WITHIN);
    await waitFor(() => agents.slice(0, 3).every((agent) => agent.acked.length === 1), 'three acks');
    // The rollout fills in from the fleet stream's rollout events, to done.
    await page.waitForSelector('#rollout-list .rollout[data-done="true"]', WITHIN);
    assert.match(await page.textContent('#rollout-list .rollout'),
      /config-update → group:checkout-prod.*3\/3 acknowledged \(3 ok, 0 failed\).*done/);

    // An agent's commands: the one it acknowledged.
    await page.click(row('checkout-2'));
    await page.waitForSelector('#command-rows tr[data-status="ACKNOWLEDGED"]', WITHIN);
    assert.match(await page.textContent('#command-rows'), /config-update.*ACKNOWLEDGED.*SUCCESS: applied/);

    // batch agents go DEAD; the whole fleet again for the picture.
    await page.selectOption('#filter-group', '');
    await page.waitForFunction(() => document.getElementById('count-DEAD').textContent === '2', null, WITHIN);
    assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page never reloaded');

    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    await page.close();
  } finally {
    agents.forEach((agent) => agent.stop());
    await server.stop();
  }
});

test('with tokens configured the page asks for an operator token and keeps it for the tab', async () => {
  const server = await startServer({
    REGISTRY_AUTH__OPERATOR_TOKENS: 'operator-secret-5b2e',
    REGISTRY_AUTH__ENROLLMENT_TOKENS: 'enrollment-secret-c41d',
  });
  const agent = new Agent(server.base, 'secured-1', 'secured-prod', { token: 'enrollment-secret-c41d' });
  try {
    const page = await browser.context.newPage();
    await page.goto(`${server.base}/`);
    await page.waitForSelector('#login:not([hidden])', WITHIN);

    await page.fill('#token', 'not-the-token');
    await page.click('#login button[type=submit]');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('refused'), null, WITHIN);

    await page.fill('#token', 'operator-secret-5b2e');
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#stream-state[data-state="live"]', WITHIN);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('registry.operatorToken')), 'operator-secret-5b2e');

    // The fleet stream, read with fetch and the bearer header, brings the agent.
    await agent.register();
    await agent.stream();
    await page.waitForSelector(`${row('secured-1')} td.yes`, WITHIN);

    // A reload in the same tab keeps the token.
    await page.reload();
    await page.waitForSelector(row('secured-1'), WITHIN);
    assert.equal(await page.isHidden('#login'), true);
    await page.close();
  } finally {
    agent.stop();
    await server.stop();
  }
});

async function waitFor(condition, what, within = WITHIN.timeout) {
  const deadline = Date.now() + within;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${within} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
