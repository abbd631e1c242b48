import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CocoonError } from '../../src/errors.js';
import { diffPolicies, evaluateAccept, formatPolicyDiff, parsePolicy, parseTemplate, POLICY_JSON_SCHEMA } from '../../src/policy/index.js';
import { ownerKeyThumbprint, policySchemaErrors } from '../../src/policy/parse.js';

const M = 'ab'.repeat(48);
const OWNER_A = { kty: 'EC', crv: 'P-256', x: 'A'.repeat(43), y: 'B'.repeat(43) };
const OWNER_B = { kty: 'OKP', crv: 'Ed25519', x: 'C'.repeat(43) };

export const FULL = `name: shop/web
owners:
  - { name: alice, key: { kty: EC, crv: P-256, x: ${OWNER_A.x}, y: ${OWNER_A.y} } }
  - { name: bob, key: { kty: OKP, crv: Ed25519, x: ${OWNER_B.x} } }
approvals: { threshold: 2 }
exports:
  db-password: [shop/batch]
secrets:
  db-password: { kind: random, size: 24, encoding: ascii }
  session: { kind: random, size: 16, encoding: hex, scope: instance }
  signing: { kind: keypair, keyType: Ed25519 }
  shop-ca: { kind: x509-ca, keyType: P-256, subject: "CN=shop CA", validityDays: 30 }
  tls: { kind: x509, issuer: deployment, usage: server, sans: [web.shop.local, 10.0.0.1], validityDays: 7 }
  client: { kind: x509, issuer: shop-ca, usage: client, keyType: RSA-2048, keyUsage: [digitalSignature, keyEncipherment] }
  upstream: { kind: imported, from: shop/vault/api-key }
workloads:
  web:
    maxActivations: 3
    accept:
      - tee: [sgx]
        sgx: { mrenclave: ["${'11'.repeat(32)}"], mrsigner: "${'22'.repeat(32)}", isvprodid: 1, minIsvsvn: 2 }
        tcb: { statuses: [UpToDate, SWHardeningNeeded], advisories: [INTEL-SA-00615] }
      - tee: [tdx]
        tdx: { mr_td: "${'33'.repeat(48)}", rtmr3: "${'44'.repeat(48)}" }
      - tee: [snp]
        snp: { measurement: "${'55'.repeat(48)}", host_data: "${'66'.repeat(32)}" }
        minSvn: { guest_svn: 1, current_tcb.snp: 20 }
      - tee: [tpm]
        pcrs: { pcr07: "${'77'.repeat(32)}" }
      - tee: [sim]
        measurement: "${M}"
    secrets: [db-password, session, signing, tls, client, upstream]
    env:
      DB: "{{ secret.db-password }}"
      SESSION: "{{ secret.session }}"
      SIGNING_PUB: "{{ secret.signing.public | base64 }}"
    files:
      - { path: /run/tls/cert.pem, content: "{{ secret.tls.cert }}{{ secret.tls.chain }}" }
      - { path: /run/tls/key.pem, content: "{{ secret.tls.key }}" }
      - { path: /run/client.pem, content: "{{ secret.client.cert }}" }
`;

function invalid(text: string, pattern: RegExp): CocoonError {
  try {
    parsePolicy(text, { file: 'p.yaml' });
  } catch (err) {
    assert.ok(err instanceof CocoonError && err.code === 'POLICY_INVALID', String(err));
    assert.match(err.message, pattern);
    assert.match(err.message, /^p\.yaml:\d+:\d+: /);
    return err;
  }
  assert.fail(`expected POLICY_INVALID for ${pattern}`);
}

