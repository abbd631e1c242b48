/** `cocoon ca revoke` against a real in-process KBS (the CLI runs as a child process, like test/kbs/cli.test.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, flattenedDecrypt, generateKeyPair } from 'jose';
import { x509 } from '../../src/crypto/x509.js';
import { startKbs } from '../../src/kbs/app.js';
import { ownerSigningKey } from '../../src/kbs/owner-key.js';
import { MEASUREMENT, OTHER_MEASUREMENT, POLICY_YAML, fakeVerifier, makeOwnerKey, ownerRequest, rcarAttest } from './helpers.js';
import type { TestKbs } from './helpers.js';
import { cocoon } from './cli-runner.js';

/** A PKCS#10 CSR (PEM) for a fresh P-256 key. */
async function makeCsrPem(): Promise<string> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  return (await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=w', keys, signingAlgorithm: alg })).toString('pem');
}

async function issueCert(kbs: TestKbs, workload = 'redis', policy = 'demo/redis'): Promise<x509.X509Certificate> {
  const a = await rcarAttest(kbs, { workload, csr: await makeCsrPem(), policy });
  assert.equal(a.attest.statusCode, 200, a.attest.body);
  const res = await kbs.app.inject({ method: 'GET', url: `/kbs/v0/resource/${policy}/workload-cert`, headers: { cookie: a.cookie } });
  assert.equal(res.statusCode, 200, res.body);
  return new x509.X509Certificate((JSON.parse(Buffer.from((await flattenedDecrypt(res.json() as never, a.key.privateKey)).plaintext).toString()) as { cert: string }).cert);
}

