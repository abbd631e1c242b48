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
import { storeContract } from './store-contract.js';

test('sqlite store: policy compare-and-swap, secrets kept, sessions single-use, jti, events', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-store-'));
  const store = await openSqliteStore(dir);
  try {
    await storeContract(store);
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
