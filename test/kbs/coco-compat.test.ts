import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { exportJWK, flattenedDecrypt, generateKeyPair } from 'jose';
import type { JWK } from 'jose';
import { rcarReportData } from '../../src/kbs/rcar-protocol.js';
import { applyDemoPolicy, fakeEvidence, makeKbs, ownerRequest } from './helpers.js';

interface Fixture {
  auth_request: Record<string, unknown>;
  challenge_keys: string[];
  challenge_nonce_bytes: number;
  cookie_name: string;
  attest_request: Record<string, unknown>;
  attest_response_keys: string[];
  resource_path: string;
  resource_response_keys: string[];
  resource_algs: Record<'EC' | 'RSA', string>;
  resource_enc: string;
  error_type_prefix: string;
  error_keys: string[];
  error_types: string[];
}
const fx = JSON.parse(readFileSync(new URL('./fixtures/coco-kbs-0.4.0.json', import.meta.url), 'utf8')) as Fixture;

function fill(template: unknown, values: Record<string, unknown>): unknown {
  if (typeof template === 'string' && template in values) return values[template];
  if (Array.isArray(template)) return template.map((t) => fill(t, values));
  if (typeof template === 'object' && template !== null) return Object.fromEntries(Object.entries(template).map(([k, v]) => [k, fill(v, values)]));
  return template;
}

test('CoCo KBS 0.4.0 message shapes: auth, challenge, attest, JWE resource (EC and RSA), 7807 errors', async () => {
  const kbs = await makeKbs();
  try {
    // auth with a CoCo TEE name: challenge shape and cookie
    const auth = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: fx.auth_request });
    assert.equal(auth.statusCode, 200);
    const challenge = auth.json() as Record<string, unknown>;
    assert.deepEqual(Object.keys(challenge).sort(), fx.challenge_keys);
    assert.equal(challenge['extra-params'], '');
    assert.equal(Buffer.from(String(challenge.nonce), 'base64').length, fx.challenge_nonce_bytes);
    assert.match(String(auth.headers['set-cookie']), new RegExp(`^${fx.cookie_name}=[A-Za-z0-9_-]+;`));

    await applyDemoPolicy(kbs);
    await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/layer-key', { value: Buffer.alloc(32, 3).toString('base64') });

    for (const kty of ['EC', 'RSA'] as const) {
      const a = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { ...fx.auth_request, tee: 'sim' } });
      const cookie = String(a.headers['set-cookie']).split(';')[0]!;
      const nonce = (a.json() as { nonce: string }).nonce;
      const alg = fx.resource_algs[kty];
      const pair = kty === 'EC' ? await generateKeyPair(alg, { crv: 'P-256', extractable: true }) : await generateKeyPair(alg, { modulusLength: 2048, extractable: true });
      const pub = await exportJWK(pair.publicKey);
      const jwk: JWK = kty === 'EC' ? { kty, crv: pub.crv, alg, x: pub.x, y: pub.y } : { kty, alg, n: pub.n, e: pub.e };
      const body = fill(fx.attest_request, {
        '<init-data json>': JSON.stringify({ policy: 'demo/redis', workload: 'redis' }),
        '<nonce>': nonce,
        '<jwk>': jwk,
        '<evidence>': fakeEvidence(rcarReportData(nonce, jwk)),
      });
      const attest = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie }, payload: body as Record<string, unknown> });
      assert.equal(attest.statusCode, 200, attest.body);
      for (const k of fx.attest_response_keys) assert.equal(typeof (attest.json() as Record<string, unknown>)[k], 'string');

      const path = String(fx.resource_path).replace('<repository>', 'demo').replace('<type>', 'redis').replace('<tag>', 'layer-key');
      const res = await kbs.app.inject({ method: 'GET', url: path, headers: { cookie } });
      assert.equal(res.statusCode, 200, res.body);
      const jwe = res.json() as Record<string, string>;
      assert.deepEqual(Object.keys(jwe).sort(), fx.resource_response_keys);
      const header = JSON.parse(Buffer.from(jwe.protected!, 'base64url').toString()) as Record<string, string>;
      assert.equal(header.alg, alg);
      assert.equal(header.enc, fx.resource_enc);
      const { plaintext } = await flattenedDecrypt(jwe as never, pair.privateKey);
      assert.deepEqual(Buffer.from(plaintext), Buffer.alloc(32, 3));
    }

    // errors: RFC 7807 with CoCo type names
    const cases: [string, () => Promise<{ statusCode: number; json(): unknown }>][] = [
      ['TokenNotFound', () => kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/layer-key' })],
      ['AttestationError', () => kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', payload: fill(fx.attest_request, { '<nonce>': 'x', '<jwk>': {}, '<evidence>': {}, '<init-data json>': '{}' }) as Record<string, unknown> })],
    ];
    for (const [type, call] of cases) {
      const res = await call();
      const p = res.json() as Record<string, unknown>;
      assert.equal(res.statusCode, 401);
      for (const k of fx.error_keys) assert.equal(typeof p[k], 'string');
      assert.equal(p.type, `${fx.error_type_prefix}${type}`);
      assert.equal(typeof p.code, 'string');
    }
  } finally {
    await kbs.cleanup();
  }
});
