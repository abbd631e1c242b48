import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, mkdir, readFile, readdir, rm, stat, truncate, writeFile, cp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isCocoonError } from '../../src/errors.js';
import { CHUNK_SIZE, decodeManifest, readStoreManifest, restoreVolume, sealVolume } from '../../src/launcher/volumes/format.js';
import { openVolumes } from '../../src/launcher/volumes/index.js';
import type { CounterCommit, OpenVolume } from '../../src/launcher/volumes/index.js';
import { VolumeCommitter } from '../../src/launcher/volumes/commit.js';
import { parseVolumesSpec, VolumeSpecError } from '../../src/policy/volumes.js';
import { parseVolumeGrants } from '../../src/kbs/volume-plan.js';
import { createLauncherLog, type LauncherLog } from '../../src/launcher/log.js';

const key = randomBytes(32);
const log = createLauncherLog({ write: () => true } as unknown as NodeJS.WritableStream);

/** The launcher's clean shutdown of `volumes` (VolumeCommitter.close: one final seal and counter advance each). */
const closeVolumes = (volumes: OpenVolume[], commit: CounterCommit, log: LauncherLog, rootDir?: string): Promise<void> => new VolumeCommitter(volumes, { commit, log, ...(rootDir !== undefined ? { rootDir } : {}) }).close();

async function withDirs(fn: (d: { store: string; src: string; dest: string; work: string }) => Promise<void>): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'cocoon-vol-'));
  const d = { work, store: join(work, 'store'), src: join(work, 'src'), dest: join(work, 'dest') };
  await mkdir(d.store);
  await mkdir(d.src);
  await mkdir(d.dest);
  try {
    await fn(d);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function populate(src: string): Promise<Record<string, Buffer>> {
  const files: Record<string, Buffer> = {
    'a.txt': Buffer.from('hello volume\n'),
    'empty': Buffer.alloc(0),
    'sub/big.bin': randomBytes(3 * CHUNK_SIZE + 123),
    'sub/exact.bin': randomBytes(2 * CHUNK_SIZE),
    'sub/deeper/x': Buffer.from('x'),
  };
  for (const [p, c] of Object.entries(files)) {
    await mkdir(join(src, p, '..'), { recursive: true });
    await writeFile(join(src, p), c, { mode: 0o640 });
  }
  return files;
}

async function expectTampered(p: Promise<unknown>, re?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isCocoonError(err, 'VOLUME_TAMPERED'), String(err));
    if (re) assert.match((err as Error).message, re);
    return true;
  });
}

async function blobOf(store: string, path: string): Promise<string> {
  const m = await readStoreManifest(store, 'data', key);
  const e = m?.entries.find((x) => x.path === path);
  assert.ok(e?.blob);
  return join(store, 'blobs', e.blob);
}

test('volume format: round trip of files, empty files, chunk boundaries and directories; unchanged files keep their blob', () =>
  withDirs(async ({ store, src, dest }) => {
    const files = await populate(src);
    const r1 = await sealVolume(store, key, 'data', undefined, src, 1);
    assert.equal(r1.written, 5);
    const m = await readStoreManifest(store, 'data', key);
    assert.equal(m?.version, 1);
    await restoreVolume(store, key, m!, dest, { chown: false });
    for (const [p, c] of Object.entries(files)) assert.deepEqual(await readFile(join(dest, p)), c, p);
    assert.equal((await stat(join(dest, 'a.txt'))).mode & 0o777, 0o640);
    // the host sees no plaintext names or content
    const raw = (await readFile(join(store, 'manifest.json'))).toString();
    assert.doesNotMatch(raw, /a\.txt|big\.bin/);
    // second commit: one file changed
    await writeFile(join(src, 'a.txt'), 'changed');
    const r2 = await sealVolume(store, key, 'data', m, src, 2);
    assert.equal(r2.written, 1);
    assert.equal(r2.reused, 4);
    assert.equal(r2.manifest.entries.find((e) => e.path === 'a.txt')?.fileVersion, 2);
    assert.equal((await readdir(join(store, 'blobs'))).length, 5, 'the old blob is garbage-collected');
  }));

test('volume format: a flipped byte in a file fails with VOLUME_TAMPERED', () =>
  withDirs(async ({ store, src, dest }) => {
    await populate(src);
    await sealVolume(store, key, 'data', undefined, src, 1);
    const blob = await blobOf(store, 'sub/big.bin');
    const bytes = await readFile(blob);
    bytes[CHUNK_SIZE + 100] = (bytes[CHUNK_SIZE + 100] ?? 0) ^ 1;
    await writeFile(blob, bytes);
    const m = await readStoreManifest(store, 'data', key);
    await expectTampered(restoreVolume(store, key, m!, dest, { chown: false }), /sub\/big\.bin chunk 1 failed authentication/);
  }));

