/**
 * keyunwrap inside a (simulated) TEE: `cocoon keyprovider` attests to a real in-process KBS and
 * receives the layer key only for a workload/measurement the policy accepts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { startKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { handleKeyProviderRequest } from '../../src/image/keyprovider.js';
import { KekWrapper } from '../../src/image/ocicrypt.js';
import { tempDir } from './helpers.js';

test('keyprovider keyunwrap through the KBS (sim TEE): released to the accepted measurement only', async (t) => {
  const work = await tempDir(t, 'cocoon-kp-kbs-');
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  const kbs = await startKbs({ dataDir: join(work, 'kbs'), port: 0, allowSim: true, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [sim.rootPem] }), logger: false });
  t.after(() => kbs.close());
  const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
  const measurement = randomBytes(48).toString('hex');
  await owner.applyPolicy(`name: shop/app
secrets:
  layer-key: { kind: layer-key }
workloads:
  app:
    accept:
      - tee: [sim]
        measurement: "${measurement}"
`);
  const kek = randomBytes(32);
  await owner.putSecret('shop/app', 'layer-key', kek);

  const optsData = Buffer.from('{"symkey":"x","digest":"sha256:0","cipheroptions":{"nonce":"y"}}');
  const annotation = Buffer.from(await new KekWrapper(kek, 'kbs:///shop/app/layer-key').wrap(optsData), 'base64');
  const req = Buffer.from(JSON.stringify({ op: 'keyunwrap', keyunwrapparams: { dc: { Parameters: {} }, annotation: annotation.toString('base64') } }));
  const env = { COCOON_KBS_URL: kbs.url, COCOON_TEE: 'sim', COCOON_SIM_DEVICE: sim.platformDir, COCOON_WORKLOAD: 'app', COCOON_MEASUREMENT: measurement, COCOON_KBS_RETRIES: '1' };
  const out = JSON.parse((await handleKeyProviderRequest(req, env)).toString()) as { keyunwrapresults: { optsdata: string } };
  assert.deepEqual(Buffer.from(out.keyunwrapresults.optsdata, 'base64'), optsData);

  await assert.rejects(handleKeyProviderRequest(req, { ...env, COCOON_MEASUREMENT: randomBytes(48).toString('hex') }), { code: 'POLICY_DENIED' });
  await assert.rejects(handleKeyProviderRequest(req, { ...env, COCOON_WORKLOAD: 'other' }), (e: { code?: string }) => e.code === 'POLICY_DENIED' || e.code === 'POLICY_INVALID');
  await assert.rejects(handleKeyProviderRequest(req, { ...env, COCOON_MEASUREMENT: 'short' }), { code: 'BAD_USAGE' });
});
