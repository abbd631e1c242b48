import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { wrapImage } from '../../src/image/wrap.js';
import { readLayout } from '../../src/image/layout.js';
import { makeAppTree, makeLauncherDir, rawTar, tarOf, tempDir, writeSourceImage } from './helpers.js';
import { cocoon, treeOf } from './peers.js';

const names = { policy: 'demo/app', workload: 'app' };

test('wrap reuses the cached launcher layer (verified by digest) and rebuilds a corrupted entry', async (t) => {
  const base = await tempDir(t, 'cocoon-cache-');
  const app = join(base, 'app');
  await makeAppTree(app);
  await writeSourceImage(join(base, 'src'), { layers: [{ kind: 'gzip', tar: await tarOf(app) }] });
  const launcher = join(base, 'launcher');
  await makeLauncherDir(launcher);
  const kek = randomBytes(32);
  const cache = join(base, 'cache');
  const messages: string[] = [];
  const w = (dest: string) => wrapImage({ source: { layoutDir: join(base, 'src') }, dest: { layoutDir: join(base, dest) }, launcherDir: launcher, kek, ...names, launcherCacheDir: cache, onProgress: (m) => messages.push(m) });
  const a = await w('a');
  const entries = await readdir(join(cache, 'launcher-layers'));
  assert.equal(entries.filter((e) => e.endsWith('.tar.gz')).length, 1);
  const b = await w('b');
  assert.equal(b.manifestDigest, a.manifestDigest);
  assert.ok(messages.includes('launcher layer reused from cache'));
  // corrupt the cached blob: the wrap notices, rebuilds, and the output is unchanged
  const blob = entries.find((e) => e.endsWith('.tar.gz')) ?? '';
  await writeFile(join(cache, 'launcher-layers', blob), 'garbage');
  const c = await w('c');
  assert.equal(c.manifestDigest, a.manifestDigest);
  assert.ok(messages.some((m) => /did not verify/.test(m)));
  const d = await w('d');
  assert.equal(d.manifestDigest, a.manifestDigest);
  // the cache keeps the most recent entries only
  for (let i = 0; i < 5; i++) {
    const other = join(base, `launcher-${i}`);
    await makeLauncherDir(other);
    await writeFile(join(other, 'launcher.mjs'), `console.log(${i})\n`);
    await wrapImage({ source: { layoutDir: join(base, 'src') }, dest: { layoutDir: join(base, `o${i}`) }, launcherDir: other, kek, ...names, launcherCacheDir: cache });
  }
  const kept = (await readdir(join(cache, 'launcher-layers'))).filter((n) => n.endsWith('.json'));
  assert.equal(kept.length, 4);
  // no cache at all gives the same bytes
  const e = await wrapImage({ source: { layoutDir: join(base, 'src') }, dest: { layoutDir: join(base, 'e') }, launcherDir: launcher, kek, ...names, launcherCacheDir: false });
  assert.equal(e.manifestDigest, a.manifestDigest);
  // the wrapped config keeps the original semantics and describes the wrap
  const img = await readLayout(join(base, 'a'));
  const labels = img.config.config?.Labels ?? {};
  assert.equal(labels['dev.cocoon.kbs-resource'], 'demo/app/layer-key');
  assert.equal(labels['dev.cocoon.source-digest'], (await readLayout(join(base, 'src'))).manifestDigest);
  assert.equal(labels.app, 'demo');
  assert.deepEqual(img.config.config?.ExposedPorts, { '8080/tcp': {} });
});

