import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile, readFile, lstat, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { tarDirectory, packTar, deterministicGzip, resolveMtime } from '../../src/image/tar.js';
import { unpackLayer } from '../../src/image/unpack.js';
import { makeAppTree, streamToBuffer, tempDir } from './helpers.js';

test('the same tree twice gives byte-identical tar and tar+gzip', async (t) => {
  const base = await tempDir(t);
  const a = join(base, 'a');
  const b = join(base, 'b');
  await makeAppTree(a);
  await new Promise((r) => setTimeout(r, 20));
  await makeAppTree(b);
  const ta = await streamToBuffer(tarDirectory(a, { owner: { uid: 0, gid: 0 } }));
  const tb = await streamToBuffer(tarDirectory(b, { owner: { uid: 0, gid: 0 } }));
  assert.ok(ta.length > 1024);
  assert.deepEqual(ta, tb);
  const ga = await streamToBuffer(tarDirectory(a, { owner: { uid: 0, gid: 0 } }).pipe(deterministicGzip()));
  const gb = await streamToBuffer(tarDirectory(b, { owner: { uid: 0, gid: 0 } }).pipe(deterministicGzip()));
  assert.deepEqual(ga, gb);
  // gzip header: magic, deflate, no flags (no name/comment), mtime 0
  assert.deepEqual([...ga.subarray(0, 8)], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
});

test('entries are sorted, mtime fixed, names empty, prefix applied', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'b'), 'b');
  await writeFile(join(dir, 'a'), 'a');
  await mkdir(join(dir, 'c'));
  await writeFile(join(dir, 'c', 'z'), 'z');
  const bytes = await streamToBuffer(tarDirectory(dir, { prefix: 'cocoon', owner: { uid: 0, gid: 0 }, mtime: 1234 }));
  const names: string[] = [];
  for (let off = 0; off + 512 <= bytes.length; off += 512) {
    const h = bytes.subarray(off, off + 512);
    if (h.every((x) => x === 0)) break;
    const name = h.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
    names.push(name);
    assert.equal(h.subarray(136, 147).toString(), (1234).toString(8).padStart(11, '0'));
    assert.equal(h[265], 0, 'uname empty');
    assert.equal(h[297], 0, 'gname empty');
    const size = parseInt(h.subarray(124, 135).toString(), 8);
    off += Math.ceil(size / 512) * 512;
  }
  assert.deepEqual(names, ['cocoon/', 'cocoon/a', 'cocoon/b', 'cocoon/c/', 'cocoon/c/z']);
});

test('SOURCE_DATE_EPOCH sets the default mtime', () => {
  const old = process.env.SOURCE_DATE_EPOCH;
  try {
    process.env.SOURCE_DATE_EPOCH = '1700000000';
    assert.equal(resolveMtime(), 1700000000);
    assert.equal(resolveMtime(5), 5);
    process.env.SOURCE_DATE_EPOCH = 'x';
    assert.throws(() => resolveMtime(), { code: 'BAD_USAGE' });
  } finally {
    if (old === undefined) delete process.env.SOURCE_DATE_EPOCH;
    else process.env.SOURCE_DATE_EPOCH = old;
  }
});

test('long names, symlinks, hardlinks and modes survive a round trip', async (t) => {
  const base = await tempDir(t);
  const src = join(base, 'src');
  const longDir = 'd'.repeat(120);
  const longName = `${longDir}/${'f'.repeat(150)}-é`;
  await makeAppTree(src);
  await mkdir(join(src, longDir), { recursive: true });
  await writeFile(join(src, longName), 'long');
  const tarBytes = await streamToBuffer(tarDirectory(src, { owner: { uid: 0, gid: 0 } }));
  const out = join(base, 'out');
  const r = await unpackLayer(Readable.from([tarBytes]), 'none', out, { chown: false });
  assert.equal(await readFile(join(out, longName), 'utf8'), 'long');
  assert.equal(await readlink(join(out, 'bin')), 'usr/bin');
  assert.equal((await stat(join(out, 'usr/bin/app'))).mode & 0o777, 0o755);
  const a = await lstat(join(out, 'etc/app.conf'));
  const b = await lstat(join(out, 'etc/app.conf.bak'));
  assert.equal(a.ino, b.ino, 'hardlink kept');
  assert.ok(r.entries >= 8);
});

test('packTar writes large uids through PAX and keeps them', async (t) => {
  const out = await tempDir(t);
  const bytes = await streamToBuffer(packTar([{ name: 'f', type: 'file', mode: 0o600, uid: 1_000_000, gid: 5, content: Buffer.from('x') }], { mtime: 0 }));
  assert.ok(bytes.includes(Buffer.from('uid=1000000')));
  await unpackLayer(Readable.from([bytes]), 'none', out, { chown: false });
  assert.equal(await readFile(join(out, 'f'), 'utf8'), 'x');
});
