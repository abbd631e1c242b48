/**
 * Periodic commits of a protected volume, end to end against a real KBS: the launcher runs as a
 * child process (like a container's PID 1) with `commitEvery: 10s`; Redis saves k1 and a
 * periodic commit advances the KBS counter; Redis saves k2 and SIGPWR to the launcher commits at
 * once; Redis saves k3 and the launcher is SIGKILLed (no clean shutdown, no final seal) and the
 * orphaned app goes down without saving. The restart has k1 and k2, not k3; the snapshot of
 * the periodic commit is refused afterwards as a rollback.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isCocoonError } from '../../src/errors.js';
import { E2eFixture, freePort, redis as redisAt, redisServerArgs, waitForRedis } from '../helpers/e2e.js';

const fx = new E2eFixture({ prefix: 'cocoon-volc-e2e-', needs: ['root', 'dist'], tee: 'sim' });
const { skip } = fx;

let rootfs: string;
let stores: string;
let port: number;

const redis = (args: string[]) => redisAt(port, args);

async function counter(): Promise<number> {
  return (await fx.owner.volumes('test/volc')).find((v) => v.volume === 'data')?.version ?? -1;
}

async function until(cond: () => Promise<boolean>, what: string, ms: number, log: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

fx.before(async () => {
  let measurement: string;
  ({ rootfs, measurement } = await fx.wrapAndUnpack({ policy: 'test/volc' }));
  stores = join(fx.work, 'stores');
  await mkdir(join(stores, 'data'), { recursive: true });
  port = await freePort();
  await fx.applyPolicy({ name: 'test/volc', measurement, args: redisServerArgs(port, { dir: '/data' }), extra: '    volumes:\n      - { name: data, mountPath: /data, commitEvery: 10s }' });
});

test('protected volume: periodic and SIGPWR commits survive a SIGKILLed launcher; an older snapshot is still refused', { skip, timeout: 120_000 }, async () => {
  // 1. the launcher as a child process; Redis saves k1; the periodic commit (10 s) takes it
  const run = fx.spawnLauncher(rootfs, { COCOON_ROOT: join(fx.work, 'approot-1'), COCOON_VOLUMES: stores });
  let early: unknown;
  void run.exited.then((r) => (early = new Error(`launcher exited early (${r.code ?? r.signal}):\n${run.output()}`)));
  await waitForRedis(port, { attempts: 300, stop: () => early });
  assert.equal(await redis(['SET', 'k1', 'before the periodic commit']), '+OK\r\n');
  assert.equal(await redis(['SAVE']), '+OK\r\n');
  await until(async () => (await counter()) === 1, 'the periodic commit', 20_000, run.output);
  assert.match(run.output(), /protected volume data: committed version 1 \(periodic commit\)/);
  assert.match(run.output(), /committing every 10 s while the application runs/);
  const snapshot = join(fx.work, 'snapshot-v1');
  await cp(join(stores, 'data'), snapshot, { recursive: true });

  // 2. k2, then SIGPWR: commit now (the app does not see the signal: Redis keeps running)
  assert.equal(await redis(['SET', 'k2', 'before SIGPWR']), '+OK\r\n');
  assert.equal(await redis(['SAVE']), '+OK\r\n');
  run.child.kill('SIGPWR');
  await until(async () => (await counter()) === 2, 'the SIGPWR commit', 20_000, run.output);
  assert.match(run.output(), /SIGPWR received: committing the protected volumes/);
  assert.match(run.output(), /committed version 2 \(signal commit\)/);
  assert.match(await redis(['PING']), /PONG/);

  // 3. k3 is saved into the volume, then the launcher dies without a clean shutdown (no final seal);
  //    the orphaned app goes down without saving, as it would with its container
  assert.equal(await redis(['SET', 'k3', 'lost with the crash']), '+OK\r\n');
  assert.equal(await redis(['SAVE']), '+OK\r\n');
  run.child.kill('SIGKILL');
  assert.equal((await run.exited).signal, 'SIGKILL');
  await redis(['SHUTDOWN', 'NOSAVE']).catch(() => '');
  assert.doesNotMatch(run.output(), /committed version 3/);
  assert.equal(await counter(), 2, 'the KBS counter is at the last commit');

  // 4. restart (in-process launcher): the store (version 2) matches the counter; k1 and k2 are back, k3 is not
  fx.logLines.length = 0;
  const second = fx.launch(rootfs, { COCOON_ROOT: join(fx.work, 'approot-2'), COCOON_VOLUMES: stores });
  let failed: unknown;
  second.catch((e: unknown) => (failed = e));
  await waitForRedis(port, { attempts: 300, stop: () => failed });
  assert.match(await redis(['GET', 'k1']), /before the periodic commit/);
  assert.match(await redis(['GET', 'k2']), /before SIGPWR/);
  assert.equal(await redis(['GET', 'k3']), '$-1\r\n', 'written after the last commit: lost');
  assert.ok(!fx.logLines.some((l) => /completing the interrupted commit/.test(l)), 'nothing was pending');
  await redis(['SHUTDOWN', 'SAVE']);
  assert.equal(await second, 0);
  assert.equal(await counter(), 3, 'the clean shutdown committed');

  // 5. the host restores the snapshot of the periodic commit (version 1 < counter 3): refused
  await rm(join(stores, 'data'), { recursive: true });
  await cp(snapshot, join(stores, 'data'), { recursive: true });
  fx.logLines.length = 0;
  await assert.rejects(fx.launch(rootfs, { COCOON_ROOT: join(fx.work, 'approot-3'), COCOON_VOLUMES: stores }), (e: unknown) => isCocoonError(e, 'VOLUME_ROLLBACK') && /version 1.*counter is 3/.test((e as Error).message));
  assert.ok(!fx.appStarted(), 'the app was never started');
});
