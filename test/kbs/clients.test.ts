import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs } from '../../src/kbs/app.js';
import type { RunningKbs } from '../../src/kbs/app.js';
import { attestAndFetch, backoffDelay } from '../../src/kbs/client/rcar.js';
import type { AttestAndFetchOptions } from '../../src/kbs/client/rcar.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { parseLaunchPlan } from '../../src/kbs/launch-plan.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { CocoonError, isCocoonError } from '../../src/errors.js';
import { renderInitData } from '../../src/kbs/init-data.js';
import { MEASUREMENT, POLICY_YAML, fakeEvidence, fakeVerifier } from './helpers.js';

interface Env {
  kbs: RunningKbs;
  owner: OwnerClient;
  dir: string;
}

async function withEnv(fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-client-'));
  try {
    const keys = await createOwnerKey(join(dir, 'owner.jwk'));
    const kbs = await startKbs({ dataDir: join(dir, 'data'), verifier: fakeVerifier, allowSim: true, owners: [await loadOwnerPublicJwk(keys.publicFile)], logger: false, port: 0 });
    try {
      const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: keys.privateFile });
      await fn({ kbs, owner, dir });
    } finally {
      await kbs.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function launcherOptions(url: string, over: Partial<AttestAndFetchOptions> = {}): AttestAndFetchOptions {
  return {
    kbsUrl: url,
    tee: 'sim',
    evidenceProvider: async (rd) => fakeEvidence(rd),
    initData: { policy: 'demo/redis', workload: 'redis' },
    resources: ['demo/redis/launch-plan', 'demo/redis/redis-password'],
    retry: { attempts: 3, baseDelayMs: 5, maxDelayMs: 20 },
    timeoutMs: 5000,
    ...over,
  };
}

async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

test('owner key files: private 0600, never overwritten', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-owner-'));
  try {
    const k = await createOwnerKey(join(dir, 'owner.jwk'));
    assert.equal(statSync(k.privateFile).mode & 0o777, 0o600);
    assert.equal(k.publicFile, join(dir, 'owner.pub.jwk'));
    assert.equal((await loadOwnerPublicJwk(k.privateFile)).d, undefined);
    await assert.rejects(createOwnerKey(join(dir, 'owner.jwk')), (e: unknown) => e instanceof CocoonError && e.code === 'CONFLICT');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('owner client + launcher client end to end over a real socket', () =>
  withEnv(async ({ kbs, owner }) => {
    const id = await owner.identity();
    assert.equal(id.allowSim, true);
    const v1 = await owner.applyPolicy(POLICY_YAML, { file: 'shop.yaml' });
    assert.equal(v1.version, 1);
    const v2 = await owner.applyPolicy(POLICY_YAML + '# again\n');
    assert.equal(v2.version, 2);
    assert.deepEqual((await owner.policyHistory('demo/redis')).map((v) => v.version), [2, 1]);
    await owner.putSecret('demo/redis', 'layer-key', Buffer.alloc(32, 9));
    const pw = await owner.getSecret('demo/redis', 'redis-password');
    await assert.rejects(owner.getSecret('demo/redis', 'api-token'), (e: unknown) => e instanceof CocoonError && e.code === 'FORBIDDEN');
    await assert.rejects(owner.applyPolicy('name: demo/redis\nworkloads: {x: {accept: []}}\n', { file: 'bad.yaml' }), (e: unknown) => e instanceof CocoonError && e.code === 'POLICY_INVALID' && e.message.startsWith('bad.yaml:2:'));
    await assert.rejects(owner.applyPolicy(POLICY_YAML, { predecessor: v1.hash }), (e: unknown) => e instanceof CocoonError && e.code === 'PREDECESSOR_MISMATCH');

    let retries = 0;
    const out = await attestAndFetch(launcherOptions(kbs.url, { onRetry: () => retries++ }));
    assert.equal(retries, 0);
    assert.equal(out.insecure, true);
    const plan = parseLaunchPlan(out.resources['demo/redis/launch-plan']);
    assert.deepEqual(plan.layerKey, Buffer.alloc(32, 9));
    assert.equal(plan.env.REDIS_PW, pw.toString());
    assert.deepEqual(out.resources['demo/redis/redis-password'], pw);

    const events = await owner.listEvents({ limit: 10, policy: 'demo/redis' });
    assert.ok(events.some((e) => e.kind === 'attest' && e.status === 'affirming' && e.insecure));
  }));

test('launcher client: a 4xx is final (no retry); the wrong owner key is refused', () =>
  withEnv(async ({ kbs, owner, dir }) => {
    await owner.applyPolicy(POLICY_YAML);
    let retries = 0;
    await assert.rejects(
      attestAndFetch(launcherOptions(kbs.url, { evidenceProvider: async (rd) => fakeEvidence(rd, 'ee'.repeat(48)), onRetry: () => retries++ })),
      (e: unknown) => e instanceof CocoonError && e.code === 'POLICY_DENIED',
    );
    assert.equal(retries, 0);
    const other = await createOwnerKey(join(dir, 'other.jwk'));
    const stranger = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: other.privateFile });
    await assert.rejects(stranger.listEvents(), (e: unknown) => e instanceof CocoonError && e.code === 'AUTH_INVALID');
    assert.equal(MEASUREMENT.length, 96);
  }));

test('launcher client retries 5xx with backoff, then succeeds', () =>
  withEnv(async ({ kbs, owner }) => {
    await owner.applyPolicy(POLICY_YAML);
    await owner.putSecret('demo/redis', 'layer-key', Buffer.alloc(32, 1));
    let calls = 0;
    const flaky: typeof fetch = async (input, init) => {
      calls++;
      if (calls === 1) return new Response(JSON.stringify({ detail: 'overloaded' }), { status: 503 });
      return fetch(input, init);
    };
    const delays: number[] = [];
    const out = await attestAndFetch(launcherOptions(kbs.url, { fetchImpl: flaky, onRetry: (_a, _e, d) => delays.push(d) }));
    assert.equal(delays.length, 1);
    assert.ok(out.resources['demo/redis/launch-plan']);
  }));

test('launcher client: closed port → retries with backoff, then KBS_UNREACHABLE', async () => {
  const port = await closedPort();
  const attempts: number[] = [];
  const started = Date.now();
  await assert.rejects(
    attestAndFetch(launcherOptions(`http://127.0.0.1:${port}`, { retry: { attempts: 4, baseDelayMs: 2, maxDelayMs: 8 }, onRetry: (a) => attempts.push(a) })),
    (e: unknown) => e instanceof CocoonError && e.code === 'KBS_UNREACHABLE' && /after 4 attempt/.test(e.message) && e.message.includes(`127.0.0.1:${port}`),
  );
  assert.deepEqual(attempts, [1, 2, 3]);
  assert.ok(Date.now() - started < 5000);
});

test('backoff grows exponentially, is capped and jittered', () => {
  const r = { attempts: 10, baseDelayMs: 100, maxDelayMs: 1000 };
  for (let i = 0; i < 50; i++) {
    const d1 = backoffDelay(1, r);
    const d3 = backoffDelay(3, r);
    const d9 = backoffDelay(9, r);
    assert.ok(d1 >= 50 && d1 <= 100);
    assert.ok(d3 >= 200 && d3 <= 400);
    assert.ok(d9 >= 500 && d9 <= 1000);
  }
});

test('launcher client bounds the response size', async () => {
  const huge: typeof fetch = async () => new Response('x'.repeat(2048), { status: 200, headers: { 'content-type': 'application/json' } });
  await assert.rejects(
    attestAndFetch(launcherOptions('http://127.0.0.1:1', { fetchImpl: huge, maxResponseBytes: 1024 })),
    (e: unknown) => e instanceof CocoonError && e.code === 'INPUT_TOO_LARGE',
  );
});

test('launcher client sends CoCo TOML init-data when it has it; the KBS selects the workload from it', () =>
  withEnv(async ({ kbs, owner }) => {
    await owner.applyPolicy(POLICY_YAML);
    await owner.putSecret('demo/redis', 'layer-key', Buffer.alloc(32, 1));
    const { toml } = renderInitData({ policy: 'demo/redis', workload: 'redis' });
    const sent: unknown[] = [];
    const capture: typeof fetch = async (input, init) => {
      if (String(input).endsWith('/kbs/v0/attest')) sent.push(JSON.parse(String(init?.body))['init-data']);
      return fetch(input, init);
    };
    const out = await attestAndFetch(launcherOptions(kbs.url, { fetchImpl: capture, initData: { policy: 'demo/redis', workload: 'redis', toml } }));
    assert.ok(out.resources['demo/redis/launch-plan']);
    assert.deepEqual(sent, [{ format: 'toml', body: toml }]);
    // without it: Cocoon's unbound JSON selection, exactly {policy, workload}
    await attestAndFetch(launcherOptions(kbs.url, { fetchImpl: capture }));
    assert.deepEqual(sent[1], { format: 'json', body: '{"policy":"demo/redis","workload":"redis"}' });
    // a TOML for another workload selects that workload, whatever policy/workload say
    const other = renderInitData({ policy: 'demo/redis', workload: 'worker' }).toml;
    await assert.rejects(attestAndFetch(launcherOptions(kbs.url, { initData: { policy: 'demo/redis', workload: 'redis', toml: other } })), (e) => isCocoonError(e, 'POLICY_DENIED'));
  }));
