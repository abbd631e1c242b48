import assert from 'node:assert/strict';
import { CocoonError } from '../../src/errors.js';
import type { PolicyVersionRecord, Store } from '../../src/kbs/store/types.js';

const rec = (version: number, hash: string, predecessor: string | null): PolicyVersionRecord => ({
  name: 'demo/app',
  version,
  hash,
  predecessor,
  yaml: 'x',
  createdAt: 1,
  createdBy: 'owner',
});

/** The Store contract, run against every implementation (postgres.test.ts reuses it). */
export async function storeContract(store: Store): Promise<void> {
    await store.applyPolicy({ record: rec(1, 'h1', null), expectedHead: null, newSecrets: [{ policy: 'demo/app', name: 's', kind: 'random', sealed: 'A', createdAt: 1, updatedAt: 1 }] });
    // two writers based on the same head: exactly one wins
    const results = await Promise.allSettled([
      store.applyPolicy({ record: rec(2, 'h2a', 'h1'), expectedHead: 'h1', newSecrets: [] }),
      store.applyPolicy({ record: rec(2, 'h2b', 'h1'), expectedHead: 'h1', newSecrets: [] }),
    ]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const rejected = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(rejected.reason instanceof CocoonError && rejected.reason.code === 'PREDECESSOR_MISMATCH', String(rejected.reason));
    const head = await store.getPolicyHead('demo/app');
    assert.equal(head?.version, 2);
    // a random secret present already is not replaced by a later apply
    await store.applyPolicy({ record: rec(3, 'h3', head!.hash), expectedHead: head!.hash, newSecrets: [{ policy: 'demo/app', name: 's', kind: 'random', sealed: 'B', createdAt: 2, updatedAt: 2 }] });
    assert.equal((await store.getSecret('demo/app', 's'))?.sealed, 'A');
    assert.deepEqual((await store.listPolicyVersions('demo/app', 10)).map((v) => v.version), [3, 2, 1]);

    await store.createSession({ id: 'sess', tee: 'sim', nonce: 'n', nonceUsed: false, createdAt: 0, expiresAt: 10_000, teePubkey: null, attestation: null });
    const consumed = await Promise.all([store.consumeNonce('sess', 5), store.consumeNonce('sess', 5), store.consumeNonce('sess', 5)]);
    assert.deepEqual(consumed.filter(Boolean).length, 1);
    await store.createSession({ id: 'old', tee: 'sim', nonce: 'n', nonceUsed: false, createdAt: 0, expiresAt: 10, teePubkey: null, attestation: null });
    assert.equal(await store.consumeNonce('old', 11), false);
    await store.purgeExpired(20);
    assert.equal(await store.getSession('old'), undefined);
    assert.ok(await store.getSession('sess'));

    assert.equal(await store.rememberJti('j1', 100, 0), true);
    assert.equal(await store.rememberJti('j1', 100, 50), false);
    assert.equal(await store.rememberJti('j1', 300, 150), true, 'an expired entry no longer blocks');

    for (let i = 0; i < 5; i++) {
      await store.addEvent({ id: `e${i}`, at: i, kind: 'attest', status: 'affirming', tee: 'sim', policy: i % 2 ? 'demo/app' : 'x/y', workload: 'w', resource: null, code: null, detail: 'd', insecure: true, sessionId: null });
    }
    assert.deepEqual((await store.listEvents({ limit: 3 })).map((e) => e.id), ['e4', 'e3', 'e2']);
    assert.deepEqual((await store.listEvents({ limit: 10, policy: 'demo/app' })).map((e) => e.id), ['e3', 'e1']);
    assert.equal(await store.putMetaIfAbsent('k', 'first'), 'first');
    assert.equal(await store.putMetaIfAbsent('k', 'second'), 'first');
    await store.ping();
}