test('volume format: a flipped byte in the manifest, or a changed version field, fails', () =>
  withDirs(async ({ store, src }) => {
    await populate(src);
    await sealVolume(store, key, 'data', undefined, src, 3);
    const raw = await readFile(join(store, 'manifest.json'));
    const doc = JSON.parse(raw.toString()) as { version: number; body: string };
    const body = Buffer.from(doc.body, 'base64');
    body[5] = (body[5] ?? 0) ^ 0x80;
    await expectTampered(Promise.resolve().then(() => decodeManifest(key, 'data', Buffer.from(JSON.stringify({ ...doc, body: body.toString('base64') })))));
    await expectTampered(Promise.resolve().then(() => decodeManifest(key, 'data', Buffer.from(JSON.stringify({ ...doc, version: 9 })))), /authentication/);
    await expectTampered(Promise.resolve().then(() => decodeManifest(randomBytes(32), 'data', raw)));
    await expectTampered(Promise.resolve().then(() => decodeManifest(key, 'other', raw)));
    await expectTampered(Promise.resolve().then(() => decodeManifest(key, 'data', Buffer.from('{"format":"x"}'))));
  }));

test('volume format: swapping two files\' blobs fails (path bound in the AAD)', () =>
  withDirs(async ({ store, src, dest }) => {
    await writeFile(join(src, 'one'), 'first file');
    await writeFile(join(src, 'two'), 'other file');
    await sealVolume(store, key, 'data', undefined, src, 1);
    const a = await blobOf(store, 'one');
    const b = await blobOf(store, 'two');
    const [ba, bb] = [await readFile(a), await readFile(b)];
    await writeFile(a, bb);
    await writeFile(b, ba);
    const m = await readStoreManifest(store, 'data', key);
    await expectTampered(restoreVolume(store, key, m!, dest, { chown: false }), /failed authentication/);
  }));

test('volume format: truncation (at and inside a chunk) fails', () =>
  withDirs(async ({ store, src, dest }) => {
    await writeFile(join(src, 'f'), randomBytes(2 * CHUNK_SIZE + 10));
    await sealVolume(store, key, 'data', undefined, src, 1);
    const blob = await blobOf(store, 'f');
    const m = await readStoreManifest(store, 'data', key);
    await truncate(blob, CHUNK_SIZE + 28);
    await expectTampered(restoreVolume(store, key, m!, dest, { chown: false }), /wrong length/);
    await rm(blob);
    await expectTampered(restoreVolume(store, key, m!, join(dest), { chown: false }));
  }));

test('volume format: replaying an older manifest is detected by the version counter (VOLUME_ROLLBACK)', () =>
  withDirs(async ({ store, src, work }) => {
    await writeFile(join(src, 'f'), 'v1');
    const m1 = (await sealVolume(store, key, 'data', undefined, src, 1)).manifest;
    const snapshot = join(work, 'snap');
    await cp(store, snapshot, { recursive: true });
    await writeFile(join(src, 'f'), 'v2');
    await sealVolume(store, key, 'data', m1, src, 2);
    // the host restores the older snapshot; the KBS counter says 2
    await rm(store, { recursive: true });
    await cp(snapshot, store, { recursive: true });
    const root = join(work, 'root');
    await mkdir(root);
    const grant = { name: 'data', mountPath: '/data', allowRollback: false, key, version: 2 };
    const commits: [number, number][] = [];
    const commit: CounterCommit = async (_v, from, to) => void commits.push([from, to]);
    await assert.rejects(openVolumes([grant], { storeRoot: work.concat('/'), rootDir: root, chown: false, commit }, log), (err: unknown) => {
      // storeRoot/data does not exist: the store lives at `store`; use the right root below
      return isCocoonError(err, 'BAD_USAGE');
    });
    const storeRoot = join(work, 'stores');
    await mkdir(storeRoot);
    await cp(store, join(storeRoot, 'data'), { recursive: true });
    await assert.rejects(openVolumes([grant], { storeRoot, rootDir: root, chown: false, commit }, log), (err: unknown) => isCocoonError(err, 'VOLUME_ROLLBACK'));
    // a deleted store is a rollback too
    await rm(join(storeRoot, 'data', 'manifest.json'));
    await assert.rejects(openVolumes([grant], { storeRoot, rootDir: root, chown: false, commit }, log), (err: unknown) => isCocoonError(err, 'VOLUME_ROLLBACK'));
    // allowRollback accepts it (with a warning) and the next commit moves past the counter
    await cp(snapshot, join(storeRoot, 'data'), { recursive: true, force: true });
    const opened = await openVolumes([{ ...grant, allowRollback: true }], { storeRoot, rootDir: root, chown: false, commit }, log);
    assert.equal(await readFile(join(root, 'data', 'f'), 'utf8'), 'v1');
    await closeVolumes(opened, commit, log);
    assert.deepEqual(commits, [[2, 3]]);
    assert.equal(commits.length, 1);
  }));

