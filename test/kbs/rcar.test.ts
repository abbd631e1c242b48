import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeJwt, flattenedDecrypt } from 'jose';
import { parseLaunchPlan } from '../../src/kbs/launch-plan.js';
import { COCO_ERROR_BASE } from '../../src/kbs/problem.js';
import { MEASUREMENT, OTHER_MEASUREMENT, POLICY_YAML, applyDemoPolicy, makeKbs, ownerRequest, rcarAttest, teeKey, withKbs } from './helpers.js';
import type { TestKbs } from './helpers.js';

interface EarClaims {
  eat_profile: string;
  iat: number;
  exp: number;
  'cocoon.insecure'?: string;
  submods: { cpu0: { 'ear.status': string; 'ear.trustworthiness-vector': Record<string, number>; 'ear.veraison.annotated-evidence': { measurement: string; runtime_data_claims: Record<string, unknown> } } };
}

async function importLayerKey(kbs: TestKbs): Promise<void> {
  const res = await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/layer-key', { value: Buffer.alloc(32, 7).toString('base64') });
  assert.equal(res.statusCode, 200, res.body);
}

function assertProblem(res: { statusCode: number; json(): unknown }, status: number, code: string, cocoType?: string): void {
  const body = res.json() as Record<string, unknown>;
  assert.equal(res.statusCode, status, JSON.stringify(body));
  assert.equal(body.code, code, JSON.stringify(body));
  assert.equal(typeof body.detail, 'string');
  if (cocoType) assert.equal(body.type, `${COCO_ERROR_BASE}${cocoType}`);
}

async function events(kbs: TestKbs) {
  const res = await ownerRequest(kbs, 'GET', '/cocoon/v1/events?limit=50');
  assert.equal(res.statusCode, 200, res.body);
  return (res.json() as { events: { kind: string; status: string; code: string | null; detail: string; insecure: boolean; resource: string | null }[] }).events;
}

test('happy path: launch plan and a secret via cookie, EAR claims, INSECURE notices', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    await importLayerKey(kbs);
    const { attest, cookie, key } = await rcarAttest(kbs);
    assert.equal(attest.statusCode, 200, attest.body);
    const body = attest.json() as { token: string; warning: string };
    assert.equal(body.warning, 'INSECURE: simulated TEE');
    assert.equal(attest.headers['x-cocoon-warning'], 'INSECURE: simulated TEE');
    const claims = decodeJwt(body.token) as unknown as EarClaims;
    assert.equal(claims.eat_profile, 'tag:github.com,2023:veraison/ear');
    assert.equal(claims.submods.cpu0['ear.status'], 'affirming');
    assert.equal(claims.submods.cpu0['ear.trustworthiness-vector'].hardware, 2);
    assert.equal(claims.submods.cpu0['ear.veraison.annotated-evidence'].measurement, MEASUREMENT);
    assert.deepEqual(claims.submods.cpu0['ear.veraison.annotated-evidence'].runtime_data_claims['tee-pubkey'], key.jwk);
    assert.equal(claims['cocoon.insecure'], 'INSECURE: simulated TEE');
    assert.ok(claims.exp - claims.iat <= 300);

    const planRes = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/launch-plan', headers: { cookie } });
    assert.equal(planRes.statusCode, 200, planRes.body);
    const jwe = planRes.json() as Record<string, string>;
    assert.deepEqual(Object.keys(jwe).sort(), ['ciphertext', 'encrypted_key', 'iv', 'protected', 'tag']);
    const header = JSON.parse(Buffer.from(jwe.protected!, 'base64url').toString()) as Record<string, unknown>;
    assert.equal(header.alg, 'ECDH-ES+A256KW');
    assert.equal(header.enc, 'A256GCM');
    const plan = parseLaunchPlan((await flattenedDecrypt(jwe as never, key.privateKey)).plaintext);
    assert.equal(plan.insecure, true);
    assert.deepEqual(plan.layerKey, Buffer.alloc(32, 7));
    assert.match(plan.env.REDIS_PW!, /^[0-9a-f]{64}$/);
    assert.equal(plan.files[0]?.content.toString(), `requirepass ${plan.env.REDIS_PW}\n`);
    assert.equal(plan.files[0]?.mode, 0o400);
    assert.deepEqual(plan.args, ['redis-server', '/run/cocoon/redis.conf']);

    const pw = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie } });
    assert.equal(pw.statusCode, 200);
    assert.equal(Buffer.from((await flattenedDecrypt(pw.json(), key.privateKey)).plaintext).toString(), plan.env.REDIS_PW);

    // the same resources with the EAR token as bearer (no cookie)
    const viaToken = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { authorization: `Bearer ${body.token}` } });
    assert.equal(viaToken.statusCode, 200, viaToken.body);

    const ev = await events(kbs);
    assert.ok(ev.some((e) => e.kind === 'attest' && e.status === 'affirming' && e.insecure && e.detail.includes('INSECURE: simulated TEE')));
    const metrics = await kbs.app.inject({ method: 'GET', url: '/metrics' });
    assert.match(metrics.body, /cocoon_kbs_attestations_total\{tee="sim",status="affirming"\} 1/);
    assert.match(metrics.body, /cocoon_kbs_releases_total\{status="released"\} 3/);
    assert.ok(ev.some((e) => e.kind === 'release' && e.resource === 'demo/redis/launch-plan'));
  }));

