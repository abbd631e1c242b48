import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { build } from 'esbuild';
import { exportJWK, generateKeyPair } from 'jose';
import { auditPublicKey, verifyStoreAudit } from '../../src/kbs/audit.js';
import { loadOrCreateIdentity } from '../../src/kbs/identity.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';

const WRITER_TS = join(import.meta.dirname, 'fixtures', 'crash-writer.ts');
// Bundled once so that each restart costs ~0.3 s instead of tsx's compile of the whole tree;
// written below node_modules so that its external packages resolve.
const WRITER = join(import.meta.dirname, '..', '..', 'node_modules', '.cache', 'cocoon-kbs-tests', 'crash-writer.mjs');
const BUDGET_MS = Number(process.env.COCOON_CRASH_BUDGET_MS ?? 150_000);
const MAX_KILLS = 100;

test(`crash consistency: SIGKILL a SQLite KBS at random points of policy/secret writes (up to ${MAX_KILLS} kills or ${BUDGET_MS / 1000} s)`, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-crash-'));
  try {
    await build({ entryPoints: [WRITER_TS], outfile: WRITER, bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', logLevel: 'warning' });
    const keyFile = join(dir, 'owner.jwk');
    writeFileSync(keyFile, JSON.stringify(await exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey)), { mode: 0o600 });
    const data = join(dir, 'data');
    const identity = await loadOrCreateIdentity(data);
    const key = auditPublicKey(identity.publicJwk);
    const started = Date.now();
    let kills = 0;
    let lastVersion = 0;
    while (kills < MAX_KILLS && Date.now() - started < BUDGET_MS) {
      const child = spawn(process.execPath, [WRITER, data, keyFile], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      await new Promise<void>((resolve, reject) => {
        child.stdout.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`writer exited ${code}: ${err}`)));
      });
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 250)));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      kills++;

      // the store opens (migrations, WAL recovery), the audit chain verifies …
      const store = await openSqliteStore(data);
      try {
        const verdict = await verifyStoreAudit(store, key);
        assert.equal(verdict.ok, true, `after kill ${kills}: ${JSON.stringify(verdict.firstBroken)}`);
        const head = await store.getPolicyHead('demo/redis');
        if (head) {
          // … and no policy is half-applied: head = newest version, one audit entry and one CA rotation per version
          const versions = await store.listPolicyVersions('demo/redis', 100_000);
          assert.equal(head.version, versions.length);
          assert.equal(versions[0]?.hash, head.hash);
          assert.doesNotThrow(() => parsePolicy(head.yaml));
          assert.ok(head.version >= lastVersion, 'versions never go back');
          lastVersion = head.version;
          assert.ok(await store.getSecret('demo/redis', 'redis-password'), 'the random secret of version 1 exists');
        }
      } finally {
        await store.close();
      }
      const db = new Database(join(data, 'kbs.sqlite'), { readonly: true });
      try {
        const applies = (db.prepare("SELECT count(*) AS n FROM kbs_audit WHERE action = 'policy.apply'").get() as { n: number }).n;
        const versions = (db.prepare('SELECT count(*) AS n FROM kbs_policy_versions').get() as { n: number }).n;
        const intermediates = (db.prepare("SELECT count(*) AS n FROM kbs_ca WHERE kind = 'intermediate'").get() as { n: number }).n;
        assert.equal(applies, versions, 'every stored version has its audit entry and vice versa');
        assert.equal(intermediates, versions, 'every version rotated the intermediate in the same transaction');
        assert.equal((db.prepare('PRAGMA integrity_check').get() as { integrity_check: string }).integrity_check, 'ok');
      } finally {
        db.close();
      }
    }
    t.diagnostic(`${kills} SIGKILLs in ${((Date.now() - started) / 1000).toFixed(1)} s; ${lastVersion} policy versions survived`);
    assert.ok(kills >= 10, `only ${kills} kills fit in the budget`);
    assert.ok(lastVersion > 0, 'no policy version ever survived a kill, so the per-version checks above never ran');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
