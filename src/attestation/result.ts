/**
 * Verification results as attestation results: AR4SI trustworthiness vector and an EAR JWT
 * (draft-ietf-rats-ear, ES256, profile "tag:github.com,2023:veraison/ear"), the token shape
 * CoCo Trustee returns from /kbs/v0/attest.
 */
import type { KeyObject } from 'node:crypto';
import { SignJWT, type CryptoKey } from 'jose';
import type { VerificationResult } from './types.js';

export const EAR_PROFILE = 'tag:github.com,2023:veraison/ear';

/** AR4SI trustworthiness claims (values: 0 none, 2–31 affirming, 32–95 warning, 96–127 contraindicated). */
export interface TrustVector {
  'instance-identity': number;
  configuration: number;
  executables: number;
  'file-system': number;
  hardware: number;
  'runtime-opaque': number;
  'storage-opaque': number;
  'sourced-data': number;
}

export type EarStatus = 'affirming' | 'warning' | 'contraindicated' | 'none';

const UP_TO_DATE = new Set(['UpToDate']);
const WARN_TCB = new Set(['SWHardeningNeeded', 'ConfigurationNeeded', 'ConfigurationAndSWHardeningNeeded', 'OutOfDate', 'OutOfDateConfigurationNeeded']);
const DEBUG_KEYS = ['debug', 'td_debug', 'snp_debug'];
const HW_STAGES = /(pck_chain|crl|revocation|tcb_info|qe_identity|qe_report|ark_anchor|ask_by_ark|vek_chain|cert_validity|chip_id|tcb_match|tcb_level)/;

/** Derives an AR4SI vector from a verification result. */
export function trustVector(r: VerificationResult, options: { executablesMatched?: boolean } = {}): TrustVector {
  const failedStages = r.errors.map((e) => e.stage ?? '');
  const hwFailed = failedStages.some((s) => HW_STAGES.test(s));
  const debug = DEBUG_KEYS.some((k) => r.claims[k] === true);
  let hardware = 2;
  if (hwFailed) hardware = 97;
  else if (r.tcbStatus === 'Revoked') hardware = 96;
  else if (r.tcbStatus && WARN_TCB.has(r.tcbStatus)) hardware = 32;
  else if (r.tcbStatus && !UP_TO_DATE.has(r.tcbStatus)) hardware = 32;
  return {
    'instance-identity': r.verified ? 2 : 96,
    configuration: debug ? 96 : r.verified ? 2 : 0,
    executables: options.executablesMatched === true ? 2 : options.executablesMatched === false ? 33 : 0,
    'file-system': 0,
    hardware: r.insecure ? 97 : hardware,
    'runtime-opaque': r.verified && !r.insecure && r.tee !== 'tpm' ? 2 : r.verified ? 0 : 96,
    'storage-opaque': 0,
    'sourced-data': 0,
  };
}

export function earStatus(v: TrustVector): EarStatus {
  const vals = Object.values(v);
  if (vals.some((x) => x >= 96)) return 'contraindicated';
  if (vals.some((x) => x >= 32)) return 'warning';
  if (vals.some((x) => x >= 2)) return 'affirming';
  return 'none';
}

export interface EarOptions {
  /** ES256 signing key (P-256 private key). */
  key: KeyObject | CryptoKey;
  kid?: string;
  verifierId?: { developer: string; build: string };
  policyId?: string;
  /** Issue time (seconds are derived); default now. */
  iat?: Date;
  /** Lifetime in seconds (default 300, as Trustee). */
  ttlSeconds?: number;
  submod?: string;
  /** Extra annotated evidence, e.g. runtime_data_claims {tee-pubkey}. */
  annotations?: Record<string, unknown>;
  executablesMatched?: boolean;
}

/** The EAR claims set for a result (exposed for tests and for non-JWT consumers). */
export function earClaims(r: VerificationResult, o: Omit<EarOptions, 'key' | 'kid'> = {}): Record<string, unknown> {
  const iat = Math.floor((o.iat ?? new Date()).getTime() / 1000);
  const tv = trustVector(r, o.executablesMatched === undefined ? {} : { executablesMatched: o.executablesMatched });
  return {
    eat_profile: EAR_PROFILE,
    iat,
    exp: iat + (o.ttlSeconds ?? 300),
    'ear.verifier-id': o.verifierId ?? { developer: 'cocoon', build: 'cocoon-verifier 0.1.0' },
    submods: {
      [o.submod ?? 'cpu0']: {
        'ear.status': earStatus(tv),
        'ear.trustworthiness-vector': tv,
        'ear.appraisal-policy-id': o.policyId ?? 'cocoon:verify/default',
        'ear.veraison.annotated-evidence': {
          tee: r.tee,
          verified: r.verified,
          ...(r.tcbStatus ? { tcb_status: r.tcbStatus } : {}),
          advisories: r.advisories,
          claims: r.claims,
          ...(r.errors.length ? { errors: r.errors.map((e) => ({ code: e.code, stage: e.stage })) } : {}),
          ...(r.insecure ? { insecure: true } : {}),
          ...o.annotations,
        },
      },
    },
  };
}

/** Signs the EAR as a compact JWT (ES256). */
export async function buildEar(r: VerificationResult, o: EarOptions): Promise<string> {
  const claims = earClaims(r, o);
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', ...(o.kid ? { kid: o.kid } : {}) })
    .sign(o.key);
}
