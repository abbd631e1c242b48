/** Broker scenarios run against SQLite (governance.test.ts) and PostgreSQL (postgres-suite.test.ts). */
import { spawnSync } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { flattenedDecrypt } from 'jose';
import { x509 } from '../../src/crypto/x509.js';
import { WORKLOAD_IDENTITY_OID, workloadIdentityOf } from '../../src/kbs/certs.js';
import { parseLaunchPlan } from '../../src/kbs/launch-plan.js';

import assert from 'node:assert/strict';
import { auditPublicKey, verifyAuditChain } from '../../src/kbs/audit.js';
import type { AuditRecord } from '../../src/kbs/store/types.js';
import type { OwnerSigningKey } from '../../src/kbs/owner-key.js';
import { MEASUREMENT, POLICY_YAML, applyDemoPolicy, makeOwnerKey, ownerRequest, rcarAttest } from './helpers.js';
import type { TestKbs } from './helpers.js';

const keyYaml = (k: OwnerSigningKey) => `{ kty: ${String(k.publicJwk.kty)}, crv: ${String(k.publicJwk.crv)}, x: ${String(k.publicJwk.x)}${k.publicJwk.y ? `, y: ${String(k.publicJwk.y)}` : ''} }`;

/** A `shop/web` policy owned by `owners` that needs `threshold` approvals; also used by test/web. */
export function shopPolicy(owners: OwnerSigningKey[], threshold: number, measurement = MEASUREMENT): string {
  return `name: shop/web
owners:
${owners.map((o, i) => `  - { name: o${i}, key: ${keyYaml(o)} }`).join('\n')}
approvals: { threshold: ${threshold} }
secrets:
  pw: { kind: random, size: 8, encoding: hex, ownerReadable: true }
workloads:
  web:
    accept: [{ tee: [sim], measurement: "${measurement}" }]
    secrets: [pw]
`;
}

const code = (res: { statusCode: number; json(): unknown }): [number, string] => [res.statusCode, (res.json() as { code: string }).code];


