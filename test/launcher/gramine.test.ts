/**
 * The launcher's Gramine mode against a fake /dev/attestation tree (no Gramine, no SGX here):
 * the key of the encrypted application root, the manifest's measurement check, and unpacking
 * the decrypted layers the way Gramine's file systems allow (no symlink/link/utimensat).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { unpackLayer } from '../../src/image/unpack.js';
import { join } from 'node:path';
import { provisionGramineRootKey, checkGramineLaunch, GRAMINE_KEY_BYTES } from '../../src/launcher/gramine.js';
import { launcherConfigFromEnv } from '../../src/launcher/config.js';
import { GRAMINE_ROOT_KEY_NAME } from '../../src/image/gramine.js';
import { wrapImage } from '../../src/image/wrap.js';
import { readPayload, decryptPayloadLayers } from '../../src/image/wrapped.js';
import { readWrappedImage, unpackWrappedImage } from '../../src/image/wrapped.js';
import { isCocoonError } from '../../src/errors.js';
import { rawTar, tempDir, writeSourceImage, type RawEntry } from '../image/helpers.js';

async function fakeAttestation(dir: string, keyNames: string[]): Promise<void> {
  await mkdir(join(dir, 'keys'), { recursive: true });
  await writeFile(join(dir, 'attestation_type'), 'dcap\n');
  // Gramine shows a key file for every key_name the manifest's mounts declare (empty until set)
  for (const k of keyNames) await writeFile(join(dir, 'keys', k), '');
}

test('the root key: 16 fresh random bytes written to /dev/attestation/keys/<name> and read back', async (t) => {
  const d = await tempDir(t, 'cocoon-gramine-att-');
  await fakeAttestation(d, [GRAMINE_ROOT_KEY_NAME]);
  await provisionGramineRootKey(d);
  const k1 = await readFile(join(d, 'keys', GRAMINE_ROOT_KEY_NAME));
  assert.equal(k1.length, GRAMINE_KEY_BYTES);
  assert.notDeepEqual(k1, Buffer.alloc(16));
  await provisionGramineRootKey(d);
  const k2 = await readFile(join(d, 'keys', GRAMINE_ROOT_KEY_NAME));
  assert.equal(k2.length, 16);
  assert.notDeepEqual(k2, k1, 'a new key per launch');
});

test('the root key: refused when the manifest declares no such key, or Gramine does not take it', async (t) => {
  const d = await tempDir(t, 'cocoon-gramine-att-');
  await fakeAttestation(d, ['other']);
  await assert.rejects(provisionGramineRootKey(d), (e) => isCocoonError(e, 'TEE_NOT_FOUND') && /key_name "cocoon_root"/.test((e as Error).message));
  await mkdir(join(d, 'keys', GRAMINE_ROOT_KEY_NAME));
  await assert.rejects(provisionGramineRootKey(d), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED'));
  await assert.rejects(provisionGramineRootKey(d, '../escape'), (e) => isCocoonError(e, 'BAD_USAGE'));
  // a key file that keeps something else than what was written (e.g. a longer stale value)
  const e = await tempDir(t, 'cocoon-gramine-att-');
  await fakeAttestation(e, []);
  await writeFile(join(e, 'keys', GRAMINE_ROOT_KEY_NAME), randomBytes(32));
  await assert.rejects(provisionGramineRootKey(e), (err) => isCocoonError(err, 'ATTESTER_IO_FAILED') && /did not accept/.test((err as Error).message));
});

test('the manifest\'s measurement must equal the recomputed one, and the TEE must be sgx', () => {
  const m = 'a'.repeat(96);
  checkGramineLaunch(m, m, 'sgx');
  assert.throws(() => checkGramineLaunch('b'.repeat(96), m, 'sgx'), (e) => isCocoonError(e, 'MEASUREMENT_MISMATCH'));
  assert.throws(() => checkGramineLaunch(undefined, m, 'sgx'), (e) => isCocoonError(e, 'MEASUREMENT_MISMATCH'));
  assert.throws(() => checkGramineLaunch(m, m, 'sim'), (e) => isCocoonError(e, 'TEE_UNSUPPORTED'));
  assert.throws(() => checkGramineLaunch(m, m, 'tpm'), (e) => isCocoonError(e, 'TEE_UNSUPPORTED'));
});

test('launcher settings: COCOON_LIBOS and COCOON_EXPECTED_MEASUREMENT', () => {
  const base = { COCOON_KBS_URL: 'http://kbs:8080' };
  const c = launcherConfigFromEnv({ ...base, COCOON_LIBOS: 'gramine', COCOON_EXPECTED_MEASUREMENT: 'f'.repeat(96) });
  assert.equal(c.libos, 'gramine');
  assert.equal(c.expectedMeasurement, 'f'.repeat(96));
  const plain = launcherConfigFromEnv(base);
  assert.equal(plain.libos, undefined);
  assert.equal(plain.expectedMeasurement, undefined);
  assert.throws(() => launcherConfigFromEnv({ ...base, COCOON_LIBOS: 'occlum' }), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => launcherConfigFromEnv({ ...base, COCOON_EXPECTED_MEASUREMENT: 'F'.repeat(96) }), (e) => isCocoonError(e, 'BAD_USAGE'));
});

async function wrapped(t: Parameters<typeof tempDir>[0], entries: RawEntry[], more: RawEntry[][] = []) {
  const base = await tempDir(t, 'cocoon-gramine-img-');
  const source = join(base, 'src');
  const layers = [{ kind: 'gzip' as const, tar: await rawTar(entries) }];
  for (const m of more) layers.push({ kind: 'gzip' as const, tar: await rawTar(m) });
  await writeSourceImage(source, { ref: 'app:1', layers });
  const launcher = join(base, 'launcher');
  await mkdir(join(launcher, 'bin'), { recursive: true });
  await writeFile(join(launcher, 'bin/node'), 'node');
  await writeFile(join(launcher, 'launcher.mjs'), 'launcher');
  const kek = randomBytes(32);
  const dest = join(base, 'out');
  await wrapImage({ source: { layoutDir: source, ref: 'app:1' }, dest: { layoutDir: dest, ref: 'cc' }, launcherDir: launcher, policy: 'shop/app', workload: 'app', kek, launcherCacheDir: false, libos: 'gramine' });
  const rootfs = join(base, 'rootfs');
  await unpackWrappedImage(await readWrappedImage(dest, 'cc'), rootfs, { chown: false });
  const payloadDir = join(rootfs, 'cocoon', 'payload');
  return { kek, payloadDir, payload: await readPayload(payloadDir), appRoot: join(rootfs, 'cocoon', 'root') };
}

/** A layer's entries: `usr/`, `usr/bin/`, the file `usr/bin/app` holding `content` (mode `mode`, default 0644), then `rest`. */
function withApp(content: string, mode: number | undefined, rest: RawEntry[]): RawEntry[] {
  return [{ name: 'usr/', type: 'directory' }, { name: 'usr/bin/', type: 'directory' }, { name: 'usr/bin/app', content, mode }, ...rest];
}

