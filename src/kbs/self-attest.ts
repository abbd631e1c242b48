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

export const KBS_ATTESTATION_PATH = '/cocoon/v1/attestation';
export const KBS_ATTESTATION_VERSION = 'cocoon-kbs-attestation/1';
const NONCE_RE = /^[0-9a-f]{32,128}$/;

export interface SelfAttestation {
  attester: Attester;
  /** Lower-case hex SHA-384 the evidence reports as the KBS measurement. */
  measurement: string;
}

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

export function selfAttestationRoutes(ctx: KbsContext, self: SelfAttestation, tlsCertPem: string | undefined) {
  const tlsSpki = tlsCertPem ? spkiSha256(tlsCertPem) : null;
  return async function plugin(app: FastifyInstance): Promise<void> {
    app.get(KBS_ATTESTATION_PATH, { schema: { summary: 'Evidence of the KBS itself, bound to a nonce, its TLS key and the deployment CA root (public)' } }, async (request) => {
      const nonce = (request.query as Record<string, unknown> | undefined)?.nonce;
      if (!isAttestationNonce(nonce)) throw new CocoonError('INPUT_MALFORMED', 'nonce must be 16–64 bytes of lower-case hex');
      const root = (await ctx.ca.chainPem()).root;
      const binding: KbsAttestationBinding = { nonce, tlsSpkiSha256: tlsSpki, caRootSha256: certSha256(root) };
      const evidence = await self.attester.getEvidence(kbsAttestationReportData(binding), self.measurement);
      return { version: KBS_ATTESTATION_VERSION, tee: self.attester.tee, measurement: self.measurement, binding, caRoot: root, evidence };
    });
  };
}
