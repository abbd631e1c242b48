import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import type { FastifyInstance } from 'fastify';
import type { VerificationResult } from '../../src/attestation/types.js';
import { CocoonError } from '../../src/errors.js';
import { buildKbsApp } from '../../src/kbs/app.js';
import type { KbsOptions } from '../../src/kbs/app.js';
import type { EvidenceVerifier } from '../../src/kbs/context.js';
import { ownerSigningKey } from '../../src/kbs/owner-key.js';
import type { OwnerSigningKey } from '../../src/kbs/owner-key.js';
import { rcarReportData } from '../../src/kbs/rcar-protocol.js';

export const MEASUREMENT = 'ab'.repeat(48);
export const OTHER_MEASUREMENT = 'cd'.repeat(48);

export const POLICY_YAML = `name: demo/redis
secrets:
  redis-password: { kind: random, size: 32, encoding: hex, ownerReadable: true }
  layer-key: { kind: layer-key }
  api-token: { kind: imported }
workloads:
  redis:
    accept:
      - tee: [sim]
        measurement: "${MEASUREMENT}"
    secrets: [redis-password]
    env: { REDIS_PW: "{{ secret.redis-password }}" }
    files:
      - { path: /run/cocoon/redis.conf, mode: "0400", content: "requirepass {{ secret.redis-password }}\\n" }
    args: ["redis-server", "/run/cocoon/redis.conf"]
  worker:
    accept:
      - tee: [sim]
        measurement: "${OTHER_MEASUREMENT}"
    secrets: [api-token]
`;

/**
 * Test-only verifier: evidence is plain JSON `{report_data, measurement, tee:"sim", debug?}`.
 * It does not check report_data itself so that the KBS's own binding check is exercised.
 */
export const fakeVerifier: EvidenceVerifier = async (tee, evidence) => {
  const e = evidence as Record<string, unknown>;
  if (typeof e !== 'object' || e === null || typeof e.report_data !== 'string' || typeof e.measurement !== 'string') {
    throw new CocoonError('EVIDENCE_MALFORMED', 'fake evidence malformed');
  }
  const result: VerificationResult = {
    verified: e.tee === tee,
    tee,
    advisories: [],
    claims: { report_data: e.report_data, measurement: e.measurement, debug: e.debug === true },
    errors: e.tee === tee ? [] : [{ code: 'EVIDENCE_SIGNATURE_INVALID', message: 'tee mismatch' }],
    insecure: tee === 'sim',
  };
  return result;
};

export function fakeEvidence(reportData: Uint8Array, measurement = MEASUREMENT, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { tee: 'sim', report_data: Buffer.from(reportData).toString('hex'), measurement, ...extra };
}

export interface TestKbs {
  app: FastifyInstance;
  dir: string;
  owner: OwnerSigningKey;
  kbsId: string;
  cleanup(): Promise<void>;
}

export async function makeOwnerKey(alg: 'ES256' | 'EdDSA' = 'ES256'): Promise<OwnerSigningKey> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) });
  return ownerSigningKey(await exportJWK(privateKey));
}

export async function makeKbs(overrides: Partial<KbsOptions> = {}): Promise<TestKbs> {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-'));
  const owner = await makeOwnerKey();
  const app = await buildKbsApp({ dataDir: dir, verifier: fakeVerifier, allowSim: true, owners: [owner.publicJwk], logger: false, ...overrides });
  const identity = await app.inject({ method: 'GET', url: '/cocoon/v1/identity' });
  const kbsId = (identity.json() as { id: string }).id;
  return {
    app,
    dir,
    owner,
    kbsId,
    async cleanup() {
      await app.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs `fn` against a fresh in-process KBS and cleans it up afterwards. */
export async function withKbs(fn: (kbs: TestKbs) => Promise<void>, overrides: Partial<KbsOptions> = {}): Promise<void> {
  const kbs = await makeKbs(overrides);
  try {
    await fn(kbs);
  } finally {
    await kbs.cleanup();
  }
}

export interface TokenOverrides {
  aud?: string;
  iat?: number;
  exp?: number;
  jti?: string;
  key?: OwnerSigningKey;
  htm?: string;
  htu?: string;
}

export async function ownerToken(kbs: TestKbs, o: TokenOverrides = {}): Promise<string> {
  const key = o.key ?? kbs.owner;
  const now = Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = {};
  if (o.htm) claims.htm = o.htm;
  if (o.htu) claims.htu = o.htu;
  return new SignJWT(claims)
    .setProtectedHeader({ alg: key.alg, kid: key.kid })
    .setAudience(o.aud ?? kbs.kbsId)
    .setIssuedAt(o.iat ?? now)
    .setExpirationTime(o.exp ?? now + 60)
    .setJti(o.jti ?? randomBytes(16).toString('base64url'))
    .sign(key.key);
}

export async function ownerRequest(kbs: TestKbs, method: 'GET' | 'PUT' | 'POST', url: string, payload?: unknown, o: TokenOverrides = {}) {
  return kbs.app.inject({ method, url, headers: { authorization: `Bearer ${await ownerToken(kbs, o)}` }, ...(payload !== undefined ? { payload: payload as Record<string, unknown> } : {}) });
}

export async function applyDemoPolicy(kbs: TestKbs, yaml = POLICY_YAML): Promise<{ version: number; hash: string }> {
  const res = await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml });
  if (res.statusCode !== 200) throw new Error(`apply failed: ${res.body}`);
  return res.json() as { version: number; hash: string };
}

export async function teeKey(): Promise<{ jwk: JWK; privateKey: CryptoKey }> {
  const { privateKey, publicKey } = await generateKeyPair('ECDH-ES+A256KW', { crv: 'P-256', extractable: true });
  const pub = await exportJWK(publicKey);
  return { jwk: { kty: 'EC', crv: 'P-256', x: pub.x, y: pub.y, alg: 'ECDH-ES+A256KW' }, privateKey: privateKey as CryptoKey };
}

export function sessionCookieOf(res: { headers: Record<string, unknown> }): string {
  const raw = res.headers['set-cookie'];
  const line = Array.isArray(raw) ? String(raw[0]) : String(raw);
  return line.split(';')[0] as string;
}

/** auth → attest by hand through inject(); returns what later steps need. */
export async function rcarAttest(
  kbs: TestKbs,
  opts: { measurement?: string; workload?: string; policy?: string; tamperReportData?: boolean; evidenceExtra?: Record<string, unknown>; csr?: string; teePubkey?: JWK } = {},
) {
  const auth = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim', 'extra-params': {} } });
  if (auth.statusCode !== 200) return { auth, attest: auth, cookie: '', nonce: '', key: await teeKey() };
  const cookie = sessionCookieOf(auth);
  const nonce = (auth.json() as { nonce: string }).nonce;
  const key = await teeKey();
  if (opts.teePubkey) key.jwk = opts.teePubkey;
  const rd = rcarReportData(nonce, key.jwk, opts.csr);
  if (opts.tamperReportData) rd[0] = (rd[0] as number) ^ 0xff;
  const body = {
    'init-data': { format: 'json', body: JSON.stringify({ policy: opts.policy ?? 'demo/redis', workload: opts.workload ?? 'redis' }) },
    'runtime-data': { nonce, 'tee-pubkey': key.jwk, ...(opts.csr !== undefined ? { csr: opts.csr } : {}) },
    'tee-evidence': { primary_evidence: fakeEvidence(rd, opts.measurement ?? MEASUREMENT, opts.evidenceExtra), additional_evidence: '' },
  };
  const attest = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie }, payload: body });
  return { auth, attest, cookie, nonce, key, body };
}
