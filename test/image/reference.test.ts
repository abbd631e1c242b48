import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDockerReference, parseDockerReference, parseImageReference, registryHost, requireOciLayout } from '../../src/image/reference.js';

test('docker references: Docker Hub defaults, registries with ports, tags and digests', () => {
  const d = `sha256:${'a'.repeat(64)}`;
  assert.deepEqual(parseDockerReference('redis'), { domain: 'docker.io', path: 'library/redis', tag: 'latest' });
  assert.deepEqual(parseDockerReference('redis:7'), { domain: 'docker.io', path: 'library/redis', tag: '7' });
  assert.deepEqual(parseDockerReference('bitnami/redis:7.2'), { domain: 'docker.io', path: 'bitnami/redis', tag: '7.2' });
  assert.deepEqual(parseDockerReference('index.docker.io/library/redis'), { domain: 'docker.io', path: 'library/redis', tag: 'latest' });
  assert.deepEqual(parseDockerReference('localhost/app'), { domain: 'localhost', path: 'app', tag: 'latest' });
  assert.deepEqual(parseDockerReference('127.0.0.1:5000/shop/redis:7-cc'), { domain: '127.0.0.1:5000', path: 'shop/redis', tag: '7-cc' });
  assert.deepEqual(parseDockerReference(`ghcr.io/o/r@${d}`), { domain: 'ghcr.io', path: 'o/r', digest: d });
  assert.deepEqual(parseDockerReference(`ghcr.io/o/r:1@${d}`), { domain: 'ghcr.io', path: 'o/r', tag: '1', digest: d });
  assert.deepEqual(parseDockerReference('[::1]:5000/a/b:c'), { domain: '[::1]:5000', path: 'a/b', tag: 'c' });
  assert.equal(registryHost(parseDockerReference('redis')), 'registry-1.docker.io');
  assert.equal(formatDockerReference(parseDockerReference('redis:7')), 'docker.io/library/redis:7');
  for (const bad of ['', 'Redis', 'redis:', 'redis:-x', 'a//b', 'a/b@sha256:abc', 'a/b@md5:' + 'a'.repeat(32), 'host:99999/a', 'a/B', `a:${'x'.repeat(129)}`, 'a\u0000b', `x/${'a'.repeat(300)}`, 'a..b', '-a']) {
    assert.throws(() => parseDockerReference(bad), { code: 'BAD_USAGE' }, bad);
  }
});

test('transports: oci:, docker-archive:, docker://, bare paths and names', () => {
  assert.deepEqual(parseImageReference('oci:/x/y'), { transport: 'oci', dir: '/x/y' });
  assert.deepEqual(parseImageReference('oci:/x/y:redis:7'), { transport: 'oci', dir: '/x/y', tag: 'redis:7' });
  assert.deepEqual(parseImageReference('docker-archive:r.tar'), { transport: 'docker-archive', file: 'r.tar' });
  assert.deepEqual(parseImageReference('docker-archive:r.tar:shop/redis:7'), { transport: 'docker-archive', file: 'r.tar', ref: { domain: 'docker.io', path: 'shop/redis', tag: '7' } });
  assert.deepEqual(parseImageReference('docker://127.0.0.1:5000/a/b:1'), { transport: 'docker', ref: { domain: '127.0.0.1:5000', path: 'a/b', tag: '1' } });
  assert.deepEqual(parseImageReference('./layout'), { transport: 'oci', dir: './layout' });
  assert.deepEqual(parseImageReference('/tmp/r.tar'), { transport: 'docker-archive', file: '/tmp/r.tar' });
  assert.deepEqual(parseImageReference('redis:7'), { transport: 'docker', ref: { domain: 'docker.io', path: 'library/redis', tag: '7' } });
  assert.deepEqual(parseImageReference('redis-cc', { isLocalPath: (s) => s === 'redis-cc' }), { transport: 'oci', dir: 'redis-cc' });
  for (const bad of ['oci:', 'oci::tag', 'oci:/x:bad tag', 'docker-archive:', `docker-archive:x.tar:a@sha256:${'a'.repeat(64)}`, 'docker://', 'dir:/x', 'containers-storage:x', 'x'.repeat(5000)]) {
    assert.throws(() => parseImageReference(bad), { code: 'BAD_USAGE' }, bad);
  }
  assert.deepEqual(requireOciLayout(parseImageReference('oci:/a:b'), 'run'), { dir: '/a', tag: 'b' });
  assert.throws(() => requireOciLayout(parseImageReference('docker://a/b'), 'cocoon run'), (e: Error & { code?: string }) => e.code === 'BAD_USAGE' && /cocoon image copy/.test(e.message));
});
