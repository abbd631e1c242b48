import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CocoonError } from '../../src/errors.js';
import { FileSealer, loadDataKey } from '../../src/kbs/sealer.js';
import { openValue, sealValue } from '../../src/kbs/secret-box.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import type { PolicyVersionRecord } from '../../src/kbs/store/types.js';

const rec = (version: number, hash: string, predecessor: string | null): PolicyVersionRecord => ({
  name: 'demo/app',
  version,
  hash,
  predecessor,
  yaml: 'x',
  createdAt: 1,
  createdBy: 'owner',
});

test('sqlite store: policy compare-and-swap, secrets kept, sessions single-use, jti, events', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-store-'));
  const store = await openSqliteStore(dir);
  try {
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
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('data key: sealed by the file sealer, stable across opens; tampering and loose modes refused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-seal-'));
  try {
    const store = await openSqliteStore(dir);
    const k1 = await loadDataKey(store, await FileSealer.open(dir));
    const k2 = await loadDataKey(store, await FileSealer.open(dir));
    assert.deepEqual(k1, k2);
    await store.close();
    const other = mkdtempSync(join(tmpdir(), 'cocoon-seal-'));
    const store2 = await openSqliteStore(dir);
    await assert.rejects(loadDataKey(store2, await FileSealer.open(other)), (e: unknown) => e instanceof CocoonError && e.code === 'IO_ERROR');
    await store2.close();
    rmSync(other, { recursive: true, force: true });

    chmodSync(join(dir, 'seal.key'), 0o644);
    await assert.rejects(FileSealer.open(dir), /accessible by other users/);

    const key = randomBytes(32);
    const sealed = sealValue(key, Buffer.from('hello'), 'secret:a/b/c');
    assert.equal(openValue(key, sealed, 'secret:a/b/c').toString(), 'hello');
    assert.throws(() => openValue(key, sealed, 'secret:a/b/d'), (e: unknown) => e instanceof CocoonError && e.code === 'IO_ERROR');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