export async function governanceScenario(kbs: TestKbs): Promise<void> {
  {
    const [a, b, c] = [await makeOwnerKey(), await makeOwnerKey('EdDSA'), await makeOwnerKey()];
    const url = '/cocoon/v1/policies/shop/web';
    const created = await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b, c], 2) });
    assert.equal(created.statusCode, 200, created.body);
    const v1 = created.json() as { version: number; hash: string };
    assert.equal(v1.version, 1);

    // the admin that created it is not one of its owners: no more access
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url)), [403, 'FORBIDDEN']);
    assert.equal((await ownerRequest(kbs, 'GET', url, undefined, { key: a })).statusCode, 200);

    // A proposes version 2 (other measurement): pending, not active
    const v2yaml = shopPolicy([a, b, c], 2, 'ef'.repeat(48));
    const proposed = await ownerRequest(kbs, 'PUT', url, { yaml: v2yaml, predecessor: v1.hash }, { key: a });
    assert.equal(proposed.statusCode, 200, proposed.body);
    const p = proposed.json() as { version: number; pending: { id: string; approvals: number; threshold: number } };
    assert.equal(p.version, 1);
    assert.deepEqual([p.pending.approvals, p.pending.threshold], [1, 2]);
    assert.equal((await rcarAttest(kbs, { policy: 'shop/web', workload: 'web' })).attest.statusCode, 200, 'version 1 still active');
    assert.equal((await rcarAttest(kbs, { policy: 'shop/web', workload: 'web', measurement: 'ef'.repeat(48) })).attest.statusCode, 401);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`, undefined, { key: a })), [409, 'CONFLICT']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`, undefined, { key: await makeOwnerKey() })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`)), [403, 'FORBIDDEN']);
    // a stale predecessor is refused
    assert.deepEqual(code(await ownerRequest(kbs, 'PUT', url, { yaml: v2yaml, predecessor: `sha256:${'0'.repeat(64)}` }, { key: b })), [409, 'PREDECESSOR_MISMATCH']);
    const pending = (await ownerRequest(kbs, 'GET', `${url}/pending`, undefined, { key: b })).json() as { pending: { id: string; approvals: string[] }[] };
    assert.deepEqual(pending.pending.map((x) => x.id), [p.pending.id]);
    assert.deepEqual(pending.pending[0]?.approvals, [a.kid]);

    const approved = await ownerRequest(kbs, 'POST', `${url}/pending/${p.pending.id}/approve`, undefined, { key: b });
    assert.equal(approved.statusCode, 200, approved.body);
    const v2 = approved.json() as { status: string; version: number; hash: string };
    assert.deepEqual([v2.status, v2.version], ['applied', 2]);
    assert.equal(((await ownerRequest(kbs, 'GET', url, undefined, { key: c })).json() as { version: number }).version, 2);
    assert.equal((await rcarAttest(kbs, { policy: 'shop/web', workload: 'web', measurement: 'ef'.repeat(48) })).attest.statusCode, 200);

    // C proposes, A rejects; approving afterwards is a conflict
    const p3 = ((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b, c], 2), predecessor: v2.hash }, { key: c })).json() as { pending: { id: string } }).pending;
    assert.equal((await ownerRequest(kbs, 'POST', `${url}/pending/${p3.id}/reject`, undefined, { key: a })).statusCode, 200);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p3.id}/approve`, undefined, { key: b })), [409, 'CONFLICT']);

    // two proposals against v2: the first applied makes the other stale
    const p4 = ((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b, c], 2), predecessor: v2.hash }, { key: a })).json() as { pending: { id: string } }).pending;
    const p5 = ((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b], 1), predecessor: v2.hash }, { key: b })).json() as { pending: { id: string } }).pending;
    assert.equal(((await ownerRequest(kbs, 'POST', `${url}/pending/${p5.id}/approve`, undefined, { key: c })).json() as { version: number }).version, 3);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', `${url}/pending/${p4.id}/approve`, undefined, { key: b })), [409, 'PREDECESSOR_MISMATCH']);
    // version 3 has threshold 1 and drops C: B alone applies; C is locked out
    const head = (await ownerRequest(kbs, 'GET', url, undefined, { key: b })).json() as { hash: string };
    assert.equal(((await ownerRequest(kbs, 'PUT', url, { yaml: shopPolicy([a, b], 1), predecessor: head.hash }, { key: b })).json() as { version: number }).version, 4);
    assert.deepEqual(code(await ownerRequest(kbs, 'GET', url, undefined, { key: c })), [403, 'FORBIDDEN']);
  }
}

export async function nonOwnerScenario(kbs: TestKbs): Promise<void> {
  {
    await applyDemoPolicy(kbs);
    const a = await makeOwnerKey();
    await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/web', { yaml: shopPolicy([a], 1) });
    const stranger = await makeOwnerKey();
    const demo = '/cocoon/v1/policies/demo/redis';
    const attempts: [string, 'GET' | 'PUT' | 'POST', unknown?][] = [
      [demo, 'GET'],
      [`${demo}/history`, 'GET'],
      [`${demo}/pending`, 'GET'],
      [`${demo}/diff`, 'POST', { yaml: POLICY_YAML }],
      [demo, 'PUT', { yaml: POLICY_YAML }],
      ['/cocoon/v1/secrets/demo/redis/redis-password', 'GET'],
      ['/cocoon/v1/secrets/demo/redis/api-token', 'PUT', { value: 'AAAA' }],
      ['/cocoon/v1/events', 'GET'],
      ['/cocoon/v1/audit', 'GET'],
      ['/cocoon/v1/policies/other/new', 'PUT', { yaml: POLICY_YAML.replace('demo/redis', 'other/new') }],
      ['/cocoon/v1/ca/revoke', 'POST', { serial: '01' }],
    ];
    for (const [u, method, body] of attempts) {
      // a policy owner of shop/web: authenticated, but not an owner of demo/redis → 403
      assert.deepEqual(code(await ownerRequest(kbs, method, u, body, { key: a })), [403, 'FORBIDDEN'], `${method} ${u}`);
      // an unknown key → 401
      assert.deepEqual(code(await ownerRequest(kbs, method, u, body, { key: stranger })), [401, 'AUTH_INVALID'], `${method} ${u}`);
      const res = await kbs.app.inject({ method, url: u, ...(body ? { payload: body as Record<string, unknown> } : {}) });
      assert.deepEqual(code(res), [401, 'AUTH_REQUIRED'], `${method} ${u}`);
    }
    // the shop/web owner sees its own policy's events and audit, with ?policy=
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/events?policy=shop/web', undefined, { key: a })).statusCode, 200);
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/audit?policy=shop/web', undefined, { key: a })).statusCode, 200);
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/shop/web/pw', undefined, { key: a })).statusCode, 200);
  }
}

