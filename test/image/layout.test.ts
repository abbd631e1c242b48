import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { LayoutWriter, blobPath, openBlobStream, readBlob, readLayout } from '../../src/image/layout.js';
import { MediaType, parseManifest, parseDescriptor, parseImageConfig, layerFormat } from '../../src/image/oci.js';
import { ociDigest } from '../../src/crypto/hash.js';
import { streamToBuffer, tempDir, writeSourceImage, tarOf, makeAppTree } from './helpers.js';

test('layout round trip: write, then read back by ref and as the single manifest', async (t) => {
  const dir = await tempDir(t);
  const app = join(dir, 'app');
  await makeAppTree(app);
  const layout = join(dir, 'layout');
  const md = await writeSourceImage(layout, { layers: [{ kind: 'gzip', tar: await tarOf(app) }], ref: 'demo:1' });
  const byRef = await readLayout(layout, 'demo:1');
  assert.equal(byRef.manifestDigest, md.digest);
  assert.equal(byRef.manifest.layers.length, 1);
  assert.equal(byRef.config.config?.Cmd?.[0], '/usr/bin/app');
  const single = await readLayout(layout);
  assert.equal(single.manifestDigest, md.digest);
  await assert.rejects(readLayout(layout, 'nope'), { code: 'NOT_FOUND' });
  assert.deepEqual(JSON.parse(await readFile(join(layout, 'oci-layout'), 'utf8')), { imageLayoutVersion: '1.0.0' });
  // no temp files left behind
  assert.deepEqual((await readdir(join(layout, 'blobs', 'sha256'))).filter((n) => n.startsWith('.')), []);
});

test('blob reads verify the digest: DIGEST_MISMATCH', async (t) => {
  const dir = await tempDir(t);
  const w = await LayoutWriter.open(dir);
  const d = await w.putBytes(Buffer.from('hello world'), MediaType.config);
  assert.deepEqual(await readBlob(dir, d, 100), Buffer.from('hello world'));
  await writeFile(blobPath(dir, d.digest), 'hello worle');
  await assert.rejects(readBlob(dir, d, 100), { code: 'DIGEST_MISMATCH' });
  await assert.rejects(streamToBuffer(openBlobStream(dir, d)), { code: 'DIGEST_MISMATCH' });
  await writeFile(blobPath(dir, d.digest), 'hello world, longer');
  await assert.rejects(streamToBuffer(openBlobStream(dir, d)), { code: 'DIGEST_MISMATCH' });
  await assert.rejects(readBlob(dir, { digest: ociDigest('x'), size: 1 }, 100), { code: 'NOT_FOUND' });
});

test('putStream writes content-addressed blobs', async (t) => {
  const dir = await tempDir(t);
  const w = await LayoutWriter.open(dir);
  const data = Buffer.alloc(300_000, 7);
  const r = await w.putStream(Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
  assert.equal(r.digest, ociDigest(data));
  assert.equal(r.size, data.length);
  assert.deepEqual(await readFile(blobPath(dir, r.digest)), data);
});

test('index merge keeps other tags and moves the written one', async (t) => {
  const dir = await tempDir(t);
  const w = await LayoutWriter.open(dir);
  const a = await w.putBytes(Buffer.from('{}'), MediaType.manifest, { 'org.opencontainers.image.ref.name': 'a' });
  const b = await w.putBytes(Buffer.from('{ }'), MediaType.manifest, { 'org.opencontainers.image.ref.name': 'b' });
  await w.writeIndex([a]);
  await w.writeIndex([b]);
  const b2 = await w.putBytes(Buffer.from('{  }'), MediaType.manifest, { 'org.opencontainers.image.ref.name': 'b' });
  await w.writeIndex([b2]);
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  assert.deepEqual(index.manifests.map((m) => m.digest), [a.digest, b2.digest]);
});

test('strict parsing of untrusted JSON', () => {
  const good = { mediaType: MediaType.layerGzip, digest: `sha256:${'a'.repeat(64)}`, size: 1 };
  assert.deepEqual(parseDescriptor(good, 'd'), good);
  assert.throws(() => parseDescriptor({ ...good, digest: `sha256:${'A'.repeat(64)}` }, 'd'), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseDescriptor({ ...good, digest: 'sha512:abc' }, 'd'), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseDescriptor({ ...good, size: -1 }, 'd'), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseDescriptor({ ...good, size: 1.5 }, 'd'), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseDescriptor({ ...good, mediaType: 'no slash' }, 'd'), { code: 'IMAGE_INVALID' });
  const manifest = { schemaVersion: 2, mediaType: MediaType.manifest, config: { ...good, mediaType: MediaType.config }, layers: [good] };
  assert.equal(parseManifest(Buffer.from(JSON.stringify(manifest))).layers.length, 1);
  assert.throws(() => parseManifest(Buffer.from(JSON.stringify({ ...manifest, schemaVersion: 1 }))), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseManifest(Buffer.from(JSON.stringify({ ...manifest, config: good }))), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseManifest(Buffer.from('{not json')), { code: 'IMAGE_INVALID' });
  assert.throws(() => parseManifest(Buffer.alloc(5 << 20, 0x20)), { code: 'INPUT_TOO_LARGE' });
  assert.throws(() => parseImageConfig(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: ['sha256:1'] } }))), { code: 'IMAGE_INVALID' });
  assert.throws(() => layerFormat('application/vnd.oci.image.layer.v1.tar+bzip2'), { code: 'IMAGE_INVALID' });
  assert.deepEqual(layerFormat('application/vnd.oci.image.layer.v1.tar+zstd+encrypted'), { compression: 'zstd', encrypted: true });
});

test('a nested multi-platform index resolves to the host platform; ambiguity is BAD_USAGE', async (t) => {
  const dir = await tempDir(t);
  const app = join(dir, 'app');
  await makeAppTree(app);
  const layout = join(dir, 'layout');
  const md = await writeSourceImage(layout, { layers: [{ kind: 'gzip', tar: await tarOf(app) }] });
  const w = await LayoutWriter.open(layout);
  const arch = process.arch === 'x64' ? 'amd64' : process.arch;
  const other = { ...md, platform: { architecture: 'riscv64', os: 'linux' } };
  const nested = await w.putBytes(
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.index, manifests: [other, { ...md, platform: { architecture: arch, os: 'linux' } }] })),
    MediaType.index,
    { 'org.opencontainers.image.ref.name': 'multi' },
  );
  await w.writeIndex([nested]);
  assert.equal((await readLayout(layout, 'multi')).manifestDigest, md.digest);
  const both = await w.putBytes(Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [other, { ...md, platform: { architecture: 'arm', os: 'linux' } }] })), MediaType.index, { 'org.opencontainers.image.ref.name': 'none-for-host' });
  await w.writeIndex([both]);
  await assert.rejects(readLayout(layout, 'none-for-host'), { code: 'BAD_USAGE' });
});
