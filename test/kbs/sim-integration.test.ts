import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EvidenceVerifier } from '../../src/kbs/context.js';
import { startKbs } from '../../src/kbs/app.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { parseLaunchPlan } from '../../src/kbs/launch-plan.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { MEASUREMENT, POLICY_YAML } from './helpers.js';

/** The lead's sim verifier and attester, when present: proves the EvidenceVerifier seam fits them. */
async function loadSim() {
  try {
    const verifier = await import('../../src/attestation/sim/index.js');
    const attester = await import('../../src/attester/sim.js');
    const platform = await import('../../src/attester/sim-platform.js');
    return { verifier, attester, platform };
  } catch (err) {
    return (err as Error).message;
  }
}

test('real sim attester + sim verifier through the KBS', async (t) => {
  const sim = await loadSim();
  if (typeof sim === 'string') {
    t.skip(`sim modules not available: ${sim}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-sim-kbs-'));
  try {
    const { rootPem, platformDir } = await sim.platform.createSimPlatform(join(dir, 'platform'));
    const verifier: EvidenceVerifier = async (tee, evidence, opts) => {
      if (tee !== 'sim') throw new Error('only sim here');
      return sim.verifier.verifySimEvidence(evidence, { roots: [rootPem] }, opts);
    };
    const keys = await createOwnerKey(join(dir, 'owner.jwk'));
    const kbs = await startKbs({ dataDir: join(dir, 'data'), verifier, allowSim: true, owners: [await loadOwnerPublicJwk(keys.publicFile)], logger: false, port: 0 });
    try {
      const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: keys.privateFile });
      await owner.applyPolicy(POLICY_YAML);
      await owner.putSecret('demo/redis', 'layer-key', Buffer.alloc(32, 5));
      const attester = new sim.attester.SimAttester(platformDir);
      const out = await attestAndFetch({
        kbsUrl: kbs.url,
        tee: 'sim',
        evidenceProvider: (rd) => attester.getEvidence(rd, MEASUREMENT),
        initData: { policy: 'demo/redis', workload: 'redis' },
        resources: ['demo/redis/launch-plan'],
        retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
      });
      const plan = parseLaunchPlan(out.resources['demo/redis/launch-plan']);
      assert.equal(plan.insecure, true);
      assert.deepEqual(plan.layerKey, Buffer.alloc(32, 5));
    } finally {
      await kbs.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
