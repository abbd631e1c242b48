/**
 * Init-data binding (CoCo initdata spec 0.1.0): TOML init-data in the attest request, its digest
 * in SNP HOST_DATA / TDX MRCONFIGID of generated, signed evidence, and `initData: bound`.
 */
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { verifyEvidence } from '../../src/attestation/index.js';
import { isCocoonError } from '../../src/errors.js';
import type { EvidenceVerifier } from '../../src/kbs/context.js';
import {
  KATA_INITDATA_ANNOTATION,
  MAX_INITDATA_BYTES,
  bindInitData,
  describeInitData,
  parseInitData,
  parseInitDataToml,
  registerValue,
  renderInitData,
} from '../../src/kbs/init-data.js';
import { rcarReportData } from '../../src/kbs/rcar-protocol.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { makeDcapWorld, AT as DCAP_AT } from '../attestation/fixtures/dcap.js';
import { makeSnpWorld, SNP_AT } from '../attestation/fixtures/snp.js';
import { MEASUREMENT, applyDemoPolicy, fakeEvidence, fakeVerifier, makeKbs, ownerRequest, sessionCookieOf, teeKey } from './helpers.js';
import type { TestKbs } from './helpers.js';

const SNP_LAUNCH = '5b'.repeat(48);
const MR_TD = '44'.repeat(48);

const POLICY = `name: demo/redis
secrets:
  redis-password: { kind: random, size: 32, encoding: hex }
workloads:
  redis:
    accept:
      - tee: [snp]
        snp: { measurement: "${SNP_LAUNCH}" }
        initData: bound
      - tee: [tdx]
        tdx: { mr_td: "${MR_TD}" }
        initData: bound
    secrets: [redis-password]
  worker:
    accept:
      - tee: [snp, sim]
        snp: { measurement: "${SNP_LAUNCH}" }
        measurement: "${MEASUREMENT}"
        initData: bound
  loose:
    accept:
      - tee: [snp]
        snp: { measurement: "${SNP_LAUNCH}" }
`;

/** A CoCo-style document: literal multi-line strings, a Kata agent policy, guest-component configs. */
const COCO_TOML = `version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://kbs.example:8080"
'''

"cocoon.json" = '''{"policy":"demo/redis","workload":"redis"}'''

"policy.rego" = '''
package agent_policy

default CreateContainerRequest := true
default ExecProcessRequest := false
'''
`;

function code(c: string) {
  return (e: unknown) => isCocoonError(e) && e.code === c;
}

test('TOML init-data: parsing, digest over the exact bytes, bounds', () => {
  const { doc, digest } = parseInitDataToml(COCO_TOML);
  assert.equal(doc.algorithm, 'sha384');
  assert.deepEqual(Object.keys(doc.data).sort(), ['aa.toml', 'cocoon.json', 'policy.rego']);
  assert.equal(digest.toString('hex'), createHash('sha384').update(COCO_TOML).digest('hex'));
  // The CoCo-shaped attest request's init-data (format toml) selects the workload.
  const parsed = parseInitData({ format: 'toml', body: COCO_TOML });
  assert.deepEqual(parsed.target, { policy: 'demo/redis', workload: 'redis' });
  assert.equal(parsed.toml?.algorithm, 'sha384');
  // JSON stays as it was (unbound selection).
  assert.deepEqual(parseInitData({ format: 'json', body: '{"policy":"demo/redis","workload":"redis"}' }), { format: 'json', target: { policy: 'demo/redis', workload: 'redis' } });

  assert.throws(() => parseInitData({ format: 'yaml', body: '' }), code('INPUT_MALFORMED'));
  assert.throws(() => parseInitData({ format: 'toml', body: `${COCO_TOML}\n# ${'x'.repeat(MAX_INITDATA_BYTES)}` }), code('INPUT_TOO_LARGE'));
  for (const bad of [
    'version = "0.1.0"\nalgorithm = "sha256"\n[data\n', // not TOML
    'version = "0.1.0"\nalgorithm = "sha256"\nalgorithm = "sha384"\n', // duplicate key
    'version = "0.2.0"\nalgorithm = "sha256"\n[data]\n"cocoon.json" = \'{"policy":"a/b","workload":"w"}\'\n',
    'version = "0.1.0"\nalgorithm = "sha-256"\n[data]\n"cocoon.json" = \'{"policy":"a/b","workload":"w"}\'\n',
    'version = "0.1.0"\nalgorithm = "md5"\n[data]\n',
    'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nx = 1\n',
    'version = "0.1.0"\nalgorithm = "sha256"\nextra = "y"\n[data]\n',
    'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"cocoon.json" = "not json"\n',
    'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"cocoon.json" = \'{"policy":"A/B","workload":"w"}\'\n',
    'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"cocoon.json" = \'{"policy":"a/b","workload":"w","extra":1}\'\n',
    'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"other" = "x"\n', // no cocoon.json
    'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"__proto__" = "x"\n',
  ]) {
    assert.throws(() => parseInitData({ format: 'toml', body: bad }), code('INPUT_MALFORMED'), bad);
  }
});

