import { test } from 'node:test';
import assert from 'node:assert/strict';
import { flattenedDecrypt } from 'jose';
import type { FlattenedJWE } from 'jose';
import { parseLaunchPlan } from '../../src/kbs/launch-plan.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { isCocoonError } from '../../src/errors.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { POLICY_YAML, applyDemoPolicy, makeKbs, ownerRequest, rcarAttest } from './helpers.js';
import type { TestKbs } from './helpers.js';

const VOLUMES_YAML = POLICY_YAML.replace(
  '    args: ["redis-server", "/run/cocoon/redis.conf"]\n',
  '    args: ["redis-server", "/run/cocoon/redis.conf"]\n    volumes:\n      - { name: data, mountPath: /data }\n      - { name: logs, mountPath: /var/log/redis, allowRollback: true }\n',
);

async function withKbs(fn: (kbs: TestKbs) => Promise<void>): Promise<void> {
  const kbs = await makeKbs();
  try {
    await applyDemoPolicy(kbs, VOLUMES_YAML);
    const res = await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/layer-key', { value: Buffer.alloc(32, 7).toString('base64') });
    assert.equal(res.statusCode, 200, res.body);
    await fn(kbs);
  } finally {
    await kbs.cleanup();
  }
}

async function plan(kbs: TestKbs) {
  const { attest, cookie, key } = await rcarAttest(kbs);
  assert.equal(attest.statusCode, 200, attest.body);
  const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/launch-plan', headers: { cookie } });
  assert.equal(res.statusCode, 200, res.body);
  const { plaintext } = await flattenedDecrypt(res.json() as FlattenedJWE, key.privateKey);
  return { plan: parseLaunchPlan(plaintext), cookie, token: (attest.json() as { token: string }).token };
}

function commit(kbs: TestKbs, auth: { cookie?: string; token?: string }, body: unknown) {
  const headers: Record<string, string> = {};
  if (auth.cookie) headers.cookie = auth.cookie;
  if (auth.token) headers.authorization = `Bearer ${auth.token}`;
  return kbs.app.inject({ method: 'POST', url: '/kbs/v0/resource/demo/redis/volume-commit', headers, payload: body as Record<string, unknown> });
}

test('policy: volumes parse from YAML; errors point at the field', () => {
  const p = parsePolicy(VOLUMES_YAML);
  assert.deepEqual(p.workloads.redis?.volumes, [
    { name: 'data', mountPath: '/data', allowRollback: false },
    { name: 'logs', mountPath: '/var/log/redis', allowRollback: true },
  ]);
  assert.throws(
    () => parsePolicy(VOLUMES_YAML.replace('mountPath: /data', 'mountPath: data')),
    (e: unknown) => isCocoonError(e, 'POLICY_INVALID') && /volumes\[0\]\.mountPath/.test((e as Error).message + JSON.stringify((e as { details?: unknown }).details)),
  );
});

