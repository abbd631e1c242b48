/**
 * `cocoon wrap --libos gramine`: the manifest in the wrapped image, checked against the real
 * files it lists (no Gramine runs here). The allowed keys below are those of Gramine 1.9's
 * manifest schema (python/graminelibos/manifest_check.py) that Cocoon writes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { wrapImage } from '../../src/image/wrap.js';
import { readWrappedImage, unpackWrappedImage } from '../../src/image/wrapped.js';
import { launcherDigest, launcherFiles } from '../../src/image/measure.js';
import { GRAMINE_MANIFEST_PATH, GRAMINE_NODE_ARGV, GRAMINE_PASSTHROUGH_ENV, GRAMINE_ROOT_KEY_NAME, gramineManifest } from '../../src/image/gramine.js';
import { gramineFlags } from '../../src/cli/wrap.js';
import { isCocoonError } from '../../src/errors.js';
import { rawTar, tempDir, writeSourceImage } from './helpers.js';

/** The parts of the parsed manifest the tests look at. */
interface GManifest {
  [top: string]: unknown;
  libos: { entrypoint: string };
  loader: { argv: string[]; env: Record<string, unknown>; log_level: string; [k: string]: unknown };
  fs: { mounts: Array<{ type: string; path: string; uri?: string; key_name?: string }>; [k: string]: unknown };
  sgx: { trusted_files: Array<{ uri: string; sha256: string }>; allowed_files: string[]; debug: boolean; remote_attestation: string; file_check_policy: string; enclave_size: string; max_threads: number; isvprodid: number; isvsvn: number };
}

async function launcherTree(dir: string, nodeBytes = 'node binary'): Promise<void> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await mkdir(join(dir, 'lib'), { recursive: true });
  await writeFile(join(dir, 'bin/node'), nodeBytes);
  await writeFile(join(dir, 'bin/cocoon-exec'), 'exec helper');
  await chmod(join(dir, 'bin/node'), 0o755);
  await chmod(join(dir, 'bin/cocoon-exec'), 0o755);
  await writeFile(join(dir, 'lib/ld-linux-x86-64.so.2'), 'loader');
  await writeFile(join(dir, 'lib/libc.so.6'), 'libc');
  await writeFile(join(dir, 'launcher.mjs'), 'console.log("launcher")\n');
}

async function fixture(t: Parameters<typeof tempDir>[0]) {
  const base = await tempDir(t, 'cocoon-gramine-');
  const source = join(base, 'src');
  await writeSourceImage(source, {
    ref: 'app:1',
    layers: [{ kind: 'gzip', tar: await rawTar([{ name: 'usr/', type: 'directory' }, { name: 'usr/bin/', type: 'directory' }, { name: 'usr/bin/app', content: '#!/bin/sh\necho hi\n', mode: 0o755 }]) }],
  });
  const launcher = join(base, 'launcher');
  await launcherTree(launcher);
  const kek = randomBytes(32);
  const wrap = async (name: string, o: { launcher?: string; workload?: string; gramine?: Parameters<typeof wrapImage>[0]['gramine'] } = {}) => {
    const dest = join(base, name);
    const r = await wrapImage({
      source: { layoutDir: source, ref: 'app:1' },
      dest: { layoutDir: dest, ref: 'cc' },
      launcherDir: o.launcher ?? launcher,
      policy: 'shop/app',
      workload: o.workload ?? 'app',
      kek,
      launcherCacheDir: false,
      libos: 'gramine',
      ...(o.gramine ? { gramine: o.gramine } : {}),
    });
    const rootfs = join(base, `${name}-rootfs`);
    await unpackWrappedImage(await readWrappedImage(dest, 'cc'), rootfs, { chown: false });
    const text = await readFile(join(rootfs, GRAMINE_MANIFEST_PATH), 'utf8');
    // JSON round trip: plain objects (smol-toml's tables have no prototype)
    return { r, rootfs, text, manifest: JSON.parse(JSON.stringify(parse(text))) as GManifest };
  };
  return { base, launcher, wrap };
}

