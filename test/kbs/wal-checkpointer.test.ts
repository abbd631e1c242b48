import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { sql } from 'kysely';
import { SQLITE_FILE, openSqliteStore } from '../../src/kbs/store/sqlite.js';
import type { KyselyStore } from '../../src/kbs/store/kysely-store.js';
import { BACKSTOP_PAGES, DEFAULT_AUTOCHECKPOINT_PAGES, startWalCheckpointer } from '../../src/kbs/store/wal-checkpointer.js';

async function autocheckpoint(store: KyselyStore): Promise<number> {
  const { rows } = await sql<{ wal_autocheckpoint: number }>`pragma wal_autocheckpoint`.execute(store.db);
  return rows[0]?.wal_autocheckpoint ?? NaN;
}

async function writeEvents(store: KyselyStore, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    await store.addEvent({ id: randomUUID(), at: i, kind: 'attest', status: 'affirming', tee: 'sim', policy: 'demo/app', workload: 'w', resource: null, code: null, detail: 'x'.repeat(800), insecure: true, sessionId: null });
  }
}

for (const mode of ['thread', 'external', 'inline'] as const) {
  test(`SQLite WAL checkpoints, ${mode}: ${mode === 'thread' ? 'a worker thread copies the WAL into the database, commits never do' : mode === 'external' ? 'neither commits nor this process checkpoint (the cluster primary does)' : "SQLite's default, inside commits"}`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cocoon-wal-'));
    const store = await openSqliteStore(dir, { walCheckpoints: mode, onCheckpointError: (m) => assert.fail(m) });
    try {
      assert.equal(await autocheckpoint(store), mode === 'inline' ? DEFAULT_AUTOCHECKPOINT_PAGES : BACKSTOP_PAGES);
      const before = statSync(join(dir, SQLITE_FILE)).size;
      // ≈ 7,500 pages of WAL (a commit rewrites whole pages): past SQLite's default 1,000-page autocheckpoint, far below the backstop.
      await writeEvents(store, 1500);
      await sleep(700);
      const grown = statSync(join(dir, SQLITE_FILE)).size - before;
      if (mode === 'external') assert.ok(grown < 64 * 1024, `nothing copied into the database file (${grown} bytes)`);
      else assert.ok(grown > 1024 * 1024, `the WAL was checkpointed into the database file (${grown} bytes)`);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('WAL checkpoint thread: after five failures in a row it reports each once and ends (the store then checkpoints inside commits)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-wal-fail-'));
  try {
    const file = join(dir, 'not-a-database');
    writeFileSync(file, 'x'.repeat(8192));
    const errors: string[] = [];
    // the thread is unref'd: this timer keeps the test alive until it ends (or fails the test after 10 s)
    const keepAlive = setTimeout(() => assert.fail(`the thread did not end; errors: ${errors.join('; ')}`), 10_000);
    await new Promise<void>((resolve) => startWalCheckpointer(file, { intervalMs: 5, onError: (m) => errors.push(m), onExit: resolve }));
    clearTimeout(keepAlive);
    assert.equal(errors.length, 5, errors.join('; '));
    assert.match(errors[0] ?? '', /not a database/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
