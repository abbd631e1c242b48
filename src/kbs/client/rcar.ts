import { randomInt } from 'node:crypto';
import { decryptEcdhEs, ECDH_ES_A256KW, generateEcdhKeyPair } from '../../crypto/ecdh-es.js';
import type { EcdhKeyPair, EcPublicJwk } from '../../crypto/ecdh-es.js';
import { CocoonError, asCocoonError } from '../../errors.js';
import { rcarReportData, RCAR_VERSION, SESSION_COOKIE } from '../rcar-protocol.js';
import { DEFAULT_MAX_RESPONSE_BYTES, TransientError, errorFromResponse, httpRequest, parseJsonBody, trimBase } from './http.js';

export interface RetryOptions {
  /** Total attempts of the whole exchange (≥ 1). */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface AttestAndFetchOptions {
  kbsUrl: string;
  tee: string;
  /** Produces evidence whose report_data is the given 64 bytes. */
  evidenceProvider: (reportData: Uint8Array) => Promise<unknown>;
  /**
   * Selects the policy and workload. With `toml` (a CoCo init-data document whose digest the
   * host put into SNP HOST_DATA / TDX MRCONFIGID) it is sent as `format: "toml"` — the binding
   * the KBS checks; otherwise as Cocoon's unbound `format: "json"` selection.
   */
  initData: { policy: string; workload: string; toml?: string };
  /** `org/app/name` resources to fetch, e.g. `demo/redis/launch-plan`. */
  resources: string[];
  /** PKCS#10 CSR (PEM or base64 DER) to bind into report_data; then `<org>/<app>/workload-cert` issues a certificate for it. */
  csr?: string;
  /** Called with the fetched `resources`; returns further resources to fetch in the same session (e.g. `workload-cert` when the launch plan declares TLS). */
  moreResources?: (fetched: Record<string, Buffer>) => string[];
  retry?: RetryOptions;
  /** Per HTTP request. Default 15 s. */
  timeoutMs?: number;
  maxResponseBytes?: number;
  onRetry?: (attempt: number, error: Error, delayMs: number) => void;
  fetchImpl?: typeof fetch;
}

export interface AttestAndFetchResult {
  token: string;
  /** True when the KBS accepted simulated evidence ("INSECURE: simulated TEE"). */
  insecure: boolean;
  /** Decrypted resource bytes by requested name. */
  resources: Record<string, Buffer>;
}

const RESOURCE_RE = /^[a-z0-9][a-z0-9._-]{0,62}\/[a-z0-9][a-z0-9._-]{0,62}\/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const DEFAULT_RETRY: RetryOptions = { attempts: 5, baseDelayMs: 250, maxDelayMs: 5000 };

/**
 * RCAR with a Cocoon/CoCo KBS: auth → attest (evidence bound to an ephemeral P-256 key and
 * the nonce) → fetch each resource as JWE and decrypt it. Network errors and 5xx restart the
 * whole exchange (a nonce is single use) with exponential backoff and jitter; a 4xx is an
 * answer and is never retried.
 */
export async function attestAndFetch(options: AttestAndFetchOptions): Promise<AttestAndFetchResult> {
  const base = trimBase(options.kbsUrl);
  for (const r of options.resources) if (!RESOURCE_RE.test(r)) throw new CocoonError('BAD_USAGE', `invalid resource name ${r}`);
  const retry = options.retry ?? DEFAULT_RETRY;
  const attempts = Math.max(1, Math.floor(retry.attempts));
  const teeKey = generateEcdhKeyPair('P-256');
  let lastError: Error | undefined;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await exchange(base, options, teeKey);
    } catch (err) {
      if (!(err instanceof TransientError)) throw asCocoonError(err);
      lastError = err;
      if (attempt === attempts) break;
      const delay = backoffDelay(attempt, retry);
      options.onRetry?.(attempt, err, delay);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
  throw new CocoonError('KBS_UNREACHABLE', `KBS ${base} unreachable after ${attempts} attempt(s): ${lastError?.message ?? 'unknown error'}`, {
    details: { kbsUrl: base, attempts },
  });
}

/** Exponential backoff with "equal jitter": half fixed, half random. */
export function backoffDelay(attempt: number, retry: RetryOptions): number {
  const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 1));
  const half = Math.floor(ceiling / 2);
  return half + (ceiling - half > 0 ? randomInt(ceiling - half + 1) : 0);
}

/** The runtime-data `tee-pubkey` of an ephemeral key: exactly {kty, crv, x, y, alg}, as report_data binds it. */
export function rcarTeePubkey(key: EcdhKeyPair): EcPublicJwk {
  return { kty: 'EC', crv: key.crv, x: key.publicJwk.x, y: key.publicJwk.y, alg: ECDH_ES_A256KW };
}

