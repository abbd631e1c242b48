import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';
import { join } from 'node:path';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { wrapImage } from '../../src/image/wrap.js';
import { LayoutSink, LayoutSource, RegistrySink, RegistrySource, copyImage, openSource } from '../../src/image/transport.js';
import { parseDockerReference, parseImageReference } from '../../src/image/reference.js';
import { encryptTransform, decryptTransform } from '../../src/image/crypt.js';
import { JweWrapper } from '../../src/image/jwe.js';
import { unpackImage, inspectImage } from '../../src/image/operations.js';
import { credentialsFromAuthFile, loadTlsMaterial, parseChallenge, parseCredentials, RegistryClient } from '../../src/image/registry.js';
import { readLayout } from '../../src/image/layout.js';
import { makeAppTree, makeLauncherDir, tarOf, tempDir, writeSourceImage } from './helpers.js';
import { cocoon, freePort, has, makeTlsFiles, run, startRegistry, treeOf } from './peers.js';

const names = { policy: 'shop/app', workload: 'app' };
const registryMissing = (await has('docker-registry', ['--version'])) ? false : 'SKIPPED: docker-registry is not installed (scripts/setup.sh installs it)';

async function fixture(t: Parameters<typeof tempDir>[0]) {
  const base = await tempDir(t, 'cocoon-reg-');
  const app = join(base, 'app');
  await makeAppTree(app);
  const extra = join(base, 'extra');
  await makeAppTree(extra, 'b');
  const source = join(base, 'src');
  await writeSourceImage(source, { ref: 'app:1', layers: [{ kind: 'gzip', tar: await tarOf(app) }] });
  const launcher = join(base, 'launcher');
  await makeLauncherDir(launcher);
  return { base, app, source, launcher };
}