export async function auditScenario(kbs: TestKbs): Promise<void> {
  {
    await applyDemoPolicy(kbs);
    await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/api-token', { value: Buffer.from('tok').toString('base64') });
    const ok = await rcarAttest(kbs);
    await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie: ok.cookie } });
    await rcarAttest(kbs, { measurement: 'ee'.repeat(48) });
    await rcarAttest(kbs, { tamperReportData: true });
    await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/demo/redis');
    const res = await ownerRequest(kbs, 'GET', '/cocoon/v1/audit?limit=1000');
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json() as { publicKey: Record<string, string>; entries: AuditRecord[] };
    const actions = body.entries.map((e) => `${e.action}:${(JSON.parse(e.detail) as { status?: string; code?: string }).code ?? (JSON.parse(e.detail) as { status?: string }).status ?? ''}`);
    for (const want of ['policy.apply:', 'secret.put:', 'attest:affirming', 'release:released', 'attest:POLICY_DENIED', 'attest:REPORT_DATA_MISMATCH', 'owner.read:200']) {
      assert.ok(actions.includes(want), `${want} in ${actions.join(', ')}`);
    }
    const key = auditPublicKey(body.publicKey);
    const verdict = verifyAuditChain(body.entries, key);
    assert.equal(verdict.ok, true, JSON.stringify(verdict));
    assert.equal(verdict.count, body.entries.length);
    // a modified entry, a forged signature, a dropped entry
    const copy = body.entries.map((e) => ({ ...e }));
    copy[2] = { ...copy[2]!, detail: copy[2]!.detail.replace('}', ',"x":1}') };
    assert.deepEqual(verifyAuditChain(copy, key).firstBroken?.seq, 3);
    assert.equal(verifyAuditChain(copy, key).firstBroken?.reason, 'hash');
    const forged = body.entries.map((e, i) => (i === 4 ? { ...e, sig: body.entries[5]!.sig } : e));
    assert.equal(verifyAuditChain(forged, key).firstBroken?.reason, 'signature');
    assert.equal(verifyAuditChain(body.entries.filter((_, i) => i !== 3), key).firstBroken?.reason, 'sequence');
  }
}


const WEB = (extra = '') => `name: shop/web
secrets:
  layer-key: { kind: layer-key }
  shared: { kind: random, size: 8, encoding: hex }
  per-instance: { kind: random, size: 8, encoding: hex, scope: instance }
  sign-p256: { kind: keypair, keyType: P-256 }
  sign-ed: { kind: keypair, keyType: Ed25519 }
  sign-rsa: { kind: keypair, keyType: RSA-2048 }
  tls: { kind: x509, sans: [web.shop.local, 127.0.0.1], validityDays: 3 }
  shop-ca: { kind: x509-ca, keyType: P-384, subject: "CN=shop CA" }
  client: { kind: x509, issuer: shop-ca, usage: client, scope: instance }
  vault-key: { kind: imported, from: shop/vault/api-key }
${extra}workloads:
  web:
    maxActivations: 4
    accept: [{ tee: [sim], measurement: "${MEASUREMENT}" }]
    secrets: [shared, per-instance, sign-p256, sign-ed, sign-rsa, tls, client, vault-key]
    env:
      SHARED: "{{ secret.shared }}"
      INSTANCE: "{{ secret.per-instance }}"
      ED_PUB: "{{ secret.sign-ed.public | base64 }}"
    files:
      - { path: /run/tls/cert.pem, content: "{{ secret.tls.cert }}" }
      - { path: /run/tls/chain.pem, content: "{{ secret.tls.chain }}" }
      - { path: /run/tls/key.pem, content: "{{ secret.tls.key }}" }
      - { path: /run/client.pem, content: "{{ secret.client.cert }}" }
      - { path: /run/rsa.pem, content: "{{ secret.sign-rsa.key }}" }
  nothing:
    accept: [{ tee: [sim], measurement: "${'cd'.repeat(48)}" }]
`;

