import type { TeeKind } from '../attestation/types.js';

/** What the launcher measured and will run (extended into a runtime register where the TEE has one). */
export interface WorkloadIdentity {
  /** Lower-case hex SHA-384 workload measurement. */
  measurement: string;
  policy: string;
  workload: string;
}

/** Produces hardware evidence inside a TEE, binding 64 bytes of report data. */
export interface Attester {
  readonly tee: TeeKind;
  /**
   * Runtime measurement, called once before attesting: extends the workload event into the
   * TEE's runtime register (vTPM PCR, TDX RTMR3) and keeps the event log that getEvidence
   * sends. Returns a description of what was extended, or undefined when the TEE has no
   * runtime register (the measurement is then bound otherwise, see docs/tee-support.md).
   */
  measure?(identity: WorkloadIdentity): Promise<string | undefined>;
  /** `measurement` is the workload measurement the launcher computed (extended/bound per TEE). */
  getEvidence(reportData: Uint8Array, measurement: string): Promise<unknown>;
}
