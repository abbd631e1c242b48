/**
 * The KBS's own evidence (docs/kbs.md, "KBS self-attestation"): `GET /cocoon/v1/attestation
 * ?nonce=<hex>` returns evidence whose report data binds the caller's nonce, the KBS's TLS
 * public key (when it serves HTTPS) and the deployment CA root, so `cocoon attest` can pin
 * that root knowing which measured KBS holds it.
 */
import { createHash, X509Certificate } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { canonicalJson } from '../crypto/canonical-json.js';
import { CocoonError } from '../errors.js';
import type { Attester } from '../attester/types.js';
import type { KbsContext } from './context.js';
import type { SelfAttestationStatus } from './ui/wire.js';

export const KBS_ATTESTATION_PATH = '/cocoon/v1/attestation';
export const KBS_ATTESTATION_VERSION = 'cocoon-kbs-attestation/1';
const NONCE_RE = /^[0-9a-f]{32,128}$/;

export interface SelfAttestation {
  attester: Attester;
  /** Lower-case hex SHA-384 the evidence reports as the KBS measurement. */
  measurement: string;
  /**
   * Where the measurement was extended at startup (`PCR 23 (sha256)`, `RTMR3`: an event log
   * goes with the evidence). Undefined for `sim` (the signed report carries it) and for TEEs
   * without a runtime register (the evidence then does not bind the KBS measurement).
   */
  register?: string;
}

/** The workload event a hardware KBS extends for itself (docs/kbs.md, "KBS self-attestation"). */
export const KBS_SELF_EVENT = { policy: 'cocoon/kbs', workload: 'kbs' } as const;

export const SELF_ATTESTATION_NOT_CONFIGURED = 'not configured: start the KBS with --tee (hardware) or --allow-sim with a sim platform';

/** What the dashboard overview shows about the KBS's own attestation. */
export function selfAttestationStatus(self: SelfAttestation | undefined, unavailableReason?: string): SelfAttestationStatus {
  if (!self) return { available: false, reason: unavailableReason ?? SELF_ATTESTATION_NOT_CONFIGURED };
  const sim = self.attester.tee === 'sim';
  return { available: true, tee: self.attester.tee, measurement: self.measurement, insecure: sim, measurementBound: sim || self.register !== undefined, register: self.register ?? null };
}

/** Waiting evidence requests beyond the one in progress (a TPM or configfs-tsm serves one at a time). */
const MAX_QUEUED = 8;

/** What the report data binds, in the clear in the response. */
export interface KbsAttestationBinding {
  nonce: string;
  /** SHA-256 (hex) of the DER SubjectPublicKeyInfo of the KBS TLS certificate, null for plain HTTP. */
  tlsSpkiSha256: string | null;
  /** SHA-256 (hex) of the DER deployment root certificate. */
  caRootSha256: string;
}

/** SHA-512(canonicalJson({v, nonce, tls, ca})): 64 bytes, the report data. */
export function kbsAttestationReportData(b: KbsAttestationBinding): Uint8Array {
  return createHash('sha512').update(canonicalJson({ v: KBS_ATTESTATION_VERSION, nonce: b.nonce, tls: b.tlsSpkiSha256, ca: b.caRootSha256 })).digest();
}

export function certSha256(pem: string): string {
  try {
    return new X509Certificate(pem).fingerprint256.replace(/:/g, '').toLowerCase();
  } catch (err) {
    throw new CocoonError('INPUT_MALFORMED', 'not a PEM certificate', { cause: err });
  }
}

export function spkiSha256(certPem: string): string {
  try {
    return createHash('sha256').update(new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
  } catch (err) {
    throw new CocoonError('INPUT_MALFORMED', 'not a PEM certificate', { cause: err });
  }
}

export function isAttestationNonce(v: unknown): v is string {
  return typeof v === 'string' && NONCE_RE.test(v);
}

/**
 * Runs evidence requests one at a time — the hardware interfaces are not made for concurrent
 * quotes — with at most `maxQueued` waiting; beyond that RATE_LIMITED. Used per app and, with
 * `serve --workers`, once more in the primary that owns the one attester.
 */
export function oneAtATime(maxQueued = MAX_QUEUED): <T>(fn: () => Promise<T>) => Promise<T> {
  let chain: Promise<unknown> = Promise.resolve();
  let queued = 0;
  return <T>(fn: () => Promise<T>): Promise<T> => {
    if (queued > maxQueued) return Promise.reject(new CocoonError('RATE_LIMITED', 'too many KBS attestation requests in progress; retry shortly'));
    queued++;
    const run = chain.then(fn, fn);
    const done = (): void => {
      queued--;
    };
    chain = run.then(done, done);
    return run;
  };
}

export function selfAttestationRoutes(ctx: KbsContext, self: SelfAttestation, tlsCertPem: string | undefined) {
  const tlsSpki = tlsCertPem ? spkiSha256(tlsCertPem) : null;
  const serialized = oneAtATime();
  return async function plugin(app: FastifyInstance): Promise<void> {
    app.get(KBS_ATTESTATION_PATH, { schema: { summary: 'Evidence of the KBS itself, bound to a nonce, its TLS key and the deployment CA root (public)' } }, async (request) => {
      const nonce = (request.query as Record<string, unknown> | undefined)?.nonce;
      if (!isAttestationNonce(nonce)) throw new CocoonError('INPUT_MALFORMED', 'nonce must be 16–64 bytes of lower-case hex');
      const root = (await ctx.ca.chainPem()).root;
      const binding: KbsAttestationBinding = { nonce, tlsSpkiSha256: tlsSpki, caRootSha256: certSha256(root) };
      const evidence = await serialized(() => self.attester.getEvidence(kbsAttestationReportData(binding), self.measurement));
      return { version: KBS_ATTESTATION_VERSION, tee: self.attester.tee, measurement: self.measurement, binding, caRoot: root, evidence };
    });
  };
}
