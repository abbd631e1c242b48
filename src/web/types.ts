export interface Session {
  kid: string;
  role: 'owner' | 'auditor';
  expiresAt: string;
  csrf: string;
  admin: boolean;
}

export interface UiEvent {
  id: string;
  at: string;
  kind: 'attest' | 'release';
  status: 'affirming' | 'contraindicated' | 'error';
  tee: string;
  policy: string | null;
  workload: string | null;
  resource: string | null;
  code: string | null;
  detail: string;
  insecure: boolean;
  measurement: string | null;
}

export interface CertInfo {
  subject: string;
  serial: string;
  sha256: string;
  notAfter: string;
}

/** The KBS's own attestation (GET /cocoon/v1/attestation; `cocoon serve --tee`). */
export type SelfAttestationStatus =
  | { available: true; tee: string; measurement: string; insecure: boolean; measurementBound: boolean; register: string | null }
  | { available: false; reason: string };

export interface Overview {
  kbs: { id: string; protocol: string; allowSim: boolean; warning: string | null; selfAttestation: SelfAttestationStatus };
  counts: Record<string, number>;
  ca: { available: boolean; root?: CertInfo | null; intermediate?: CertInfo | null; reason?: string };
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

export interface PendingView {
  id: string;
  policy: string;
  baseHash: string | null;
  baseVersion: number;
  threshold: number;
  proposedBy: string;
  createdAt: string;
  status: string;
  approvals: string[];
  rejections: string[];
  yaml: string;
}

export interface PolicyDetail {
  name: string;
  current: VersionView;
  owners: { name: string; kid: string }[];
  approvals: { threshold: number };
  history: VersionView[];
  pending: PendingView[];
}

export interface AcceptRule {
  tee: string[];
  measurement?: string;
  debug: boolean;
  [k: string]: unknown;
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

export interface AuditEntry {
  seq: number;
  at: number;
  actor: string;
  action: string;
  policy: string | null;
  detail: string;
  prev: string;
  hash: string;
  sig: string;
}

export interface AuditVerdict {
  ok: boolean;
  count: number;
  lastSeq: number;
  lastHash: string;
  checkedAt: string;
  firstBroken?: { seq: number; reason: string; message: string };
}