test('register values: truncated / zero-padded at the end, as CoCo and Kata do', () => {
  const d256 = createHash('sha256').update('x').digest();
  const d384 = createHash('sha384').update('x').digest();
  assert.equal(registerValue(d256, 32).toString('hex'), d256.toString('hex'));
  assert.equal(registerValue(d256, 48).toString('hex'), d256.toString('hex') + '00'.repeat(16));
  assert.equal(registerValue(d384, 32).toString('hex'), d384.subarray(0, 32).toString('hex'));
  assert.equal(registerValue(d384, 48).toString('hex'), d384.toString('hex'));
  const r = renderInitData({ policy: 'shop/web', workload: 'web', kbsUrl: 'https://kbs.example', algorithm: 'sha256' });
  assert.equal(r.hostData, r.digest);
  assert.equal(r.mrConfigId, r.digest + '00'.repeat(16));
  assert.equal(gunzipSync(Buffer.from(r.annotation, 'base64')).toString('utf8'), r.toml);
  assert.deepEqual(parseInitData({ format: 'toml', body: r.toml }).target, { policy: 'shop/web', workload: 'web' });
  assert.equal(renderInitData({ policy: 'shop/web', workload: 'web', kbsUrl: 'https://kbs.example' }).toml, r.toml, 'deterministic');
  assert.equal(describeInitData(COCO_TOML).digest, createHash('sha384').update(COCO_TOML).digest('hex'));
  assert.equal(KATA_INITDATA_ANNOTATION, 'io.katacontainers.config.hypervisor.cc_init_data');
  // bindInitData drops forged binding claims from the verifier's claims.
  const claims = { init_data_binding: 'host_data', init_data_digest: 'sha256:00' };
  assert.equal(bindInitData(parseInitData({ format: 'json', body: '{"policy":"a/b","workload":"w"}' }), 'snp', claims), undefined);
  assert.deepEqual(claims, {});
});

test('policy syntax: initData: bound (schema + parser)', () => {
  const p = parsePolicy(POLICY);
  assert.equal(p.workloads.redis?.accept[0]?.initData, 'bound');
  assert.equal(p.workloads.loose?.accept[0]?.initData, undefined);
  assert.throws(() => parsePolicy(POLICY.replace('initData: bound\n      - tee: [tdx]', 'initData: yes\n      - tee: [tdx]')), code('POLICY_INVALID'));
  assert.throws(() => parsePolicy(`name: a/b\nworkloads:\n  w:\n    accept:\n      - tee: [sim]\n        measurement: "${MEASUREMENT}"\n        initData: bound\n`), code('POLICY_INVALID'));
  const schema = JSON.parse(readFileSync(new URL('../../docs/policy.schema.json', import.meta.url), 'utf8')) as { properties: { workloads: { additionalProperties: { properties: { accept: { items: { properties: Record<string, unknown> } } } } } } };
  assert.deepEqual(schema.properties.workloads.additionalProperties.properties.accept.items.properties.initData, { const: 'bound' });
});

interface Evidence {
  tee: 'snp' | 'tdx' | 'sim';
  /** Register value the "host" set at launch (HOST_DATA / MRCONFIGID). */
  register?: Buffer;
}

type Attest = (ev: Evidence, initData: { format: string; body: string }) => Promise<{ status: number; body: Record<string, unknown>; cookie: string }>;

