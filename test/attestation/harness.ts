/** Runs one vector set through verifyEvidence, the way the CLI does. */
import type { TeeKind, VerificationResult } from '../../src/attestation/types.js';
import { verifyEvidence } from '../../src/attestation/index.js';
import { collateralFromJson } from '../../src/attestation/dcap/collateral.js';
import type { VectorSet } from './vectors.js';

export async function runSet(set: VectorSet, files: Record<string, Buffer> = set.files): Promise<VerificationResult> {
  const e = set.expected;
  const tee = e.tee as TeeKind;
  const evidence = files['evidence.bin'] ?? files['evidence.json']!;
  let collateral;
  if (files['collateral.json']) {
    try {
      collateral = collateralFromJson(JSON.parse(files['collateral.json'].toString('utf8')));
    } catch {
      collateral = undefined;
    }
  }
  const rd = e.reportData ?? e.nonce;
  return verifyEvidence(
    tee,
    evidence,
    {
      ...(collateral ? { collateral } : {}),
      ...(files['certs.pem'] ? { certs: files['certs.pem'].toString('utf8') } : {}),
      ...(files['ak.pem'] ? { ak: files['ak.pem'].toString('utf8') } : {}),
    },
    { at: new Date(e.at), ...(rd !== undefined ? { reportData: Buffer.from(rd, 'hex') } : {}) },
  );
}