const sha256File = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

// Keys of Gramine 1.9's schema (manifest_check.py) — anything else would fail `gramine-manifest --check`.
const SCHEMA: Record<string, string[]> = {
  fs: ['mounts', 'root', 'start_dir', 'insecure__keys'],
  libos: ['entrypoint', 'check_invalid_pointers'],
  loader: ['entrypoint', 'argv', 'argv_src_file', 'env', 'env_src_file', 'gid', 'insecure__use_cmdline_argv', 'insecure__use_host_env', 'insecure__disable_aslr', 'log_file', 'log_level', 'uid'],
  sgx: ['allowed_files', 'cpu_features', 'debug', 'edmm_enable', 'enable_stats', 'enclave_size', 'file_check_policy', 'insecure__allow_memfaults_without_exinfo', 'insecure__rpc_thread_num', 'isvprodid', 'isvsvn', 'max_threads', 'preheat_enclave', 'profile', 'remote_attestation', 'seal_key', 'trusted_files', 'use_exinfo', 'vtune_profile'],
  sys: ['allowed_ioctls', 'brk', 'disallow_subprocesses', 'enable_extra_runtime_domain_names_conf', 'enable_sigterm_injection', 'experimental__enable_flock', 'insecure__allow_eventfd', 'ioctl_structs', 'debug__mock_syscalls', 'stack', 'fds'],
};

