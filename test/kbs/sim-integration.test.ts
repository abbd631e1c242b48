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
import { verifySimEvidence } from '../../src/attestation/sim/index.js';
import { SimAttester } from '../../src/attester/sim.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { MEASUREMENT, POLICY_YAML } from './helpers.js';

// The real sim verifier and attester: proves the EvidenceVerifier seam fits them.
test('real sim attester + sim verifier through the KBS', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-sim-kbs-'));
  try {
    const { rootPem, platformDir } = await createSimPlatform(join(dir, 'platform'));
    const verifier: EvidenceVerifier = async (tee, evidence, opts) => {
      if (tee !== 'sim') throw new Error('only sim here');
      return verifySimEvidence(evidence, { roots: [rootPem] }, opts);
    };
    const keys = await createOwnerKey(join(dir, 'owner.jwk'));
    const kbs = await startKbs({ dataDir: join(dir, 'data'), verifier, allowSim: true, owners: [await loadOwnerPublicJwk(keys.publicFile)], logger: false, port: 0 });
    try {
      const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: keys.privateFile });
      await owner.applyPolicy(POLICY_YAML);
      await owner.putSecret('demo/redis', 'layer-key', Buffer.alloc(32, 5));
      const attester = new SimAttester(platformDir);
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
