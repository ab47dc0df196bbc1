// What the browser test and the rollout measurement share: the real
// registry-server binary on a free loopback port, agents played over HTTP and
// SSE, and Debian's Chromium driven by playwright-core (never a browser download).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/**
 * Starts `target/<profile>/registry-server` (REGISTRY_SERVER overrides the path)
 * on 127.0.0.1:0 in an empty working directory, with `env` added to the
 * environment (REGISTRY_<SECTION>__<KEY> settings; storage in memory unless
 * `env` says otherwise); resolves once it logs
 * where it listens.
 */
export async function startServer(env = {}, profile = 'debug') {
  const binary = process.env.REGISTRY_SERVER || join(ROOT, 'target', profile, 'registry-server');
  const workdir = mkdtempSync(join(tmpdir(), 'registry-browser-'));
  const child = spawn(binary, ['--bind', '127.0.0.1:0'], {
    cwd: workdir,
    env: {
      ...process.env, NO_COLOR: '1', RUST_LOG: 'warn,registry_server=info',
      REGISTRY_STORAGE__ENGINE: 'memory', ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const base = await new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`the server did not listen within 20 s:\n${log}`)), 20000);
    const read = (chunk) => {
      log += chunk;
      const found = /listening on (http:\/\/[0-9.:]+)/.exec(log);
      if (found) {
        clearTimeout(timer);
        done(found[1]);
      }
    };
    child.stdout.on('data', read);
    child.stderr.on('data', read);
    child.on('exit', (code) => fail(new Error(`the server exited (${code}) at start:\n${log}`)));
  });
  return {
    base,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((done) => child.once('exit', done));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(workdir, { recursive: true, force: true });
    },
  };
}

/** Launches headless Chromium with a fresh profile; `close()` removes it. */
export async function launchBrowser() {
  const profile = mkdtempSync(join(tmpdir(), 'registry-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 760 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** An agent played from Node: registers, heartbeats, and acks what its stream brings. */
export class Agent {
  constructor(base, agentId, group, { version = '1.4.2', token } = {}) {
    Object.assign(this, { base, agentId, group, version, enrollment: token });
    this.controller = new AbortController();
    this.timers = [];
    this.acked = [];
  }

  headers(token) {
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  async register() {
    const response = await fetch(`${this.base}/api/v1/agents/register`, {
      method: 'POST',
      headers: this.headers(this.enrollment),
      body: JSON.stringify({ agentId: this.agentId, name: 'demo-service', group: this.group,
        version: this.version, routeIds: ['route-1'], capabilities: ['replay'] }),
    });
    if (!response.ok) throw new Error(`register ${this.agentId}: ${response.status}`);
    this.token = (await response.json()).agentToken;
    return this;
  }

  heartbeatEvery(ms) {
    this.timers.push(setInterval(() => {
      fetch(`${this.base}/api/v1/agents/${this.agentId}/heartbeat`, {
        method: 'POST', headers: this.headers(this.token), signal: this.controller.signal,
      }).catch(() => {});
    }, ms));
    return this;
  }

  /** Opens the stream and acks each command with SUCCESS. */
  async stream() {
    const response = await fetch(`${this.base}/api/v1/agents/${this.agentId}/events`, {
      headers: this.headers(this.token), signal: this.controller.signal,
    });
    if (!response.ok) throw new Error(`stream ${this.agentId}: ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    (async () => {
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const id = /^id: (.+)$/m.exec(block);
          if (id) await this.ack(id[1]);
        }
      }
    })().catch(() => {});
    return this;
  }

  async ack(commandId, result = 'SUCCESS') {
    const response = await fetch(
      `${this.base}/api/v1/agents/${this.agentId}/commands/${commandId}/ack`, {
        method: 'POST', headers: this.headers(this.token), signal: this.controller.signal,
        body: JSON.stringify({ result, message: 'applied' }),
      });
    if (response.ok) this.acked.push(commandId);
    return response;
  }

  stop() {
    this.timers.forEach(clearInterval);
    this.controller.abort();
  }
}
