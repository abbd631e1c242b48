/**
 * Shared attestation types. Verifiers are pure: evidence bytes + trust inputs + time →
 * claims + verdict. They never do I/O; collateral arrives through a CollateralSource that
 * the caller resolved beforehand (or that the verifier awaits; it performs no I/O itself).
 */

/** TEE kinds Cocoon understands. `sim` is the insecure simulated TEE. */
export const TEE_KINDS = ['sgx', 'tdx', 'snp', 'tpm', 'az-snp-vtpm', 'az-tdx-vtpm', 'sim'] as const;
export type TeeKind = (typeof TEE_KINDS)[number];

export function isTeeKind(value: string): value is TeeKind {
  return (TEE_KINDS as readonly string[]).includes(value);
}

/**
 * Normalized claims. Byte strings are lower-case hex, integers are numbers, derived flags
 * are booleans — the naming matches ../shared/vectors expected.json (`mrenclave`, `mr_td`,
 * `rtmr0`, `measurement`, `chip_id`, `report_data`, `pcr00`, `debug`, …).
 */
export type ClaimValue = string | number | boolean | Readonly<Record<string, number>>;
export type Claims = Record<string, ClaimValue>;

/** A problem found during verification; `code` is a stable identifier, `stage` the step. */
export interface VerificationProblem {
  code: string;
  message: string;
  stage?: string;
}

export interface VerificationResult {
  verified: boolean;
  tee: TeeKind;
  /** DCAP TCB status (UpToDate, OutOfDate, …) where the TEE has one. */
  tcbStatus?: string;
  advisories: string[];
  claims: Claims;
  errors: VerificationProblem[];
  /** True for simulated evidence: every consumer must surface "INSECURE: simulated TEE". */
  insecure?: boolean;
  /** Verification time used (RFC 3339). */
  verifiedAt?: string;
  /** Matched TCB levels and other non-claim details (DCAP: platform / TDX module / QE level). */
  detail?: Record<string, unknown>;
}

export interface VerifyOptions {
  /** Verification time (certificate/collateral windows). */
  at: Date;
  /** Expected report data / TPM nonce, if the caller binds one. */
  reportData?: Uint8Array;
}

export interface Verifier<E = unknown, T = unknown> {
  readonly tee: TeeKind;
  verify(evidence: E, trust: T, options: VerifyOptions): Promise<VerificationResult>;
}