test('the manifest is TOML within Gramine 1.9\'s schema; every trusted file carries the real file\'s SHA-256', async (t) => {
  const f = await fixture(t);
  const { r, rootfs, manifest: m } = await f.wrap('a');
  assert.equal(r.gramineManifest?.path, GRAMINE_MANIFEST_PATH);
  for (const [top, v] of Object.entries(m)) {
    assert.ok(SCHEMA[top], `top-level key ${top} is in the schema`);
    for (const k of Object.keys(v as object)) assert.ok(SCHEMA[top]?.includes(k), `${top}.${k} is in the schema`);
  }
  for (const mount of m.fs.mounts) {
    assert.ok(['chroot', 'encrypted', 'tmpfs'].includes(mount.type));
    assert.match(mount.path, /^\//);
    assert.notEqual(mount.path, '/', 'the root is fs.root, never a mount');
  }
  const trusted = m.sgx.trusted_files as Array<{ uri: string; sha256: string }>;
  for (const tf of trusted) {
    assert.deepEqual(Object.keys(tf).sort(), ['sha256', 'uri']);
    assert.match(tf.uri, /^file:\/cocoon\//);
    assert.equal(tf.sha256, await sha256File(join(rootfs, tf.uri.slice('file:'.length))), tf.uri);
  }
  // exactly the launcher files the launcher digest is computed over, plus payload.json
  const expected = (await launcherFiles(join(rootfs, 'cocoon'))).map((x) => `file:${x.path}`);
  assert.deepEqual(trusted.map((x) => x.uri).sort(), [...expected, 'file:/cocoon/payload/payload.json'].sort());
  // the manifest sits outside the launcher digest: the launcher's self-check still passes
  assert.equal(await launcherDigest(join(rootfs, 'cocoon')), r.launcherDigest);
  assert.equal(createHash('sha256').update(await readFile(join(rootfs, GRAMINE_MANIFEST_PATH))).digest('hex'), r.gramineManifest?.sha256);
});

test('argv and environment are fixed in the manifest; debug off; DCAP; the measurement is in the manifest', async (t) => {
  const f = await fixture(t);
  const { r, manifest: m, text } = await f.wrap('b');
  assert.equal(m.libos.entrypoint, '/cocoon/bin/node');
  assert.deepEqual(m.loader.argv, GRAMINE_NODE_ARGV);
  for (const k of ['insecure__use_cmdline_argv', 'insecure__use_host_env', 'argv_src_file', 'env_src_file']) assert.equal(m.loader[k], undefined, k);
  assert.equal(m.fs.insecure__keys, undefined);
  assert.ok(!/insecure__keys|insecure__use/.test(text));
  assert.equal(m.sgx.debug, false);
  assert.equal(m.sgx.remote_attestation, 'dcap');
  assert.equal(m.sgx.file_check_policy, 'strict');
  assert.equal(m.loader.log_level, 'error');
  const env = m.loader.env as Record<string, unknown>;
  assert.equal(env.COCOON_EXPECTED_MEASUREMENT, r.measurement);
  assert.equal(env.COCOON_LIBOS, 'gramine');
  assert.equal(env.COCOON_TEE, 'sgx');
  const passedThrough = Object.entries(env).filter(([, v]) => typeof v === 'object');
  for (const [k, v] of passedThrough) {
    assert.deepEqual(v, { passthrough: true });
    assert.ok((GRAMINE_PASSTHROUGH_ENV as readonly string[]).includes(k), `${k} may come from the host`);
  }
  assert.deepEqual(passedThrough.map(([k]) => k).sort(), [...GRAMINE_PASSTHROUGH_ENV].sort(), 'exactly the passthrough list comes from the host');
  for (const k of ['COCOON_HOME', 'COCOON_PAYLOAD', 'COCOON_ROOT', 'COCOON_TEE', 'COCOON_LIBOS', 'COCOON_EXPECTED_MEASUREMENT', 'LD_LIBRARY_PATH', 'COCOON_GRAMINE_ATTESTATION_DIR', 'NODE_OPTIONS']) {
    assert.ok(!(GRAMINE_PASSTHROUGH_ENV as readonly string[]).includes(k));
    assert.equal(typeof env[k] === 'object', false, `${k} is not passed through`);
  }
  const enc = m.fs.mounts.filter((x) => x.type === 'encrypted');
  assert.deepEqual(enc, [{ type: 'encrypted', path: '/cocoon/root', uri: 'file:/cocoon/root', key_name: GRAMINE_ROOT_KEY_NAME }]);
  assert.ok(!String(enc[0]?.key_name).startsWith('_'), 'not a sealing key');
});

test('allowed files cover nothing the measurement depends on', async (t) => {
  const f = await fixture(t);
  const { manifest: m } = await f.wrap('c');
  const allowed = m.sgx.allowed_files as string[];
  assert.ok(allowed.length > 0);
  const trusted = (m.sgx.trusted_files as Array<{ uri: string }>).map((x) => x.uri);
  for (const a of allowed) {
    assert.match(a, /^file:\/cocoon\/(payload\/blobs|volumes)\/$/);
    for (const tf of trusted) assert.ok(!tf.startsWith(a) && !a.startsWith(`${tf}/`), `${a} does not cover ${tf}`);
    assert.ok(!'file:/cocoon/payload/payload.json'.startsWith(a));
    assert.ok(!'file:/cocoon/launcher.mjs'.startsWith(a) && !'file:/cocoon/bin/node'.startsWith(a) && !'file:/cocoon/lib/'.startsWith(a));
  }
});

test('a changed launcher byte or payload config changes the manifest (hence MRENCLAVE); same inputs ⇒ same manifest', async (t) => {
  const f = await fixture(t);
  const a = await f.wrap('d1');
  const again = await f.wrap('d2');
  assert.equal(again.text, a.text, 'reproducible');
  const other = join(f.base, 'launcher2');
  await launcherTree(other, 'node binarY');
  const b = await f.wrap('d3', { launcher: other });
  assert.notEqual(b.text, a.text);
  const node = (m: GManifest) => m.sgx.trusted_files.find((x) => x.uri === 'file:/cocoon/bin/node')?.sha256;
  assert.notEqual(node(b.manifest), node(a.manifest));
  const c = await f.wrap('d4', { workload: 'other' });
  assert.notEqual(c.text, a.text);
  const payload = (m: GManifest) => m.sgx.trusted_files.find((x) => x.uri === 'file:/cocoon/payload/payload.json')?.sha256;
  assert.ok(payload(a.manifest));
  assert.notEqual(payload(c.manifest), payload(a.manifest));
  assert.notEqual(c.manifest.loader.env.COCOON_EXPECTED_MEASUREMENT, a.manifest.loader.env.COCOON_EXPECTED_MEASUREMENT);
  const d = await f.wrap('d5', { gramine: { enclaveSize: '8G', maxThreads: 32, isvProdId: 7, isvSvn: 3 } });
  assert.equal(d.manifest.sgx.enclave_size, '8G');
  assert.equal(d.manifest.sgx.max_threads, 32);
  assert.equal(d.manifest.sgx.isvprodid, 7);
  assert.equal(d.manifest.sgx.isvsvn, 3);
  assert.equal(d.manifest.sgx.debug, false);
});

test('refusals: symlinked launcher files, bad sizes, SGX flags without --libos, unknown LibOS', async (t) => {
  const f = await fixture(t);
  const linked = join(f.base, 'launcher-link');
  await launcherTree(linked);
  await symlink('libc.so.6', join(linked, 'lib/libc.so'));
  await assert.rejects(f.wrap('e1', { launcher: linked }), (e) => isCocoonError(e, 'BAD_USAGE') && /symlink/.test((e as Error).message));
  await assert.rejects(f.wrap('e2', { gramine: { enclaveSize: '4 GB' } }), (e) => isCocoonError(e, 'BAD_USAGE'));
  await assert.rejects(f.wrap('e3', { gramine: { maxThreads: 2 } }), (e) => isCocoonError(e, 'BAD_USAGE'));
  const base = { policy: 'a/b', workload: 'w', keyFile: 'k' };
  assert.throws(() => gramineFlags({ ...base, sgxEnclaveSize: '4G' }), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => gramineFlags({ ...base, sgxDebug: true }), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => gramineFlags({ ...base, libos: 'occlum' }), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => gramineFlags({ ...base, libos: 'gramine', sgxMaxThreads: '-1' }), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.deepEqual(gramineFlags(base), {});
  assert.deepEqual(gramineFlags({ ...base, libos: 'gramine', sgxDebug: true, sgxIsvsvn: '2' }), { libos: 'gramine', gramine: { isvSvn: 2, debug: true } });
  // --sgx-debug is the only way to a debug enclave, and it shows
  const dbg = gramineManifest({ launcherFiles: [{ path: '/cocoon/launcher.mjs', mode: 0o644, sha256: 'a'.repeat(64) }], payloadSha256: 'b'.repeat(64), measurement: 'c'.repeat(96), options: { debug: true } });
  assert.equal((parse(dbg) as unknown as GManifest).sgx.debug, true);
  assert.throws(() => gramineManifest({ launcherFiles: [], payloadSha256: 'b'.repeat(64), measurement: 'C'.repeat(96) }), (e) => isCocoonError(e, 'BAD_USAGE'));
});

test('without --libos the wrapped image carries no Gramine files', async (t) => {
  const f = await fixture(t);
  const base = f.base;
  const src = join(base, 'src');
  const r = await wrapImage({ source: { layoutDir: src, ref: 'app:1' }, dest: { layoutDir: join(base, 'plain'), ref: 'cc' }, launcherDir: f.launcher, policy: 'shop/app', workload: 'app', kek: randomBytes(32), launcherCacheDir: false });
  assert.equal(r.gramineManifest, undefined);
  const rootfs = join(base, 'plain-rootfs');
  await unpackWrappedImage(await readWrappedImage(join(base, 'plain'), 'cc'), rootfs, { chown: false });
  await assert.rejects(readFile(join(rootfs, GRAMINE_MANIFEST_PATH)), { code: 'ENOENT' });
});
