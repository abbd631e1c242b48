import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import { migrations } from '../../src/kbs/store/migrations.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';

test('migrations: a store created by the first release upgrades in place (owners become admins, new tables appear)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-migrate-'));
  try {
    const file = join(dir, 'kbs.sqlite');
    const db = new Kysely<unknown>({ dialect: new SqliteDialect({ database: new Database(file) }) });
    const migrator = new Migrator({ db, provider: { getMigrations: () => Promise.resolve(migrations('sqlite')) }, migrationTableName: 'kbs_migration', migrationLockTableName: 'kbs_migration_lock' });
    const first = await migrator.migrateTo('0001_initial');
    assert.equal(first.error, undefined);
    const raw = new Database(file);
    raw.prepare("INSERT INTO kbs_owners (kid, jwk, label, created_at) VALUES ('k1', '{}', 'old owner', 1)").run();
    raw.prepare("INSERT INTO kbs_policies (name, version, hash, updated_at) VALUES ('a/b', 1, 'h', 1)").run();
    raw.close();
    await db.destroy();

    const store = await openSqliteStore(dir);
    try {
      assert.equal((await store.getOwner('k1'))?.role, 'admin', 'owners of the first release keep full rights');
      assert.equal(await store.auditHead(), undefined);
      assert.equal(await store.countActivation('a/b', 'w', 1), 1);
      assert.equal(await store.countActivation('a/b', 'w', 1), false);
    } finally {
      await store.close();
    }
    const check = new Database(file, { readonly: true });
    const applied = check.prepare('SELECT name FROM kbs_migration ORDER BY name').all() as { name: string }[];
    const prunePlan = (check.prepare('EXPLAIN QUERY PLAN SELECT serial FROM kbs_certs WHERE not_after <= ?').all(0) as { detail: string }[]).map((r) => r.detail).join('; ');
    check.close();
    assert.match(prunePlan, /USING (COVERING )?INDEX kbs_certs_expiry/, prunePlan);
    assert.deepEqual(applied.map((r) => r.name), ['0001_initial', '0002_governance_audit_ca', '0003_volumes', '0004_issued_certs', '0005_instance_secrets', '0006_certs_expiry']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
