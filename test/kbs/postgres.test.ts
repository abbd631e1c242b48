import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildKbsApp } from '../../src/kbs/app.js';
import { FileSealer } from '../../src/kbs/sealer.js';
import { loadOrCreateIdentity } from '../../src/kbs/identity.js';
import { openPostgresStore } from '../../src/kbs/store/postgres.js';
import { POLICY_YAML, fakeEvidence, fakeVerifier, makeOwnerKey, ownerRequest, ownerToken, sessionCookieOf, teeKey } from './helpers.js';
import { rcarReportData } from '../../src/kbs/rcar-protocol.js';
import { createDatabase, withTempPostgres } from './pg-harness.js';
import { storeContract } from './store-contract.js';

test('PostgreSQL: store contract, and two KBS replicas sharing one database', async (t) => {
  await withTempPostgres(t, async (pgInstance) => {
    const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-pg-'));
    try {
      const contractStore = await openPostgresStore(await createDatabase(pgInstance, 'contract'));
      try {
        await storeContract(contractStore);
      } finally {
        await contractStore.close();
      }

      // Replicas share the store, the identity key and the sealing key (a shared volume/secret in k8s).
      const kbsUrl = await createDatabase(pgInstance, 'kbs');
      const identity = await loadOrCreateIdentity(dir);
      const owner = await makeOwnerKey();
      const [storeA, storeB] = [await openPostgresStore(kbsUrl), await openPostgresStore(kbsUrl)];
      const common = { dataDir: dir, verifier: fakeVerifier, allowSim: true, identity, sealer: await FileSealer.open(dir), owners: [owner.publicJwk], logger: false as const };
      const a = await buildKbsApp({ ...common, store: storeA });
      const b = await buildKbsApp({ ...common, store: storeB });
      try {
        const kbsA = { app: a, dir, owner, kbsId: identity.id, cleanup: async () => undefined };
        const kbsB = { ...kbsA, app: b };
        const applied = await ownerRequest(kbsA, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: POLICY_YAML });
        assert.equal(applied.statusCode, 200, applied.body);
        // the jti cache is shared: a token used on A is refused on B
        const headers = { authorization: `Bearer ${await ownerToken(kbsA)}` };
        assert.equal((await a.inject({ method: 'GET', url: '/cocoon/v1/events', headers })).statusCode, 200);
        assert.equal((await b.inject({ method: 'GET', url: '/cocoon/v1/events', headers })).statusCode, 401);
        const put = await ownerRequest(kbsB, 'PUT', '/cocoon/v1/secrets/demo/redis/layer-key', { value: Buffer.alloc(32, 4).toString('base64') });
        assert.equal(put.statusCode, 200, put.body);

        // auth on A, attest on B, fetch on A
        const auth = await a.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } });
        const cookie = sessionCookieOf(auth);
        const nonce = (auth.json() as { nonce: string }).nonce;
        const key = await teeKey();
        const body = {
          'init-data': { format: 'json', body: JSON.stringify({ policy: 'demo/redis', workload: 'redis' }) },
          'runtime-data': { nonce, 'tee-pubkey': key.jwk },
          'tee-evidence': { primary_evidence: fakeEvidence(rcarReportData(nonce, key.jwk)) },
        };
        const attest = await b.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie }, payload: body });
        assert.equal(attest.statusCode, 200, attest.body);
        const plan = await a.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/launch-plan', headers: { cookie } });
        assert.equal(plan.statusCode, 200, plan.body);
        const replay = await a.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie }, payload: body });
        assert.equal(replay.statusCode, 401);
      } finally {
        await a.close();
        await b.close();
        await storeA.close();
        await storeB.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
