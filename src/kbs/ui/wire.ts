/**
 * The dashboard JSON API's shapes (/ui/api/*), written once for the server (src/kbs/ui,
 * src/kbs/routes/ui.ts) and the browser app (src/web imports them with `import type`, erased
 * by esbuild). Keep this module free of runtime code and of imports other than types from
 * import-free modules: src/web is type-checked without Node's types.
 */
import type { AuditRecord, EventRecord, PendingRecord } from '../store/types.js';

/** What the dashboard shows of an attestation/release event (never secret material). */
export interface UiEvent extends Omit<EventRecord, 'at' | 'sessionId'> {
  at: string;
  measurement: string | null;
}

/** GET/POST /ui/api/session. */
export interface Session {
  kid: string;
  role: 'owner' | 'auditor';
  expiresAt: string;
  csrf: string;
  admin: boolean;
}

export interface CertInfo {
  subject: string;
  serial: string;
  sha256: string;
  notAfter: string;
}

/** The KBS's own attestation (`cocoon serve --tee`); src/kbs/self-attest.ts produces it. */
export type SelfAttestationStatus =
  | { available: true; tee: string; measurement: string; insecure: boolean; measurementBound: boolean; register: string | null }
  | { available: false; reason: string };

export interface CaInfo {
  available: boolean;
  root?: CertInfo | null;
  intermediate?: CertInfo | null;
  reason?: string;
}

export interface Overview {
  kbs: { id: string; protocol: string; allowSim: boolean; warning: string | null; selfAttestation: SelfAttestationStatus };
  counts: Record<string, number>;
  ca: CaInfo;
  session: { role: Session['role']; kid: string };
}

export interface PolicySummary {
  name: string;
  version: number;
  hash: string;
  createdAt: string;
  workloads: number;
  secrets: number;
  pending: number;
  threshold: number;
}

export interface VersionView {
  version: number;
  hash: string;
  predecessor: string | null;
  createdAt: string;
  createdBy: string;
  yaml: string;
}

/** A policy update waiting for owner approvals (src/kbs/policies.ts pendingView). */
export interface PendingView extends Omit<PendingRecord, 'createdAt' | 'decidedAt'> {
  createdAt: string;
  approvals: string[];
  rejections: string[];
}

export interface PolicyDetail {
  name: string;
  current: VersionView;
  owners: { name: string; kid: string }[];
  approvals: { threshold: number };
  history: VersionView[];
  pending: PendingView[];
}

/** The fields the dashboard reads of a policy accept rule (src/policy/types.ts AcceptRule has more). */
export interface AcceptRule {
  tee: string[];
  measurement?: string;
  debug: boolean;
}

export interface WorkloadView {
  policy: string;
  version: number;
  name: string;
  accept: AcceptRule[];
  maxActivations: number | null;
  activations: number | null;
  secrets: string[];
  lastAttestation: UiEvent | null;
  lastAccepted: UiEvent | null;
  recentAttestations: number;
}

export interface SecretView {
  policy: string;
  name: string;
  kind: string;
  scope: string;
  ownerReadable: boolean;
  from: string | null;
  exportedTo: string[];
  stored: boolean | null;
  receivers: string[];
}

export type AuditEntry = AuditRecord;

/** src/kbs/audit.ts's verdict over the whole chain, and when it was computed. */
export interface AuditVerdict {
  ok: boolean;
  count: number;
  lastSeq: number;
  lastHash: string;
  checkedAt: string;
  firstBroken?: { seq: number; reason: string; message: string };
}
