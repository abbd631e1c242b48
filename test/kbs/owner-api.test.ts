import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { buildKbsApp } from '../../src/kbs/app.js';
import { POLICY_YAML, applyDemoPolicy, fakeVerifier, makeKbs, makeOwnerKey, ownerRequest, ownerToken, withKbs } from './helpers.js';

function code(res: { statusCode: number; json(): unknown }): [number, string] {
  return [res.statusCode, (res.json() as { code: string }).code];
}

test('identity and OpenAPI are public; health endpoints answer', () =>
  withKbs(async (kbs) => {
    const id = await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/identity' });
    const body = id.json() as { id: string; publicKey: Record<string, string>; allowSim: boolean; warning?: string };
    assert.match(body.id, /^urn:cocoon:kbs:/);
    assert.equal(body.publicKey.kty, 'EC');
    assert.equal(body.publicKey.d, undefined);
    assert.equal(body.allowSim, true);
    assert.match(body.warning ?? '', /INSECURE: simulated TEE/);
    const doc = (await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/openapi.json' })).json() as { openapi: string; paths: Record<string, unknown>; components: Record<string, unknown> };
    assert.match(doc.openapi, /^3\./);
    assert.ok(doc.paths['/cocoon/v1/policies/{org}/{app}']);
    assert.ok(doc.paths['/cocoon/v1/events']);
    assert.ok(!Object.keys(doc.paths).some((p) => p.startsWith('/kbs/')));
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
    const nf = await kbs.app.inject({ method: 'GET', url: '/nope' });
    assert.deepEqual(code(nf), [404, 'NOT_FOUND']);
  }));

test('owner auth: missing, wrong key, replayed jti, expired, too long, wrong aud, bound path', () =>
  withKbs(async (kbs) => {
    const url = '/cocoon/v1/events';
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url })), [401, 'AUTH_REQUIRED']);
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url, headers: { authorization: 'Bearer nope' } })), [401, 'AUTH_INVALID']);
    const stranger = await makeOwnerKey();
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { key: stranger })), [401, 'AUTH_INVALID']);
    // a stranger claiming a registered kid
    const token = await ownerToken(kbs, { key: { ...stranger, kid: kbs.owner.kid } });
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${token}` } })), [401, 'AUTH_INVALID']);

    const good = await ownerToken(kbs);
    assert.equal((await kbs.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${good}` } })).statusCode, 200);
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${good}` } })), [401, 'TOKEN_REPLAYED']);

    const now = Math.floor(Date.now() / 1000);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { iat: now - 400, exp: now - 100 })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { exp: now + 3600 })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { iat: now + 600, exp: now + 660 })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { aud: 'urn:cocoon:kbs:other' })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { jti: 'short' })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { htm: 'PUT' })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { htu: '/cocoon/v1/policies/demo/redis' })), [401, 'AUTH_INVALID']);
    assert.equal((await ownerRequest(kbs, 'GET', url, undefined, { htm: 'GET', htu: url })).statusCode, 200);
  }));

test('EdDSA owner keys are accepted', async () => {
  const dir = (await import('node:fs')).mkdtempSync(join((await import('node:os')).tmpdir(), 'cocoon-kbs-'));
  const owner = await makeOwnerKey('EdDSA');
  const app = await buildKbsApp({ dataDir: dir, verifier: fakeVerifier, owners: [owner.publicJwk], logger: false });
  try {
    const kbsId = (((await app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json()) as { id: string }).id;
    const kbs = { app, dir, owner, kbsId, cleanup: async () => undefined };
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/events')).statusCode, 200);
  } finally {
    await app.close();
  }
});

test('policy versions: predecessor, history, hash chain, POLICY_INVALID with positions', () =>
  withKbs(async (kbs) => {
    const url = '/cocoon/v1/policies/demo/redis';
    const v1 = await applyDemoPolicy(kbs);
    assert.equal(v1.version, 1);
    assert.match(v1.hash, /^sha256:[0-9a-f]{64}$/);
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', url, { yaml: POLICY_YAML })), [409, 'PREDECESSOR_MISMATCH']);
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', url, { yaml: POLICY_YAML, predecessor: `sha256:${'0'.repeat(64)}` })), [409, 'PREDECESSOR_MISMATCH']);
    const pw1 = (await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json() as { value: string };
    const v2res = await ownerRequest(kbs, 'PUT', url, { yaml: POLICY_YAML + '# v2\n', predecessor: v1.hash });
    assert.equal(v2res.statusCode, 200, v2res.body);
    const v2 = v2res.json() as { version: number; hash: string };
    assert.equal(v2.version, 2);
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', url, { yaml: POLICY_YAML, predecessor: v1.hash })), [409, 'PREDECESSOR_MISMATCH']);
    const pw2 = (await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json() as { value: string };
    assert.equal(pw1.value, pw2.value, 'random secrets are kept across versions');

    const current = (await ownerRequest(kbs, 'GET', url)).json() as { version: number; yaml: string; predecessor: string; createdBy: string };
    assert.equal(current.version, 2);
    assert.equal(current.predecessor, v1.hash);
    assert.equal(current.createdBy, kbs.owner.kid);
    assert.match(current.yaml, /# v2/);
    const hist = (await ownerRequest(kbs, 'GET', `${url}/history?limit=10`)).json() as { versions: { version: number; hash: string; predecessor: string | null }[] };
    assert.deepEqual(hist.versions.map((v) => v.version), [2, 1]);
    assert.equal(hist.versions[0]?.predecessor, hist.versions[1]?.hash);
    assert.equal(hist.versions[1]?.predecessor, null);

    const bad = await ownerRequest(kbs, 'PUT', url, { yaml: POLICY_YAML.replace('{{ secret.redis-password }}"', '{{ secret.nope }}"'), predecessor: v2.hash });
    const problem = bad.json() as { code: string; detail: string; details: { file: string; line: number; column: number } };
    assert.equal(bad.statusCode, 400);
    assert.equal(problem.code, 'POLICY_INVALID');
    assert.match(problem.detail, /^demo\/redis\.yaml:12:\d+: .*unknown secret "nope"/);
    assert.equal(problem.details.line, 12);
    const mismatch = await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/other', { yaml: POLICY_YAML });
    assert.deepEqual(code(mismatch), [400, 'POLICY_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/demo/none')), [404, 'NOT_FOUND']);
  }));

test('secrets: import rules, ownerReadable, encrypted at rest, 0600 key files, survive restart', async () => {
  const kbs = await makeKbs();
  let closed = false;
  try {
    await applyDemoPolicy(kbs);
    const s = '/cocoon/v1/secrets/demo/redis';
    const marker = 'api-token-PLAINTEXT-MARKER-1234567890';
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', `${s}/api-token`)), [403, 'FORBIDDEN']);
    const put = await ownerRequest(kbs, 'PUT', `${s}/api-token`, { value: Buffer.from(marker).toString('base64') });
    assert.equal(put.statusCode, 200, put.body);
    assert.equal((put.json() as { kind: string }).kind, 'imported');
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', `${s}/redis-password`, { value: 'AAAA' })), [403, 'FORBIDDEN']);
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', `${s}/undeclared`, { value: 'AAAA' })), [404, 'NOT_FOUND']);
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', `${s}/layer-key`, { value: 'AAAA' })), [400, 'INPUT_MALFORMED']);
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', `${s}/api-token`, { value: 'not base64!' })), [400, 'INPUT_MALFORMED']);
    const pw = (await ownerRequest(kbs, 'GET', `${s}/redis-password`)).json() as { value: string; kind: string };
    assert.equal(pw.kind, 'random');
    const pwText = Buffer.from(pw.value, 'base64').toString();
    assert.match(pwText, /^[0-9a-f]{64}$/);

    for (const f of readdirSync(kbs.dir)) {
      const bytes = readFileSync(join(kbs.dir, f)).toString('latin1');
      assert.ok(!bytes.includes(marker), `${f} holds a plaintext secret`);
      assert.ok(!bytes.includes(pwText), `${f} holds a plaintext secret`);
    }
    for (const f of ['kbs-identity.jwk', 'seal.key']) assert.equal(statSync(join(kbs.dir, f)).mode & 0o777, 0o600, f);

    const id1 = kbs.kbsId;
    await kbs.app.close();
    closed = true;
    const app2 = await buildKbsApp({ dataDir: kbs.dir, verifier: fakeVerifier, logger: false });
    try {
      const id2 = ((await app2.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json() as { id: string }).id;
      assert.equal(id2, id1);
      const again = await ownerRequest({ ...kbs, app: app2 }, 'GET', `${s}/redis-password`);
      assert.equal((again.json() as { value: string }).value, pw.value);
    } finally {
      await app2.close();
    }
  } finally {
    if (!closed) await kbs.app.close();
    (await import('node:fs')).rmSync(kbs.dir, { recursive: true, force: true });
  }
});
