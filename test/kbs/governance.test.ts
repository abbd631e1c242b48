import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { auditPublicKey, verifyAuditChain, verifyStoreAudit } from '../../src/kbs/audit.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import type { AuditRecord } from '../../src/kbs/store/types.js';
import type { OwnerSigningKey } from '../../src/kbs/owner-key.js';
import { MEASUREMENT, POLICY_YAML, applyDemoPolicy, makeKbs, makeOwnerKey, ownerRequest, rcarAttest } from './helpers.js';
import type { TestKbs } from './helpers.js';

const keyYaml = (k: OwnerSigningKey) => `{ kty: ${String(k.publicJwk.kty)}, crv: ${String(k.publicJwk.crv)}, x: ${String(k.publicJwk.x)}${k.publicJwk.y ? `, y: ${String(k.publicJwk.y)}` : ''} }`;

function shopPolicy(owners: OwnerSigningKey[], threshold: number, measurement = MEASUREMENT): string {
  return `name: shop/web
owners:
${owners.map((o, i) => `  - { name: o${i}, key: ${keyYaml(o)} }`).join('\n')}
approvals: { threshold: ${threshold} }
secrets:
  pw: { kind: random, size: 8, encoding: hex, ownerReadable: true }
workloads:
  web:
    accept: [{ tee: [sim], measurement: "${measurement}" }]
    secrets: [pw]
`;
}

const code = (res: { statusCode: number; json(): unknown }): [number, string] => [res.statusCode, (res.json() as { code: string }).code];

async function withKbs(fn: (kbs: TestKbs) => Promise<void>): Promise<void> {
  const kbs = await makeKbs();
  try {
    await fn(kbs);
  } finally {
    await kbs.cleanup();
  }
}

test('governance: 2-of-3 update waits for the second approval; stale predecessor; reject; superseded', () =>
  withKbs(async (kbs) => {
    const [a, b, c] = [await makeOwnerKey(), await makeOwnerKey('EdDSA'), await makeOwnerKey()];
    const url = '/cocoon/v1/policies/shop/web';
    const created = await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b, c], 2) });
    assert.equal(created.statusCode, 200, created.body);
    const v1 = created.json() as { version: number; hash: string };
    assert.equal(v1.version, 1);

    // the admin that created it is not one of its owners: no more access
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url)), [403, 'FORBIDDEN']);
    assert.equal((await ownerRequest(kbs, 'GET', url, undefined, { key: a })).statusCode, 200);

    // A proposes version 2 (other measurement): pending, not active
    const v2yaml = shopPolicy([a, b, c], 2, 'ef'.repeat(48));
    const proposed = await ownerRequest(kbs, 'PUT', url, { yaml: v2yaml, predecessor: v1.hash }, { key: a });
    assert.equal(proposed.statusCode, 200, proposed.body);
    const p = proposed.json() as { version: number; pending: { id: string; approvals: number; threshold: number } };
    assert.equal(p.version, 1);
    assert.deepEqual([p.pending.approvals, p.pending.threshold], [1, 2]);
    assert.equal((await rcarAttest(kbs, { policy: 'shop/web', workload: 'web' })).attest.statusCode, 200, 'version 1 still active');
    assert.equal((await rcarAttest(kbs, { policy: 'shop/web', workload: 'web', measurement: 'ef'.repeat(48) })).attest.statusCode, 401);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`, undefined, { key: a })), [409, 'CONFLICT']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`, undefined, { key: await makeOwnerKey() })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`)), [403, 'FORBIDDEN']);
    // a stale predecessor is refused
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', url, { yaml: v2yaml, predecessor: `sha256:${'0'.repeat(64)}` }, { key: b })), [409, 'PREDECESSOR_MISMATCH']);
    const pending = (await ownerRequest(kbs, 'GET', `${url}/pending`, undefined, { key: b })).json() as { pending: { id: string; approvals: string[] }[] };
    assert.deepEqual(pending.pending.map((x) => x.id), [p.pending.id]);
    assert.deepEqual(pending.pending[0]?.approvals, [a.kid]);

    const approved = await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`, undefined, { key: b });
    assert.equal(approved.statusCode, 200, approved.body);
    const v2 = approved.json() as { status: string; version: number; hash: string };
    assert.deepEqual([v2.status, v2.version], ['applied', 2]);
    assert.equal(((await ownerRequest(kbs, 'GET', url, undefined, { key: c })).json() as { version: number }).version, 2);
    assert.equal((await rcarAttest(kbs, { policy: 'shop/web', workload: 'web', measurement: 'ef'.repeat(48) })).attest.statusCode, 200);

    // C proposes, A rejects; approving afterwards is a conflict
    const p3 = ((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b, c], 2), predecessor: v2.hash }, { key: c })).json() as { pending: { id: string } }).pending;
    assert.equal((await ownerRequest(kbs, 'POST', `${url}/pending/${p3.id}/reject`, undefined, { key: a })).statusCode, 200);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p3.id}/approve`, undefined, { key: b })), [409, 'CONFLICT']);

    // two proposals against v2: the first applied makes the other stale
    const p4 = ((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b, c], 2), predecessor: v2.hash }, { key: a })).json() as { pending: { id: string } }).pending;
    const p5 = ((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b], 1), predecessor: v2.hash }, { key: b })).json() as { pending: { id: string } }).pending;
    assert.equal(((await ownerRequest(kbs, 'POST', `${url}/pending/${p5.id}/approve`, undefined, { key: c })).json() as { version: number }).version, 3);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p4.id}/approve`, undefined, { key: b })), [409, 'PREDECESSOR_MISMATCH']);
    // version 3 has threshold 1 and drops C: B alone applies; C is locked out
    const head = (await ownerRequest(kbs, 'GET', url, undefined, { key: b })).json() as { hash: string };
    assert.equal(((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b], 1), predecessor: head.hash }, { key: b })).json() as { version: number }).version, 4);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { key: c })), [403, 'FORBIDDEN']);
  }));

