import { KeyObject, randomUUID, sign } from 'node:crypto';
import { jwtVerify } from 'jose';
import type { JWK, JWTPayload } from 'jose';
import type { Claims, TeeKind } from '../attestation/types.js';
import { CocoonError } from '../errors.js';
import type { KbsIdentity } from './identity.js';

export const EAR_PROFILE = 'tag:github.com,2023:veraison/ear';
export const INSECURE_NOTICE = 'INSECURE: simulated TEE';
export const EAR_TTL_S = 300;

export type EarStatus = 'affirming' | 'contraindicated';

export interface EarInput {
  status: EarStatus;
  tee: TeeKind;
  policy: string;
  policyVersion: number;
  workload: string;
  teePubkey: JWK;
  claims: Claims;
  insecure: boolean;
  now: Date;
  ttlS?: number;
  /** TCB status / advisories of the evidence (annotated as `cocoon_tcb`). */
  tcbStatus?: string;
  advisories?: string[];
  /** CSR bound in the evidence (annotated under runtime_data_claims). */
  csr?: string;
}

/** What the KBS reads back from one of its own EAR tokens. */
export interface EarGrant {
  status: EarStatus;
  tee: string;
  policy: string;
  workload: string;
  teePubkey: JWK;
  insecure: boolean;
  exp: number;
  /** The verified payload, for readers of the annotated evidence. */
  payload: JWTPayload;
}

/** AR4SI trustworthiness vector: 2 = affirming tier values; 96 = contraindicated. */
function trustVector(status: EarStatus): Record<string, number> {
  const v = status === 'affirming' ? 2 : 96;
  return {
    'instance-identity': v,
    configuration: v,
    executables: v,
    'file-system': v,
    hardware: v,
    'runtime-opaque': v,
    'storage-opaque': v,
    'sourced-data': v,
  };
}

/** Issues an EAR JWT (draft-ietf-rats-ear) signed ES256 by the KBS identity. */
export async function issueEar(id: KbsIdentity, input: EarInput): Promise<{ token: string; exp: number }> {
  const iat = Math.floor(input.now.getTime() / 1000);
  const exp = iat + (input.ttlS ?? EAR_TTL_S);
  const submod: Record<string, unknown> = {
    'ear.status': input.status,
    'ear.trustworthiness-vector': trustVector(input.status),
    'ear.appraisal-policy-id': `cocoon:policy:${input.policy}@${input.policyVersion}#${input.workload}`,
    'ear.veraison.annotated-evidence': {
      tee: input.tee,
      ...input.claims,
      init_data_claims: { policy: input.policy, workload: input.workload },
      runtime_data_claims: { 'tee-pubkey': input.teePubkey, ...(input.csr !== undefined ? { csr: input.csr } : {}) },
      ...(input.tcbStatus !== undefined || input.advisories?.length ? { cocoon_tcb: { ...(input.tcbStatus !== undefined ? { status: input.tcbStatus } : {}), advisories: input.advisories ?? [] } } : {}),
    },
  };
  if (input.insecure) submod['ear.cocoon.insecure'] = INSECURE_NOTICE;
  const payload: Record<string, unknown> = {
    eat_profile: EAR_PROFILE,
    'ear.verifier-id': { developer: 'https://github.com/cocoon', build: 'cocoon-kbs 0.1.0' },
    submods: { cpu0: submod },
    'cocoon.policy': input.policy,
    'cocoon.workload': input.workload,
  };
  if (input.insecure) payload['cocoon.insecure'] = INSECURE_NOTICE;
  const token = signCompactEs256({ alg: 'ES256', typ: 'JWT', kid: id.kid }, { ...payload, iss: id.id, iat, exp, jti: randomUUID() }, signingKey(id));
  return { token, exp };
}

const signingKeys = new WeakMap<KbsIdentity['privateKey'], KeyObject>();
function signingKey(id: KbsIdentity): KeyObject {
  let key = signingKeys.get(id.privateKey);
  if (!key) {
    key = KeyObject.from(id.privateKey);
    signingKeys.set(id.privateKey, key);
  }
  return key;
}

/**
 * JWS compact serialization, ES256 (RFC 7515 §7.1, RFC 7518 §3.4), signed with node:crypto.
 * jose signs through WebCrypto, whose per-call job dispatch cost more than the signature
 * itself — one EAR per attestation made it a tenth of the KBS's CPU per RCAR round trip.
 * Tokens are verified with jose (verifyEar and the tests), so both ends stay standard.
 */
function signCompactEs256(header: Record<string, unknown>, payload: Record<string, unknown>, key: KeyObject): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const signature = sign('sha256', Buffer.from(input, 'ascii'), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

/** Verifies one of this KBS's EAR tokens (signature, issuer, expiry) and extracts the grant. */
export async function verifyEar(id: KbsIdentity, token: string, now: Date): Promise<EarGrant> {
  if (token.length > 16 * 1024) throw new CocoonError('AUTH_INVALID', 'attestation token too large');
  let payload;
  try {
    ({ payload } = await jwtVerify(token, id.publicKey, { algorithms: ['ES256'], issuer: id.id, currentDate: now, requiredClaims: ['exp', 'iat'] }));
  } catch (err) {
    const expired = (err as { code?: string }).code === 'ERR_JWT_EXPIRED';
    throw new CocoonError('AUTH_INVALID', expired ? 'attestation token expired' : 'attestation token does not verify');
  }
  const cpu0 = (payload.submods as Record<string, Record<string, unknown>> | undefined)?.cpu0;
  const evidence = cpu0?.['ear.veraison.annotated-evidence'] as Record<string, unknown> | undefined;
  const rd = evidence?.runtime_data_claims as Record<string, unknown> | undefined;
  const policy = payload['cocoon.policy'];
  const workload = payload['cocoon.workload'];
  const status = cpu0?.['ear.status'];
  const teePubkey = rd?.['tee-pubkey'];
  if (typeof policy !== 'string' || typeof workload !== 'string' || (status !== 'affirming' && status !== 'contraindicated') || typeof teePubkey !== 'object' || teePubkey === null) {
    throw new CocoonError('AUTH_INVALID', 'attestation token lacks Cocoon claims');
  }
  return {
    status,
    tee: String(evidence?.tee ?? ''),
    policy,
    workload,
    teePubkey: teePubkey as JWK,
    insecure: payload['cocoon.insecure'] !== undefined,
    exp: payload.exp as number,
    payload,
  };
}