test('measurement not in policy → POLICY_DENIED and nothing released', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    await importLayerKey(kbs);
    const { attest, cookie } = await rcarAttest(kbs, { measurement: 'ef'.repeat(48) });
    assertProblem(attest, 401, 'POLICY_DENIED', 'PolicyDeny');
    assert.match((attest.json() as { detail: string }).detail, /measurement/);
    for (const name of ['launch-plan', 'redis-password', 'layer-key']) {
      const res = await kbs.app.inject({ method: 'GET', url: `/kbs/v0/resource/demo/redis/${name}`, headers: { cookie } });
      assertProblem(res, 401, 'AUTH_REQUIRED', 'TokenNotFound');
    }
    const ev = await events(kbs);
    assert.ok(ev.some((e) => e.kind === 'attest' && e.status === 'contraindicated' && e.code === 'POLICY_DENIED'));
    assert.ok(!ev.some((e) => e.kind === 'release' && e.status === 'affirming'));
  }));

test('replayed attest with an old nonce is refused', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const first = await rcarAttest(kbs);
    assert.equal(first.attest.statusCode, 200);
    // same session, same body again
    const again = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie: first.cookie }, payload: first.body! });
    assertProblem(again, 401, 'NONCE_INVALID', 'AttestationError');
    // a fresh session, but the old nonce and evidence
    const auth = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } });
    const cookie = String(auth.headers['set-cookie']).split(';')[0]!;
    const replay = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie }, payload: first.body! });
    assertProblem(replay, 401, 'NONCE_INVALID');
    // and the challenge of that fresh session is burnt by the failed attempt
    const body2 = structuredClone(first.body!);
    body2['runtime-data'].nonce = (auth.json() as { nonce: string }).nonce;
    const after = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie }, payload: body2 });
    assertProblem(after, 401, 'NONCE_INVALID');
    // no cookie at all
    const none = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', payload: first.body! });
    assertProblem(none, 401, 'NONCE_INVALID');
  }));

test('a stale (expired) challenge is refused', async () => {
  let now = Date.now();
  await withKbs(
    async (kbs) => {
      await applyDemoPolicy(kbs);
      const auth = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } });
      const cookie = String(auth.headers['set-cookie']).split(';')[0]!;
      now += 301_000;
      const res = await kbs.app.inject({
        method: 'POST',
        url: '/kbs/v0/attest',
        headers: { cookie },
        payload: { 'runtime-data': { nonce: (auth.json() as { nonce: string }).nonce, 'tee-pubkey': { kty: 'EC' } }, 'tee-evidence': { primary_evidence: {} } },
      });
      assertProblem(res, 401, 'NONCE_INVALID');
    },
    { now: () => new Date(now) },
  );
});

test('report_data not matching nonce + tee-pubkey → REPORT_DATA_MISMATCH', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const { attest } = await rcarAttest(kbs, { tamperReportData: true });
    assertProblem(attest, 401, 'REPORT_DATA_MISMATCH', 'AttestationError');
  }));

test('sim evidence is refused when the server lacks allowSim', () =>
  withKbs(
    async (kbs) => {
      await applyDemoPolicy(kbs);
      const { auth } = await rcarAttest(kbs);
      assertProblem(auth, 401, 'SIM_NOT_ALLOWED', 'AttestationError');
    },
    { allowSim: false },
  ));

test('sim evidence is refused when the accept rule does not list sim', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs, POLICY_YAML.replace('- tee: [sim]\n        measurement: "' + MEASUREMENT, '- tee: [tdx]\n        measurement: "' + MEASUREMENT));
    const { attest } = await rcarAttest(kbs);
    assertProblem(attest, 401, 'POLICY_DENIED');
    assert.match((attest.json() as { detail: string }).detail, /TEE kind sim/);
  }));

test('debug evidence is refused unless the rule allows debug', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const { attest } = await rcarAttest(kbs, { evidenceExtra: { debug: true } });
    assertProblem(attest, 401, 'POLICY_DENIED');
    assert.match((attest.json() as { detail: string }).detail, /debug/);
  }));

test('resource not granted to the workload → 401 PolicyDeny; missing imported value → SECRET_MISSING', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const { attest, cookie } = await rcarAttest(kbs);
    assert.equal(attest.statusCode, 200);
    const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/api-token', headers: { cookie } });
    assertProblem(res, 401, 'POLICY_DENIED', 'PolicyDeny');
    const other = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/other/redis-password', headers: { cookie } });
    assertProblem(other, 401, 'POLICY_DENIED');
    const plan = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/launch-plan', headers: { cookie } });
    assertProblem(plan, 409, 'SECRET_MISSING', 'ResourceNotFound');
    const bad = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/..%2Fx', headers: { cookie } });
    assert.equal(bad.statusCode, 400);
  }));