test('docs/policy.schema.json is the schema the parser uses, and a full policy conforms', () => {
  const published = JSON.parse(readFileSync(new URL('../../docs/policy.schema.json', import.meta.url), 'utf8')) as unknown;
  assert.deepEqual(published, JSON.parse(JSON.stringify(POLICY_JSON_SCHEMA)));
  const p = parsePolicy(FULL);
  assert.equal(p.owners.length, 2);
  assert.equal(p.owners[0]?.kid, ownerKeyThumbprint(OWNER_A));
  assert.deepEqual(p.approvals, { threshold: 2 });
  assert.deepEqual(p.exports, { 'db-password': ['shop/batch'] });
  assert.deepEqual(p.secrets.upstream, { kind: 'imported', ownerReadable: false, from: { policy: 'shop/vault', secret: 'api-key' } });
  assert.equal(p.secrets.tls?.kind === 'x509' && p.secrets.tls.subject, 'CN=web.shop.local');
  assert.equal(p.workloads.web?.maxActivations, 3);
  assert.deepEqual(p.workloads.web?.accept[0]?.tcb, { statuses: ['UpToDate', 'SWHardeningNeeded'], advisories: ['INTEL-SA-00615'] });
  const t = p.workloads.web?.files[0]?.content.parts;
  assert.deepEqual(t, [
    { secret: 'tls', field: 'cert', filter: 'raw' },
    { secret: 'tls', field: 'chain', filter: 'raw' },
  ]);
  assert.deepEqual(policySchemaErrors({ name: 'a/b', workloads: { w: { accept: [{ tee: ['sim'], measurement: M }] } } }), []);
  assert.ok(policySchemaErrors({ name: 'a/b', workloads: { w: { accept: [{ tee: ['sim'] }] } } }).length > 0, 'a rule without any measurement is refused');
});

test('schema-only violations still carry file:line:column', () => {
  const err = invalid(FULL.replace(`x: ${OWNER_B.x} } }`, `x: ${OWNER_B.x}, use: enc } }`), /JSON Schema|must/);
  assert.equal(err.details?.line, 4);
});

test('policy language refusals with positions', () => {
  invalid(FULL.replace('threshold: 2', 'threshold: 3'), /exceeds the number of owners/);
  invalid(FULL.replace('[shop/batch]', '[shop/web]'), /another policy/);
  invalid(FULL.replace('issuer: shop-ca', 'issuer: nope'), /x509-ca secret declared above/);
  invalid(FULL.replace('keyType: Ed25519', 'keyType: P-521'), /keyType must be one of/);
  invalid(FULL.replace('10.0.0.1', 'bad host!'), /SAN/);
  invalid(FULL.replace('{{ secret.tls.key }}', '{{ secret.tls }}'), /needs a field/);
  invalid(FULL.replace('{{ secret.db-password }}', '{{ secret.db-password.cert }}'), /has no field/);
  invalid(FULL.replace('{{ secret.signing.public | base64 }}', '{{ secret.signing.chain }}'), /needs a field: \.key, \.public/);
  invalid(FULL.replace(`isvprodid: 1, `, ''), /mrsigner needs isvprodid/);
  invalid(FULL.replace(`mr_td: "${'33'.repeat(48)}"`, `mr_td: "33"`), /96 hex/);
  invalid(FULL.replace('pcr07', 'pcr99'), /pcr00 … pcr23/);
  invalid(FULL.replace('tee: [tdx]', 'tee: [snp]'), /tdx values given/);
  invalid(FULL.replace(`        measurement: "${M}"\n`, ''), /at least one measurement/);
  invalid(FULL.replace('maxActivations: 3', 'maxActivations: 0'), /maxActivations/);
  invalid(FULL.replace('from: shop/vault/api-key', 'from: shop/vault'), /org\/app\/secret/);
  invalid(FULL.replace('scope: instance', 'scope: global'), /scope must be/);
  invalid(FULL.replace('  db-password: [shop/batch]', '  session: [shop/batch]'), /per-instance secret cannot be exported/);
  invalid(FULL.replace('kty: EC, crv: P-256', 'kty: EC, crv: P-384'), /public JWK/);
  invalid(FULL.replace('predecessor', 'x').replace('name: shop/web\n', 'name: shop/web\npredecessor: abc\n'), /sha256:/);
});

test('templates: fields parse, a secret named with a dot still resolves', () => {
  assert.deepEqual(parseTemplate('{{ secret.a.key | base64 }}').parts, [{ secret: 'a', field: 'key', filter: 'base64' }]);
  const p = parsePolicy(`name: a/b
secrets:
  tls.key: { kind: random, size: 4, encoding: hex }
workloads:
  w:
    accept: [{ tee: [sim], measurement: "${M}" }]
    secrets: [tls.key]
    env: { K: "{{ secret.tls.key }}" }
`);
  assert.deepEqual(p.workloads.w?.env.K?.parts, [{ secret: 'tls.key', filter: 'raw' }]);
});

