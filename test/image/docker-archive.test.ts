import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DockerArchiveSink, DockerArchiveSource, indexTar } from '../../src/image/docker-archive.js';
import { LayoutSink, LayoutSource, copyImage } from '../../src/image/transport.js';
import { readLayout } from '../../src/image/layout.js';
import { parseDockerReference } from '../../src/image/reference.js';
import { unpackImage } from '../../src/image/operations.js';
import { makeAppTree, rawTar, tarOf, tempDir, writeSourceImage } from './helpers.js';
import { has, run, treeOf } from './peers.js';

async function fixture(t: Parameters<typeof tempDir>[0]) {
  const base = await tempDir(t, 'cocoon-da-');
  const app = join(base, 'app');
  await makeAppTree(app);
  const extra = join(base, 'extra');
  await makeAppTree(extra, 'z');
  const source = join(base, 'src');
  await writeSourceImage(source, { ref: 'app:1', layers: [{ kind: 'gzip', tar: await tarOf(app) }, { kind: 'none', tar: await tarOf(extra) }, { kind: 'zstd', tar: await tarOf(extra) }] });
  return { base, app, source };
}

test('docker-archive: skopeo writes, Cocoon reads; Cocoon writes, skopeo reads (same diffIDs)', async (t) => {
  if (!(await has('skopeo'))) return t.skip('SKIPPED: skopeo is not installed');
  const f = await fixture(t);
  const orig = await readLayout(f.source, 'app:1');
  // skopeo cannot write zstd layers into docker-archive in 1.9: use the first two layers' image for the peer direction
  const two = join(f.base, 'two');
  await writeSourceImage(two, { ref: 'app:1', layers: [{ kind: 'gzip', tar: await tarOf(f.app) }, { kind: 'none', tar: await tarOf(join(f.base, 'extra')) }] });
  await run('skopeo', ['copy', '--quiet', `oci:${two}:app:1`, `docker-archive:${join(f.base, 'sk.tar')}:shop/app:1`]);
  const src = new DockerArchiveSource(join(f.base, 'sk.tar'), parseDockerReference('shop/app:1'));
  await copyImage(src, new LayoutSink(join(f.base, 'from-sk'), 'x'));
  const fromSk = await readLayout(join(f.base, 'from-sk'), 'x');
  assert.deepEqual(fromSk.config.rootfs.diff_ids, (await readLayout(two, 'app:1')).config.rootfs.diff_ids);
  await assert.rejects(new DockerArchiveSource(join(f.base, 'sk.tar'), parseDockerReference('shop/other:1')).resolve(), { code: 'NOT_FOUND' });

  // Cocoon writes (all three compressions are stored uncompressed), skopeo reads
  await copyImage(new LayoutSource(f.source, 'app:1', undefined), new DockerArchiveSink(join(f.base, 'ours.tar'), parseDockerReference('shop/app:2')));
  await run('skopeo', ['copy', '--quiet', `docker-archive:${join(f.base, 'ours.tar')}`, `oci:${join(f.base, 'from-ours')}:y`]);
  const fromOurs = await readLayout(join(f.base, 'from-ours'), 'y');
  assert.deepEqual(fromOurs.config.rootfs.diff_ids, orig.config.rootfs.diff_ids);
  // and reads its own archive back; the unpacked tree equals the source's
  await unpackImage(new DockerArchiveSource(join(f.base, 'ours.tar')), join(f.base, 'root'), { chown: false });
  await unpackImage(new LayoutSource(f.source, 'app:1', undefined), join(f.base, 'root2'), { chown: false });
  assert.deepEqual(await treeOf(join(f.base, 'root')), await treeOf(join(f.base, 'root2')));
});