test('Gramine unpacking: files land in the (encrypted-mount) root, a hard link becomes a copy, no times or owners are set', async (t) => {
  const w = await wrapped(t, withApp('#!/bin/sh\necho hi\n', 0o755, [
    { name: 'etc/', type: 'directory' },
    { name: 'etc/app.conf', content: 'x=1\n' },
    { name: 'etc/app.conf.bak', type: 'link', linkname: 'etc/app.conf' },
  ]));
  // the wrapped image already provides the mount's host directory (0700)
  assert.equal((await stat(w.appRoot)).mode & 0o777, 0o700);
  const diffIDs = await decryptPayloadLayers({ payloadDir: w.payloadDir, payload: w.payload, kek: w.kek, destRoot: w.appRoot, options: { libos: 'gramine' } });
  assert.deepEqual(diffIDs, w.payload.layers.map((l) => l.diffID), 'the measured diffIDs still check out');
  assert.equal(await readFile(join(w.appRoot, 'usr/bin/app'), 'utf8'), '#!/bin/sh\necho hi\n');
  assert.equal((await stat(join(w.appRoot, 'usr/bin/app'))).mode & 0o777, 0o755);
  const a = await stat(join(w.appRoot, 'etc/app.conf'));
  const b = await stat(join(w.appRoot, 'etc/app.conf.bak'));
  assert.equal(await readFile(join(w.appRoot, 'etc/app.conf.bak'), 'utf8'), 'x=1\n');
  assert.notEqual(a.ino, b.ino, 'a copy, not a link (Gramine has no link(2))');
  assert.notEqual(a.mtimeMs, 0, 'no utimes (Gramine has no utimensat(2))');
});

