import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { CocoonError } from '../errors.js';
import { readFileBounded } from '../util/read-bounded.js';
import type { TeeKind, VerificationResult } from '../attestation/types.js';
import type { TrustInput } from '../attestation/index.js';
import type { EvidenceVerifier } from './context.js';

export interface BrokerVerifierOptions {
  /** PEM roots of the simulated TEE (only consulted when the KBS runs with --allow-sim). */
  simRoots: string[];
  /**
   * Attestation keys (PEM public keys) the KBS trusts for `tpm` evidence (`cocoon serve
   * --trusted-ak`). A TPM quote is accepted only when its AK is one of them.
   */
  trustedAks?: string[];
  /**
   * Extra trust inputs for hardware evidence (not `tpm`, not `sim`): DCAP collateral or an
   * online collateral source, and SNP certificates — what `cocoon attest` takes from the
   * `cocoon verify` flags (--collateral, --certs, --offline). Default: none.
   */
  trust?: Pick<TrustInput, 'collateral' | 'certs'>;
}

const MAX_EVIDENCE_JSON = 1024 * 1024;
const MAX_TRUSTED_AKS = 1024;

function refused(tee: TeeKind, code: string, message: string): VerificationResult {
  return { verified: false, tee, advisories: [], claims: {}, errors: [{ stage: 'parse', code, message }] };
}

/** Parses the trusted AK list once (PEM SPKI); a bad entry is a startup error. */
export function parseTrustedAks(pems: readonly string[]): Map<string, KeyObject> {
  if (pems.length > MAX_TRUSTED_AKS) throw new CocoonError('BAD_USAGE', `more than ${MAX_TRUSTED_AKS} trusted AKs`);
  const out = new Map<string, KeyObject>();
  pems.forEach((pem, i) => {
    if (pem.length > 16 * 1024 || !pem.includes('-----BEGIN PUBLIC KEY-----')) throw new CocoonError('BAD_USAGE', `trusted AK ${i + 1} is not a PEM public key`);
    let key: KeyObject;
    try {
      key = createPublicKey(pem);
    } catch (err) {
      throw new CocoonError('BAD_USAGE', `trusted AK ${i + 1} is not a usable public key: ${(err as Error).message}`, { cause: err });
    }
    if (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'ec') throw new CocoonError('BAD_USAGE', `trusted AK ${i + 1} must be an RSA or EC key`);
    out.set(key.export({ type: 'spki', format: 'der' }).toString('base64'), key);
  });
  return out;
}

/**
 * The KBS's evidence verifier: sim evidence against the configured sim roots, hardware
 * evidence through the pure verifiers of src/attestation (pinned Intel/AMD roots; TPM quotes
 * against the trusted AK list). Evidence arrives as JSON (`primary_evidence`); binary quotes
 * travel base64-encoded. A Cocoon event log in the evidence is replayed by the verifier, which
 * then exposes the workload measurement as the `measurement` claim.
 */
export function createBrokerVerifier(options: BrokerVerifierOptions): EvidenceVerifier {
  const trustedAks = parseTrustedAks(options.trustedAks ?? []);
  const extra = options.trust ?? {};
  return async (tee: TeeKind, evidence: unknown, verifyOptions): Promise<VerificationResult> => {
    const { verifyEvidence } = await import('../attestation/index.js');
    if (tee === 'sim') {
      const { verifySimEvidence } = await import('../attestation/sim/index.js');
      return verifySimEvidence(evidence, { roots: options.simRoots }, verifyOptions);
    }
    const encoded = typeof evidence === 'string' ? evidence : JSON.stringify(evidence);
    if (encoded.length > MAX_EVIDENCE_JSON) throw new CocoonError('INPUT_TOO_LARGE', 'evidence larger than 1 MiB');
    const json = typeof evidence === 'object' && evidence !== null && !Array.isArray(evidence) ? (evidence as Record<string, unknown>) : undefined;

    if (tee === 'tpm') {
      const akB64 = json?.ak_public;
      if (typeof akB64 !== 'string' || akB64.length > 8192) return refused(tee, 'EVIDENCE_MALFORMED', 'TPM evidence must carry ak_public (base64 SPKI)');
      let spki: string;
      try {
        spki = createPublicKey({ key: Buffer.from(akB64, 'base64'), format: 'der', type: 'spki' }).export({ type: 'spki', format: 'der' }).toString('base64');
      } catch {
        return refused(tee, 'EVIDENCE_MALFORMED', 'ak_public is not a DER SubjectPublicKeyInfo');
      }
      const ak = trustedAks.get(spki);
      if (!ak) return refused(tee, 'AK_NOT_TRUSTED', `the TPM attestation key is not trusted by this KBS (${trustedAks.size} trusted; add it with cocoon serve --trusted-ak)`);
      // The TPM binds the report data as the quote's qualifying data (extraData): the 64 bytes
      // themselves, or SHA-256 of them on TPMs whose TPM2B_DATA is shorter (no SHA-512 bank).
      const result = await verifyEvidence(tee, encoded, { ak }, { at: verifyOptions.at });
      const rd = Buffer.from(verifyOptions.reportData);
      const nonce = typeof result.claims.nonce === 'string' ? result.claims.nonce : undefined;
      if (nonce !== undefined && (nonce === rd.toString('hex') || nonce === createHash('sha256').update(rd).digest('hex'))) result.claims.report_data = rd.toString('hex');
      else if (result.verified) {
        result.errors.push({ stage: 'tpm_nonce', code: 'NONCE_INVALID', message: 'the quote qualifying data is neither the report data nor its SHA-256' });
        result.verified = false;
      }
      return result;
    }

    if (tee === 'snp' && json && Array.isArray(json.certs)) {
      // Only the VCEK/VLEK from the host's certificate table is used; ASK/ARK come from the pinned roots.
      const [vek] = json.certs as unknown[];
      if (typeof vek !== 'string' || vek.length > 16 * 1024) return refused(tee, 'EVIDENCE_MALFORMED', 'certs[0] must be the PEM VCEK/VLEK');
      return verifyEvidence(tee, encoded, { ...extra, certs: extra.certs ?? vek }, verifyOptions);
    }
    return verifyEvidence(tee, encoded, extra, verifyOptions);
  };
}

/** Reads `--trusted-ak` PEM files (serve, attest); an unreadable or unusable key is BAD_USAGE. */
/** A PEM public key is well under 4 KiB; a --trusted-ak file may hold a few. */
const MAX_TRUSTED_AK_FILE = 64 * 1024;

export async function readTrustedAkFiles(files: readonly string[]): Promise<string[]> {
  const pems: string[] = [];
  for (const file of files) {
    pems.push((await readFileBounded(file, { max: MAX_TRUSTED_AK_FILE, what: '--trusted-ak (one PEM public key)', unreadable: 'BAD_USAGE' })).toString('utf8'));
  }
  parseTrustedAks(pems);
  return pems;
}