const VAULT = (exportTo: string) => `name: shop/vault
${exportTo ? `exports:\n  api-key: [${exportTo}]\n` : ''}secrets:
  api-key: { kind: imported }
workloads:
  v:
    accept: [{ tee: [sim], measurement: "${'cd'.repeat(48)}" }]
`;

async function put(kbs: TestKbs, name: string, yaml: string): Promise<{ hash: string }> {
  const head = await ownerRequest(kbs, 'GET', `/cocoon/v1/policies/${name}`);
  const predecessor = head.statusCode === 200 ? (head.json() as { hash: string }).hash : undefined;
  const res = await ownerRequest(kbs, 'PUT', `/cocoon/v1/policies/${name}`, { yaml, ...(predecessor ? { predecessor } : {}) });
  assert.equal(res.statusCode, 200, res.body);
  if (yaml.includes('kind: layer-key')) await ownerRequest(kbs, 'PUT', `/cocoon/v1/secrets/${name}/layer-key`, { value: Buffer.alloc(32, 1).toString('base64') });
  return res.json() as { hash: string };
}

async function plan(kbs: TestKbs) {
  const a = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web' });
  assert.equal(a.attest.statusCode, 200, a.attest.body);
  const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/shop/web/launch-plan', headers: { cookie: a.cookie } });
  return { res, a, plan: res.statusCode === 200 ? parseLaunchPlan((await flattenedDecrypt(res.json() as never, a.key.privateKey)).plaintext) : undefined };
}

