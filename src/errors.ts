/**
 * One error class for everything Cocoon reports to a user, an API client or a test.
 * `code` is stable (documented in docs/errors.md); `message` is for humans and must never
 * contain secret material. Callers switch on `code`, never on the message.
 */
export const ERROR_CODES = {
  // generic input handling
  BAD_USAGE: { status: 400, exit: 2 },
  INPUT_TOO_LARGE: { status: 413, exit: 2 },
  INPUT_MALFORMED: { status: 400, exit: 2 },
  NOT_FOUND: { status: 404, exit: 1 },
  CONFLICT: { status: 409, exit: 1 },
  IO_ERROR: { status: 500, exit: 1 },
  INTERNAL: { status: 500, exit: 70 },
  // evidence and attestation
  EVIDENCE_MALFORMED: { status: 401, exit: 1 },
  EVIDENCE_SIGNATURE_INVALID: { status: 401, exit: 1 },
  EVIDENCE_CHAIN_INVALID: { status: 401, exit: 1 },
  REPORT_DATA_MISMATCH: { status: 401, exit: 1 },
  NONCE_INVALID: { status: 401, exit: 1 },
  SIM_NOT_ALLOWED: { status: 401, exit: 1 },
  TEE_UNSUPPORTED: { status: 401, exit: 1 },
  TEE_NOT_FOUND: { status: 500, exit: 1 },
  DEBUG_NOT_ALLOWED: { status: 401, exit: 1 },
  // evidence verification (hardware verifiers; appended)
  QUOTE_SIGNATURE_INVALID: { status: 401, exit: 1 },
  PCK_CHAIN_INVALID: { status: 401, exit: 1 },
  CRL_INVALID: { status: 401, exit: 1 },
  CRL_EXPIRED: { status: 401, exit: 1 },
  CERT_REVOKED: { status: 401, exit: 1 },
  CERT_EXPIRED: { status: 401, exit: 1 },
  TCB_INFO_CHAIN_INVALID: { status: 401, exit: 1 },
  TCB_INFO_SIGNATURE_INVALID: { status: 401, exit: 1 },
  TCB_INFO_EXPIRED: { status: 401, exit: 1 },
  TCB_INFO_MISMATCH: { status: 401, exit: 1 },
  QE_IDENTITY_CHAIN_INVALID: { status: 401, exit: 1 },
  QE_IDENTITY_SIGNATURE_INVALID: { status: 401, exit: 1 },
  QE_IDENTITY_EXPIRED: { status: 401, exit: 1 },
  QE_IDENTITY_MISMATCH: { status: 401, exit: 1 },
  QE_REPORT_SIGNATURE_INVALID: { status: 401, exit: 1 },
  QE_REPORT_DATA_MISMATCH: { status: 401, exit: 1 },
  NO_MATCHING_TCB_LEVEL: { status: 401, exit: 1 },
  TCB_REVOKED: { status: 401, exit: 1 },
  TDX_MODULE_MISMATCH: { status: 401, exit: 1 },
  FMSPC_MISMATCH: { status: 401, exit: 1 },
  COLLATERAL_MALFORMED: { status: 401, exit: 1 },
  COLLATERAL_UNAVAILABLE: { status: 401, exit: 1 },
  ARK_NOT_TRUSTED: { status: 401, exit: 1 },
  ASK_INVALID: { status: 401, exit: 1 },
  VEK_CHAIN_INVALID: { status: 401, exit: 1 },
  REPORT_SIGNATURE_INVALID: { status: 401, exit: 1 },
  VCEK_MISMATCH: { status: 401, exit: 1 },
  TCB_MISMATCH: { status: 401, exit: 1 },
  PRODUCT_MISMATCH: { status: 401, exit: 1 },
  TPM_SIGNATURE_INVALID: { status: 401, exit: 1 },
  PCR_DIGEST_MISMATCH: { status: 401, exit: 1 },
  AK_NOT_TRUSTED: { status: 401, exit: 1 },
  VAR_DATA_BINDING_MISMATCH: { status: 401, exit: 1 },
  USER_DATA_MISMATCH: { status: 401, exit: 1 },
  CLAIM_MISMATCH: { status: 401, exit: 1 },
  // broker
  AUTH_REQUIRED: { status: 401, exit: 1 },
  AUTH_INVALID: { status: 401, exit: 1 },
  TOKEN_REPLAYED: { status: 401, exit: 1 },
  FORBIDDEN: { status: 403, exit: 1 },
  POLICY_DENIED: { status: 401, exit: 1 },
  POLICY_INVALID: { status: 400, exit: 1 },
  PREDECESSOR_MISMATCH: { status: 409, exit: 1 },
  SECRET_MISSING: { status: 409, exit: 1 },
  KBS_UNREACHABLE: { status: 503, exit: 1 },
  // images and layers
  IMAGE_INVALID: { status: 400, exit: 1 },
  DIGEST_MISMATCH: { status: 400, exit: 1 },
  LAYER_DECRYPT_FAILED: { status: 400, exit: 1 },
  LAYER_AUTH_FAILED: { status: 400, exit: 1 },
  PATH_TRAVERSAL: { status: 400, exit: 1 },
  DECOMPRESSION_BOMB: { status: 400, exit: 1 },
  MEASUREMENT_MISMATCH: { status: 400, exit: 1 },
  // runtime
  RUNTIME_FAILED: { status: 500, exit: 1 },
  APP_START_FAILED: { status: 500, exit: 1 },
  // broker (appended)
  EVIDENCE_REJECTED: { status: 401, exit: 1 },
  // kubernetes (appended)
  MANIFEST_INVALID: { status: 400, exit: 1 },
  // registries and image transports (appended)
  REGISTRY_UNREACHABLE: { status: 503, exit: 1 },
  REGISTRY_ERROR: { status: 502, exit: 1 },
  REGISTRY_TLS_FAILED: { status: 502, exit: 1 },
  REGISTRY_AUTH_FAILED: { status: 401, exit: 1 },
  // attesters and runtime measurement (appended)
  TPM_COMMAND_FAILED: { status: 500, exit: 1 },
  ATTESTER_IO_FAILED: { status: 500, exit: 1 },
  TSM_REPORT_RACE: { status: 500, exit: 1 },
  EVENT_LOG_MALFORMED: { status: 401, exit: 1 },
  EVENT_LOG_MISMATCH: { status: 401, exit: 1 },
  // broker: rate limiting, sealing, audit (appended)
  RATE_LIMITED: { status: 429, exit: 1 },
  SEAL_FAILED: { status: 500, exit: 1 },
  // protected volumes (appended)
  VOLUME_TAMPERED: { status: 400, exit: 1 },
  VOLUME_ROLLBACK: { status: 409, exit: 1 },
  // attested mutual TLS (appended)
  TLS_PEER_REJECTED: { status: 401, exit: 1 },
  TLS_PROXY_FAILED: { status: 500, exit: 1 },
  KBS_NOT_TRUSTED: { status: 401, exit: 1 },
  // deployment-CA lifecycle: certificate gate, revocation (appended)
  WORKLOAD_CERT_NOT_GRANTED: { status: 403, exit: 1 },
  CERT_UNKNOWN: { status: 404, exit: 1 },
  // init-data binding: SNP HOST_DATA / TDX MRCONFIGID (appended)
  INIT_DATA_MISMATCH: { status: 401, exit: 1 },
  INIT_DATA_NOT_BOUND: { status: 401, exit: 1 },
} as const satisfies Record<string, { status: number; exit: number }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class CocoonError extends Error {
  override readonly name = 'CocoonError';
  readonly code: ErrorCode;
  /** Structured, non-secret context (file:line, rule name, stage…). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details;
  }

  get httpStatus(): number {
    return ERROR_CODES[this.code].status;
  }

  get exitCode(): number {
    return ERROR_CODES[this.code].exit;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message };
  }
}

export function isCocoonError(err: unknown, code?: ErrorCode): err is CocoonError {
  return err instanceof CocoonError && (code === undefined || err.code === code);
}

/** Wraps any thrown value so callers only ever see CocoonError. */
export function asCocoonError(err: unknown, fallback: ErrorCode = 'INTERNAL'): CocoonError {
  if (err instanceof CocoonError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new CocoonError(fallback, message, { cause: err });
}