test('registry (docker-registry, anonymous): push a wrapped image, pull it by digest, skopeo inspect, decrypted variant unpacked by umoci equals the original', { skip: registryMissing }, async (t) => {
  const f = await fixture(t);
  const reg = await startRegistry(join(f.base, 'reg'));
  t.after(() => reg.stop());
  const opts = { registry: { insecure: true } };

  // wrap → push
  const kek = randomBytes(32);
  const wrapped = await wrapImage({ source: { layoutDir: f.source, ref: 'app:1' }, dest: { layoutDir: join(f.base, 'wrapped'), ref: 'cc' }, launcherDir: f.launcher, kek, ...names, launcherCacheDir: false });
  const pushed = await copyImage(new LayoutSource(join(f.base, 'wrapped'), 'cc', undefined), await RegistrySink.open(parseDockerReference(`${reg.host}/shop/app:1-cc`), opts));
  assert.equal(pushed.manifestDigest, wrapped.manifestDigest, 'manifest bytes survive the push');

  // a second push skips every blob
  const again = await copyImage(new LayoutSource(join(f.base, 'wrapped'), 'cc', undefined), await RegistrySink.open(parseDockerReference(`${reg.host}/shop/app:1-cc`), opts));
  assert.ok(again.layers.every((l) => l.skipped));
  // cross-repository mount
  const mounted = await copyImage(await RegistrySource.open(parseDockerReference(`${reg.host}/shop/app:1-cc`), opts), await RegistrySink.open(parseDockerReference(`${reg.host}/other/app:x`), opts));
  assert.ok(mounted.layers.every((l) => l.skipped), 'layers mounted from shop/app');

  // pull back by digest
  const src = await RegistrySource.open(parseDockerReference(`${reg.host}/shop/app@${wrapped.manifestDigest}`), opts);
  const pulled = await copyImage(src, new LayoutSink(join(f.base, 'pulled'), 'x'));
  await src.close();
  assert.equal(pulled.manifestDigest, wrapped.manifestDigest);
  const back = await readLayout(join(f.base, 'pulled'), 'x');
  assert.equal(back.config.config?.Labels?.['dev.cocoon.measurement'], wrapped.measurement);

  // inspect through the registry shows the measurement and the original launch config
  const ins = await inspectImage(await openSource(parseImageReference(`docker://${reg.host}/shop/app:1-cc`), opts));
  assert.equal(ins.wrapped?.measurement, wrapped.measurement);
  assert.deepEqual(ins.wrapped?.launchConfig.cmd, ['/usr/bin/app']);
  assert.equal(ins.labels.app, 'demo');

  if (await has('skopeo')) {
    const { stdout } = await run('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/shop/app:1-cc`]);
    const j = JSON.parse(stdout) as { Digest: string; Labels: Record<string, string> };
    assert.equal(j.Digest, wrapped.manifestDigest);
    assert.equal(j.Labels['dev.cocoon.measurement'], wrapped.measurement);
  }

  // ocicrypt variant: encrypt to the registry, decrypt from it, umoci unpack, compare trees
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  await copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(parseDockerReference(`${reg.host}/shop/app:1-enc`), opts), { transform: encryptTransform([new JweWrapper([publicKey])]) });
  const encSrc = await RegistrySource.open(parseDockerReference(`${reg.host}/shop/app:1-enc`), opts);
  const dec = await copyImage(encSrc, new LayoutSink(join(f.base, 'dec'), 'app:1'), { transform: decryptTransform([new JweWrapper([], [privateKey])]) });
  await encSrc.close();
  assert.equal(dec.manifestDigest, (await readLayout(f.source, 'app:1')).manifestDigest, 'decryption restores the original manifest');
  const original = await treeOf(f.app);
  if (await has('umoci', ['--version'])) {
    await run('umoci', ['unpack', '--rootless', '--image', `${join(f.base, 'dec')}:app:1`, join(f.base, 'bundle')]);
    assert.deepEqual(await treeOf(join(f.base, 'bundle', 'rootfs')), original);
  } else t.diagnostic('umoci not installed: tree comparison through umoci skipped');

  // cocoon image unpack of the encrypted image straight from the registry
  const encSrc2 = await RegistrySource.open(parseDockerReference(`${reg.host}/shop/app:1-enc`), opts);
  await unpackImage(encSrc2, join(f.base, 'unpacked'), { keys: [new JweWrapper([], [privateKey])], chown: false });
  await encSrc2.close();
  assert.deepEqual(await treeOf(join(f.base, 'unpacked')), original);

  // without the key
  const encSrc3 = await RegistrySource.open(parseDockerReference(`${reg.host}/shop/app:1-enc`), opts);
  await assert.rejects(unpackImage(encSrc3, join(f.base, 'nokey'), { chown: false }), { code: 'LAYER_DECRYPT_FAILED' });
  await encSrc3.close();

  // missing tag / repo
  const missing = await RegistrySource.open(parseDockerReference(`${reg.host}/shop/none:1`), opts);
  await assert.rejects(missing.resolve(), { code: 'NOT_FOUND' });
  await missing.close();

  // the CLI: wrap straight into the registry, then inspect --json
  const keyFile = join(f.base, 'k.key');
  await writeFile(keyFile, kek.toString('base64') + '\n', { mode: 0o600 });
  const w = await cocoon(['wrap', `oci:${f.source}:app:1`, `docker://${reg.host}/shop/app:cli-cc`, '--insecure', '--policy', 'shop/app', '--workload', 'app', '--key-file', keyFile, '--launcher-dir', f.launcher, '--no-launcher-cache', '--json']);
  assert.equal(w.code, 0, w.stderr);
  const wj = JSON.parse(w.stdout) as { manifestDigest: string; measurement: string };
  assert.equal(wj.measurement, wrapped.measurement);
  assert.equal(wj.manifestDigest, wrapped.manifestDigest, 'same input and key: the same manifest, wherever it is written');
  const i = await cocoon(['image', 'inspect', `docker://${reg.host}/shop/app:cli-cc`, '--insecure', '--json']);
  assert.equal(i.code, 0, i.stderr);
  assert.equal((JSON.parse(i.stdout) as { wrapped: { measurement: string } }).wrapped.measurement, wrapped.measurement);
});