test('cocoon ca revoke: by serial and by workload, idempotent, unknown serial, reason in the CRL, usage errors, owner-only', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-revoke-cli-'));
  const keys = await Promise.all([0, 1].map(async () => exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey)));
  const owners = await Promise.all(keys.map((k) => ownerSigningKey(k)));
  keys.forEach((k, i) => writeFileSync(join(dir, `owner${i}.jwk`), JSON.stringify(k), { mode: 0o600 }));
  const running = await startKbs({ dataDir: join(dir, 'data'), verifier: fakeVerifier, allowSim: true, owners: [owners[0]!.publicJwk], logger: false, port: 0 });
  const kbs: TestKbs = { app: running.app, dir, owner: owners[0]!, kbsId: (await running.app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json<{ id: string }>().id, cleanup: async () => undefined };
  try {
    // redis is granted the certificate explicitly; worker (no tls, no grant) is not
    const yaml = POLICY_YAML.replace('    secrets: [redis-password]\n', '    secrets: [redis-password]\n    workloadCert: true\n');
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml })).statusCode, 200);
    const c1 = await issueCert(kbs);
    const c2 = await issueCert(kbs);
    const as = (i: number, args: string[]) => cocoon(['ca', 'revoke', ...args, '--kbs', running.url, '--owner-key', join(dir, `owner${i}.jwk`), '--config-dir', dir]);

    const help = await cocoon(['ca', 'revoke', '--help']);
    assert.equal(help.code, 0);
    for (const flag of ['--serial', '--workload', '--reason', '--force', '--json', '--kbs', '--owner-key']) assert.match(help.stdout, new RegExp(`${flag}\\b.*\\S`), `${flag} documented`);

    const s1 = c1.serialNumber.toLowerCase();
    const first = await as(0, ['--serial', s1.toUpperCase(), '--reason', 'keyCompromise', '--json']);
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(JSON.parse(first.stdout), { serial: s1, reason: 'keyCompromise', revoked: true, certificates: [{ serial: s1, alreadyRevoked: false, policy: 'demo/redis', workload: 'redis' }] });
    const again = await as(0, ['--serial', s1, '--reason', 'keyCompromise']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, new RegExp(`already revoked ${s1}`));

    const unknown = await as(0, ['--serial', 'abcdef01', '--json']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stdout + unknown.stderr, /CERT_UNKNOWN/);
    const forced = await as(0, ['--serial', 'abcdef01', '--force', '--json']);
    assert.equal(forced.code, 0, forced.stderr);

    const byWorkload = await as(0, ['--workload', 'demo/redis#redis', '--reason', 'cessationOfOperation', '--json']);
    assert.equal(byWorkload.code, 0, byWorkload.stderr);
    const bw = JSON.parse(byWorkload.stdout) as { revoked: boolean; certificates: { serial: string; alreadyRevoked: boolean }[] };
    assert.equal(bw.revoked, true);
    assert.deepEqual(Object.fromEntries(bw.certificates.map((c) => [c.serial, c.alreadyRevoked])), { [s1]: true, [c2.serialNumber.toLowerCase()]: false });

    // usage errors: exit 2 before any request
    for (const bad of [[], ['--serial', s1, '--workload', 'demo/redis#redis'], ['--serial', 'xyz'], ['--workload', 'demo/redis'], ['--serial', s1, '--reason', 'bored']]) {
      const r = await as(0, bad);
      assert.equal(r.code, 2, `${bad.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /BAD_USAGE/);
    }
    // an unknown owner key: 401
    const stranger = await as(1, ['--serial', s1, '--json']);
    assert.equal(stranger.code, 1);
    assert.match(stranger.stdout + stranger.stderr, /AUTH_INVALID/);

    // the CRL the KBS serves lists both, with their reasons
    const crlOut = await cocoon(['ca', 'export', '--what', 'crl', '--kbs', running.url, '--owner-key', join(dir, 'owner0.jwk'), '--config-dir', dir, '--json']);
    const crl = new x509.X509Crl((JSON.parse(crlOut.stdout) as { pem: string }).pem);
    assert.equal(crl.findRevoked(c1)?.reason, x509.X509CrlReason.keyCompromise);
    assert.equal(crl.findRevoked(c2)?.reason, x509.X509CrlReason.cessationOfOperation);

    // the gate: worker declares neither tls nor workloadCert
    const w = await rcarAttest(kbs, { workload: 'worker', measurement: OTHER_MEASUREMENT, csr: await makeCsrPem() });
    assert.equal(w.attest.statusCode, 200, w.attest.body);
    const denied = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/workload-cert', headers: { cookie: w.cookie } });
    assert.equal(denied.statusCode, 403);
    assert.equal((denied.json() as { code: string }).code, 'WORKLOAD_CERT_NOT_GRANTED');
  } finally {
    await running.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('revocation rights: policy owners revoke their workloads\' certificates, nobody else\'s (403, no probing of serials)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-revoke-owner-'));
  const admin = await makeOwnerKey();
  const running = await startKbs({ dataDir: join(dir, 'data'), verifier: fakeVerifier, allowSim: true, owners: [admin.publicJwk], logger: false, port: 0 });
  const kbs: TestKbs = { app: running.app, dir, owner: admin, kbsId: (await running.app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json<{ id: string }>().id, cleanup: async () => undefined };
  try {
    const [b, c] = [await makeOwnerKey(), await makeOwnerKey()];
    const keyYaml = (k: typeof b) => `{ kty: EC, crv: P-256, x: ${String(k.publicJwk.x)}, y: ${String(k.publicJwk.y)} }`;
    const owned = (name: string, k: typeof b) => `name: ${name}\nowners:\n  - { name: o, key: ${keyYaml(k)} }\nworkloads:\n  w:\n    workloadCert: true\n    accept: [{ tee: [sim], measurement: "${MEASUREMENT}" }]\n`;
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/b', { yaml: owned('shop/b', b) })).statusCode, 200);
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/c', { yaml: owned('shop/c', c) })).statusCode, 200);
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: POLICY_YAML.replace('    secrets: [redis-password]\n', '    secrets: [redis-password]\n    workloadCert: true\n') })).statusCode, 200);
    const certB = await issueCert(kbs, 'w', 'shop/b');
    const certAdmin = await issueCert(kbs, 'redis', 'demo/redis');
    const code = (r: { statusCode: number; json(): unknown }) => [r.statusCode, (r.json() as { code?: string }).code];
    // the owner of shop/c may not revoke shop/b's certificate, nor probe unknown serials, nor force
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: certB.serialNumber }, { key: c })), [403, 'FORBIDDEN']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: 'abcdef' }, { key: c })), [403, 'FORBIDDEN']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { workload: 'shop/b#w' }, { key: c })), [403, 'FORBIDDEN']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: certAdmin.serialNumber }, { key: b })), [403, 'FORBIDDEN']);
    // without a token / with an unknown key
    assert.deepEqual(code(await running.app.inject({ method: 'POST', url: '/cocoon/v1/ca/revoke', payload: { serial: certB.serialNumber } })), [401, 'AUTH_REQUIRED']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: certB.serialNumber }, { key: await makeOwnerKey() })), [401, 'AUTH_INVALID']);
    // the owner of shop/b may
    const byOwner = await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: certB.serialNumber, reason: 'affiliationChanged' }, { key: b });
    assert.equal(byOwner.statusCode, 200, byOwner.body);
    assert.equal((byOwner.json() as { revoked: boolean }).revoked, true);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: certB.serialNumber, force: true }, { key: b })), [403, 'FORBIDDEN']);
    // refusals are audited (owner.refused), the revocation as ca.revoke under shop/b
    const audit = (await ownerRequest(kbs, 'GET', '/cocoon/v1/audit')).json() as { entries: { action: string; actor: string; policy: string | null }[] };
    assert.ok(audit.entries.some((e) => e.action === 'owner.refused' && e.actor === c.kid));
    assert.ok(audit.entries.some((e) => e.action === 'ca.revoke' && e.actor === b.kid && e.policy === 'shop/b'));
  } finally {
    await running.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
