import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, lstat, writeFile, symlink, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { unpackLayer, entryComponents, materializeLinks } from '../../src/image/unpack.js';
import { rawTar, tempDir, zstdRaw, zstdRle, type RawEntry } from './helpers.js';

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

async function unpackRaw(entries: RawEntry[], root: string, kind: 'none' | 'gzip' = 'none', limits = {}): Promise<void> {
  const tarBytes = await rawTar(entries);
  const input = kind === 'gzip' ? gzipSync(tarBytes) : tarBytes;
  await unpackLayer(Readable.from([input]), kind, root, { chown: false, limits });
}

/** A sandbox: root/ to unpack into, and outside/ next to it that must stay empty. */
async function sandbox(t: Parameters<typeof tempDir>[0]): Promise<{ root: string; outside: string; check: () => Promise<void> }> {
  const base = await tempDir(t);
  const root = join(base, 'root');
  const outside = join(base, 'outside');
  await mkdir(root);
  await mkdir(outside);
  return {
    root,
    outside,
    check: async () => {
      assert.deepEqual(await readdir(outside), [], 'nothing written outside root');
      assert.deepEqual((await readdir(base)).sort(), ['outside', 'root']);
    },
  };
}

test('layers stack: whiteouts delete lower entries, opaque dirs hide lower content only', async (t) => {
  const { root } = await sandbox(t);
  await unpackRaw(
    [
      { name: 'etc/', type: 'directory' },
      { name: 'etc/a', content: 'a' },
      { name: 'etc/b', content: 'b' },
      { name: 'var/', type: 'directory' },
      { name: 'var/lib/', type: 'directory' },
      { name: 'var/lib/old1', content: '1' },
      { name: 'var/lib/old2/', type: 'directory' },
      { name: 'var/lib/old2/x', content: 'x' },
    ],
    root,
  );
  await unpackRaw(
    [
      { name: 'etc/.wh.a', content: '' },
      { name: 'var/lib/new', content: 'n' },
      { name: 'var/lib/.wh..wh..opq', content: '' },
      { name: 'etc/c', content: 'c' },
    ],
    root,
    'gzip',
  );
  assert.equal(await exists(join(root, 'etc/a')), false);
  assert.equal(await readFile(join(root, 'etc/b'), 'utf8'), 'b');
  assert.equal(await readFile(join(root, 'etc/c'), 'utf8'), 'c');
  assert.deepEqual(await readdir(join(root, 'var/lib')), ['new']);
  assert.equal(await exists(join(root, 'etc/.wh.a')), false, 'whiteout markers are not materialised');
});

test('hardlinks inside the root work; replacing entries works', async (t) => {
  const { root } = await sandbox(t);
  await unpackRaw(
    [
      { name: 'a', content: 'data' },
      { name: 'b', type: 'link', linkname: 'a' },
      { name: 'dir/', type: 'directory' },
      { name: 'dir/c', type: 'link', linkname: '/a' },
      { name: 'x', type: 'symlink', linkname: '/nowhere/at/all' },
      { name: 'x', content: 'now a file' },
    ],
    root,
  );
  const a = await lstat(join(root, 'a'));
  assert.equal((await lstat(join(root, 'b'))).ino, a.ino);
  assert.equal((await lstat(join(root, 'dir/c'))).ino, a.ino);
  assert.equal(await readFile(join(root, 'x'), 'utf8'), 'now a file');
});

test('symlinks are created with any target text but never followed to write outside', async (t) => {
  const { root, outside, check } = await sandbox(t);
  await unpackRaw([{ name: 'abs', type: 'symlink', linkname: outside }, { name: 'rel', type: 'symlink', linkname: '../outside' }], root);
  assert.equal(await readlink(join(root, 'abs')), outside);
  // a file entry with the same name as a symlink replaces the link, it does not write through it
  await unpackRaw([{ name: 'rel', content: 'replaced' }], root);
  assert.equal(await readFile(join(root, 'rel'), 'utf8'), 'replaced');
  await check();
});

test('malicious: ../ traversal is PATH_TRAVERSAL', async (t) => {
  const { root, check } = await sandbox(t);
  await assert.rejects(unpackRaw([{ name: '../outside/x', content: 'pwned' }], root), { code: 'PATH_TRAVERSAL' });
  await assert.rejects(unpackRaw([{ name: 'a/../../outside/x', content: 'pwned' }], root), { code: 'PATH_TRAVERSAL' });
  assert.throws(() => entryComponents('..'), { code: 'PATH_TRAVERSAL' });
  await check();
});