test('KBS volumes: the launch plan carries a stable key per volume and the counter; the counter only moves forward (CAS)', () =>
  withKbs(async (kbs) => {
    const a = await plan(kbs);
    assert.equal(a.plan.volumes?.length, 2);
    const data = a.plan.volumes?.find((v) => v.name === 'data');
    assert.equal(data?.version, 0);
    assert.equal(data?.key.length, 32);
    assert.equal(data?.mountPath, '/data');
    assert.equal(a.plan.volumes?.find((v) => v.name === 'logs')?.allowRollback, true);
    assert.notDeepEqual(data?.key, a.plan.volumes?.find((v) => v.name === 'logs')?.key, 'one key per volume');

    let res = await commit(kbs, { cookie: a.cookie }, { volume: 'data', from: 0, to: 1 });
    assert.equal(res.statusCode, 200, res.body);
    assert.deepEqual(res.json(), { volume: 'data', version: 1 });
    // replaying the same commit, or a stale one: CONFLICT
    res = await commit(kbs, { token: a.token }, { volume: 'data', from: 0, to: 1 });
    assert.equal(res.statusCode, 409, res.body);
    assert.equal((res.json() as { code: string }).code, 'CONFLICT');
    // backward or standing still is refused outright
    for (const body of [{ volume: 'data', from: 1, to: 1 }, { volume: 'data', from: 1, to: 0 }, { volume: 'data', from: -1, to: 2 }, { volume: 'data', from: 1, to: 2, x: 1 }, { volume: 'Data!', from: 1, to: 2 }, { volume: 'data', from: 1.5, to: 2 }]) {
      res = await commit(kbs, { token: a.token }, body);
      assert.equal(res.statusCode, 400, JSON.stringify(body));
      assert.equal((res.json() as { code: string }).code, 'INPUT_MALFORMED');
    }
    res = await commit(kbs, { token: a.token }, { volume: 'nope', from: 0, to: 1 });
    assert.equal((res.json() as { code: string }).code, 'POLICY_DENIED');
    res = await commit(kbs, {}, { volume: 'data', from: 1, to: 2 });
    assert.equal(res.statusCode, 401);

    // the next launch sees the new counter and the same key
    const b = await plan(kbs);
    const data2 = b.plan.volumes?.find((v) => v.name === 'data');
    assert.equal(data2?.version, 1);
    assert.deepEqual(data2?.key, data?.key);

    // concurrent commits from the same version: exactly one wins
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => commit(kbs, { token: b.token }, { volume: 'data', from: 1, to: 2 + i })));
    const ok = results.filter((r) => r.statusCode === 200);
    assert.equal(ok.length, 1, results.map((r) => r.statusCode).join(','));
    assert.ok(results.every((r) => r.statusCode === 200 || r.statusCode === 409));
    const won = (ok[0]?.json() as { version: number }).version;

    // owner API: counters, never keys
    const owner = await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/demo/redis/volumes');
    assert.equal(owner.statusCode, 200, owner.body);
    const vols = (owner.json() as { volumes: { workload: string; volume: string; version: number }[] }).volumes;
    assert.deepEqual(vols.map((v) => [v.workload, v.volume, v.version]), [['redis', 'data', won], ['redis', 'logs', 0]]);
    assert.doesNotMatch(owner.body, new RegExp(data?.key.toString('base64').slice(0, 20).replace(/[+/]/g, '.') ?? 'x'));
  }));

test('KBS store: advanceVolume is compare-and-set and forward only', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-vol-store-'));
  const s = await openSqliteStore(dir);
  try {
    const rec = await s.putVolumeIfAbsent({ policy: 'a/b', workload: 'w', volume: 'v', version: 0, sealedKey: 'k1', createdAt: 1, updatedAt: 1 });
    assert.equal(rec.sealedKey, 'k1');
    assert.equal((await s.putVolumeIfAbsent({ policy: 'a/b', workload: 'w', volume: 'v', version: 5, sealedKey: 'k2', createdAt: 2, updatedAt: 2 })).sealedKey, 'k1', 'first writer wins');
    assert.equal(await s.advanceVolume('a/b', 'w', 'v', 0, 3, 10), true);
    assert.equal(await s.advanceVolume('a/b', 'w', 'v', 0, 4, 11), false, 'stale from');
    assert.equal(await s.advanceVolume('a/b', 'w', 'v', 3, 3, 11), false, 'not forward');
    assert.equal(await s.advanceVolume('a/b', 'w', 'v', 3, 2, 11), false, 'backward');
    const got = await s.getVolume('a/b', 'w', 'v');
    assert.equal(got?.version, 3);
    assert.equal(got?.updatedAt, 10);
    const race = await Promise.all([4, 5, 6, 7].map((to) => s.advanceVolume('a/b', 'w', 'v', 3, to, 12)));
    assert.equal(race.filter(Boolean).length, 1);
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