test('non-owners can neither read nor change anything (401/403)', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const a = await makeOwnerKey();
    await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/web', { yaml: shopPolicy([a], 1) });
    const stranger = await makeOwnerKey();
    const demo = '/cocoon/v1/policies/demo/redis';
    const attempts: [string, 'GET' | 'PUT' | 'POST', unknown?][] = [
      [demo, 'GET'],
      [`${demo}/history`, 'GET'],
      [`${demo}/pending`, 'GET'],
      [`${demo}/diff`, 'POST', { yaml: POLICY_YAML }],
      [demo, 'PUT', { yaml: POLICY_YAML }],
      ['/cocoon/v1/secrets/demo/redis/redis-password', 'GET'],
      ['/cocoon/v1/secrets/demo/redis/api-token', 'PUT', { value: 'AAAA' }],
      ['/cocoon/v1/events', 'GET'],
      ['/cocoon/v1/audit', 'GET'],
      ['/cocoon/v1/policies/other/new', 'PUT', { yaml: POLICY_YAML.replace('demo/redis', 'other/new') }],
      ['/cocoon/v1/ca/revoke', 'POST', { serial: '01' }],
    ];
    for (const [u, method, body] of attempts) {
      // a policy owner of shop/web: authenticated, but not an owner of demo/redis → 403
      assert.deepEqual(code(await ownerRequest(kbs, method, u, body, { key: a })), [403, 'FORBIDDEN'], `${method} ${u}`);
      // an unknown key → 401
      assert.deepEqual(code(await ownerRequest(kbs, method, u, body, { key: stranger })), [401, 'AUTH_INVALID'], `${method} ${u}`);
      const res = await kbs.app.inject({ method, url: u, ...(body ? { payload: body as Record<string, unknown> } : {}) });
      assert.deepEqual(code(res), [401, 'AUTH_REQUIRED'], `${method} ${u}`);
    }
    // the shop/web owner sees its own policy's events and audit, with ?policy=
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/events?policy=shop/web', undefined, { key: a })).statusCode, 200);
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/audit?policy=shop/web', undefined, { key: a })).statusCode, 200);
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/shop/web/pw', undefined, { key: a })).statusCode, 200);
  }));

test('audit log: owner actions, attestations (with reason codes) and releases, hash-chained and signed; tampering is found', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/api-token', { value: Buffer.from('tok').toString('base64') });
    const ok = await rcarAttest(kbs);
    await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie: ok.cookie } });
    await rcarAttest(kbs, { measurement: 'ee'.repeat(48) });
    await rcarAttest(kbs, { tamperReportData: true });
    await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/demo/redis');
    const res = await ownerRequest(kbs, 'GET', '/cocoon/v1/audit?limit=1000');
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json() as { publicKey: Record<string, string>; entries: AuditRecord[] };
    const actions = body.entries.map((e) => `${e.action}:${(JSON.parse(e.detail) as { status?: string; code?: string }).code ?? (JSON.parse(e.detail) as { status?: string }).status ?? ''}`);
    for (const want of ['policy.apply:', 'secret.put:', 'attest:affirming', 'release:released', 'attest:POLICY_DENIED', 'attest:REPORT_DATA_MISMATCH', 'owner.read:200']) {
      assert.ok(actions.includes(want), `${want} in ${actions.join(', ')}`);
    }
    const key = auditPublicKey(body.publicKey);
    const verdict = verifyAuditChain(body.entries, key);
    assert.equal(verdict.ok, true, JSON.stringify(verdict));
    assert.equal(verdict.count, body.entries.length);
    // a modified entry, a forged signature, a dropped entry
    const copy = body.entries.map((e) => ({ ...e }));
    copy[2] = { ...copy[2]!, detail: copy[2]!.detail.replace('}', ',"x":1}') };
    assert.deepEqual(verifyAuditChain(copy, key).firstBroken?.seq, 3);
    assert.equal(verifyAuditChain(copy, key).firstBroken?.reason, 'hash');
    const forged = body.entries.map((e, i) => (i === 4 ? { ...e, sig: body.entries[5]!.sig } : e));
    assert.equal(verifyAuditChain(forged, key).firstBroken?.reason, 'signature');
    assert.equal(verifyAuditChain(body.entries.filter((_, i) => i !== 3), key).firstBroken?.reason, 'sequence');
  }));

test('audit verify over the SQLite store finds a tampered row (first broken link)', async () => {
  const kbs = await makeKbs();
  let dir = '';
  let publicJwk: Record<string, string> = {};
  try {
    dir = kbs.dir;
    await applyDemoPolicy(kbs);
    for (let i = 0; i < 3; i++) await rcarAttest(kbs);
    publicJwk = ((await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json() as { publicKey: Record<string, string> }).publicKey;
    await kbs.app.close();
    const key = auditPublicKey(publicJwk);
    const store = await openSqliteStore(dir);
    assert.equal((await verifyStoreAudit(store, key)).ok, true);
    await store.close();
    const db = new Database(join(dir, 'kbs.sqlite'));
    db.prepare("UPDATE kbs_audit SET detail = replace(detail, 'affirming', 'contraindicated') WHERE seq = 3").run();
    db.close();
    const store2 = await openSqliteStore(dir);
    const v = await verifyStoreAudit(store2, key);
    await store2.close();
    assert.equal(v.ok, false);
    assert.deepEqual([v.firstBroken?.seq, v.firstBroken?.reason], [3, 'hash']);
    assert.equal(v.count, 2);
  } finally {
    await kbs.cleanup().catch(() => undefined);
  }
});
