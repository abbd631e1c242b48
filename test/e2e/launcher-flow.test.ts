/**
 * The launcher against a real KBS, in-process (no runc): the security-relevant refusals of the
 * first slice. Each refusal must happen before any application code runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isCocoonError } from '../../src/errors.js';
import { writeModifiedImage } from '../../src/cli/demo/variant.js';
import { E2eFixture } from '../helpers/e2e.js';

const fx = new E2eFixture({ prefix: 'cocoon-e2e-', needs: ['root', 'dist'], tee: 'sim' });
const { skip } = fx;

const policy = (measurement: string) => ({ name: 'test/redis', measurement, password: true });

test('a tampered encrypted layer byte is refused before any application code runs', { skip }, async () => {
  const { rootfs, measurement } = await fx.wrapAndUnpack({ name: 'tampered', policy: 'test/redis' });
  await fx.applyPolicy(policy(measurement));
  const payloadDir = join(rootfs, 'cocoon', 'payload');
  const payloadFile = join(payloadDir, 'payload.json');
  const payload = JSON.parse(await readFile(payloadFile, 'utf8'));
  const layer = payload.layers[0];
  const blobFile = join(payloadDir, 'blobs', 'sha256', layer.digest.slice('sha256:'.length));
  const bytes = await readFile(blobFile);
  const at = Math.floor(bytes.length / 2);
  bytes.writeUInt8(bytes.readUInt8(at) ^ 0x01, at);
  await writeFile(blobFile, bytes);

  // 1. as is: the ciphertext no longer matches its recorded digest
  fx.logLines.length = 0;
  await assert.rejects(fx.launch(rootfs), (e) => isCocoonError(e, 'DIGEST_MISMATCH'));
  assert.ok(!fx.appStarted(), 'the app was never started');

  // 2. an attacker who also rewrites the (unmeasured) ciphertext digest is stopped by the HMAC
  const newDigest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  await rename(blobFile, join(payloadDir, 'blobs', 'sha256', newDigest.slice('sha256:'.length)));
  layer.digest = newDigest;
  await writeFile(payloadFile, JSON.stringify(payload));
  fx.logLines.length = 0;
  await assert.rejects(fx.launch(rootfs), (e) => isCocoonError(e, 'LAYER_AUTH_FAILED'));
  assert.ok(!fx.appStarted(), 'the app was never started');
  assert.ok(!existsSync(join(rootfs, 'approot', 'usr', 'bin', 'redis-server')), 'no plaintext file was unpacked from the tampered layer');
});

test('a measurement not in the policy gets POLICY_DENIED and nothing is released', { skip }, async () => {
  await writeModifiedImage(fx.imageLayout, 'redis:7', join(fx.work, 'modified'), 'MODIFIED=1');
  const { rootfs } = await fx.wrapAndUnpack({ name: 'other', policy: 'test/redis', source: { layoutDir: join(fx.work, 'modified'), ref: 'modified' } });
  const eventsBefore = await fx.owner.listEvents();
  const releases = (list: typeof eventsBefore) => list.filter((e) => e.kind === 'release').length;
  await assert.rejects(fx.launch(rootfs), (e) => isCocoonError(e, 'POLICY_DENIED'));
  const events = await fx.owner.listEvents();
  assert.ok(events.length > eventsBefore.length);
  assert.equal(releases(events), releases(eventsBefore), 'nothing released to a denied workload');
  assert.ok(events.some((e) => e.code === 'POLICY_DENIED'));
});

test('a modified launcher file is refused before attesting', { skip }, async () => {
  const { rootfs } = await fx.wrapAndUnpack({ name: 'launcher-mod', policy: 'test/redis' });
  await writeFile(join(rootfs, 'cocoon', 'launcher.mjs'), '\n// modified\n', { flag: 'a' });
  await assert.rejects(fx.launch(rootfs), (e) => isCocoonError(e, 'MEASUREMENT_MISMATCH'));
});

test('KBS unreachable: bounded retries with backoff, then KBS_UNREACHABLE with a clear message', { skip }, async () => {
  const { rootfs } = await fx.wrapAndUnpack({ name: 'unreachable', policy: 'test/redis' });
  fx.logLines.length = 0;
  const started = Date.now();
  await assert.rejects(
    fx.launch(rootfs, { COCOON_KBS_URL: 'http://127.0.0.1:9', COCOON_KBS_RETRIES: '3', COCOON_KBS_RETRY_DELAY_MS: '50', COCOON_KBS_RETRY_MAX_DELAY_MS: '200' }),
    (e) => isCocoonError(e, 'KBS_UNREACHABLE') && /127\.0\.0\.1:9/.test(e.message),
  );
  assert.ok(Date.now() - started < 10_000);
  assert.equal(fx.logLines.filter((l) => /retrying/.test(l)).length, 2, 'two retries after the first attempt');
});

test('init-data for another workload (COCOON_INIT_DATA) is refused before attesting', { skip }, async () => {
  const { renderInitData } = await import('../../src/kbs/init-data.js');
  const { rootfs } = await fx.wrapAndUnpack({ name: 'initdata', policy: 'test/redis' });
  const eventsBefore = (await fx.owner.listEvents()).length;
  const other = renderInitData({ policy: 'test/redis', workload: 'someone-else' }).annotation;
  await assert.rejects(fx.launch(rootfs, { COCOON_INIT_DATA: other }), (e) => isCocoonError(e, 'INIT_DATA_MISMATCH') && /someone-else/.test(e.message));
  assert.ok(!fx.appStarted(), 'the app was never started');
  assert.equal((await fx.owner.listEvents()).length, eventsBefore, 'nothing was sent to the KBS');
});