test('volume lifecycle: open, write, close, reopen keeps the data; an interrupted commit is completed', () =>
  withDirs(async ({ work }) => {
    const storeRoot = join(work, 'stores');
    await mkdir(join(storeRoot, 'data'), { recursive: true });
    const root = join(work, 'root');
    await mkdir(join(root, 'data'), { recursive: true });
    await writeFile(join(root, 'data', 'seed'), 'from the image');
    let counter = 0;
    const commit: CounterCommit = async (_v, from, to) => {
      if (from !== counter) throw new Error('conflict');
      counter = to;
    };
    const grant = () => ({ name: 'data', mountPath: '/data', allowRollback: false, key, version: counter });
    const v1 = await openVolumes([grant()], { storeRoot, rootDir: root, chown: false, commit }, log);
    assert.equal(await readFile(join(root, 'data', 'seed'), 'utf8'), 'from the image', 'a new volume keeps the image content');
    await writeFile(join(root, 'data', 'dump.rdb'), 'REDIS0011');
    await closeVolumes(v1, commit, log);
    assert.equal(counter, 1);
    await rm(join(root, 'data'), { recursive: true });
    const v2 = await openVolumes([grant()], { storeRoot, rootDir: root, chown: false, commit }, log);
    assert.equal(await readFile(join(root, 'data', 'dump.rdb'), 'utf8'), 'REDIS0011');
    assert.equal(await readFile(join(root, 'data', 'seed'), 'utf8'), 'from the image');
    // crash window: store written (version 2) but the counter not advanced
    const failing: CounterCommit = async () => {
      throw new Error('KBS down');
    };
    await assert.rejects(closeVolumes(v2, failing, log));
    assert.equal(counter, 1);
    assert.equal((await readStoreManifest(join(storeRoot, 'data'), 'data', key))?.version, 2);
    const v3 = await openVolumes([grant()], { storeRoot, rootDir: root, chown: false, commit }, log);
    assert.equal(counter, 2, 'the next start completes the interrupted commit');
    assert.equal(v3[0]?.counter, 2);
  }));

test('policy volumes: strict parse', () => {
  assert.deepEqual(parseVolumesSpec([{ name: 'data', mountPath: '/data' }]), [{ name: 'data', mountPath: '/data', allowRollback: false }]);
  assert.deepEqual(parseVolumesSpec([{ name: 'db', mountPath: '/var/lib/db', allowRollback: true }])[0]?.allowRollback, true);
  for (const bad of [[], {}, [{ name: 'Data', mountPath: '/d' }], [{ name: 'd', mountPath: 'rel' }], [{ name: 'd', mountPath: '/' }], [{ name: 'd', mountPath: '/a/../b' }], [{ name: 'd', mountPath: '/cocoon/x' }], [{ name: 'd', mountPath: '/d', extra: 1 }], [{ name: 'd', mountPath: '/d', allowRollback: 'yes' }], [{ name: 'a', mountPath: '/d' }, { name: 'a', mountPath: '/e' }], [{ name: 'a', mountPath: '/d' }, { name: 'b', mountPath: '/d/x' }]]) {
    assert.throws(() => parseVolumesSpec(bad), VolumeSpecError, JSON.stringify(bad));
  }
  assert.throws(() => parseVolumeGrants([{ name: 'd', mountPath: '/d', allowRollback: false, key: 'short', version: 0 }]), (e: unknown) => isCocoonError(e, 'INPUT_MALFORMED'));
  assert.equal(parseVolumeGrants([{ name: 'd', mountPath: '/d', allowRollback: false, key: key.toString('base64'), version: 4 }])[0]?.version, 4);
});

test('runc spec: --volume stores are bind-mounted read-write at /cocoon/volumes/NAME; bad input refused', async () => {
  const { buildRuncSpec } = await import('../../src/runtime/spec.js');
  const base = { args: ['/cocoon/bin/node', 'launch'], env: [], hostname: 'h', memoryRootSize: '256m', hostNetwork: true };
  const spec = buildRuncSpec({ ...base, volumes: [{ name: 'data', hostDir: '/srv/store' }] }) as { mounts: { destination: string; source: string; options: string[] }[] };
  const m = spec.mounts.find((x) => x.destination === '/cocoon/volumes/data');
  assert.equal(m?.source, '/srv/store');
  assert.ok(m?.options.includes('rw') && m.options.includes('noexec') && m.options.includes('nosuid'));
  assert.throws(() => buildRuncSpec({ ...base, volumes: [{ name: '../x', hostDir: '/srv' }] }), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => buildRuncSpec({ ...base, volumes: [{ name: 'x', hostDir: 'rel' }] }), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
});

test('volume lifecycle: a mount path replaced by a symlink is not followed when sealing', () =>
  withDirs(async ({ work }) => {
    const { symlink } = await import('node:fs/promises');
    const storeRoot = join(work, 'stores');
    await mkdir(join(storeRoot, 'data'), { recursive: true });
    const root = join(work, 'root');
    await mkdir(root);
    const commit: CounterCommit = async () => undefined;
    const v = await openVolumes([{ name: 'data', mountPath: '/data', allowRollback: false, key, version: 0 }], { storeRoot, rootDir: root, chown: false, commit }, log);
    await rm(join(root, 'data'), { recursive: true });
    await symlink('/etc', join(root, 'data'));
    await assert.rejects(closeVolumes(v, commit, log, root), (e: unknown) => isCocoonError(e, 'PATH_TRAVERSAL'));
    assert.equal(await readStoreManifest(join(storeRoot, 'data'), 'data', key), undefined);
  }));
