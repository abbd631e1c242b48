import { CocoonError } from '../errors.js';
import type { TeeKind, VerificationResult } from '../attestation/types.js';
import type { EvidenceVerifier } from './context.js';

export interface BrokerVerifierOptions {
  /** PEM roots of the simulated TEE (only consulted when the KBS runs with --allow-sim). */
  simRoots: string[];
}

const MAX_EVIDENCE_JSON = 1024 * 1024;

/**
 * The KBS's evidence verifier: sim evidence against the configured sim roots, hardware
 * evidence through the pure verifiers of src/attestation (pinned Intel/AMD roots).
 * Evidence arrives as JSON (`primary_evidence`); binary quotes travel base64-encoded.
 */
export function createBrokerVerifier(options: BrokerVerifierOptions): EvidenceVerifier {
  return async (tee: TeeKind, evidence: unknown, verifyOptions): Promise<VerificationResult> => {
    const { verifyEvidence } = await import('../attestation/index.js');
    if (tee === 'sim') {
      const { verifySimEvidence } = await import('../attestation/sim/index.js');
      return verifySimEvidence(evidence, { roots: options.simRoots }, verifyOptions);
    }
    const encoded = typeof evidence === 'string' ? evidence : JSON.stringify(evidence);
    if (encoded.length > MAX_EVIDENCE_JSON) throw new CocoonError('INPUT_TOO_LARGE', 'evidence larger than 1 MiB');
    return verifyEvidence(tee, encoded, {}, verifyOptions);
  };
}