/** KBS whose verifier checks generated SNP reports / TDX quotes (fixture CA hierarchies) and fake sim evidence; cleaned up after `t`. */
async function bindingKbs(t: TestContext): Promise<{ kbs: TestKbs; attest: Attest }> {
  let trust: { snp?: ReturnType<typeof makeSnpWorld>; tdx?: ReturnType<typeof makeDcapWorld> } = {};
  const verifier: EvidenceVerifier = async (tee, evidence, opts) => {
    if (tee === 'snp' && trust.snp) return verifyEvidence('snp', Buffer.from((evidence as { report: string }).report, 'base64'), { anchors: trust.snp.anchors, certs: trust.snp.certs }, { at: SNP_AT, reportData: opts.reportData });
    if (tee === 'tdx' && trust.tdx) return verifyEvidence('tdx', Buffer.from((evidence as { quote: string }).quote, 'base64'), { anchors: trust.tdx.anchors, collateral: trust.tdx.collateral }, { at: DCAP_AT, reportData: opts.reportData });
    return fakeVerifier(tee, evidence, opts);
  };
  const kbs = await makeKbs({ verifier });
  t.after(() => kbs.cleanup());
  await applyDemoPolicy(kbs, POLICY);
  return {
    kbs,
    async attest(ev, initData) {
      const auth = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: ev.tee, 'extra-params': {} } });
      assert.equal(auth.statusCode, 200, auth.body);
      const cookie = sessionCookieOf(auth);
      const nonce = (auth.json() as { nonce: string }).nonce;
      const key = await teeKey();
      const rd = rcarReportData(nonce, key.jwk);
      let primary: unknown;
      if (ev.tee === 'snp') {
        trust = { snp: makeSnpWorld({ reportData: rd, ...(ev.register ? { hostData: ev.register } : {}) }) };
        primary = { report: trust.snp!.report.toString('base64') };
      } else if (ev.tee === 'tdx') {
        trust = { tdx: makeDcapWorld({ tee: 'tdx', reportData: rd, ...(ev.register ? { mrConfigId: ev.register } : {}) }) };
        primary = { quote: trust.tdx!.quote.toString('base64') };
      } else {
        primary = fakeEvidence(rd);
      }
      const res = await kbs.app.inject({
        method: 'POST',
        url: '/kbs/v0/attest',
        headers: { cookie },
        payload: { 'init-data': initData, 'runtime-data': { nonce, 'tee-pubkey': key.jwk }, 'tee-evidence': { primary_evidence: primary, additional_evidence: '' } },
      });
      return { status: res.statusCode, body: res.json() as Record<string, unknown>, cookie };
    },
  };
}

const toml = (workload: string, algorithm: 'sha256' | 'sha384' = 'sha256') => renderInitData({ policy: 'demo/redis', workload, kbsUrl: 'https://kbs.example:8443', algorithm });
const hostData = (r: { hostData: string }) => Buffer.from(r.hostData, 'hex');
const mrConfigId = (r: { mrConfigId: string }) => Buffer.from(r.mrConfigId, 'hex');

/** `redis` init-data of `algorithm`, its digest in the TEE's register as the host set it: accepted. */
async function attestBound(attest: Attest, tee: 'snp' | 'tdx', algorithm: 'sha256' | 'sha384'): Promise<{ body: Record<string, unknown>; cookie: string }> {
  const doc = toml('redis', algorithm);
  const ok = await attest({ tee, register: tee === 'snp' ? hostData(doc) : mrConfigId(doc) }, { format: 'toml', body: doc.toml });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  return ok;
}

