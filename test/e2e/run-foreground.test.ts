/**
 * `cocoon run` in the foreground under runc: the app's exit status comes back, and a refused
 * launch exits 1 with the launcher's reason while the app never starts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { E2eFixture, cocoon, policyYaml } from '../helpers/e2e.js';

const fx = new E2eFixture({ prefix: 'cocoon-run-', needs: ['root', 'runc'], tee: 'sim' });
const { skip } = fx;
let layout: string;
let measurement: string;

fx.before(async () => {
  ({ layout, measurement } = await fx.wrap({ policy: 'test/fg' }));
});

const run = () => cocoon(['run', layout, '--kbs', fx.kbs.url, '--tee', 'sim', '--config-dir', fx.cfg, '--kbs-retries', '1']);
const policy = (accepted: string) => ({ name: 'test/fg', measurement: accepted, args: ['redis-server', '--version'] });

test('a refused launch exits 1 with the reason, and the app never runs', { skip }, async () => {
  await fx.applyPolicy(policy('0'.repeat(96)));
  const result = await run();
  assert.equal(result.code, 1);
  assert.match(result.stderr, /\[cocoon-launcher\] ERROR \[POLICY_DENIED\]/);
  assert.match(result.stderr, /the application was not started/);
  assert.doesNotMatch(result.stdout, /Redis server v=/);
});

test('an accepted launch runs the app in the foreground and returns its exit status', { skip }, async () => {
  await fx.owner.applyPolicy(policyYaml({ ...policy(measurement), tee: 'sim' })); // the layer key stored by the first test stays
  const result = await run();
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /Redis server v=7\./);
  assert.match(result.stderr, /starting redis-server as uid 999/);
});
