import type { KeyObject } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { AttestedSessions } from './attested-sessions.js';
import type { DeploymentCa } from './ca.js';
import type { ResourceGrant } from './rcar.js';
import type { Journal } from './journal.js';
import type { TeeKind, VerificationResult } from '../attestation/types.js';
import type { KbsIdentity } from './identity.js';
import type { KbsMetrics } from './metrics.js';
import type { Store } from './store/types.js';

/**
 * Verifies evidence of one TEE kind. Injected so the server never parses evidence itself;
 * `reportData` is the 64-byte value the KBS expects the evidence to carry.
 */
export type EvidenceVerifier = (tee: TeeKind, evidence: unknown, options: { at: Date; reportData: Uint8Array }) => Promise<VerificationResult>;

/** Everything the routes share. Built once per app; holds no per-request state (only caches of durable state). */
export interface KbsContext {
  store: Store;
  identity: KbsIdentity;
  /** Data key for secrets at rest (unsealed at start). */
  dataKey: Buffer;
  verifier: EvidenceVerifier;
  allowSim: boolean;
  now: () => Date;
  sessionTtlS: number;
  tokenTtlS: number;
  /** Lifetime of workload certificates; default WORKLOAD_CERT_VALID_MS (24 h). */
  workloadCertValidMs?: number;
  log: FastifyBaseLogger;
  metrics: KbsMetrics;
  /** The KBS identity's private key as a KeyObject: signs audit entries. */
  auditKey: KeyObject;
  /** Event rows + audit entries of attestations and releases, group-committed. */
  journal: Journal;
  ca: DeploymentCa;
  /** Grants of the sessions this process attested, by session cookie, for the releases that follow (src/kbs/attested-sessions.ts). */
  attested: AttestedSessions<ResourceGrant>;
}
