import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { distCli, hasCommand, isRoot, testImage } from '../helpers/env.js';

const execFileAsync = promisify(execFile);

const reason = !isRoot ? 'needs root' : !hasCommand('runc') ? 'needs runc (scripts/setup.sh)' : undefined;

test('cocoon demo --json: Redis runs confidentially under sim, PONG with the password, NOAUTH without, modified image refused', { skip: reason ?? false, timeout: 900_000 }, async () => {
  const image = testImage('redis');
  if ('skip' in image) {
    assert.fail(`test image unavailable: ${image.skip}`);
  }
  const { stdout } = await execFileAsync(process.execPath, [distCli, 'demo', '--json'], { maxBuffer: 8 * 1024 * 1024, timeout: 600_000 });
  const summary = JSON.parse(stdout);
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
  const { stdout: ps } = await execFileAsync(process.execPath, [distCli, 'ps', '--json']);
  assert.ok(!JSON.parse(ps).some((c: { name: string }) => c.name === summary.run.container));
});
