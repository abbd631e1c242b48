import type { TeeKind } from '../attestation/types.js';

/** Produces hardware evidence inside a TEE, binding 64 bytes of report data. */
export interface Attester {
  readonly tee: TeeKind;
  /** `measurement` is the workload measurement the launcher computed (extended/bound per TEE). */
  getEvidence(reportData: Uint8Array, measurement: string): Promise<unknown>;
}
