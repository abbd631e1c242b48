/**
 * A real software TPM end to end through the KBS: the launcher (in-process, as in
 * launcher-flow.test.ts) extends the workload measurement into PCR 23 of a swtpm, attests
 * with a real TPM quote plus the Cocoon event log, and the KBS — trusting the AK through
 * --trusted-ak (createBrokerVerifier({trustedAks})) — replays the log and accepts the workload
 * by its `measurement`, releases the launch plan, and the app runs. Refusals: untrusted AK,
 * measurement not in the policy. Needs root, dist/ and swtpm; skips visibly otherwise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import type { RunningKbs } from '../../src/kbs/app.js';
import { isCocoonError } from '../../src/errors.js';
import { E2eFixture, policyYaml } from '../helpers/e2e.js';

const fx = new E2eFixture({ prefix: 'cocoon-e2e-tpm-', needs: ['swtpm', 'root', 'dist'], tee: 'tpm' });
const { skip } = fx;

let untrustingKbs: RunningKbs;
let rootfs: string;
let measurement: string;

const policy = (m: string) => ({ name: 'test/redis', measurement: m, password: true, args: ['redis-server', '--version'] });

fx.before(async () => {
  // another key of the AK's type (an RSA AK would otherwise be trusted by the "untrusting" KBS)
  const others = createPublicKey(fx.akPem).asymmetricKeyType === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const other = others.publicKey.export({ type: 'spki', format: 'pem' }) as string;
  untrustingKbs = await fx.startKbs('kbs2', { trustedAks: [other] });
  ({ rootfs, measurement } = await fx.wrapAndUnpack({ policy: 'test/redis' }));
});

test('swtpm: real quote + event log → the KBS accepts the workload by measurement and the app runs', { skip }, async () => {
  await fx.applyPolicy(policy(measurement));
  fx.logLines.length = 0;
  const status = await fx.launch(rootfs);
  assert.equal(status, 0, fx.logLines.join(''));
  assert.ok(fx.logLines.some((l) => /extended the workload measurement into PCR 23/.test(l)), fx.logLines.join(''));
  assert.ok(!fx.logLines.some((l) => /INSECURE/.test(l)), 'no insecure mode involved');
  const events = await fx.owner.listEvents();
  const attest = events.find((e) => e.kind === 'attest' && e.status === 'affirming');
  assert.ok(attest, JSON.stringify(events));
  assert.equal(attest.tee, 'tpm');
  assert.match(attest.detail, new RegExp(measurement));
  assert.ok(events.some((e) => e.kind === 'release' && e.status === 'affirming'));
});

test('swtpm: the second launch on the same TPM resets PCR 23 and attests again', { skip }, async () => {
  assert.equal(await fx.launch(rootfs), 0);
});

test('swtpm: a KBS that does not trust this AK refuses (AK_NOT_TRUSTED)', { skip }, async () => {
  await assert.rejects(fx.launch(rootfs, { COCOON_KBS_URL: untrustingKbs.url }), (e) => isCocoonError(e, 'AK_NOT_TRUSTED') || (isCocoonError(e) && /AK_NOT_TRUSTED/.test(e.message)));
});

test('swtpm: a measurement not in the policy is denied', { skip }, async () => {
  await fx.owner.applyPolicy(policyYaml({ ...policy('0'.repeat(96)), tee: 'tpm' }));
  await assert.rejects(fx.launch(rootfs), (e) => isCocoonError(e, 'POLICY_DENIED'));
});