/** The body of POST /kbs/v0/auth. */
export function rcarAuthBody(tee: string): { version: string; tee: string; 'extra-params': Record<string, never> } {
  return { version: RCAR_VERSION, tee, 'extra-params': {} };
}

/**
 * The body of POST /kbs/v0/attest: init-data (CoCo `toml` when given, else Cocoon's unbound
 * `json` policy/workload selection), runtime-data {nonce, tee-pubkey[, csr]} — what report_data
 * binds (rcarReportData) — and the evidence.
 */
export function rcarAttestBody(initData: AttestAndFetchOptions['initData'], nonce: string, teePubkey: EcPublicJwk, evidence: unknown, csr?: string): Record<string, unknown> {
  return {
    'init-data': initData.toml !== undefined ? { format: 'toml', body: initData.toml } : { format: 'json', body: JSON.stringify({ policy: initData.policy, workload: initData.workload }) },
    'runtime-data': { nonce, 'tee-pubkey': teePubkey, ...(csr !== undefined ? { csr } : {}) },
    'tee-evidence': { primary_evidence: evidence, additional_evidence: '' },
  };
}

async function exchange(base: string, options: AttestAndFetchOptions, teeKey: EcdhKeyPair): Promise<AttestAndFetchResult> {
  const timeoutMs = options.timeoutMs ?? 15_000;
  const maxBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  const common = { timeoutMs, maxBytes, ...(options.fetchImpl ? { fetchImpl: options.fetchImpl } : {}) };

  const auth = await httpRequest(`${base}/kbs/v0/auth`, { ...common, method: 'POST', body: rcarAuthBody(options.tee) });
  if (auth.status !== 200) throw errorFromResponse(auth, 'KBS auth');
  const challenge = parseJsonBody(auth, 'KBS auth') as { nonce?: unknown };
  if (typeof challenge.nonce !== 'string' || challenge.nonce.length > 256) throw new CocoonError('INPUT_MALFORMED', 'KBS auth: challenge has no nonce');
  const cookie = sessionCookie(auth.headers);
  if (!cookie) throw new CocoonError('INPUT_MALFORMED', `KBS auth: no ${SESSION_COOKIE} cookie`);
  const headers = { cookie: `${SESSION_COOKIE}=${cookie}` };

  const teePubkey = rcarTeePubkey(teeKey);
  const reportData = rcarReportData(challenge.nonce, teePubkey, options.csr);
  const evidence = await options.evidenceProvider(reportData);
  const attestRes = await httpRequest(`${base}/kbs/v0/attest`, {
    ...common,
    method: 'POST',
    headers,
    body: rcarAttestBody(options.initData, challenge.nonce, teePubkey, evidence, options.csr),
  });
  if (attestRes.status !== 200) throw errorFromResponse(attestRes, 'KBS attest');
  const attested = parseJsonBody(attestRes, 'KBS attest') as { token?: unknown; warning?: unknown };
  if (typeof attested.token !== 'string') throw new CocoonError('INPUT_MALFORMED', 'KBS attest: no token');
  const insecure = typeof attested.warning === 'string' || attestRes.headers.get('x-cocoon-warning') !== null;

  const resources: Record<string, Buffer> = {};
  const fetchResource = async (name: string): Promise<void> => {
    const res = await httpRequest(`${base}/kbs/v0/resource/${name}`, { ...common, method: 'GET', headers });
    if (res.status !== 200) throw errorFromResponse(res, `KBS resource ${name}`);
    const jwe = parseJsonBody(res, `KBS resource ${name}`);
    try {
      resources[name] = decryptEcdhEs(jwe, teeKey);
    } catch (err) {
      throw new CocoonError('INPUT_MALFORMED', `KBS resource ${name}: ${(err as Error).message}`, { cause: err });
    }
  };
  for (const name of options.resources) await fetchResource(name);
  const more = options.moreResources ? options.moreResources(resources) : [];
  if (more.length > 16) throw new CocoonError('BAD_USAGE', 'at most 16 further resources');
  for (const name of more) {
    if (!RESOURCE_RE.test(name)) throw new CocoonError('BAD_USAGE', `invalid resource name ${name}`);
    if (!resources[name]) await fetchResource(name);
  }
  return { token: attested.token, insecure, resources };
}

function sessionCookie(headers: Headers): string | undefined {
  return sessionCookieFrom(headers.getSetCookie());
}

/** The RCAR session cookie's value from Set-Cookie header lines (the KBS's own cookie format only). */
export function sessionCookieFrom(setCookieLines: Iterable<string>): string | undefined {
  for (const line of setCookieLines) {
    const first = line.split(';')[0] ?? '';
    const eq = first.indexOf('=');
    if (eq > 0 && first.slice(0, eq).trim() === SESSION_COOKIE) {
      const v = first.slice(eq + 1).trim();
      if (/^[A-Za-z0-9_-]{1,128}$/.test(v)) return v;
    }
  }
  return undefined;
}