test('SNP: HOST_DATA = init-data digest → accepted, selection from the bound document; otherwise refused', async (t) => {
  const { kbs, attest } = await bindingKbs(t);

  for (const alg of ['sha256', 'sha384'] as const) {
    const ok = await attestBound(attest, 'snp', alg);
    const pw = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie: ok.cookie } });
    assert.equal(pw.statusCode, 200, pw.body);
    const viaToken = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { authorization: `Bearer ${String(ok.body.token)}` } });
    assert.equal(viaToken.statusCode, 200, viaToken.body);
  }
  // The CoCo-style document (sha384, truncated into 32 bytes of HOST_DATA).
  const coco = describeInitData(COCO_TOML);
  assert.equal((await attest({ tee: 'snp', register: hostData(coco) }, { format: 'toml', body: COCO_TOML })).status, 200);

  // A host that launched the VM for `worker` cannot present init-data for `redis` (and vice versa).
  const redis = toml('redis');
  const worker = toml('worker');
  const retarget = await attest({ tee: 'snp', register: hostData(worker) }, { format: 'toml', body: redis.toml });
  assert.equal(retarget.status, 401);
  assert.equal(retarget.body.code, 'INIT_DATA_MISMATCH');
  // Altered init-data (one byte) with the original digest in HOST_DATA.
  const altered = await attest({ tee: 'snp', register: hostData(redis) }, { format: 'toml', body: redis.toml.replace('sha256"', 'sha256" ') });
  assert.equal(altered.body.code, 'INIT_DATA_MISMATCH');
  // No HOST_DATA at all (zeros).
  assert.equal((await attest({ tee: 'snp' }, { format: 'toml', body: redis.toml })).body.code, 'INIT_DATA_MISMATCH');
  // The rule requires binding: JSON init-data is refused, with its own code.
  const unbound = await attest({ tee: 'snp', register: hostData(redis) }, { format: 'json', body: '{"policy":"demo/redis","workload":"redis"}' });
  assert.equal(unbound.status, 401);
  assert.equal(unbound.body.code, 'INIT_DATA_NOT_BOUND');
  // A workload whose rules do not ask for binding still accepts JSON.
  const loose = await attest({ tee: 'snp' }, { format: 'json', body: '{"policy":"demo/redis","workload":"loose"}' });
  assert.equal(loose.status, 200);
  // ...until the policy starts asking for it: the session's next release is re-appraised and refused with the binding code.
  const head = (await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/demo/redis')).json() as { hash: string };
  const stricter = POLICY.replace(/( {2}loose:\n {4}accept:\n {6}- tee: \[snp\]\n {8}snp: \{ measurement: "[0-9a-f]+" \}\n)/, '$1        initData: bound\n');
  assert.notEqual(stricter, POLICY);
  assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: stricter, predecessor: head.hash })).statusCode, 200);
  const refused = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/launch-plan', headers: { cookie: loose.cookie } });
  assert.equal(refused.statusCode, 401, refused.body);
  assert.equal((refused.json() as { code: string }).code, 'INIT_DATA_NOT_BOUND');

  const events = (await ownerRequest(kbs, 'GET', '/cocoon/v1/events?limit=50')).json() as { events: { status: string; code: string | null; detail: string; workload: string | null }[] };
  assert.ok(events.events.some((e) => e.status === 'affirming' && e.detail.includes('init-data bound (host_data, sha256)')), JSON.stringify(events.events.map((e) => e.detail)));
  assert.ok(events.events.some((e) => e.code === 'INIT_DATA_MISMATCH'));
  const audit = await ownerRequest(kbs, 'GET', '/cocoon/v1/audit?limit=50');
  assert.equal(audit.statusCode, 200, audit.body);
  const entries = (audit.json() as { entries: { action: string; detail: string }[] }).entries;
  assert.ok(entries.some((e) => e.action === 'attest' && (JSON.parse(e.detail) as { initData?: { register?: string } }).initData?.register === 'host_data'));
});

test('TDX: MRCONFIGID = init-data digest (sha256 zero-padded, sha384 exact) → accepted; otherwise refused', async (t) => {
  const { attest } = await bindingKbs(t);
  for (const alg of ['sha256', 'sha384'] as const) await attestBound(attest, 'tdx', alg);
  // sha256 digest *not* padded the CoCo way (e.g. repeated) does not bind.
  const doc = toml('redis');
  const wrongPad = Buffer.concat([Buffer.from(doc.digest, 'hex'), Buffer.from(doc.digest, 'hex').subarray(0, 16)]);
  assert.equal((await attest({ tee: 'tdx', register: wrongPad }, { format: 'toml', body: doc.toml })).body.code, 'INIT_DATA_MISMATCH');
  assert.equal((await attest({ tee: 'tdx', register: mrConfigId(toml('worker')) }, { format: 'toml', body: doc.toml })).body.code, 'INIT_DATA_MISMATCH');
  assert.equal((await attest({ tee: 'tdx', register: mrConfigId(doc) }, { format: 'json', body: '{"policy":"demo/redis","workload":"redis"}' })).body.code, 'INIT_DATA_NOT_BOUND');
});