test('registry with basic auth (htpasswd): credentials required, then push and pull work', { skip: registryMissing }, async (t) => {
  if (!(await has('htpasswd', ['-h']).then((x) => x || has('htpasswd', ['-Bbn', 'a', 'b'])))) return t.skip('SKIPPED: htpasswd (apache2-utils) is not installed');
  const f = await fixture(t);
  const reg = await startRegistry(join(f.base, 'reg'), { user: 'alice', password: 's3cret' });
  t.after(() => reg.stop());
  const ref = parseDockerReference(`${reg.host}/shop/app:1`);
  await assert.rejects(
    async () => copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(ref, { registry: { insecure: true } })),
    { code: 'REGISTRY_AUTH_FAILED' },
  );
  await assert.rejects(
    async () => copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(ref, { registry: { insecure: true, credentials: { username: 'alice', password: 'wrong' } } })),
    { code: 'REGISTRY_AUTH_FAILED' },
  );
  const creds = { username: 'alice', password: 's3cret' };
  const r = await copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(ref, { registry: { insecure: true, credentials: creds, chunkBytes: 1024 } }));
  const src = await RegistrySource.open(ref, { registry: { insecure: true, credentials: creds } });
  const back = await copyImage(src, new LayoutSink(join(f.base, 'back'), 'x'));
  await src.close();
  assert.equal(back.manifestDigest, r.manifestDigest);
  if (await has('skopeo')) {
    const { stdout } = await run('skopeo', ['inspect', '--tls-verify=false', '--creds', 'alice:s3cret', `docker://${reg.host}/shop/app:1`]);
    assert.equal((JSON.parse(stdout) as { Digest: string }).Digest, r.manifestDigest);
  }
  // credentials from a docker-style auth file
  const authFile = join(f.base, 'auth.json');
  await writeFile(authFile, JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }));
  const viaFile = await RegistrySource.open(ref, { registry: { insecure: true, authFile } });
  assert.equal((await viaFile.resolve()).manifestDigest, r.manifestDigest);
  await viaFile.close();
});

