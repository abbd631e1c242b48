import { test } from 'node:test';
import assert from 'node:assert/strict';
import { testImage } from '../helpers/env.js';
import { cocoon, missing } from '../helpers/e2e.js';

test('cocoon demo --json: Redis runs confidentially under sim, PONG with the password, NOAUTH without, modified image refused', { skip: missing('root', 'runc'), timeout: 900_000 }, async () => {
  const image = testImage('redis');
  if ('skip' in image) {
    assert.fail(`test image unavailable: ${image.skip}`);
  }
  const demo = await cocoon(['demo', '--json'], 600_000);
  assert.equal(demo.code, 0, demo.stderr);
  const summary = JSON.parse(demo.stdout);
  assert.equal(summary.ok, true);
  assert.match(summary.insecure, /INSECURE/);
  assert.match(summary.wrap.measurement, /^[0-9a-f]{96}$/);
  assert.deepEqual(summary.proof.withPassword, ['+OK', '+PONG']);
  assert.match(summary.proof.withoutPassword[0], /^-NOAUTH/);
  assert.equal(summary.proof.passwordBytes, 32);
  assert.equal(summary.negative.refused, true);
  assert.equal(summary.negative.code, 'POLICY_DENIED');
  assert.equal(summary.negative.appStarted, false);
  assert.notEqual(summary.negative.measurement, summary.wrap.measurement);
  assert.ok(summary.negative.launcherLog.some((l: string) => /application was not started/.test(l)));
  for (const key of ['kbsStartMs', 'wrapMs', 'policyMs', 'coldStartMs']) assert.equal(typeof summary.timings[key], 'number', key);
  // the demo cleans up after itself
  const ps = await cocoon(['ps', '--json']);
  assert.equal(ps.code, 0, ps.stderr);
  assert.ok(!JSON.parse(ps.stdout).some((c: { name: string }) => c.name === summary.run.container));
});