test('a rule that requires binding refuses a TEE without an init-data register (sim)', async (t) => {
  const { attest } = await bindingKbs(t);
  const doc = toml('worker');
  for (const initData of [{ format: 'toml', body: doc.toml }, { format: 'json', body: '{"policy":"demo/redis","workload":"worker"}' }]) {
    const res = await attest({ tee: 'sim' }, initData);
    assert.equal(res.status, 401, JSON.stringify(res.body));
    assert.equal(res.body.code, 'INIT_DATA_NOT_BOUND');
    assert.match(String(res.body.detail), /sim evidence has no init-data register/);
  }
});

test('k8s kata-cc: the init-data annotation is added, kept when current, merged into an existing document', async () => {
  const { transformManifests } = await import('../../src/k8s/transform.js');
  const pod = (annotations: Record<string, string> = {}) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', annotations }, spec: { containers: [{ name: 'c', image: 'x' }] } });
  const opts = { image: 'registry.example/app-cc:1', policy: 'demo/redis', workload: 'redis', kbsUrl: 'https://kbs.example:8443', target: 'kata-cc' as const, runtimeClass: 'kata-qemu-tdx' };
  const annOf = (r: { objects: unknown[] }) => (r.objects[0] as { metadata: { annotations: Record<string, string> } }).metadata.annotations[KATA_INITDATA_ANNOTATION] as string;
  const first = annOf(transformManifests([pod()], opts));
  assert.equal(first, renderInitData({ policy: 'demo/redis', workload: 'redis', kbsUrl: 'https://kbs.example:8443' }).annotation);
  assert.equal(annOf(transformManifests([pod({ [KATA_INITDATA_ANNOTATION]: first })], opts)), first);
  const mine = renderInitData({ policy: 'other/app', workload: 'x', algorithm: 'sha384', data: { 'policy.rego': 'package agent_policy\n' } });
  const merged = describeInitData(gunzipSync(Buffer.from(annOf(transformManifests([pod({ [KATA_INITDATA_ANNOTATION]: mine.annotation })], opts)), 'base64')).toString('utf8'));
  const doc = parseInitDataToml(merged.toml).doc;
  assert.equal(doc.algorithm, 'sha384');
  assert.equal(doc.data['policy.rego'], 'package agent_policy\n');
  assert.deepEqual(parseInitData({ format: 'toml', body: merged.toml }).target, { policy: 'demo/redis', workload: 'redis' });
  assert.throws(() => transformManifests([pod({ [KATA_INITDATA_ANNOTATION]: 'not-gzip' })], opts), code('INPUT_MALFORMED'));
});

test('cocoon initdata: TOML, digests and annotation; --from describes a file', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const cli = (args: string[]) => execFileSync(process.execPath, ['--import', 'tsx', new URL('../../src/cli/main.ts', import.meta.url).pathname, ...args], { encoding: 'utf8' });
  const out = JSON.parse(cli(['initdata', '--policy', 'shop/web', '--workload', 'web', '--kbs-url', 'https://kbs.example', '--algorithm', 'sha384', '--json'])) as { toml: string; digest: string; hostData: string; mrConfigId: string; annotation: { name: string; value: string } };
  const want = renderInitData({ policy: 'shop/web', workload: 'web', kbsUrl: 'https://kbs.example', algorithm: 'sha384' });
  assert.deepEqual(out, { toml: want.toml, algorithm: 'sha384', digest: want.digest, hostData: want.hostData, mrConfigId: want.mrConfigId, annotation: { name: KATA_INITDATA_ANNOTATION, value: want.annotation } });
  assert.equal(out.mrConfigId, out.digest);
  assert.equal(out.hostData, out.digest.slice(0, 64));
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-initdata-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'i.toml');
  writeFileSync(file, COCO_TOML);
  const described = JSON.parse(cli(['initdata', '--from', file, '--json'])) as { digest: string };
  assert.equal(described.digest, createHash('sha384').update(COCO_TOML).digest('hex'));
  const help = cli(['initdata', '--help']);
  for (const flag of ['--policy', '--workload', '--kbs-url', '--algorithm', '--agent-policy', '--data', '--from', '--out', '--json']) assert.ok(help.includes(flag), flag);
});
