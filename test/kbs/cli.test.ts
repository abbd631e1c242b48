import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { exportJWK, generateKeyPair } from 'jose';
import { buildKbsApp } from '../../src/kbs/app.js';
import { ownerSigningKey } from '../../src/kbs/owner-key.js';
import { SEAL_KEY_FILE } from '../../src/kbs/sealer.js';
import { POLICY_YAML, fakeVerifier, ownerRequest, rcarAttest } from './helpers.js';
import type { TestKbs } from './helpers.js';
import { cocoon } from './cli-runner.js';

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

test('CLI against a running KBS: m-of-n apply → pending → approve, workloads, ca show/export, audit list/verify', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-cli-live-'));
  const { startKbs } = await import('../../src/kbs/app.js');
  const keys = await Promise.all([0, 1].map(async () => exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey)));
  const owners = await Promise.all(keys.map((k) => ownerSigningKey(k)));
  keys.forEach((k, i) => writeFileSync(join(dir, `owner${i}.jwk`), JSON.stringify(k), { mode: 0o600 }));
  const kbs = await startKbs({ dataDir: join(dir, 'data'), verifier: fakeVerifier, allowSim: true, owners: [owners[0]!.publicJwk], logger: false, port: 0 });
  try {
    const as = (i: number, args: string[]) => cocoon([...args, '--kbs', kbs.url, '--owner-key', join(dir, `owner${i}.jwk`), '--config-dir', dir, '--json']);
    const ownerYaml = owners.map((o, i) => `  - { name: o${i}, key: { kty: EC, crv: P-256, x: ${String(o.publicJwk.x)}, y: ${String(o.publicJwk.y)} } }`).join('\n');
    const v1 = POLICY_YAML.replace('name: demo/redis\n', `name: demo/redis\nowners:\n${ownerYaml}\napprovals: { threshold: 2 }\n`);
    writeFileSync(join(dir, 'v1.yaml'), v1);
    writeFileSync(join(dir, 'v2.yaml'), v1.replace('size: 32', 'size: 48'));
    const applied = await as(0, ['policy', 'apply', join(dir, 'v1.yaml')]);
    assert.equal(applied.code, 0, applied.stderr);
    assert.equal((JSON.parse(applied.stdout) as { version: number }).version, 1);
    const proposed = JSON.parse((await as(0, ['policy', 'apply', join(dir, 'v2.yaml')])).stdout) as { version: number; pending: { id: string; approvals: number; threshold: number } };
    assert.deepEqual([proposed.version, proposed.pending.approvals, proposed.pending.threshold], [1, 1, 2]);
    const pending = JSON.parse((await as(1, ['policy', 'pending', 'demo/redis'])).stdout) as { id: string }[];
    assert.deepEqual(pending.map((p) => p.id), [proposed.pending.id]);
    const approved = await as(1, ['policy', 'approve', 'demo/redis', proposed.pending.id]);
    assert.equal(approved.code, 0, approved.stderr);
    const decision = JSON.parse(approved.stdout) as { status: string; version: number };
    assert.deepEqual([decision.status, decision.version], ['applied', 2]);
    const ca = JSON.parse((await as(0, ['ca', 'show'])).stdout) as { root: { subject: string; sha256: string }; intermediate: { subject: string } };
    assert.match(ca.root.subject, /Cocoon deployment root CA/);
    assert.match(ca.root.sha256, /^[0-9a-f]{64}$/);
    const crl = JSON.parse((await as(0, ['ca', 'export', '--what', 'crl'])).stdout) as { pem: string };
    assert.match(crl.pem, /BEGIN X509 CRL/);
    // the admin (owner0 was registered with serve --owner) lists and verifies the whole chain through the API
    const verify = await as(0, ['audit', 'verify']);
    assert.equal(verify.code, 0, verify.stderr);
    assert.ok((JSON.parse(verify.stdout) as { ok: boolean; count: number }).count >= 4);
    const listed = JSON.parse((await as(1, ['audit', 'list', '--policy', 'demo/redis'])).stdout) as { action: string }[];
    assert.deepEqual(listed.map((e) => e.action).filter((a) => a.startsWith('policy.')), ['policy.apply', 'policy.propose', 'policy.apply']);
    // owner1 is no administrator: the global list is refused
    const refused = await as(1, ['audit', 'list']);
    assert.equal(refused.code, 1);
    assert.equal((JSON.parse(refused.stdout) as { error: { code: string } }).error.code, 'FORBIDDEN');
  } finally {
    await kbs.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