test('docker-archive: malformed archives are refused with codes', async (t) => {
  const f = await fixture(t);
  const bad = async (name: string, entries: Parameters<typeof rawTar>[0]) => {
    const p = join(f.base, name);
    await writeFile(p, await rawTar(entries));
    return p;
  };
  await assert.rejects(new DockerArchiveSource(await bad('no-manifest.tar', [{ name: 'x', content: 'y' }])).resolve(), { code: 'IMAGE_INVALID' });
  await assert.rejects(new DockerArchiveSource(await bad('not-json.tar', [{ name: 'manifest.json', content: '{' }])).resolve(), { code: 'IMAGE_INVALID' });
  await assert.rejects(new DockerArchiveSource(await bad('empty.tar', [{ name: 'manifest.json', content: '[]' }])).resolve(), { code: 'IMAGE_INVALID' });
  await assert.rejects(
    new DockerArchiveSource(await bad('missing-layer.tar', [{ name: 'manifest.json', content: '[{"Config":"c.json","RepoTags":[],"Layers":["l/layer.tar"]}]' }, { name: 'c.json', content: JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${'0'.repeat(64)}`] } }) }])).resolve(),
    { code: 'IMAGE_INVALID' },
  );
  // a layer whose content is not its diffID fails while it is read
  const p = await bad('wrong-diffid.tar', [
    { name: 'manifest.json', content: '[{"Config":"c.json","RepoTags":["a:1"],"Layers":["l/layer.tar"]}]' },
    { name: 'c.json', content: JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${'0'.repeat(64)}`] } }) },
    { name: 'l/layer.tar', content: Buffer.alloc(1024) },
  ]);
  await assert.rejects(copyImage(new DockerArchiveSource(p), new LayoutSink(join(f.base, 'o'), 'x')), { code: 'DIGEST_MISMATCH' });
  const corrupt = join(f.base, 'corrupt.tar');
  const good = await rawTar([{ name: 'manifest.json', content: '[]' }]);
  good[100] = 0x37; // breaks the header checksum
  await writeFile(corrupt, good);
  await assert.rejects(indexTar(corrupt), { code: 'IMAGE_INVALID' });
  await assert.rejects(indexTar(join(f.base, 'absent.tar')), { code: 'NOT_FOUND' });
});

test('docker-archive: the Docker ≥ 25 layout (OCI blobs inside, manifest.json pointing at blobs/sha256/…) is read', async (t) => {
  const f = await fixture(t);
  const img = await readLayout(f.source, 'app:1');
  const { blobPath } = await import('../../src/image/layout.js');
  const { readFile: rf } = await import('node:fs/promises');
  const { gunzipSync } = await import('node:zlib');
  // docker save (25+) stores layers uncompressed under blobs/sha256/<diffID>
  const entries: Parameters<typeof rawTar>[0] = [];
  const layerNames: string[] = [];
  for (const [i, l] of img.manifest.layers.entries()) {
    const raw = await rf(blobPath(f.source, l.digest));
    const plain = l.mediaType.endsWith('gzip') ? gunzipSync(raw) : l.mediaType.endsWith('zstd') ? undefined : raw;
    if (!plain) continue;
    const name = `blobs/sha256/${(img.config.rootfs.diff_ids[i] ?? '').slice(7)}`;
    if (!layerNames.includes(name)) entries.push({ name, content: plain });
    layerNames.push(name);
  }
  const cfg = { ...img.config, rootfs: { type: 'layers', diff_ids: img.config.rootfs.diff_ids.slice(0, layerNames.length) } };
  const cfgBytes = Buffer.from(JSON.stringify(cfg));
  const { ociDigest } = await import('../../src/crypto/hash.js');
  entries.push({ name: `blobs/sha256/${ociDigest(cfgBytes).slice(7)}`, content: cfgBytes });
  entries.push({ name: 'oci-layout', content: '{"imageLayoutVersion":"1.0.0"}' });
  entries.push({ name: 'manifest.json', content: JSON.stringify([{ Config: `blobs/sha256/${ociDigest(cfgBytes).slice(7)}`, RepoTags: ['shop/app:25'], Layers: layerNames }]) });
  const file = join(f.base, 'docker25.tar');
  await writeFile(file, await rawTar(entries));
  await unpackImage(new DockerArchiveSource(file, parseDockerReference('shop/app:25')), join(f.base, 'root25'), { chown: false });
  assert.ok(Object.keys(await treeOf(join(f.base, 'root25'))).length > 3);
});
