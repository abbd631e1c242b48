/**
 * The launcher against a real KBS, in-process (no runc): the security-relevant refusals of the
 * first slice. Each refusal must happen before any application code runs.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
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
import { writeModifiedImage } from '../../src/cli/demo/variant.js';
import { isRoot, launcherDir, testImage } from '../helpers/env.js';

const image = isRoot && existsSync(launcherDir) ? testImage('redis') : { skip: 'needs root and dist/ (npm run build)' };
const skip = 'skip' in image ? image.skip : false;

let work: string;
let kbs: RunningKbs;
let owner: OwnerClient;
let simPlatformDir: string;
const kek = randomBytes(32);
const logLines: string[] = [];
const log = createLauncherLog({ write: (s: string) => logLines.push(s) } as unknown as NodeJS.WritableStream);

async function wrapAndUnpack(name: string, workload: string, source = { layoutDir: (image as { layout: string }).layout, ref: 'redis:7' }): Promise<{ rootfs: string; measurement: string }> {
  const layout = join(work, `${name}-cc`);
  const result = await wrapImage({ source, dest: { layoutDir: layout }, launcherDir, policy: 'test/redis', workload, kek });
  const rootfs = join(work, `${name}-rootfs`);
  await mkdir(rootfs, { recursive: true });
  await unpackWrappedImage(await readWrappedImage(layout), rootfs);
  return { rootfs, measurement: result.measurement };
}

function configFor(rootfs: string, kbsUrl: string, extra: Record<string, string> = {}) {
  return launcherConfigFromEnv({
    COCOON_KBS_URL: kbsUrl,
    COCOON_TEE: 'sim',
    COCOON_HOME: join(rootfs, 'cocoon'),
    COCOON_ROOT: join(rootfs, 'approot'),
    COCOON_SIM_DEVICE: simPlatformDir,
    COCOON_KBS_RETRIES: '1',
    ...extra,
  });
}

function policy(measurement: string): string {
  return `name: test/redis
secrets:
  pw: { kind: random, size: 32, encoding: hex, ownerReadable: true }
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept:
      - tee: [sim]
        measurement: "${measurement}"
    secrets: [pw]
    env: { REDIS_PW: "{{ secret.pw }}" }
`;
}

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-e2e-'));
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  simPlatformDir = sim.platformDir;
  kbs = await startKbs({
    dataDir: join(work, 'kbs'),
    port: 0,
    allowSim: true,
    owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))],
    verifier: createBrokerVerifier({ simRoots: [sim.rootPem] }),
    logger: false,
  });
  owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
});

after(async () => {
  if (skip) return;
  await kbs?.close();
  await rm(work, { recursive: true, force: true });
});

test('a tampered encrypted layer byte is refused before any application code runs', { skip }, async () => {
  const { rootfs, measurement } = await wrapAndUnpack('tampered', 'redis');
  await owner.applyPolicy(policy(measurement));
  await owner.putSecret('test/redis', 'layer-key', kek);
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
  logLines.length = 0;
  await assert.rejects(launch(configFor(rootfs, kbs.url), log), (e) => isCocoonError(e, 'DIGEST_MISMATCH'));
  assert.ok(!logLines.some((l) => /starting /.test(l)), 'the app was never started');

  // 2. an attacker who also rewrites the (unmeasured) ciphertext digest is stopped by the HMAC
  const newDigest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  await rename(blobFile, join(payloadDir, 'blobs', 'sha256', newDigest.slice('sha256:'.length)));
  layer.digest = newDigest;
  await writeFile(payloadFile, JSON.stringify(payload));
  logLines.length = 0;
  await assert.rejects(launch(configFor(rootfs, kbs.url), log), (e) => isCocoonError(e, 'LAYER_AUTH_FAILED'));
  assert.ok(!logLines.some((l) => /starting /.test(l)), 'the app was never started');
  assert.ok(!existsSync(join(rootfs, 'approot', 'usr', 'bin', 'redis-server')), 'no plaintext file was unpacked from the tampered layer');
});

test('a measurement not in the policy gets POLICY_DENIED and nothing is released', { skip }, async () => {
  await writeModifiedImage((image as { layout: string }).layout, 'redis:7', join(work, 'modified'), 'MODIFIED=1');
  const { rootfs } = await wrapAndUnpack('other', 'redis', { layoutDir: join(work, 'modified'), ref: 'modified' });
  const eventsBefore = await owner.listEvents();
  const releases = (list: typeof eventsBefore) => list.filter((e) => e.kind === 'release').length;
  await assert.rejects(launch(configFor(rootfs, kbs.url), log), (e) => isCocoonError(e, 'POLICY_DENIED'));
  const events = await owner.listEvents();
  assert.ok(events.length > eventsBefore.length);
  assert.equal(releases(events), releases(eventsBefore), 'nothing released to a denied workload');
  assert.ok(events.some((e) => e.code === 'POLICY_DENIED'));
});

test('a modified launcher file is refused before attesting', { skip }, async () => {
  const { rootfs } = await wrapAndUnpack('launcher-mod', 'redis');
  await writeFile(join(rootfs, 'cocoon', 'launcher.mjs'), '\n// modified\n', { flag: 'a' });
  await assert.rejects(launch(configFor(rootfs, kbs.url), log), (e) => isCocoonError(e, 'MEASUREMENT_MISMATCH'));
});

test('KBS unreachable: bounded retries with backoff, then KBS_UNREACHABLE with a clear message', { skip }, async () => {
  const { rootfs } = await wrapAndUnpack('unreachable', 'redis');
  logLines.length = 0;
  const started = Date.now();
  await assert.rejects(
    launch(configFor(rootfs, 'http://127.0.0.1:9', { COCOON_KBS_RETRIES: '3', COCOON_KBS_RETRY_DELAY_MS: '50', COCOON_KBS_RETRY_MAX_DELAY_MS: '200' }), log),
    (e) => isCocoonError(e, 'KBS_UNREACHABLE') && /127\.0\.0\.1:9/.test(e.message),
  );
  assert.ok(Date.now() - started < 10_000);
  assert.equal(logLines.filter((l) => /retrying/.test(l)).length, 2, 'two retries after the first attempt');
});
