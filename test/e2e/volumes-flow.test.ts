/**
 * Protected volumes end to end, in-process launcher against a real KBS (no runc): Redis writes
 * its RDB into the protected volume; a clean shutdown seals it and advances the KBS counter; a
 * restart gets the data back; a flipped byte (VOLUME_TAMPERED) and an older snapshot
 * (VOLUME_ROLLBACK) are refused before Redis starts.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { wrapImage } from '../../src/image/wrap.js';
import { readWrappedImage, unpackWrappedImage } from '../../src/image/wrapped.js';
import { launch } from '../../src/launcher/launch.js';
import { launcherConfigFromEnv } from '../../src/launcher/config.js';
import { createLauncherLog } from '../../src/launcher/log.js';
import { isCocoonError } from '../../src/errors.js';
import { isRoot, launcherDir, testImage } from '../helpers/env.js';

const image = isRoot && existsSync(launcherDir) ? testImage('redis') : { skip: 'needs root and dist/ (npm run build)' };
const skip = 'skip' in image ? image.skip : false;

let work: string;
let kbs: RunningKbs;
let owner: OwnerClient;
let simPlatformDir: string;
let rootfs: string;
let stores: string;
let port: number;
let runs = 0;
const kek = randomBytes(32);
const logLines: string[] = [];
const log = createLauncherLog({ write: (s: string) => logLines.push(s) } as unknown as NodeJS.WritableStream);

function policy(measurement: string, p: number): string {
  return `name: test/redis
secrets:
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept:
      - tee: [sim]
        measurement: "${measurement}"
    args: ["redis-server", "--port", "${p}", "--bind", "127.0.0.1", "--dir", "/data", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    volumes:
      - { name: data, mountPath: /data }
`;
}

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

/** One RESP command over a fresh connection; resolves with the raw reply (or '' when the server closed). */
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
  for (let i = 0; i < 200; i++) {
    try {
      if ((await redis(['PING'])).startsWith('+PONG')) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('redis did not come up');
}

function startLauncher(): Promise<number> {
  runs++;
  return launch(
    launcherConfigFromEnv({
      COCOON_KBS_URL: kbs.url,
      COCOON_TEE: 'sim',
      COCOON_HOME: join(rootfs, 'cocoon'),
      COCOON_ROOT: join(work, `approot-${runs}`),
      COCOON_SIM_DEVICE: simPlatformDir,
      COCOON_KBS_RETRIES: '1',
      COCOON_VOLUMES: stores,
    }),
    log,
  );
}

/** Runs Redis in the launcher, lets `fn` talk to it, then `SHUTDOWN` (with SAVE: writes /data/dump.rdb). */
async function runRedis(fn: () => Promise<void>): Promise<number> {
  const running = startLauncher();
  let failed: unknown;
  running.catch((e: unknown) => (failed = e));
  await Promise.race([waitForRedis(), running.then(() => Promise.reject(new Error('launcher returned early')))]).catch((e: unknown) => {
    throw failed ?? e;
  });
  await fn();
  await redis(['SHUTDOWN', 'SAVE']);
  return running;
}

async function counter(): Promise<number> {
  const vol = (await owner.volumes('test/redis')).find((v) => v.volume === 'data');
  return vol?.version ?? -1;
}

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-vol-e2e-'));
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  simPlatformDir = sim.platformDir;
  kbs = await startKbs({ dataDir: join(work, 'kbs'), port: 0, allowSim: true, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [sim.rootPem] }), logger: false });
  owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
  const layout = join(work, 'redis-cc');
  const result = await wrapImage({ source: { layoutDir: (image as { layout: string }).layout, ref: 'redis:7' }, dest: { layoutDir: layout }, launcherDir, policy: 'test/redis', workload: 'redis', kek });
  rootfs = join(work, 'rootfs');
  await mkdir(rootfs);
  await unpackWrappedImage(await readWrappedImage(layout), rootfs);
  stores = join(work, 'stores');
  await mkdir(join(stores, 'data'), { recursive: true });
  port = await freePort();
  await owner.applyPolicy(policy(result.measurement, port));
  await owner.putSecret('test/redis', 'layer-key', kek);
});

after(async () => {
  if (skip) return;
  await kbs?.close();
  await rm(work, { recursive: true, force: true });
});

test('protected volume: Redis data survives a clean shutdown and restart; tampering and rollback are refused', { skip }, async () => {
  // 1. first run: a new volume; Redis writes dump.rdb into it on SHUTDOWN SAVE
  assert.equal(await runRedis(async () => assert.equal(await redis(['SET', 'greeting', 'hello from the TEE']), '+OK\r\n')), 0);
  assert.equal(await counter(), 1, 'the clean shutdown advanced the KBS counter');
  const store = join(stores, 'data');
  const manifest = await readFile(join(store, 'manifest.json'), 'utf8');
  assert.doesNotMatch(manifest, /dump\.rdb/, 'file names are encrypted');
  for (const blob of await readdir(join(store, 'blobs'))) assert.ok(!(await readFile(join(store, 'blobs', blob))).includes('REDIS'), 'no plaintext RDB on the host');
  const snapshot = join(work, 'snapshot-v1');
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
  logLines.length = 0;
  await assert.rejects(startLauncher(), (e: unknown) => isCocoonError(e, 'VOLUME_TAMPERED') && /protected volume data: file dump\.rdb chunk 0 failed authentication/.test((e as Error).message));
  assert.ok(!logLines.some((l) => /starting /.test(l)), 'the app was never started');
  await writeFile(blobFile, original);

  // 4. the host restores the older snapshot (version 1 < counter 2): VOLUME_ROLLBACK
  await rm(store, { recursive: true });
  await cp(snapshot, store, { recursive: true });
  logLines.length = 0;
  await assert.rejects(startLauncher(), (e: unknown) => isCocoonError(e, 'VOLUME_ROLLBACK') && /version 1.*counter is 2/.test((e as Error).message));
  assert.ok(!logLines.some((l) => /starting /.test(l)), 'the app was never started');
  assert.equal(await counter(), 2);
});