test('evaluation against normalized claims: sgx, tdx, snp, pcrs, tcb, advisories, minimum SVNs, debug', () => {
  const w = parsePolicy(FULL).workloads.web!;
  const sgx = { mrenclave: '11'.repeat(32), mrsigner: '22'.repeat(32), isvprodid: 1, isvsvn: 2, debug: false };
  const ok = (tee: 'sgx' | 'tdx' | 'snp' | 'tpm' | 'sim', claims: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
    evaluateAccept(w, { tee, measurement: undefined, debug: claims.debug === true, allowSim: false, claims: claims as never, ...extra });
  assert.equal(ok('sgx', sgx, { tcbStatus: 'UpToDate' }).allowed, true);
  assert.equal(ok('sgx', sgx, { tcbStatus: 'SWHardeningNeeded', advisories: ['INTEL-SA-00615'] }).allowed, true);
  const adv = ok('sgx', sgx, { tcbStatus: 'SWHardeningNeeded', advisories: ['INTEL-SA-00615', 'INTEL-SA-00999'] });
  assert.equal(adv.allowed, false);
  assert.match(!adv.allowed ? adv.reasons[0] ?? '' : '', /INTEL-SA-00999/);
  assert.equal(ok('sgx', sgx, { tcbStatus: 'OutOfDate' }).allowed, false);
  assert.equal(ok('sgx', { ...sgx, isvsvn: 1 }).allowed, false);
  assert.equal(ok('sgx', { ...sgx, mrenclave: '12'.repeat(32) }).allowed, false);
  assert.equal(ok('sgx', { ...sgx, isvprodid: 2 }).allowed, false);
  assert.equal(ok('sgx', { ...sgx, debug: true }).allowed, false);
  assert.equal(ok('tdx', { mr_td: '33'.repeat(48), rtmr3: '44'.repeat(48) }).allowed, true);
  assert.equal(ok('tdx', { mr_td: '33'.repeat(48), rtmr3: '45'.repeat(48) }).allowed, false);
  const snp = { measurement: '55'.repeat(48), host_data: '66'.repeat(32), guest_svn: 1, current_tcb: { snp: 20 } };
  assert.equal(ok('snp', snp).allowed, true);
  assert.equal(ok('snp', { ...snp, current_tcb: { snp: 19 } }).allowed, false);
  assert.equal(ok('snp', { ...snp, guest_svn: 0 }).allowed, false);
  assert.equal(ok('tpm', { pcr07: '77'.repeat(32) }).allowed, true);
  assert.equal(ok('tpm', { pcr07: '78'.repeat(32) }).allowed, false);
  // the workload measurement rule needs allowSim for sim and the claim `measurement`
  assert.equal(evaluateAccept(w, { tee: 'sim', measurement: M, debug: false, allowSim: true }).allowed, true);
  assert.equal(evaluateAccept(w, { tee: 'sim', measurement: M, debug: false, allowSim: false }).allowed, false);
});

test('policy diff names what an update changes', () => {
  const a = parsePolicy(FULL);
  const b = parsePolicy(FULL.replace('maxActivations: 3', 'maxActivations: 5').replace('  upstream: { kind: imported, from: shop/vault/api-key }\n', '').replace(', upstream]', ']').replace('approvals: { threshold: 2 }', 'approvals: { threshold: 1 }'));
  const changes = diffPolicies(a, b);
  const paths = changes.map((c) => `${c.op} ${c.path}`);
  assert.ok(paths.includes('changed workloads.web.maxActivations'), paths.join('\n'));
  assert.ok(paths.includes('removed secrets.upstream'), paths.join('\n'));
  assert.ok(paths.includes('changed approvals.threshold'), paths.join('\n'));
  assert.match(formatPolicyDiff(changes), /~ workloads\.web\.maxActivations: 3 → 5/);
  assert.equal(formatPolicyDiff(diffPolicies(a, a)), 'no changes');
  assert.ok(diffPolicies(undefined, a).every((c) => c.op === 'added'));
});
