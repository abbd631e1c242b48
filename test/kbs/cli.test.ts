import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { exportJWK, generateKeyPair } from 'jose';
import { buildKbsApp } from '../../src/kbs/app.js';
import { ownerSigningKey } from '../../src/kbs/owner-key.js';
import { SEAL_KEY_FILE } from '../../src/kbs/sealer.js';
import { POLICY_YAML, fakeVerifier, ownerRequest, rcarAttest } from './helpers.js';
import type { TestKbs } from './helpers.js';

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');

async function cocoon(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', MAIN, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

test('CLI: policy check/diff offline, audit verify finds a tampered row, recover share + apply', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-cli-'));
  try {
    const good = join(dir, 'good.yaml');
    const changed = join(dir, 'changed.yaml');
    const bad = join(dir, 'bad.yaml');
    writeFileSync(good, POLICY_YAML);
    writeFileSync(changed, POLICY_YAML.replace('size: 32', 'size: 48'));
    writeFileSync(bad, POLICY_YAML.replace('tee: [sim]', 'tee: [quantum]'));
    const checked = await cocoon(['policy', 'check', bad]);
    assert.equal(checked.code, 1);
    assert.match(checked.stderr, /POLICY_INVALID.*bad\.yaml:9:15: .*unknown TEE kind "quantum"/);
    const diff = await cocoon(['policy', 'diff', changed, '--against', good, '--json']);
    assert.equal(diff.code, 0, diff.stderr);
    assert.deepEqual((JSON.parse(diff.stdout) as { changes: unknown[] }).changes, [{ op: 'changed', path: 'secrets.redis-password.size', from: 32, to: 48 }]);

    // a KBS with recovery shares for two P-256 owners, some history, then stopped
    const data = join(dir, 'data');
    const keys = await Promise.all([0, 1].map(async () => exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey)));
    const owners = await Promise.all(keys.map((k) => ownerSigningKey(k)));
    keys.forEach((k, i) => writeFileSync(join(dir, `owner${i}.jwk`), JSON.stringify(k), { mode: 0o600 }));
    const app = await buildKbsApp({ dataDir: data, verifier: fakeVerifier, allowSim: true, owners: owners.map((o) => o.publicJwk), logger: false, recoveryThreshold: 2 });
    const kbs: TestKbs = { app, dir: data, owner: owners[0]!, kbsId: (await app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json<{ id: string }>().id, cleanup: async () => undefined };
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: POLICY_YAML })).statusCode, 200);
    await rcarAttest(kbs);
    await app.close();

    const db = new Database(join(data, 'kbs.sqlite'));
    const target = (db.prepare("SELECT seq FROM kbs_audit WHERE action = 'attest' ORDER BY seq LIMIT 1").get() as { seq: number }).seq;
    db.prepare('UPDATE kbs_audit SET actor = ? WHERE seq = ?').run('tee:tampered', target);
    db.close();
    const verify = await cocoon(['audit', 'verify', '--data-dir', data, '--json']);
    assert.equal(verify.code, 1, verify.stderr);
    const verdict = JSON.parse(verify.stdout) as { ok: boolean; firstBroken: { seq: number; reason: string } };
    assert.deepEqual([verdict.ok, verdict.firstBroken.seq, verdict.firstBroken.reason], [false, target, 'hash']);

    unlinkSync(join(data, SEAL_KEY_FILE));
    for (const i of [0, 1]) {
      const share = await cocoon(['recover', 'share', '--data-dir', data, '--owner-key', join(dir, `owner${i}.jwk`), '--out', join(dir, `share${i}.json`), '--json']);
      assert.equal(share.code, 0, share.stderr);
    }
    const applied = await cocoon(['recover', 'apply', '--data-dir', data, '--share', join(dir, 'share0.json'), '--share', join(dir, 'share1.json'), '--json']);
    assert.equal(applied.code, 0, applied.stderr);
    assert.deepEqual(JSON.parse(applied.stdout), { threshold: 2, used: 2, sealer: 'file' });
    const again = await buildKbsApp({ dataDir: data, verifier: fakeVerifier, logger: false });
    await again.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