test('a bearer EAR token from another workload is refused; forged and foreign tokens too', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const worker = await rcarAttest(kbs, { workload: 'worker', measurement: OTHER_MEASUREMENT });
    assert.equal(worker.attest.statusCode, 200, worker.attest.body);
    const token = (worker.attest.json() as { token: string }).token;
    const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { authorization: `Bearer ${token}` } });
    assertProblem(res, 401, 'POLICY_DENIED');
    // tampered payload
    const [h, p, s] = token.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString()) as Record<string, unknown>;
    claims['cocoon.workload'] = 'redis';
    const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`;
    const res2 = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { authorization: `Bearer ${forged}` } });
    assertProblem(res2, 401, 'AUTH_INVALID');
    // a token of another KBS
    const other = await makeKbs();
    try {
      await applyDemoPolicy(other);
      const t = ((await rcarAttest(other)).attest.json() as { token: string }).token;
      const res3 = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { authorization: `Bearer ${t}` } });
      assertProblem(res3, 401, 'AUTH_INVALID');
    } finally {
      await other.cleanup();
    }
  }));

test('an expired EAR token and an expired session are refused', async () => {
  let now = Date.now();
  await withKbs(
    async (kbs) => {
      await applyDemoPolicy(kbs);
      const { attest, cookie } = await rcarAttest(kbs);
      const token = (attest.json() as { token: string }).token;
      now += 301_000;
      const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { authorization: `Bearer ${token}` } });
      assertProblem(res, 401, 'AUTH_INVALID');
      assert.match((res.json() as { detail: string }).detail, /expired/);
      const res2 = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie } });
      assertProblem(res2, 401, 'AUTH_INVALID');
    },
    { now: () => new Date(now) },
  );
});

test('a policy update that drops the measurement revokes an attested session', () =>
  withKbs(async (kbs) => {
    const v1 = await applyDemoPolicy(kbs);
    const { cookie } = await rcarAttest(kbs);
    const yaml2 = POLICY_YAML.replace(`measurement: "${MEASUREMENT}"`, `measurement: "${'99'.repeat(48)}"`);
    const put = await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: yaml2, predecessor: v1.hash });
    assert.equal(put.statusCode, 200, put.body);
    const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie } });
    assertProblem(res, 401, 'POLICY_DENIED');
  }));

test('protocol checks: version, tee, strict bodies, unknown policy, oversized body → 413', () =>
  withKbs(async (kbs) => {
    const v = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.1.1', tee: 'sim' } });
    assertProblem(v, 400, 'BAD_USAGE', 'InvalidRequest');
    const t = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'quantum' } });
    assertProblem(t, 401, 'TEE_UNSUPPORTED');
    const extra = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim', surprise: 1 } });
    assertProblem(extra, 400, 'INPUT_MALFORMED');
    const cca = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'cca' } });
    assert.equal(cca.statusCode, 200);
    const nopolicy = await rcarAttest(kbs);
    assertProblem(nopolicy.attest, 401, 'POLICY_DENIED');
    const big = await kbs.app.inject({
      method: 'POST',
      url: '/kbs/v0/attest',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ 'tee-evidence': { primary_evidence: 'x'.repeat(1024 * 1024 + 10) } }),
    });
    assertProblem(big, 413, 'INPUT_TOO_LARGE');
    const bigOwner = await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: 'y'.repeat(1024 * 1024 + 10) });
    assert.equal(bigOwner.statusCode, 413);
  }));

test('release with an attested cookie: any altered byte is refused, the exact cookie is released', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const { attest, cookie } = await rcarAttest(kbs);
    assert.equal(attest.statusCode, 200);
    const [name, value] = cookie.split('=') as [string, string];
    const raw = Buffer.from(value, 'base64url');
    for (const i of [0, 1, 5, 6, 12, 23, 24, 39]) {
      const t = Buffer.from(raw);
      t[i] = (t[i] as number) ^ 0x04;
      const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie: `${name}=${t.toString('base64url')}` } });
      assertProblem(res, 401, 'AUTH_INVALID');
    }
    const ok = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie } });
    assert.equal(ok.statusCode, 200, ok.body);
  }));

test('a tee-pubkey that is not a point on its curve is refused at attestation, not at every release', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const { jwk } = await teeKey();
    const y = Buffer.from(jwk.y as string, 'base64url');
    y[31] = (y[31] as number) ^ 1;
    const { attest } = await rcarAttest(kbs, { teePubkey: { ...jwk, y: y.toString('base64url') } });
    assert.equal(attest.statusCode, 400, attest.body);
    assert.match((attest.json() as { detail: string }).detail, /tee-pubkey: not a valid point on the curve/);
  }));