/** A bearer-token front for a registry: token endpoint, challenges, one injected 503, oversized answers on demand. */
async function tokenProxy(upstream: string, opts: { failFirstManifest?: boolean; hugeManifest?: boolean } = {}) {
  const port = await freePort();
  const seen: string[] = [];
  let failed = false;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', `http://127.0.0.1:${port}`);
    if (url.pathname === '/token') {
      seen.push(`token ${url.searchParams.get('service')} ${url.searchParams.get('scope')}`);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: `tok.${Buffer.from(url.searchParams.get('scope') ?? '').toString('hex')}` }));
      return;
    }
    const auth = req.headers.authorization ?? '';
    if (!auth.startsWith('Bearer tok.')) {
      const scope = /\/v2\/(.+)\/(manifests|blobs)\//.exec(url.pathname);
      res
        .writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="test-registry"${scope ? `,scope="repository:${scope[1]}:pull"` : ''}` })
        .end('{"errors":[{"code":"UNAUTHORIZED"}]}');
      return;
    }
    if (opts.failFirstManifest && !failed && url.pathname.includes('/manifests/') && req.method === 'GET') {
      failed = true;
      res.writeHead(503).end('busy');
      return;
    }
    if (opts.hugeManifest && url.pathname.includes('/manifests/')) {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
      res.end(Buffer.alloc(5 << 20, 0x20));
      return;
    }
    const up = http.request({ host: '127.0.0.1', port: Number(upstream.split(':')[1]), path: req.url, method: req.method, headers: { ...req.headers, authorization: '' } }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.writeHead(502).end());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return { host: `127.0.0.1:${port}`, seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

test('registry bearer token flow (token service in front of docker-registry), retry on 503, bounded manifests', { skip: registryMissing }, async (t) => {
  const f = await fixture(t);
  const reg = await startRegistry(join(f.base, 'reg'));
  t.after(() => reg.stop());
  const proxy = await tokenProxy(reg.host, { failFirstManifest: true });
  t.after(() => proxy.close());
  const ref = parseDockerReference(`${proxy.host}/shop/app:1`);
  const opts = { registry: { insecure: true, credentials: { username: 'bob', password: 'pw' } } };
  const r = await copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(ref, opts));
  assert.ok(proxy.seen.some((s) => s === 'token test-registry repository:shop/app:pull,push'), proxy.seen.join('\n'));
  const src = await RegistrySource.open(ref, { registry: { insecure: true, backoffMs: 1 } });
  const back = await copyImage(src, new LayoutSink(join(f.base, 'back'), 'x'));
  await src.close();
  assert.equal(back.manifestDigest, r.manifestDigest, 'pulled after one 503');

  const huge = await tokenProxy(reg.host, { hugeManifest: true });
  t.after(() => huge.close());
  const hs = await RegistrySource.open(parseDockerReference(`${huge.host}/shop/app:1`), { registry: { insecure: true } });
  await assert.rejects(hs.resolve(), { code: 'INPUT_TOO_LARGE' });
  await hs.close();
});

test('registry client: refusals without a peer', async (t) => {
  assert.deepEqual(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull"')?.params, {
    realm: 'https://auth.docker.io/token',
    service: 'registry.docker.io',
    scope: 'repository:library/redis:pull',
  });
  assert.equal(parseChallenge('Basic realm="x"')?.scheme, 'basic');
  assert.equal(parseChallenge('Digest foo'), undefined);
  assert.equal(parseChallenge(undefined), undefined);
  // plain http without --insecure
  const c = await RegistryClient.open(parseDockerReference('127.0.0.1:1/a/b:1'), { attempts: 1 });
  await assert.rejects(c.getManifest('1'), (e: { code?: string }) => e.code === 'REGISTRY_UNREACHABLE' || e.code === 'REGISTRY_TLS_FAILED');
  c.close();
  const port = await freePort();
  const d = await RegistryClient.open(parseDockerReference(`127.0.0.1:${port}/a/b:1`), { insecure: true, attempts: 2, timeoutMs: 2000 });
  await assert.rejects(d.getManifest('1'), { code: 'REGISTRY_UNREACHABLE' });
  await assert.rejects(d.getManifest('bad tag'), { code: 'BAD_USAGE' });
  d.close();
  await assert.rejects(RegistryClient.open(parseDockerReference('example.com/a/b'), { caFiles: ['/nonexistent/ca.pem'] }), { code: 'NOT_FOUND' });
  const dir = await tempDir(t, 'cocoon-auth-');
  await writeFile(join(dir, 'bad.json'), '{not json');
  await assert.rejects(credentialsFromAuthFile('example.com', join(dir, 'bad.json')), { code: 'INPUT_MALFORMED' });
  await assert.rejects(credentialsFromAuthFile('example.com', join(dir, 'absent.json')), { code: 'NOT_FOUND' });
  await writeFile(join(dir, 'ok.json'), JSON.stringify({ auths: { 'https://example.com': { auth: Buffer.from('u:p:w').toString('base64') } } }));
  assert.deepEqual(await credentialsFromAuthFile('example.com', join(dir, 'ok.json')), { username: 'u', password: 'p:w' });
  assert.throws(() => parseCredentials('nocolon'), { code: 'BAD_USAGE' });
  await writeFile(join(dir, 'notpem.crt'), 'hello');
  await assert.rejects(loadTlsMaterial({ caFiles: [join(dir, 'notpem.crt')] }), { code: 'INPUT_MALFORMED' });
});

test('registry over HTTPS with a private CA: --ca / --cert-dir trust it, otherwise REGISTRY_TLS_FAILED', { skip: registryMissing }, async (t) => {
  const f = await fixture(t);
  const tls = await makeTlsFiles(join(f.base, 'tls'));
  const reg = await startRegistry(join(f.base, 'reg'), undefined, { cert: tls.cert, key: tls.key });
  t.after(() => reg.stop());
  const ref = parseDockerReference(`${reg.host}/shop/app:1`);
  await assert.rejects(async () => copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(ref, { registry: { attempts: 1 } })), { code: 'REGISTRY_TLS_FAILED' });
  const r = await copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(ref, { registry: { caFiles: [tls.ca] } }));
  const certDir = join(f.base, 'certs.d');
  await mkdir(certDir);
  await copyFile(tls.ca, join(certDir, 'ca.crt'));
  const c = await cocoon(['image', 'inspect', `docker://${reg.host}/shop/app:1`, '--cert-dir', certDir, '--json']);
  assert.equal(c.code, 0, c.stdout);
  assert.equal((JSON.parse(c.stdout) as { manifestDigest: string }).manifestDigest, r.manifestDigest);
  const bad = await cocoon(['image', 'inspect', `docker://${reg.host}/shop/app:1`, '--json', '--timeout', '5']);
  assert.equal((JSON.parse(bad.stdout) as { error: { code: string } }).error.code, 'REGISTRY_TLS_FAILED');
});

