import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildKbsApp } from '../../src/kbs/app.js';
import { openPostgresStore } from '../../src/kbs/store/postgres.js';
import { fakeVerifier, makeOwnerKey } from './helpers.js';
import type { TestKbs } from './helpers.js';
import { createDatabase, withTempPostgres } from './pg-harness.js';
import { auditScenario, deploymentCaScenario, governanceScenario, nonOwnerScenario, secretKindsScenario } from './scenarios.js';

const scenarios = { governanceScenario, nonOwnerScenario, auditScenario, secretKindsScenario, deploymentCaScenario };

test('PostgreSQL: the broker scenarios of the SQLite suite, each on its own database', async (t) => {
  await withTempPostgres(t, async (pgInstance) => {
    for (const [name, scenario] of Object.entries(scenarios)) {
      await t.test(name, async () => {
        const store = await openPostgresStore(await createDatabase(pgInstance, name.toLowerCase()));
        const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-pgs-'));
        const owner = await makeOwnerKey();
        const app = await buildKbsApp({ dataDir: dir, store, verifier: fakeVerifier, allowSim: true, owners: [owner.publicJwk], logger: false });
        const kbsId = (await app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json<{ id: string }>().id;
        const kbs: TestKbs = { app, dir, owner, kbsId, cleanup: async () => undefined };
        try {
          await scenario(kbs);
        } finally {
          await app.close();
          await store.close();
          rmSync(dir, { recursive: true, force: true });
        }
      });
    }
  });
});
