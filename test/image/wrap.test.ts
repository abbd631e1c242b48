import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile, mkdir, chmod, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { wrapImage, launchConfigOf, decryptPayloadLayers } from '../../src/image/wrap.js';
import { readWrappedImage, unpackWrappedImage, readPayload, verifyPayloadMeasurement, parseWrappedPayload } from '../../src/image/wrapped.js';
import { launcherDigest, launcherFiles, workloadMeasurement } from '../../src/image/measure.js';
import { readLayout } from '../../src/image/layout.js';
import { canonicalJson } from '../../src/crypto/canonical-json.js';
import { sha256Hex, sha384Hex } from '../../src/crypto/hash.js';
import { makeAppTree, makeLauncherDir, tarOf, tempDir, writeSourceImage, rawTar } from './helpers.js';

interface Fixture {
  base: string;
  source: string;
  launcher: string;
}

async function fixture(t: Parameters<typeof tempDir>[0]): Promise<Fixture> {
  const base = await tempDir(t);
  const app = join(base, 'app');
  await makeAppTree(app);
  const extra = await rawTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/.wh.app.conf.bak', content: '' },
    { name: 'srv/', type: 'directory' },
    { name: 'srv/data.txt', content: 'payload data\n'.repeat(50) },
  ]);
  const source = join(base, 'src');
  await writeSourceImage(source, {
    ref: 'demo:1',
    layers: [
      { kind: 'gzip', tar: await tarOf(app) },
      { kind: 'none', tar: extra },
      { kind: 'zstd', tar: await rawTar([{ name: 'srv/z.txt', content: 'zstd layer' }]) },
    ],
  });
  const launcher = join(base, 'launcher');
  await makeLauncherDir(launcher);
  return { base, source, launcher };
}

const names = { policy: 'demo/redis', workload: 'redis' };

