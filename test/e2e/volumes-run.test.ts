/**
 * Protected volume under runc (`cocoon run --volume data=HOSTDIR`): Redis writes its RDB into
 * the volume; `SHUTDOWN SAVE` (foreground) and `cocoon stop` (SIGTERM, detached) both seal it
 * and advance the KBS counter; the next run reads the data back; an older snapshot is refused.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { wrapImage } from '../../src/image/wrap.js';
import { distCli, hasCommand, isRoot, launcherDir, testImage } from '../helpers/env.js';

const execFileAsync = promisify(execFile);
const image = isRoot && hasCommand('runc') ? testImage('redis') : { skip: 'needs root and runc' };
const skip = 'skip' in image ? image.skip : false;

let work: string;
let kbs: RunningKbs;
let owner: OwnerClient;
let port: number;
const kek = randomBytes(32);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

function redis(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let buf = '';
    sock.setTimeout(5000, () => sock.destroy(new Error('redis timeout')));
    sock.on('connect', () => sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.endsWith('\r\n')) {
        sock.end();
        resolve(buf);
      }
    });
    sock.on('error', reject);
    sock.on('close', () => resolve(buf));
  });
}

async function waitForRedis(): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      if ((await redis(['PING'])).startsWith('+PONG')) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('redis did not come up');
}

function cocoon(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return execFileAsync(process.execPath, [distCli, ...args], { timeout: 120_000 }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

const runArgs = (extra: string[] = []) => ['run', join(work, 'cc'), '--kbs', kbs.url, '--tee', 'sim', '--config-dir', join(work, 'cfg'), '--kbs-retries', '1', '--volume', `data=${join(work, 'store')}`, ...extra];

async function counter(): Promise<number> {
  return (await owner.volumes('test/vol')).find((v) => v.volume === 'data')?.version ?? -1;
}

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-volrun-'));
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  kbs = await startKbs({ dataDir: join(work, 'kbs'), port: 0, allowSim: true, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [sim.rootPem] }), logger: false });
  owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
  const { measurement } = await wrapImage({ source: { layoutDir: (image as { layout: string }).layout, ref: 'redis:7' }, dest: { layoutDir: join(work, 'cc') }, launcherDir, policy: 'test/vol', workload: 'redis', kek });
  port = await freePort();
  await owner.applyPolicy(`name: test/vol
secrets:
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept: [{ tee: [sim], measurement: "${measurement}" }]
    args: ["redis-server", "--port", "${port}", "--bind", "127.0.0.1", "--dir", "/data", "--save", "3600 1", "--appendonly", "no", "--protected-mode", "no"]
    volumes:
      - { name: data, mountPath: /data }
`);
  await owner.putSecret('test/vol', 'layer-key', kek);
});

after(async () => {
  if (skip) return;
  await kbs?.close();
  await rm(work, { recursive: true, force: true });
});

test('runc: Redis RDB in a protected volume survives SHUTDOWN and cocoon stop; an older snapshot is refused', { skip }, async () => {
  // 1. foreground: SET, SHUTDOWN SAVE → the launcher seals the volume and exits with Redis's status
  const first = cocoon(runArgs());
  await Promise.race([waitForRedis(), first.then((r) => Promise.reject(new Error(`cocoon run returned ${r.code} early: ${r.stderr}`)))]);
  assert.equal(await redis(['SET', 'k1', 'first run']), '+OK\r\n');
  await redis(['SHUTDOWN', 'SAVE']);
  const r1 = await first;
  assert.equal(r1.code, 0, r1.stderr);
  assert.match(r1.stderr, /protected volume data: committed version 1/);
  assert.equal(await counter(), 1);
  await cp(join(work, 'store'), join(work, 'snapshot'), { recursive: true });

  // 2. detached, stopped with SIGTERM (Redis saves on SIGTERM with save points configured)
  const started = await cocoon(runArgs(['--detach', '--name', 'voltest', '--json']));
  assert.equal(started.code, 0, started.stderr);
  try {
    await waitForRedis();
    assert.match(await redis(['GET', 'k1']), /first run/);
    assert.equal(await redis(['SET', 'k2', 'second run']), '+OK\r\n');
  } catch (err) {
    const logs = await cocoon(['logs', 'voltest']);
    throw new Error(`${(err as Error).message}\n${started.stdout}\n${logs.stdout}${logs.stderr}`);
  } finally {
    const stopped = await cocoon(['stop', 'voltest']);
    assert.equal(stopped.code, 0, stopped.stderr);
  }
  assert.equal(await counter(), 2);

  // 3. the host restores the version-1 snapshot: refused, Redis never starts
  await rm(join(work, 'store'), { recursive: true });
  await cp(join(work, 'snapshot'), join(work, 'store'), { recursive: true });
  const r3 = await cocoon(runArgs());
  assert.equal(r3.code, 1);
  assert.match(r3.stderr, /\[VOLUME_ROLLBACK\] protected volume data: the store holds version 1, the KBS counter is 2/);
  assert.match(r3.stderr, /the application was not started/);
});