test('malicious: absolute paths stay inside the root', async (t) => {
  const { root, check } = await sandbox(t);
  await unpackRaw([{ name: '/etc/x', content: 'inside' }], root);
  assert.equal(await readFile(join(root, 'etc/x'), 'utf8'), 'inside');
  await check();
});

test('malicious: write through a symlink that escapes is PATH_TRAVERSAL', async (t) => {
  const { root, check } = await sandbox(t);
  await assert.rejects(
    unpackRaw([{ name: 'evil', type: 'symlink', linkname: '../outside' }, { name: 'evil/pwned', content: 'pwned' }], root),
    { code: 'PATH_TRAVERSAL' },
  );
  await assert.rejects(
    unpackRaw([{ name: 'd/', type: 'directory' }, { name: 'd/up', type: 'symlink', linkname: '../../outside' }, { name: 'd/up/deep/pwned', content: 'x' }], root),
    { code: 'PATH_TRAVERSAL' },
  );
  // the escape is refused even when the symlink came from a lower layer
  await assert.rejects(unpackRaw([{ name: 'evil/pwned2', content: 'pwned' }], root), { code: 'PATH_TRAVERSAL' });
  await check();
});

test('absolute symlinks resolve against the root, as inside the container', async (t) => {
  const { root, check } = await sandbox(t);
  await unpackRaw([{ name: 'usr/lib/', type: 'directory' }, { name: 'lib', type: 'symlink', linkname: '/usr/lib' }, { name: 'lib/libx.so', content: 'x' }], root);
  assert.equal(await readFile(join(root, 'usr/lib/libx.so'), 'utf8'), 'x');
  await check();
});

test('malicious: hardlink to outside is refused', async (t) => {
  const { root, outside, check } = await sandbox(t);
  await writeFile(join(outside, '..', 'secret'), 'secret');
  await assert.rejects(unpackRaw([{ name: 'h', type: 'link', linkname: '../secret' }], root), { code: 'PATH_TRAVERSAL' });
  await symlink('../', join(root, 'up'));
  await assert.rejects(unpackRaw([{ name: 'h2', type: 'link', linkname: 'up/secret' }], root), { code: 'PATH_TRAVERSAL' });
  assert.equal(await exists(join(root, 'h')), false);
  assert.equal(await exists(join(root, 'h2')), false);
  await check().catch(() => undefined); // base now holds 'secret' by design
  assert.deepEqual(await readdir(outside), []);
});

test('malicious: whiteout through an escaping symlink deletes nothing outside', async (t) => {
  const { root, outside } = await sandbox(t);
  await writeFile(join(outside, 'keep'), 'keep');
  await symlink('../outside', join(root, 'o'));
  await assert.rejects(unpackRaw([{ name: 'o/.wh.keep', content: '' }], root), { code: 'PATH_TRAVERSAL' });
  await assert.rejects(unpackRaw([{ name: 'o/.wh..wh..opq', content: '' }], root), { code: 'PATH_TRAVERSAL' });
  assert.equal(await readFile(join(outside, 'keep'), 'utf8'), 'keep');
});

test('devices and fifos are skipped with a warning by default', async (t) => {
  const { root } = await sandbox(t);
  const warnings: string[] = [];
  const tarBytes = await rawTar([{ name: 'fifo', type: 'fifo' }, { name: 'null', type: 'character-device' }, { name: 'ok', content: 'ok' }]);
  const r = await unpackLayer(Readable.from([tarBytes]), 'none', root, { chown: false, onWarning: (w) => warnings.push(w) });
  assert.equal(warnings.length, 2);
  assert.equal(r.warnings.length, 2);
  assert.deepEqual(await readdir(root), ['ok']);
});

test('bomb by size: DECOMPRESSION_BOMB (gzip, zstd and plain tar)', async (t) => {
  const { root } = await sandbox(t);
  const big = await rawTar([{ name: 'zeros', content: Buffer.alloc(4 << 20) }]);
  await assert.rejects(unpackLayer(Readable.from([gzipSync(big)]), 'gzip', root, { chown: false, limits: { maxBytes: 1 << 20 } }), { code: 'DECOMPRESSION_BOMB' });
  await assert.rejects(unpackLayer(Readable.from([big]), 'none', root, { chown: false, limits: { maxBytes: 1 << 20 } }), { code: 'DECOMPRESSION_BOMB' });
  await assert.rejects(unpackLayer(Readable.from([zstdRaw(big)]), 'zstd', root, { chown: false, limits: { maxBytes: 1 << 20 } }), { code: 'DECOMPRESSION_BOMB' });
});

