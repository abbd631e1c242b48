/**
 * `cocoon run --tee tpm --tpm-tcti swtpm:…` under runc with the wrapped Redis image: the
 * launcher inside the container speaks raw TPM 2.0 commands to a swtpm on loopback (host
 * network), extends PCR 23, attests with a real quote + event log; the KBS (trusting the AK)
 * accepts by measurement. Needs root, runc, swtpm and dist/; skips visibly otherwise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { E2eFixture, cocoon } from '../helpers/e2e.js';

const fx = new E2eFixture({ prefix: 'cocoon-e2e-tpm-run-', needs: ['swtpm', 'root', 'runc', 'dist'], tee: 'tpm' });
const { skip } = fx;
let layout: string;

fx.before(async () => {
  let measurement: string;
  ({ layout, measurement } = await fx.wrap({ policy: 'test/redis' }));
  await fx.applyPolicy({ name: 'test/redis', measurement, args: ['redis-server', '--version'] });
});

test('cocoon run --tee tpm --tpm-tcti swtpm:… attests with a real TPM quote under runc', { skip, timeout: 300_000 }, async () => {
  const name = `cocoon-tpm-${randomBytes(3).toString('hex')}`;
  const res = await cocoon(['run', layout, '--kbs', fx.kbs.url, '--tee', 'tpm', '--tpm-tcti', fx.tpm.tcti, '--name', name, '--kbs-retries', '1'], 240_000);
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stderr, /extended the workload measurement into PCR 23/);
  assert.match(res.stdout + res.stderr, /Redis server v=/);
  // bad TCTI is refused before anything runs
  const bad = await cocoon(['run', layout, '--kbs', fx.kbs.url, '--tee', 'tpm', '--tpm-tcti', 'mssim:port=1'], 60_000);
  assert.equal(bad.code, 2, bad.stderr);
});
