import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:https';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { CocoonError } from '../../src/errors.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs } from '../../src/kbs/app.js';
import { TokenBuckets } from '../../src/kbs/rate-limit.js';
import { loadOrCreateSelfSignedTls, TLS_KEY_FILE } from '../../src/kbs/tls.js';
import { fakeVerifier, makeKbs } from './helpers.js';

test('token bucket: burst, refill, per client, bounded memory', () => {
  let now = 0;
  const b = new TokenBuckets({ perSecond: 2, burst: 3, maxClients: 2, now: () => now });
  assert.deepEqual([b.take('a'), b.take('a'), b.take('a')], [0, 0, 0]);
  assert.ok(b.take('a') > 0);
  assert.equal(b.take('b'), 0, 'clients are independent');
  now = 500;
  assert.equal(b.take('a'), 0, 'one token back after 0.5 s at 2/s');
  assert.ok(b.take('a') > 0);
  b.take('c');
  b.take('d');
  now = 600;
  assert.equal(b.take('a'), 0, 'evicted clients start with a full bucket');
});

test('rate limit answers 429 RATE_LIMITED with retry-after; health endpoints are exempt; counted in /metrics', async () => {
  const kbs = await makeKbs({ rateLimit: { perSecond: 1, burst: 3 } });
  try {
    // makeKbs used one request (identity)
    const codes = [];
    for (let i = 0; i < 4; i++) codes.push((await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).statusCode);
    assert.deepEqual(codes, [200, 200, 429, 429]);
    const limited = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } });
    assert.equal(limited.statusCode, 429);
    assert.equal((limited.json() as { code: string }).code, 'RATE_LIMITED');
    assert.ok(Number(limited.headers['retry-after']) >= 1);
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
    const metrics = (await kbs.app.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(metrics, /cocoon_kbs_rate_limited_total 3/);
  } finally {
    await kbs.cleanup();
  }
});

