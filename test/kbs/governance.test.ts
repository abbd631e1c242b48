import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { auditPublicKey, verifyStoreAudit } from '../../src/kbs/audit.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import { applyDemoPolicy, makeKbs, ownerRequest, rcarAttest, withKbs } from './helpers.js';
import { auditScenario, deploymentCaScenario, governanceScenario, nonOwnerScenario, secretKindsScenario } from './scenarios.js';

test('governance: 2-of-3 update waits for the second approval; stale predecessor; reject; superseded', () => withKbs(governanceScenario));
test('non-owners can neither read nor change anything (401/403)', () => withKbs(nonOwnerScenario));
test('audit log: owner actions, attestations (with reason codes) and releases, hash-chained and signed; tampering is found', () => withKbs(auditScenario));
test('secret kinds: keypairs, x509 from the deployment CA and from a policy CA, per-instance values, exports with consent, maxActivations', () => withKbs(secretKindsScenario));
test('deployment CA: a certificate for a CSR bound in the evidence, with the workload extension; CRL; refusals', () => withKbs(deploymentCaScenario));

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

test('the current-version cache is per store: two KBSs with the same policy text report their own version records', async () => {
  const a = await makeKbs();
  const b = await makeKbs();
  try {
    const va = await applyDemoPolicy(a);
    const vb = await applyDemoPolicy(b);
    assert.equal(va.hash, vb.hash, 'same name, version and text: same version hash');
    // attestations make both KBSs read (and cache) their current version
    assert.equal((await rcarAttest(a)).attest.statusCode, 200);
    assert.equal((await rcarAttest(b)).attest.statusCode, 200);
    for (const [kbs, other] of [
      [a, b],
      [b, a],
    ] as const) {
      const head = (await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/demo/redis')).json() as { createdBy: string };
      assert.equal(head.createdBy, kbs.owner.kid);
      assert.notEqual(head.createdBy, other.owner.kid);
    }
  } finally {
    await a.cleanup();
    await b.cleanup();
  }
});
