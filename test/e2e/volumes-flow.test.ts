/**
 * Protected volumes end to end, in-process launcher against a real KBS (no runc): Redis writes
 * its RDB into the protected volume; a clean shutdown seals it and advances the KBS counter; a
 * restart gets the data back; a flipped byte (VOLUME_TAMPERED) and an older snapshot
 * (VOLUME_ROLLBACK) are refused before Redis starts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isCocoonError } from '../../src/errors.js';
import { E2eFixture, freePort, redis as redisAt, redisServerArgs, waitForRedis } from '../helpers/e2e.js';

const fx = new E2eFixture({ prefix: 'cocoon-vol-e2e-', needs: ['root', 'dist'], tee: 'sim' });
const { skip } = fx;

let rootfs: string;
let stores: string;
let port: number;
let runs = 0;

const redis = (args: string[]) => redisAt(port, args);

function startLauncher(): Promise<number> {
  runs++;
  return fx.launch(rootfs, { COCOON_ROOT: join(fx.work, `approot-${runs}`), COCOON_VOLUMES: stores });
}

/** Runs Redis in the launcher, lets `fn` talk to it, then `SHUTDOWN` (with SAVE: writes /data/dump.rdb). */
async function runRedis(fn: () => Promise<void>): Promise<number> {
  const running = startLauncher();
  let failed: unknown;
  running.catch((e: unknown) => (failed = e));
  await Promise.race([waitForRedis(port), running.then(() => Promise.reject(new Error('launcher returned early')))]).catch((e: unknown) => {
    throw failed ?? e;
  });
  await fn();
  await redis(['SHUTDOWN', 'SAVE']);
  return running;
}

async function counter(): Promise<number> {
  const vol = (await fx.owner.volumes('test/redis')).find((v) => v.volume === 'data');
  return vol?.version ?? -1;
}

fx.before(async () => {
  let measurement: string;
  ({ rootfs, measurement } = await fx.wrapAndUnpack({ policy: 'test/redis' }));
  stores = join(fx.work, 'stores');
  await mkdir(join(stores, 'data'), { recursive: true });
  port = await freePort();
  await fx.applyPolicy({ name: 'test/redis', measurement, args: redisServerArgs(port, { dir: '/data' }), extra: '    volumes:\n      - { name: data, mountPath: /data }' });
});

test('protected volume: Redis data survives a clean shutdown and restart; tampering and rollback are refused', { skip }, async () => {
  // 1. first run: a new volume; Redis writes dump.rdb into it on SHUTDOWN SAVE
  assert.equal(await runRedis(async () => assert.equal(await redis(['SET', 'greeting', 'hello from the TEE']), '+OK\r\n')), 0);
  assert.equal(await counter(), 1, 'the clean shutdown advanced the KBS counter');
  const store = join(stores, 'data');
  const manifest = await readFile(join(store, 'manifest.json'), 'utf8');
  assert.doesNotMatch(manifest, /dump\.rdb/, 'file names are encrypted');
  for (const blob of await readdir(join(store, 'blobs'))) assert.ok(!(await readFile(join(store, 'blobs', blob))).includes('REDIS'), 'no plaintext RDB on the host');
  const snapshot = join(fx.work, 'snapshot-v1');
  await cp(store, snapshot, { recursive: true });

  // 2. restart: the data is back
  assert.equal(
    await runRedis(async () => {
      assert.match(await redis(['GET', 'greeting']), /hello from the TEE/);
      await redis(['SET', 'second', 'run']);
    }),
    0,
  );
  assert.equal(await counter(), 2);

  // 3. a flipped byte in the encrypted RDB: VOLUME_TAMPERED, Redis never starts
  const blobs = await readdir(join(store, 'blobs'));
  assert.equal(blobs.length, 1);
  const blobFile = join(store, 'blobs', blobs[0] as string);
  const original = await readFile(blobFile);
  const tampered = Buffer.from(original);
  tampered[40] = (tampered[40] ?? 0) ^ 0x01;
  await writeFile(blobFile, tampered);
  fx.logLines.length = 0;
  await assert.rejects(startLauncher(), (e: unknown) => isCocoonError(e, 'VOLUME_TAMPERED') && /protected volume data: file dump\.rdb chunk 0 failed authentication/.test((e as Error).message));
  assert.ok(!fx.appStarted(), 'the app was never started');
  await writeFile(blobFile, original);

  // 4. the host restores the older snapshot (version 1 < counter 2): VOLUME_ROLLBACK
  await rm(store, { recursive: true });
  await cp(snapshot, store, { recursive: true });
  fx.logLines.length = 0;
  await assert.rejects(startLauncher(), (e: unknown) => isCocoonError(e, 'VOLUME_ROLLBACK') && /version 1.*counter is 2/.test((e as Error).message));
  assert.ok(!fx.appStarted(), 'the app was never started');
  assert.equal(await counter(), 2);
});
