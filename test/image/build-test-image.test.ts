import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { lstat, readFile, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { readLayout, openBlobStream } from '../../src/image/layout.js';
import { unpackLayer } from '../../src/image/unpack.js';
import { tempDir } from './helpers.js';

const run = promisify(execFile);
const SCRIPT = join(import.meta.dirname, '../../scripts/build-test-image.sh');

/** Why the real build cannot run here, or undefined when it can. */
async function unavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root (apt-get download, chroot check)';
  if (process.arch !== 'x64') return 'needs an x86_64 host';
  let uri: string | undefined;
  try {
    const { stdout } = await run('apt-get', ['download', '--print-uris', 'redis-server'], { timeout: 30_000 });
    uri = /'(https?:\/\/[^']+)'/.exec(stdout)?.[1];
  } catch {
    return 'apt-get is not available';
  }
  if (!uri) return 'apt has no redis-server candidate';
  try {
    const res = await fetch(uri, { method: 'HEAD', signal: AbortSignal.timeout(8000) });
    if (!res.ok) return `Debian mirror answered ${res.status}`;
  } catch {
    return 'no network access to the Debian mirror';
  }
  return undefined;
}

test('build-test-image.sh builds a Redis OCI layout from Debian packages, then reuses the cache', async (t) => {
  const why = await unavailable();
  if (why) {
    t.skip(`SKIPPED: ${why}`);
    return;
  }
  const cache = await tempDir(t, 'cocoon-cache-');
  const env = { ...process.env, COCOON_CACHE: cache };
  const first = await run('bash', [SCRIPT, 'redis'], { env, timeout: 600_000, maxBuffer: 16 << 20 });
  const out = first.stdout.trim().split('\n').at(-1);
  assert.equal(out, join(cache, 'images', 'redis-7'));

  const img = await readLayout(out, 'redis:7');
  assert.deepEqual(img.config.config?.Cmd, ['redis-server', '--protected-mode', 'no']);
  assert.deepEqual(img.config.config?.Entrypoint, []);
  assert.equal(img.config.config?.User, 'redis');
  assert.equal(img.config.config?.WorkingDir, '/data');
  assert.deepEqual(img.config.config?.ExposedPorts, { '6379/tcp': {} });
  assert.equal(img.manifest.layers.length, 1);

  const root = join(cache, 'root');
  const layer = img.manifest.layers[0];
  assert.ok(layer);
  const r = await unpackLayer(openBlobStream(out, layer), 'gzip', root);
  assert.equal(r.diffID, img.config.rootfs.diff_ids[0]);
  const serverPath = await realpath(join(root, 'usr/bin/redis-server'));
  assert.ok(serverPath.startsWith(`${await realpath(root)}/`));
  const server = await stat(serverPath);
  assert.ok(server.isFile() && (server.mode & 0o111) !== 0, 'redis-server is an executable file');
  assert.match(await readFile(join(root, 'etc/passwd'), 'utf8'), /^redis:x:999:999:/m);
  const data = await lstat(join(root, 'data'));
  assert.equal(data.uid, 999);
  assert.equal((await lstat(join(root, 'tmp'))).mode & 0o7777, 0o1777);
  const { stdout } = await run('chroot', [root, '/usr/bin/redis-server', '--version']);
  assert.match(stdout, /Redis server v=7\./);

  const second = await run('bash', [SCRIPT, 'redis'], { env, timeout: 120_000 });
  assert.match(second.stderr, /up to date/);
  assert.equal(second.stdout.trim().split('\n').at(-1), out);
});