test('cocoon image unpack / inspect / copy: trees, refusals, exit codes', async (t) => {
  const base = await tempDir(t, 'cocoon-cli-');
  const app = join(base, 'app');
  await makeAppTree(app);
  await writeSourceImage(join(base, 'src'), { ref: 'app:1', layers: [{ kind: 'gzip', tar: await tarOf(app) }] });
  let r = await cocoon(['image', 'unpack', `oci:${join(base, 'src')}:app:1`, join(base, 'root'), '--json']);
  assert.equal(r.code, 0, r.stdout);
  assert.deepEqual(await treeOf(join(base, 'root')), await treeOf(app));
  r = await cocoon(['image', 'unpack', `oci:${join(base, 'src')}:app:1`, join(base, 'root'), '--json']);
  assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'BAD_USAGE', 'target not empty');

  // malicious layers are refused by the safe unpacker
  const evil = [
    ['traversal', [{ name: '../escape', content: 'x' }], 'PATH_TRAVERSAL'],
    ['symlink-escape', [{ name: 'l', type: 'symlink', linkname: '../../..' }, { name: 'l/etc/passwd', content: 'x' }], 'PATH_TRAVERSAL'],
  ] as const;
  for (const [name, entries, code] of evil) {
    await writeSourceImage(join(base, name), { layers: [{ kind: 'gzip', tar: await rawTar([...entries]) }] });
    r = await cocoon(['image', 'unpack', join(base, name), join(base, `${name}-root`), '--json']);
    assert.equal(r.code, 1, r.stdout);
    assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code, name);
  }

  r = await cocoon(['image', 'inspect', join(base, 'src'), '--json']);
  assert.equal(r.code, 0, r.stdout);
  const j = JSON.parse(r.stdout) as { config: { Cmd: string[]; ExposedPorts: string[] }; labels: Record<string, string>; layers: unknown[]; wrapped?: unknown };
  assert.deepEqual(j.config.Cmd, ['/usr/bin/app']);
  assert.deepEqual(j.config.ExposedPorts, ['8080/tcp']);
  assert.equal(j.labels.app, 'demo');
  assert.equal(j.wrapped, undefined);

  r = await cocoon(['image', 'copy', `oci:${join(base, 'src')}:app:1`, `docker-archive:${join(base, 'a.tar')}:app:1`, '--json']);
  assert.equal(r.code, 0, r.stdout);
  r = await cocoon(['image', 'copy', join(base, 'a.tar'), `oci:${join(base, 'back')}:x`, '--json']);
  assert.equal(r.code, 0, r.stdout);
  assert.deepEqual((await readLayout(join(base, 'back'), 'x')).config.rootfs.diff_ids, (await readLayout(join(base, 'src'))).config.rootfs.diff_ids);

  for (const [args, code] of [
    [['image', 'inspect', 'Not A Ref', '--json'], 'BAD_USAGE'],
    [['image', 'inspect', join(base, 'nope'), '--json'], 'IMAGE_INVALID'],
    [['image', 'copy', join(base, 'src'), 'docker://127.0.0.1:1/a/b:c', '--json', '--timeout', '2'], 'REGISTRY_UNREACHABLE'],
    [['image', 'inspect', join(base, 'src'), '--platform', 'linux', '--json'], 'BAD_USAGE'],
    [['image', 'inspect', join(base, 'src'), '--platform', 'linux/arm64', '--json'], 'NOT_FOUND'],
    [['run', 'docker://registry.example/app:1', '--kbs', 'http://127.0.0.1:1', '--json'], 'BAD_USAGE'],
  ] as const) {
    r = await cocoon([...args]);
    assert.notEqual(r.code, 0, args.join(' '));
    assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code, args.join(' '));
  }
});

test('wrap: a corrupt gzip layer fails inside the single read (IMAGE_INVALID) and leaves no temp files', async (t) => {
  const base = await tempDir(t, 'cocoon-corrupt-');
  const launcher = join(base, 'launcher');
  await makeLauncherDir(launcher);
  const { LayoutWriter } = await import('../../src/image/layout.js');
  const w = await LayoutWriter.open(join(base, 'src'));
  const junk = randomBytes(200_000);
  junk[0] = 0x1f;
  junk[1] = 0x8b;
  const layer = await w.putBytes(junk, 'application/vnd.oci.image.layer.v1.tar+gzip');
  const cfg = await w.putBytes(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${'1'.repeat(64)}`] } })), 'application/vnd.oci.image.config.v1+json');
  const md = await w.putBytes(Buffer.from(JSON.stringify({ schemaVersion: 2, config: cfg, layers: [layer] })), 'application/vnd.oci.image.manifest.v1+json');
  await w.writeIndex([md]);
  await assert.rejects(wrapImage({ source: { layoutDir: join(base, 'src') }, dest: { layoutDir: join(base, 'out') }, launcherDir: launcher, kek: randomBytes(32), ...names, launcherCacheDir: false }), { code: 'IMAGE_INVALID' });
  const left = await readdir(join(base, 'out', 'blobs', 'sha256')).catch(() => []);
  assert.deepEqual(left.filter((n) => n.startsWith('.tmp-')), []);
});
