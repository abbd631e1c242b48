import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { verifyStoreAudit } from '../../src/kbs/audit.js';
import { Journal } from '../../src/kbs/journal.js';
import { openPostgresStore } from '../../src/kbs/store/postgres.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import type { EventRecord, Store } from '../../src/kbs/store/types.js';
import { createDatabase, withTempPostgres } from './pg-harness.js';

const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });

function event(n: number): EventRecord {
  return { id: randomUUID(), at: n, kind: 'attest', status: 'affirming', tee: 'sim', policy: 'demo/app', workload: 'w', resource: null, code: null, detail: `event ${n}`, insecure: true, sessionId: `s${n}` };
}

/** Counts the transactions a store is asked to run (the journal's batches). */
function countingTransactions(store: Store): { store: Store; transactions: () => number } {
  let n = 0;
  const counted = Object.create(store) as Store;
  counted.transaction = (fn) => {
    n++;
    return store.transaction(fn);
  };
  return { store: counted, transactions: () => n };
}

async function journalContract(raw: Store): Promise<void> {
  const { store, transactions } = countingTransactions(raw);
  const journal = new Journal(store, key.privateKey);

  // 200 records at once: all committed, in fewer transactions than records, one valid chain.
  const records = Array.from({ length: 200 }, (_, i) => journal.record(event(i), { actor: 'tee:sim', action: 'attest', policy: 'demo/app', detail: { n: i } }, 1000 + i));
  await Promise.all(records);
  assert.ok(transactions() < 200, `group commit: ${transactions()} transactions for 200 records`);
  assert.ok(transactions() >= 2, 'batches are bounded (128 records at most)');
  const verdict = await verifyStoreAudit(raw, key.publicKey);
  assert.equal(verdict.ok, true, JSON.stringify(verdict.firstBroken));
  assert.equal(verdict.count, 200);
  assert.equal((await raw.listEvents({ limit: 500 })).length, 200);
  const details = (await raw.listAudit({ limit: 500 })).map((a) => (JSON.parse(a.detail) as { n: number }).n);
  assert.deepEqual(details, Array.from({ length: 200 }, (_, i) => i), 'entries are chained in the order they were recorded');

  // A record whose event cannot be written fails alone: its batch-mates still commit, the
  // chain stays valid, and neither its event nor its audit entry exists.
  const poisoned = { ...event(999), detail: null as unknown as string };
  const mixed = await Promise.allSettled([
    journal.record(event(300), { actor: 'tee:sim', action: 'attest', detail: { n: 300 } }, 2000),
    journal.record(poisoned, { actor: 'tee:sim', action: 'attest', detail: { n: 999 } }, 2001),
    journal.record(event(301), { actor: 'tee:sim', action: 'attest', detail: { n: 301 } }, 2002),
    journal.record(undefined, { actor: 'kbs', action: 'note', detail: { n: 302 } }, 2003),
  ]);
  assert.deepEqual(mixed.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
  const after = await verifyStoreAudit(raw, key.publicKey);
  assert.equal(after.ok, true, JSON.stringify(after.firstBroken));
  assert.equal(after.count, 203);
  const tail = (await raw.listAudit({ afterSeq: 200, limit: 10 })).map((a) => (JSON.parse(a.detail) as { n: number }).n);
  assert.deepEqual(tail, [300, 301, 302]);
  assert.equal((await raw.listEvents({ limit: 500 })).length, 202, 'the audit-only record adds no event');

  // Steps run in the record's transaction: one adds audit detail, one refuses (its own write is
  // kept, its event and entry are not), one throws (rolled back, fails alone); the rest commit.
  const session = (id: string) => ({ id, tee: 'sim', nonce: 'n', createdAt: 1, expiresAt: 9e12, teePubkey: null, attestation: null });
  const refusal = new Error('refused by its step');
  const stepped = await Promise.allSettled([
    journal.record(event(400), { actor: 'tee:sim', action: 'attest', detail: { n: 400 } }, 3000, async (tx) => ((await tx.insertSession(session('kept'))) ? { detail: { extra: 'yes' } } : { refused: new Error('unexpected') })),
    journal.record(event(401), { actor: 'tee:sim', action: 'attest', detail: { n: 401 } }, 3001, async (tx) => {
      await tx.insertSession(session('refused-but-kept'));
      return { refused: refusal };
    }),
    journal.record(event(402), { actor: 'tee:sim', action: 'attest', detail: { n: 402 } }, 3002, async (tx) => {
      await tx.insertSession(session('rolled-back'));
      throw new Error('step failed');
    }),
    journal.record(event(403), { actor: 'tee:sim', action: 'attest', detail: { n: 403 } }, 3003),
  ]);
  assert.deepEqual(stepped.map((r) => r.status), ['fulfilled', 'rejected', 'rejected', 'fulfilled']);
  assert.equal((stepped[1] as PromiseRejectedResult).reason, refusal);
  assert.match(String((stepped[2] as PromiseRejectedResult).reason), /step failed/);
  const stepTail = (await raw.listAudit({ afterSeq: 203, limit: 10 })).map((a) => JSON.parse(a.detail) as { n: number; extra?: string });
  assert.deepEqual(stepTail, [{ n: 400, extra: 'yes' }, { n: 403 }]);
  assert.ok(await raw.getSession('kept'));
  assert.ok(await raw.getSession('refused-but-kept'));
  assert.equal(await raw.getSession('rolled-back'), undefined);
  assert.equal((await raw.listEvents({ limit: 500 })).length, 204);
  const final = await verifyStoreAudit(raw, key.publicKey);
  assert.equal(final.ok, true, JSON.stringify(final.firstBroken));
}

test('journal on SQLite: concurrent records are group-committed into one valid chain; a bad record fails alone', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-journal-'));
  const store = await openSqliteStore(dir);
  try {
    await journalContract(store);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('journal on PostgreSQL: the same, and two journals (replicas) on one database keep one chain', async (t) => {
  await withTempPostgres(t, async (pgInstance) => {
    const store = await openPostgresStore(await createDatabase(pgInstance, 'journal'));
    try {
      await journalContract(store);
    } finally {
      await store.close();
    }
    const url = await createDatabase(pgInstance, 'replicas');
    const [a, b] = [await openPostgresStore(url), await openPostgresStore(url)];
    try {
      const [ja, jb] = [new Journal(a, key.privateKey), new Journal(b, key.privateKey)];
      await Promise.all(Array.from({ length: 120 }, (_, i) => (i % 2 ? ja : jb).record(event(i), { actor: 'tee:sim', action: 'attest', detail: { n: i } }, i)));
      const verdict = await verifyStoreAudit(a, key.publicKey);
      assert.equal(verdict.ok, true, JSON.stringify(verdict.firstBroken));
      assert.equal(verdict.count, 120);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});