test('Gramine unpacking materializes symlinks as copies, inside the root only; no symlink is created', async (t) => {
  const w = await wrapped(t, withApp('app\n', 0o755, [
    { name: 'usr/lib/', type: 'directory' },
    { name: 'usr/lib/libfoo.so.1.2', content: 'libfoo' },
    { name: 'usr/lib/libfoo.so.1', type: 'symlink', linkname: 'libfoo.so.1.2' },
    { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
    { name: 'lib', type: 'symlink', linkname: '/usr/lib' },
    { name: 'bin/extra', content: 'through the link\n' }, // lands in usr/bin (resolved through the pending link)
    { name: 'usr/bin/X11', type: 'symlink', linkname: '.' },
    { name: 'etc/', type: 'directory' },
    { name: 'etc/mtab', type: 'symlink', linkname: '/proc/self/mounts' },
    { name: 'etc/evil', type: 'symlink', linkname: '../../../../../../etc/hostname' },
    { name: 'etc/old', type: 'symlink', linkname: '/usr/bin/app' },
    { name: 'etc/keep', type: 'symlink', linkname: '/usr/bin/app' },
  ]), [[{ name: 'etc/.wh.old', content: '' }]]);
  const warnings: string[] = [];
  await decryptPayloadLayers({ payloadDir: w.payloadDir, payload: w.payload, kek: w.kek, destRoot: w.appRoot, options: { libos: 'gramine', onWarning: (m) => warnings.push(m) } });
  const r = (p: string) => readFile(join(w.appRoot, p), 'utf8');
  assert.equal(await r('usr/bin/extra'), 'through the link\n');
  assert.equal(await r('bin/app'), 'app\n');
  assert.equal(await r('bin/extra'), 'through the link\n');
  assert.equal((await stat(join(w.appRoot, 'bin/app'))).mode & 0o777, 0o755);
  assert.equal(await r('lib/libfoo.so.1'), 'libfoo', 'a link inside a linked directory resolves too');
  assert.equal(await r('usr/lib/libfoo.so.1'), 'libfoo');
  await assert.rejects(stat(join(w.appRoot, 'etc/mtab')), { code: 'ENOENT' });
  await assert.rejects(stat(join(w.appRoot, 'etc/evil')), { code: 'ENOENT' }, 'never a file from outside the root');
  await assert.rejects(stat(join(w.appRoot, 'usr/bin/X11')), { code: 'ENOENT' });
  await assert.rejects(stat(join(w.appRoot, 'etc/old')), { code: 'ENOENT' }, 'a whited-out link is not materialized');
  assert.equal(await r('etc/keep'), 'app\n');
  assert.ok(warnings.some((m) => m.includes('/etc/mtab')) && warnings.some((m) => m.includes('X11')));
  // not one symlink on disk (Gramine could not have created it)
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      assert.ok(!e.isSymbolicLink(), join(d, e.name));
      if (e.isDirectory()) await walk(join(d, e.name));
    }
  };
  await walk(w.appRoot);
  // the same image unpacks with real symlinks outside Gramine
  const other = join(w.appRoot, '..', 'plain-root');
  await decryptPayloadLayers({ payloadDir: w.payloadDir, payload: w.payload, kek: w.kek, destRoot: other, options: { chown: false } });
  assert.ok((await lstat(join(other, 'bin'))).isSymbolicLink());
});

test('a layer that replaces a pending directory link, and a direct unpack without a link table, in Gramine mode', async (t) => {
  const w = await wrapped(t, withApp('app', undefined, [
    { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
    { name: 'bin/extra', content: 'through the link' }, // resolved (and cached) through the pending link
    { name: 'bin/', type: 'directory' }, // a directory entry replaces the link
    { name: 'bin/own', content: 'own' },
  ]));
  await decryptPayloadLayers({ payloadDir: w.payloadDir, payload: w.payload, kek: w.kek, destRoot: w.appRoot, options: { libos: 'gramine' } });
  assert.equal(await readFile(join(w.appRoot, 'usr/bin/extra'), 'utf8'), 'through the link');
  assert.equal(await readFile(join(w.appRoot, 'bin/own'), 'utf8'), 'own');
  await assert.rejects(stat(join(w.appRoot, 'bin/app')), { code: 'ENOENT' });
  await assert.rejects(stat(join(w.appRoot, 'usr/bin/own')), { code: 'ENOENT' });
  const tarBytes = await rawTar([{ name: 'x', type: 'symlink', linkname: 'y' }]);
  await assert.rejects(unpackLayer(Readable.from([tarBytes]), 'none', join(w.appRoot, '..', 'direct'), { libos: 'gramine' }), (e) => isCocoonError(e, 'TEE_UNSUPPORTED'));
});