test('TLS: a self-signed KBS certificate in the data dir (key 0600), served over HTTPS', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-tls-'));
  try {
    const tls = await loadOrCreateSelfSignedTls(dir);
    assert.equal(tls.created, true);
    assert.equal(statSync(join(dir, TLS_KEY_FILE)).mode & 0o777, 0o600);
    assert.equal((await loadOrCreateSelfSignedTls(dir)).cert, tls.cert, 'reused on the next start');
    // a data dir that does not exist yet (first start with --tls) is created, owner-only
    const fresh = join(dir, 'not', 'yet');
    assert.equal((await loadOrCreateSelfSignedTls(fresh)).created, true);
    assert.equal(statSync(fresh).mode & 0o777, 0o700);
    const kbs = await startKbs({ dataDir: dir, verifier: fakeVerifier, logger: false, port: 0, tls: { cert: tls.cert, key: tls.key } });
    try {
      assert.match(kbs.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      const body = await new Promise<string>((resolve, reject) => {
        const req = request(`${kbs.url}/cocoon/v1/identity`, { ca: tls.cert }, (res) => {
          let text = '';
          res.on('data', (d: Buffer) => (text += d.toString()));
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        req.end();
      });
      assert.match(body, /urn:cocoon:kbs:/);
      // without trusting the certificate the connection is refused
      await assert.rejects(
        new Promise((resolve, reject) => {
          const req = request(`${kbs.url}/healthz`, (res) => resolve(res.statusCode));
          req.on('error', reject);
          req.end();
        }),
      );
    } finally {
      await kbs.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ECDH-ES+A256KW JWE made with node:crypto decrypts with jose on every curve; the protected header is what jose expects', async () => {
  const { encryptToTee, parseTeePubkey } = await import('../../src/kbs/tee-key.js');
  const { exportJWK, flattenedDecrypt, generateKeyPair, decodeProtectedHeader } = await import('jose');
  for (const crv of ['P-256', 'P-384', 'P-521'] as const) {
    const { publicKey, privateKey } = await generateKeyPair('ECDH-ES+A256KW', { crv, extractable: true });
    const pub = await exportJWK(publicKey);
    const jwe = await encryptToTee(parseTeePubkey({ kty: 'EC', crv, x: pub.x, y: pub.y }), Buffer.from(`secret for ${crv}`));
    const header = decodeProtectedHeader(jwe);
    assert.deepEqual([header.alg, header.enc, (header.epk as { crv: string }).crv], ['ECDH-ES+A256KW', 'A256GCM', crv]);
    const { plaintext } = await flattenedDecrypt(jwe, privateKey);
    assert.equal(Buffer.from(plaintext).toString(), `secret for ${crv}`);
    // a flipped ciphertext bit fails authentication
    const bad = { ...jwe, ciphertext: (jwe.ciphertext.startsWith('A') ? 'B' : 'A') + jwe.ciphertext.slice(1) };
    await assert.rejects(flattenedDecrypt(bad, privateKey));
  }
});

test('OpenAPI documents the governance, audit and CA endpoints; oversized bodies are 413', async () => {
  const kbs = await makeKbs();
  try {
    const doc = (await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/openapi.json' })).json() as { paths: Record<string, unknown> };
    for (const p of [
      '/cocoon/v1/policies/{org}/{app}/diff',
      '/cocoon/v1/policies/{org}/{app}/pending',
      '/cocoon/v1/policies/{org}/{app}/pending/{id}/approve',
      '/cocoon/v1/policies/{org}/{app}/pending/{id}/reject',
      '/cocoon/v1/policies/{org}/{app}/workloads',
      '/cocoon/v1/audit',
      '/cocoon/v1/ca',
      '/cocoon/v1/ca/crl',
      '/cocoon/v1/ca/revoke',
    ]) {
      assert.ok(doc.paths[p], p);
    }
    const big = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { 'content-type': 'application/json' }, payload: `{"x":"${'a'.repeat(1024 * 1024 + 10)}"}` });
    assert.equal(big.statusCode, 413);
    // a CSR larger than 8 KiB is refused by the schema before anything else runs
    const bigCsr = await kbs.app.inject({
      method: 'POST',
      url: '/kbs/v0/attest',
      payload: { 'runtime-data': { nonce: 'n', 'tee-pubkey': { kty: 'EC' }, csr: 'A'.repeat(9000) }, 'tee-evidence': { primary_evidence: {} } },
    });
    assert.deepEqual([bigCsr.statusCode, (bigCsr.json() as { code: string }).code], [400, 'INPUT_MALFORMED']);
  } finally {
    await kbs.cleanup();
  }
});

test('a certificate the CA library cannot make is POLICY_INVALID (400), not an internal error', async () => {
  const { ownerRequest, MEASUREMENT } = await import('./helpers.js');
  const kbs = await makeKbs();
  try {
    const yaml = `name: demo/odd\nsecrets:\n  tls: { kind: x509, sans: ["abc:def"] }\nworkloads:\n  w:\n    accept: [{ tee: [sim], measurement: "${MEASUREMENT}" }]\n    secrets: [tls]\n`;
    const res = await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/odd', { yaml });
    assert.equal(res.statusCode, 400, res.body);
    assert.equal((res.json() as { code: string }).code, 'POLICY_INVALID');
    assert.match((res.json() as { detail: string }).detail, /secrets\.tls: cannot generate/);
  } finally {
    await kbs.cleanup();
  }
});

test('--trusted-ak files: missing is BAD_USAGE, oversized is INPUT_TOO_LARGE before it is read', async () => {
  const { readTrustedAkFiles } = await import('../../src/kbs/verifier.js');
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-ak-'));
  try {
    const big = join(dir, 'big.pem');
    writeFileSync(big, 'x'.repeat(64 * 1024 + 1));
    await assert.rejects(readTrustedAkFiles([join(dir, 'missing.pem')]), (e: unknown) => e instanceof CocoonError && e.code === 'BAD_USAGE');
    await assert.rejects(readTrustedAkFiles([big]), (e: unknown) => e instanceof CocoonError && e.code === 'INPUT_TOO_LARGE');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