test('wrap is reproducible: same inputs ⇒ same manifest digest and measurement; other KEK ⇒ same measurement, other digest', async (t) => {
  const f = await fixture(t);
  const kek = randomBytes(32);
  const w = (dest: string, k: Buffer) => wrapImage({ source: { layoutDir: f.source, ref: 'demo:1' }, dest: { layoutDir: join(f.base, dest), ref: 'demo:1-cc' }, launcherDir: f.launcher, kek: k, ...names });
  const a = await w('out-a', kek);
  const b = await w('out-b', kek);
  const c = await w('out-c', randomBytes(32));
  assert.equal(a.manifestDigest, b.manifestDigest);
  assert.equal(a.measurement, b.measurement);
  assert.match(a.measurement, /^[0-9a-f]{96}$/);
  assert.equal(c.measurement, a.measurement);
  assert.notEqual(c.manifestDigest, a.manifestDigest);
  assert.deepEqual((await readdir(join(f.base, 'out-a', 'blobs', 'sha256'))).sort(), (await readdir(join(f.base, 'out-b', 'blobs', 'sha256'))).sort());
  assert.equal((await readdir(join(f.base, 'out-a', 'blobs', 'sha256'))).filter((n) => n.startsWith('.')).length, 0, 'no temp files left');
  assert.equal(a.layers.length, 3);
  assert.deepEqual(
    a.layers.map((l) => l.mediaType),
    ['application/vnd.oci.image.layer.v1.tar+gzip+encrypted', 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted', 'application/vnd.oci.image.layer.v1.tar+zstd+encrypted'],
  );
});

test('wrapped image matches the contract and the measurement recomputes', async (t) => {
  const f = await fixture(t);
  const kek = randomBytes(32);
  const dest = join(f.base, 'out');
  const r = await wrapImage({ source: { layoutDir: f.source }, dest: { layoutDir: dest, ref: 'x' }, launcherDir: f.launcher, kek, ...names, kbsResource: 'demo/redis/layer-key' });
  const img = await readWrappedImage(dest, 'x');
  assert.equal(img.manifestDigest, r.manifestDigest);
  const cfg = img.config.config;
  assert.deepEqual(cfg?.Entrypoint, ['/cocoon/lib/ld-linux-x86-64.so.2', '--library-path', '/cocoon/lib', '/cocoon/bin/node', '/cocoon/launcher.mjs', 'launch']);
  assert.deepEqual(cfg?.Cmd, []);
  assert.deepEqual(cfg?.Env, ['COCOON_PAYLOAD=/cocoon/payload']);
  assert.deepEqual(cfg?.ExposedPorts, { '8080/tcp': {} });
  assert.equal(cfg?.Labels?.app, 'demo');
  assert.equal(cfg?.Labels?.['dev.cocoon.wrapped'], '1');
  assert.equal(cfg?.Labels?.['dev.cocoon.measurement'], r.measurement);
  assert.equal(cfg?.Labels?.['dev.cocoon.policy'], 'demo/redis');
  assert.equal(cfg?.Labels?.['dev.cocoon.workload'], 'redis');
  assert.equal(cfg?.Labels?.['dev.cocoon.launcher-digest'], r.launcherDigest);
  assert.deepEqual(img.entrypoint, cfg?.Entrypoint);
  assert.equal(img.manifest.layers[0]?.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
  assert.equal(img.manifest.layers[1]?.mediaType, 'application/vnd.oci.image.layer.v1.tar');

  // measurement per contract §2, recomputed independently here
  const src = await readLayout(f.source);
  const lc = launchConfigOf(src.config);
  assert.deepEqual(lc, { entrypoint: [], cmd: ['/usr/bin/app'], env: ['PATH=/usr/bin:/bin'], workingDir: '/srv', user: '1000' });
  const files = await launcherFiles(f.launcher);
  assert.deepEqual(files.map((x) => x.path), ['/cocoon/bin/node', '/cocoon/launcher.mjs', '/cocoon/lib/libc.so', '/cocoon/lib/libc.so.6']);
  assert.deepEqual(files[2], { path: '/cocoon/lib/libc.so', mode: 0o777, link: 'libc.so.6' });
  assert.equal(r.launcherDigest, `sha256:${sha256Hex(canonicalJson(files))}`);
  const M = { v: 1, launcher: r.launcherDigest, layers: src.config.rootfs.diff_ids, config: lc, policy: 'demo/redis', workload: 'redis' };
  assert.equal(r.measurement, sha384Hex(canonicalJson(M)));
  assert.equal(verifyPayloadMeasurement(img.payload, r.launcherDigest), r.measurement);
  assert.throws(() => verifyPayloadMeasurement(img.payload, `sha256:${'0'.repeat(64)}`), { code: 'MEASUREMENT_MISMATCH' });
  assert.throws(() => verifyPayloadMeasurement({ ...img.payload, workload: 'other' }, r.launcherDigest), { code: 'MEASUREMENT_MISMATCH' });
  assert.equal(workloadMeasurement({ launcherDigest: r.launcherDigest, layers: src.config.rootfs.diff_ids, config: lc, ...names }), r.measurement);
});

test('cocoon run path: unpack the wrapped image, launcher digest matches, payload decrypts into the app root', async (t) => {
  const f = await fixture(t);
  const kek = randomBytes(32);
  const dest = join(f.base, 'out');
  const r = await wrapImage({ source: { layoutDir: f.source }, dest: { layoutDir: dest }, launcherDir: f.launcher, kek, ...names });
  const img = await readWrappedImage(dest);
  const rootfs = join(f.base, 'rootfs');
  await unpackWrappedImage(img, rootfs);
  assert.equal(await launcherDigest(join(rootfs, 'cocoon')), r.launcherDigest, 'launcher digest identical from the unpacked container');
  if (process.getuid?.() === 0) assert.equal((await lstat(join(rootfs, 'cocoon/bin/node'))).uid, 0);
  const payload = await readPayload(join(rootfs, 'cocoon/payload'));
  assert.deepEqual(payload, img.payload);

  const appRoot = join(f.base, 'approot');
  const diffIDs = await decryptPayloadLayers({ payloadDir: join(rootfs, 'cocoon/payload'), payload, kek, destRoot: appRoot });
  assert.deepEqual(diffIDs, (await readLayout(f.source)).config.rootfs.diff_ids);
  assert.match(await readFile(join(appRoot, 'usr/bin/app'), 'utf8'), /echo a/);
  assert.equal((await lstat(join(appRoot, 'usr/bin/app'))).mode & 0o777, 0o755);
  assert.equal(await readFile(join(appRoot, 'srv/z.txt'), 'utf8'), 'zstd layer');
  assert.equal(await lstat(join(appRoot, 'etc/app.conf.bak')).catch(() => null), null, 'whiteout from layer 2 applied');

  // positional form
  const appRoot2 = join(f.base, 'approot2');
  assert.deepEqual(await decryptPayloadLayers(join(rootfs, 'cocoon/payload'), payload, kek, appRoot2), diffIDs);
});

test('decryptPayloadLayers: wrong KEK ⇒ LAYER_DECRYPT_FAILED; tampered ciphertext ⇒ LAYER_AUTH_FAILED before any plaintext; wrong diffID ⇒ DIGEST_MISMATCH', async (t) => {
  const f = await fixture(t);
  const kek = randomBytes(32);
  const dest = join(f.base, 'out');
  await wrapImage({ source: { layoutDir: f.source }, dest: { layoutDir: dest }, launcherDir: f.launcher, kek, ...names });
  const img = await readWrappedImage(dest);
  const rootfs = join(f.base, 'rootfs');
  await unpackWrappedImage(img, rootfs);
  const payloadDir = join(rootfs, 'cocoon/payload');
  const payload = await readPayload(payloadDir);

  await assert.rejects(decryptPayloadLayers(payloadDir, payload, randomBytes(32), join(f.base, 'r1')), { code: 'LAYER_DECRYPT_FAILED' });
  assert.equal(await lstat(join(f.base, 'r1')).catch(() => null), null, 'nothing unpacked');

  // HMAC failure: flip a byte of the first layer's ciphertext but keep the digest check out of the way
  const first = payload.layers[0];
  assert.ok(first);
  const file = join(payloadDir, 'blobs/sha256', first.digest.slice(7));
  const ct = await readFile(file);
  ct[100] = (ct[100] ?? 0) ^ 0xff;
  await writeFile(file, ct);
  const { createHash } = await import('node:crypto');
  const tamperedDigest = `sha256:${createHash('sha256').update(ct).digest('hex')}`;
  const tampered = { ...payload, layers: [{ ...first, digest: tamperedDigest }, ...payload.layers.slice(1)] };
  await writeFile(join(payloadDir, 'blobs/sha256', tamperedDigest.slice(7)), ct);
  await assert.rejects(decryptPayloadLayers(payloadDir, tampered, kek, join(f.base, 'r2')), { code: 'LAYER_AUTH_FAILED' });
  assert.deepEqual(await readdir(join(f.base, 'r2')).catch(() => []), [], 'no plaintext written');
  // with the original digest the file no longer matches: DIGEST_MISMATCH or LAYER_AUTH_FAILED, never success
  await assert.rejects(decryptPayloadLayers(payloadDir, payload, kek, join(f.base, 'r3')), (err: { code?: string }) => err.code === 'DIGEST_MISMATCH' || err.code === 'LAYER_AUTH_FAILED');
});

test('diffID mismatch is DIGEST_MISMATCH at wrap and at decrypt', async (t) => {
  const f = await fixture(t);
  const kek = randomBytes(32);
  const bad = join(f.base, 'bad');
  await writeSourceImage(bad, { layers: [{ kind: 'gzip', tar: await rawTar([{ name: 'a', content: 'a' }]) }], diffIDs: [`sha256:${'0'.repeat(64)}`] });
  await assert.rejects(wrapImage({ source: { layoutDir: bad }, dest: { layoutDir: join(f.base, 'o') }, launcherDir: f.launcher, kek, ...names }), { code: 'DIGEST_MISMATCH' });

  const dest = join(f.base, 'out');
  await wrapImage({ source: { layoutDir: f.source }, dest: { layoutDir: dest }, launcherDir: f.launcher, kek, ...names });
  const img = await readWrappedImage(dest);
  const rootfs = join(f.base, 'rootfs');
  await unpackWrappedImage(img, rootfs);
  const payloadDir = join(rootfs, 'cocoon/payload');
  const payload = await readPayload(payloadDir);
  const lied = { ...payload, layers: payload.layers.map((l, i) => (i === 1 ? { ...l, diffID: `sha256:${'1'.repeat(64)}` } : l)) };
  await assert.rejects(decryptPayloadLayers(payloadDir, lied, kek, join(f.base, 'r')), { code: 'DIGEST_MISMATCH' });
});

test('wrap input validation and strict payload parsing', async (t) => {
  const f = await fixture(t);
  const base = { source: { layoutDir: f.source }, dest: { layoutDir: join(f.base, 'o') }, launcherDir: f.launcher, ...names };
  await assert.rejects(wrapImage({ ...base, kek: randomBytes(16) }), { code: 'BAD_USAGE' });
  await assert.rejects(wrapImage({ ...base, kek: randomBytes(32), policy: 'no-slash' }), { code: 'BAD_USAGE' });
  await assert.rejects(wrapImage({ ...base, kek: randomBytes(32), source: { layoutDir: f.source, ref: 'missing' } }), { code: 'NOT_FOUND' });
  await assert.rejects(readWrappedImage(f.source), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseWrappedPayload(Buffer.from('{}')), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseWrappedPayload(Buffer.from('[')), { code: 'IMAGE_INVALID' });
});

test('launcher digest ignores payload/ and root/ and follows modes and link targets', async (t) => {
  const dir = await tempDir(t);
  await makeLauncherDir(dir);
  const d0 = await launcherDigest(dir);
  await mkdir(join(dir, 'payload'));
  await writeFile(join(dir, 'payload', 'x'), 'x');
  await mkdir(join(dir, 'root'));
  assert.equal(await launcherDigest(dir), d0);
  await chmod(join(dir, 'launcher.mjs'), 0o600);
  assert.notEqual(await launcherDigest(dir), d0);
});

test('readWrappedImage refuses labels that disagree with payload.json, and already-encrypted sources', async (t) => {
  const f = await fixture(t);
  const dest = join(f.base, 'out');
  await wrapImage({ source: { layoutDir: f.source }, dest: { layoutDir: dest, ref: 'w' }, launcherDir: f.launcher, kek: randomBytes(32), ...names });
  // re-wrapping a wrapped image is fine (its layers are plain), but an encrypted layer is refused
  const { LayoutWriter } = await import('../../src/image/layout.js');
  const { MediaType } = await import('../../src/image/oci.js');
  const img = await readWrappedImage(dest, 'w');
  const w = await LayoutWriter.open(dest);
  const cfg = { ...img.config, config: { ...img.config.config, Labels: { ...img.config.config?.Labels, 'dev.cocoon.workload': 'other' } } };
  const cd = await w.putBytes(Buffer.from(JSON.stringify(cfg)), MediaType.config);
  const md = await w.putBytes(Buffer.from(JSON.stringify({ ...img.manifest, config: cd })), MediaType.manifest, { 'org.opencontainers.image.ref.name': 'lied' });
  await w.writeIndex([md]);
  await assert.rejects(readWrappedImage(dest, 'lied'), { code: 'MEASUREMENT_MISMATCH' });

  const enc = join(f.base, 'enc');
  const ew = await LayoutWriter.open(enc);
  const blob = await ew.putBytes(Buffer.from('ciphertext'), 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted');
  const ecfg = await ew.putBytes(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${'3'.repeat(64)}`] } })), MediaType.config);
  const em = await ew.putBytes(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.manifest, config: ecfg, layers: [blob] })), MediaType.manifest);
  await ew.writeIndex([em]);
  await assert.rejects(wrapImage({ source: { layoutDir: enc }, dest: { layoutDir: join(f.base, 'o2') }, launcherDir: f.launcher, kek: randomBytes(32), ...names }), { code: 'IMAGE_INVALID', message: /already encrypted/ });
});