export async function secretKindsScenario(kbs: TestKbs): Promise<void> {
  {
    await put(kbs, 'shop/vault', VAULT(''));
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/shop/vault/api-key', { value: Buffer.from('vault-secret').toString('base64') })).statusCode, 200);
    const ca0 = (await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/ca' })).json() as { root: string; intermediate: string; workloadIdentityOid: string };
    await put(kbs, 'shop/web', WEB());
    const ca1 = (await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/ca' })).json() as { root: string; intermediate: string; chain: string };
    assert.equal(ca1.root, ca0.root, 'the root is stable');
    assert.notEqual(ca1.intermediate, ca0.intermediate, 'the intermediate rotates with every policy version');
    assert.equal(ca0.workloadIdentityOid, WORKLOAD_IDENTITY_OID);

    // not exported yet: the importing workload cannot start
    const denied = await plan(kbs);
    assert.equal(denied.res.statusCode, 401, denied.res.body);
    assert.match(denied.res.body, /does not export api-key/);
    // an owner cannot upload a secret that comes from another policy
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/shop/web/vault-key', { value: 'AAAA' })).statusCode, 403);
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/shop/web/tls', { value: 'AAAA' })).statusCode, 403);

    await put(kbs, 'shop/vault', VAULT('shop/web'));
    const first = await plan(kbs);
    assert.equal(first.res.statusCode, 200, first.res.body);
    const p1 = first.plan!;
    const file = (path: string) => p1.files.find((f) => f.path === path)!.content.toString('utf8');
    const cert = new x509.X509Certificate(file('/run/tls/cert.pem'));
    const inter = new x509.X509Certificate(ca1.intermediate);
    assert.equal(cert.issuer, inter.subject);
    assert.ok(await cert.verify({ publicKey: inter.publicKey, signatureOnly: true }));
    assert.ok(file('/run/tls/chain.pem').includes(ca1.root.trim().split('\n')[1]!));
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!;
    assert.deepEqual(san.names.items.map((n) => n.value).sort(), ['127.0.0.1', 'web.shop.local']);
    assert.deepEqual(workloadIdentityOf(cert), { v: 1, policy: 'shop/web', secret: 'tls' });
    assert.ok(cert.notAfter.getTime() - Date.now() <= 3 * 86_400_000);
    assert.match(file('/run/tls/key.pem'), /BEGIN PRIVATE KEY/);
    assert.match(file('/run/rsa.pem'), /BEGIN PRIVATE KEY/);
    const client = new x509.X509Certificate(file('/run/client.pem'));
    assert.equal(client.issuer, 'CN=shop CA');
    assert.ok(client.getExtension(x509.ExtendedKeyUsageExtension)!.usages.includes(x509.ExtendedKeyUsage.clientAuth));
    assert.match(Buffer.from(p1.env.ED_PUB!, 'base64').toString(), /BEGIN PUBLIC KEY/);

    const second = (await plan(kbs)).plan!;
    assert.equal(second.env.SHARED, p1.env.SHARED, 'shared values are shared');
    assert.notEqual(second.env.INSTANCE, p1.env.INSTANCE, 'per-instance values differ');
    // ...between instances; within one instance they are stable: the plan, a separate fetch in
    // the same session and a fetch with the session's attestation token all see one value.
    const fetchOwn = async (name: string, headers: Record<string, string>) => {
      const res = await kbs.app.inject({ method: 'GET', url: `/kbs/v0/resource/shop/web/${name}`, headers });
      assert.equal(res.statusCode, 200, res.body);
      return Buffer.from((await flattenedDecrypt(res.json() as never, first.a.key.privateKey)).plaintext).toString();
    };
    assert.equal(await fetchOwn('per-instance', { cookie: first.a.cookie }), p1.env.INSTANCE, 'same session, same per-instance value');
    assert.equal((JSON.parse(await fetchOwn('client', { cookie: first.a.cookie })) as { cert: string }).cert.trim(), file('/run/client.pem').trim(), 'per-instance certificates too');
    const token = (first.a.attest.json() as { token: string }).token;
    const viaToken = await fetchOwn('per-instance', { authorization: `Bearer ${token}` });
    assert.equal(viaToken, await fetchOwn('per-instance', { authorization: `Bearer ${token}` }), 'one token, one value');
    const imported = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/shop/web/vault-key', headers: { cookie: first.a.cookie } });
    assert.equal(Buffer.from((await flattenedDecrypt(imported.json() as never, first.a.key.privateKey)).plaintext).toString(), 'vault-secret');

    // consent withdrawn: released no more
    await put(kbs, 'shop/vault', VAULT(''));
    const again = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/shop/web/vault-key', headers: { cookie: first.a.cookie } });
    assert.equal(again.statusCode, 401);
    // maxActivations 4: attempts 1–4 counted (the first was refused at release, not at attest)
    const fifth = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web' });
    assert.equal(fifth.attest.statusCode, 200, fifth.attest.body);
    const sixth = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web' });
    assert.equal(sixth.attest.statusCode, 401);
    assert.match(sixth.attest.body, /maxActivations/);
    const workloads = (await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/shop/web/workloads')).json() as { workloads: { name: string; activations: number; maxActivations: number | null }[] };
    assert.deepEqual(workloads.workloads.find((w) => w.name === 'web'), { name: 'web', activations: 4, maxActivations: 4, tees: ['sim'], secrets: ['shared', 'per-instance', 'sign-p256', 'sign-ed', 'sign-rsa', 'tls', 'client', 'vault-key'] });
  }
}

async function makeCsr(): Promise<{ pem: string; keys: webcrypto.CryptoKeyPair }> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=workload', keys, signingAlgorithm: alg });
  return { pem: csr.toString('pem'), keys };
}

export async function deploymentCaScenario(kbs: TestKbs): Promise<void> {
  {
    await put(kbs, 'shop/web', WEB().replace('  vault-key: { kind: imported, from: shop/vault/api-key }\n', '').replace(', vault-key]', ']').replace('    maxActivations: 4\n', '    maxActivations: 4\n    workloadCert: true\n'));
    const { pem, keys } = await makeCsr();
    // the gate: a workload that declares neither tls nor workloadCert gets no certificate, even with a bound CSR
    const ungranted = await rcarAttest(kbs, { policy: 'shop/web', workload: 'nothing', measurement: 'cd'.repeat(48), csr: (await makeCsr()).pem });
    assert.equal(ungranted.attest.statusCode, 200, ungranted.attest.body);
    const refused = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/shop/web/workload-cert', headers: { cookie: ungranted.cookie } });
    assert.deepEqual(code(refused), [403, 'WORKLOAD_CERT_NOT_GRANTED'], refused.body);
    assert.match((refused.json() as { detail: string }).detail, /neither tls nor workloadCert/);
    const refusedAudit = ((await ownerRequest(kbs, 'GET', '/cocoon/v1/audit?policy=shop/web')).json() as { entries: AuditRecord[] }).entries.map((e) => JSON.parse(e.detail) as Record<string, unknown>);
    assert.ok(refusedAudit.some((d) => d.status === 'refused' && d.code === 'WORKLOAD_CERT_NOT_GRANTED' && d.resource === 'shop/web/workload-cert' && d.workload === 'nothing'), 'the refusal is audited');
    const a = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web', csr: pem });
    assert.equal(a.attest.statusCode, 200, a.attest.body);
    const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/shop/web/workload-cert', headers: { cookie: a.cookie } });
    assert.equal(res.statusCode, 200, res.body);
    const issued = JSON.parse(Buffer.from((await flattenedDecrypt(res.json() as never, a.key.privateKey)).plaintext).toString()) as { cert: string; chain: string };
    const cert = new x509.X509Certificate(issued.cert);
    const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey));
    assert.deepEqual(Buffer.from(cert.publicKey.rawData), spki, 'the certificate carries the CSR key');
    assert.deepEqual(workloadIdentityOf(cert), { v: 1, policy: 'shop/web', version: 1, workload: 'web', tee: 'sim', insecure: true });
    assert.match(cert.subject, /INSECURE/);
    assert.ok(cert.notAfter.getTime() - Date.now() <= 24 * 3_600_000 + 60_000);
    const ca = (await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/ca' })).json() as { root: string; intermediate: string };
    const chain = await new x509.X509ChainBuilder({ certificates: [new x509.X509Certificate(ca.intermediate), new x509.X509Certificate(ca.root)] }).build(cert);
    assert.equal(chain.length, 3);
    assert.equal(chain[2]?.subject, new x509.X509Certificate(ca.root).subject);
    assert.equal(new x509.X509Certificate(ca.root).publicKey.algorithm.name, 'ECDSA');

    // the bearer token path issues too
    const token = (a.attest.json() as { token: string }).token;
    const viaToken = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/shop/web/workload-cert', headers: { authorization: `Bearer ${token}` } });
    assert.equal(viaToken.statusCode, 200, viaToken.body);

    const tokenCert = new x509.X509Certificate((JSON.parse(Buffer.from((await flattenedDecrypt(viaToken.json() as never, a.key.privateKey)).plaintext).toString()) as { cert: string }).cert);

    // revocation shows up in the CRL, with its reason code; revoking again is a no-op
    const rev = await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: cert.serialNumber.toUpperCase(), reason: 'keyCompromise' });
    assert.equal(rev.statusCode, 200, rev.body);
    const serial = cert.serialNumber.toLowerCase();
    assert.deepEqual(rev.json(), { serial, reason: 'keyCompromise', revoked: true, certificates: [{ serial, alreadyRevoked: false, policy: 'shop/web', workload: 'web' }] });
    const twice = await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial, reason: 'keyCompromise' });
    assert.equal(twice.statusCode, 200, twice.body);
    assert.deepEqual((twice.json() as { revoked: boolean; certificates: { alreadyRevoked: boolean }[] }).revoked, false);
    assert.equal((twice.json() as { certificates: { alreadyRevoked: boolean }[] }).certificates[0]?.alreadyRevoked, true);
    // unknown serials are refused with a stable code, unless an administrator forces it
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: '0badc0de' })), [404, 'CERT_UNKNOWN']);
    assert.equal((await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: '0badc0de', force: true })).statusCode, 200);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial: '0badc0de', workload: 'shop/web#web' })), [400, 'BAD_USAGE']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { serial, reason: 'removeFromCRL' })), [400, 'INPUT_MALFORMED']);
    assert.deepEqual(code(await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { workload: 'shop/web#ghost' })), [404, 'CERT_UNKNOWN']);
    // by workload: every still-valid certificate of shop/web#web (the bearer-token one is new, the other already revoked)
    const byWorkload = await ownerRequest(kbs, 'POST', '/cocoon/v1/ca/revoke', { workload: 'shop/web#web', reason: 'superseded' });
    assert.equal(byWorkload.statusCode, 200, byWorkload.body);
    const bw = byWorkload.json() as { revoked: boolean; certificates: { serial: string; alreadyRevoked: boolean }[] };
    assert.equal(bw.revoked, true);
    assert.deepEqual(bw.certificates.map((c) => [c.serial, c.alreadyRevoked]).sort(), [[serial, true], [tokenCert.serialNumber.toLowerCase(), false]].sort());
    const revAudit = ((await ownerRequest(kbs, 'GET', '/cocoon/v1/audit?policy=shop/web')).json() as { entries: AuditRecord[] }).entries.filter((e) => e.action === 'ca.revoke');
    assert.equal(revAudit.length, 3, 'each revocation request of a shop/web certificate is audited');
    const crlPem = (await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/ca/crl' })).body;
    const crl = new x509.X509Crl(crlPem);
    assert.equal(crl.findRevoked(cert)?.reason, x509.X509CrlReason.keyCompromise);
    assert.equal(crl.findRevoked(tokenCert)?.reason, x509.X509CrlReason.superseded);
    // an independent implementation agrees: OpenSSL verifies the chain, and with the CRL refuses the leaf
    if (existsSync('/usr/bin/openssl')) {
      const tmp = mkdtempSync(join(tmpdir(), 'cocoon-ossl-'));
      try {
        writeFileSync(join(tmp, 'root.pem'), ca.root);
        writeFileSync(join(tmp, 'inter.pem'), ca.intermediate);
        writeFileSync(join(tmp, 'leaf.pem'), issued.cert);
        writeFileSync(join(tmp, 'crl.pem'), crlPem);
        const ok = spawnSync('openssl', ['verify', '-CAfile', join(tmp, 'root.pem'), '-untrusted', join(tmp, 'inter.pem'), '-purpose', 'sslclient', join(tmp, 'leaf.pem')], { encoding: 'utf8' });
        assert.equal(ok.status, 0, ok.stderr + ok.stdout);
        const revoked = spawnSync('openssl', ['verify', '-crl_check', '-CAfile', join(tmp, 'root.pem'), '-untrusted', join(tmp, 'inter.pem'), '-CRLfile', join(tmp, 'crl.pem'), join(tmp, 'leaf.pem')], { encoding: 'utf8' });
        assert.notEqual(revoked.status, 0);
        assert.match(revoked.stdout + revoked.stderr, /revoked/);
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    }

    // no CSR in the evidence → no certificate
    const plain = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web' });
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/shop/web/workload-cert', headers: { cookie: plain.cookie } })).statusCode, 401);
    // a CSR sent but not bound into report_data
    const auth = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web' });
    void auth;
    const other = await makeCsr();
    const unbound = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web', csr: pem });
    assert.equal(unbound.attest.statusCode, 200);
    const body = unbound.body as Record<string, Record<string, unknown>>;
    const swapped = { ...body, 'runtime-data': { ...body['runtime-data'], csr: other.pem } };
    const fresh = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } });
    const cookie = String(fresh.headers['set-cookie']).split(';')[0]!;
    const nonce = (fresh.json() as { nonce: string }).nonce;
    (swapped['runtime-data'] as Record<string, unknown>).nonce = nonce;
    const mismatch = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie }, payload: swapped });
    assert.equal(mismatch.statusCode, 401);
    assert.equal((mismatch.json() as { code: string }).code, 'REPORT_DATA_MISMATCH');
    const garbage = await rcarAttest(kbs, { policy: 'shop/web', workload: 'web', csr: 'bm90IGEgY3Ny' });
    assert.equal(garbage.attest.statusCode, 400);
    assert.equal((garbage.attest.json() as { code: string }).code, 'INPUT_MALFORMED');
  }
}