test('bomb by ratio: DECOMPRESSION_BOMB (gzip and zstd RLE)', async (t) => {
  const { root } = await sandbox(t);
  const big = await rawTar([{ name: 'zeros', content: Buffer.alloc(8 << 20) }]);
  const gz = gzipSync(big);
  assert.ok(big.length / gz.length > 500);
  await assert.rejects(unpackLayer(Readable.from([gz]), 'gzip', root, { chown: false, limits: { maxRatio: 100, ratioGraceBytes: 1 << 20 } }), { code: 'DECOMPRESSION_BOMB' });
  // 64 RLE blocks of 128 KiB from ~270 bytes
  const zbomb = zstdRle(0, 128 * 1024, 64);
  await assert.rejects(unpackLayer(Readable.from([zbomb]), 'zstd', root, { chown: false, limits: { maxRatio: 100, ratioGraceBytes: 1 << 20 } }), { code: 'DECOMPRESSION_BOMB' });
  // an honest layer passes with the same limits
  const honest = await rawTar([{ name: 'f', content: Buffer.from('hello\n'.repeat(1000)) }]);
  await unpackLayer(Readable.from([gzipSync(honest)]), 'gzip', root, { chown: false, limits: { maxRatio: 100, ratioGraceBytes: 1 << 20 } });
});

test('corrupt streams are IMAGE_INVALID', async (t) => {
  const { root } = await sandbox(t);
  await assert.rejects(unpackLayer(Readable.from([Buffer.from('not gzip at all')]), 'gzip', root, { chown: false }), { code: 'IMAGE_INVALID' });
  await assert.rejects(unpackLayer(Readable.from([Buffer.alloc(1024, 0x41)]), 'none', root, { chown: false }), { code: 'IMAGE_INVALID' });
  await assert.rejects(unpackLayer(Readable.from([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0x58, 1])]), 'zstd', root, { chown: false }), { code: 'IMAGE_INVALID' });
});

test('diffID is the sha256 of the uncompressed tar', async (t) => {
  const { root } = await sandbox(t);
  const tarBytes = await rawTar([{ name: 'f', content: 'x' }]);
  const { createHash } = await import('node:crypto');
  const r = await unpackLayer(Readable.from([zstdRaw(tarBytes)]), 'zstd', root, { chown: false });
  assert.equal(r.diffID, `sha256:${createHash('sha256').update(tarBytes).digest('hex')}`);
  assert.equal(r.bytes, tarBytes.length);
});

test('ownership from the tar is applied when running as root (default), kept off with chown:false', async (t) => {
  if (process.getuid?.() !== 0) {
    t.skip('SKIPPED: needs root to chown');
    return;
  }
  const { root } = await sandbox(t);
  const tar = await rawTar([{ name: 'd/', type: 'directory', mode: 0o750 }, { name: 'd/f', content: 'x', mode: 0o4755 }]);
  // rewrite uid/gid in the headers: rawTar writes 0; patch the octal fields to 999
  const patched = Buffer.from(tar);
  for (let off = 0; off + 512 <= patched.length; off += 512) {
    const h = patched.subarray(off, off + 512);
    if (h.every((x) => x === 0)) break;
    h.write('0001747\0', 108); // uid 999
    h.write('0001747\0', 116); // gid 999
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    const size = parseInt(h.subarray(124, 135).toString(), 8);
    off += Math.ceil(size / 512) * 512;
  }
  await unpackLayer(Readable.from([patched]), 'none', root);
  const d = await lstat(join(root, 'd'));
  const f = await lstat(join(root, 'd/f'));
  assert.equal(d.uid, 999);
  assert.equal(f.gid, 999);
  assert.equal(d.mode & 0o7777, 0o750);
  assert.equal(f.mode & 0o7777, 0o4755, 'setuid kept after chown');
});

test('materializeLinks (Gramine): copies are bounded in bytes as well as entries', async (t) => {
  const root = await tempDir(t);
  await writeFile(join(root, 'big'), Buffer.alloc(100, 1));
  const links = () => new Map([['a', 'big'], ['b', '/big']]);
  await assert.rejects(materializeLinks(root, links(), { maxBytes: 150 }), { code: 'DECOMPRESSION_BOMB' });
  const root2 = await tempDir(t);
  await writeFile(join(root2, 'big'), Buffer.alloc(100, 1));
  assert.deepEqual(await materializeLinks(root2, links(), { maxBytes: 200 }), { materialized: 2, skipped: 0 });
  assert.deepEqual(await readFile(join(root2, 'b')), Buffer.alloc(100, 1));
});