test('registry multi-platform index: the host platform by default, --platform picks, an absent one is NOT_FOUND', { skip: registryMissing }, async (t) => {
  const f = await fixture(t);
  const reg = await startRegistry(join(f.base, 'reg'));
  t.after(() => reg.stop());
  const opts = { registry: { insecure: true } };
  // the amd64 image, and an "arm64" variant of it (another config), both pushed by digest, then an index
  const amd = await copyImage(new LayoutSource(f.source, 'app:1', undefined), await RegistrySink.open(parseDockerReference(`${reg.host}/shop/multi:amd64`), opts));
  const src = await readLayout(f.source, 'app:1');
  const { LayoutWriter } = await import('../../src/image/layout.js');
  const w = await LayoutWriter.open(f.source);
  const armCfg = await w.putBytes(Buffer.from(JSON.stringify({ ...src.config, architecture: 'arm64', variant: 'v8' })), 'application/vnd.oci.image.config.v1+json');
  const armManifest = await w.putBytes(Buffer.from(JSON.stringify({ ...src.manifest, config: armCfg })), 'application/vnd.oci.image.manifest.v1+json', { 'org.opencontainers.image.ref.name': 'arm' });
  await w.writeIndex([armManifest]);
  const arm = await copyImage(new LayoutSource(f.source, 'arm', undefined), await RegistrySink.open(parseDockerReference(`${reg.host}/shop/multi:arm64`), opts));
  const index = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: arm.manifestDigest, size: armManifest.size, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: amd.manifestDigest, size: src.manifestDescriptor.size, platform: { os: 'linux', architecture: 'amd64' } },
    ],
  };
  const client = await RegistryClient.open(parseDockerReference(`${reg.host}/shop/multi:latest`), { insecure: true });
  await client.putManifest('latest', Buffer.from(JSON.stringify(index)), 'application/vnd.oci.image.index.v1+json');
  client.close();
  const pick = async (platform?: { os: string; architecture: string; variant?: string }) => {
    const s = await RegistrySource.open(parseDockerReference(`${reg.host}/shop/multi:latest`), { ...opts, ...(platform ? { platform } : {}) });
    try {
      return (await s.resolve()).manifestDigest;
    } finally {
      await s.close();
    }
  };
  if (process.arch === 'x64') assert.equal(await pick(), amd.manifestDigest);
  assert.equal(await pick({ os: 'linux', architecture: 'arm64' }), arm.manifestDigest);
  assert.equal(await pick({ os: 'linux', architecture: 'amd64' }), amd.manifestDigest);
  await assert.rejects(pick({ os: 'linux', architecture: 's390x' }), { code: 'NOT_FOUND' });
});

test('http client: storage redirects drop Authorization when the host changes; 5xx on GET is retried, POST is not', async (t) => {
  const { HttpClient } = await import('../../src/image/http.js');
  const seen: Array<{ host: string; path: string; auth: string | undefined; method: string }> = [];
  const storagePort = await freePort();
  const apiPort = await freePort();
  let flaky = 0;
  const storage = http.createServer((req, res) => {
    seen.push({ host: 'storage', path: req.url ?? '', auth: req.headers.authorization, method: req.method ?? '' });
    res.end('blob');
  });
  const api = http.createServer((req, res) => {
    seen.push({ host: 'api', path: req.url ?? '', auth: req.headers.authorization, method: req.method ?? '' });
    if (req.url === '/redirect') res.writeHead(307, { location: `http://127.0.0.1:${storagePort}/data` }).end();
    else if (req.url === '/bad-redirect') res.writeHead(302, { location: 'http://[' }).end();
    else if (req.url === '/flaky' && flaky++ < 2) res.writeHead(503).end();
    else res.end('ok');
  });
  await new Promise<void>((r) => storage.listen(storagePort, '127.0.0.1', r));
  await new Promise<void>((r) => api.listen(apiPort, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => storage.close(() => api.close(() => r()))));
  const c = new HttpClient({ allowHttp: true, backoffMs: 1, attempts: 3 });
  t.after(() => c.close());
  const res = await c.request({ method: 'GET', url: new URL(`http://127.0.0.1:${apiPort}/redirect`), headers: { authorization: 'Bearer secret' } });
  for await (const _ of res.body) void _;
  assert.equal(res.status, 200);
  assert.equal(seen.find((s) => s.host === 'api')?.auth, 'Bearer secret');
  assert.equal(seen.find((s) => s.host === 'storage')?.auth, undefined, 'no credentials sent to the storage host');
  const flakyRes = await c.request({ method: 'GET', url: new URL(`http://127.0.0.1:${apiPort}/flaky`) });
  for await (const _ of flakyRes.body) void _;
  assert.equal(flakyRes.status, 200, 'two 503s, then success');
  flaky = 0;
  const post = await c.request({ method: 'POST', url: new URL(`http://127.0.0.1:${apiPort}/flaky`), body: Buffer.from('x') });
  for await (const _ of post.body) void _;
  assert.equal(post.status, 503, 'a POST is not retried');
  await assert.rejects(c.request({ method: 'GET', url: new URL(`http://127.0.0.1:${apiPort}/bad-redirect`) }), { code: 'REGISTRY_ERROR' });
  const strict = new HttpClient({});
  await assert.rejects(strict.request({ method: 'GET', url: new URL(`http://127.0.0.1:${apiPort}/x`) }), { code: 'BAD_USAGE' });
  strict.close();
});
