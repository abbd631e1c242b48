/**
 * The KBS's only state. Every replica of the KBS talks to the same Store, so anything a
 * follow-up request needs (sessions, nonces, jti) lives here, never in process memory.
 * Times are milliseconds since the epoch.
 */

export interface OwnerRecord {
  /** RFC 7638 thumbprint (SHA-256, base64url) of the public JWK. */
  kid: string;
  /** Public JWK as JSON text. */
  jwk: string;
  label: string;
  createdAt: number;
  /** admin: bootstrap owner (serve --owner); policy: known because a policy lists it. Default admin. */
  role?: 'admin' | 'policy';
}

export interface PendingRecord {
  id: string;
  policy: string;
  /** Head the update was proposed against (null: none). */
  baseHash: string | null;
  baseVersion: number;
  yaml: string;
  threshold: number;
  proposedBy: string;
  createdAt: number;
  status: 'pending' | 'applied' | 'rejected' | 'superseded';
  decidedAt: number | null;
}

export interface ApprovalRecord {
  pendingId: string;
  owner: string;
  decision: 'approve' | 'reject';
  at: number;
}

/** One link of the audit chain (docs/audit.md). */
export interface AuditRecord {
  seq: number;
  at: number;
  actor: string;
  action: string;
  policy: string | null;
  /** Canonical JSON object text. */
  detail: string;
  prev: string;
  hash: string;
  /** base64url ES256 (IEEE P1363) signature by the KBS key over the hash bytes. */
  sig: string;
}

/** A deployment-CA workload certificate the KBS issued (revocation by serial or by workload). */
export interface IssuedCertRecord {
  serial: string;
  policy: string;
  workload: string;
  issuedAt: number;
  notAfter: number;
}

export interface CaRecord {
  id: string;
  kind: 'root' | 'intermediate';
  serial: string;
  cert: string;
  /** Private key (PKCS#8) sealed under the data key. */
  sealedKey: string;
  createdAt: number;
  notAfter: number;
}

export interface PolicyVersionRecord {
  name: string;
  version: number;
  /** Hash of this version (chains over the predecessor). */
  hash: string;
  predecessor: string | null;
  yaml: string;
  createdAt: number;
  /** Owner kid that applied it. */
  createdBy: string;
}

export interface SecretRecord {
  policy: string;
  name: string;
  kind: string;
  /** AES-256-GCM ciphertext under the data key (see secret-box.ts), never the plaintext. */
  sealed: string;
  createdAt: number;
  updatedAt: number;
}

export interface SessionRecord {
  id: string;
  tee: string;
  /** The challenge's nonce. Every row is a spent challenge (its nonce_used column is always 1). */
  nonce: string;
  createdAt: number;
  expiresAt: number;
  /** Set once attested. */
  teePubkey: string | null;
  /** JSON of the attestation outcome (policy, workload, insecure, token expiry). */
  attestation: string | null;
}

export interface InstanceSecretRecord {
  /** `session:<id>` or `token:<jti>`. */
  instance: string;
  policy: string;
  name: string;
  sealed: string;
  expiresAt: number;
}

export interface EventRecord {
  id: string;
  at: number;
  kind: 'attest' | 'release';
  status: 'affirming' | 'contraindicated' | 'error';
  tee: string;
  policy: string | null;
  workload: string | null;
  resource: string | null;
  code: string | null;
  detail: string;
  insecure: boolean;
  sessionId: string | null;
}

export interface ApplyPolicyInput {
  record: PolicyVersionRecord;
  /** The head hash the caller based its change on (null: no policy yet); compare-and-swap. */
  expectedHead: string | null;
  /** Inserted only where no secret of that name exists yet (random secrets kept across versions). */
  newSecrets: SecretRecord[];
  /** Inserted or replacing what is there (x509 certificates re-issued on every version). */
  replaceSecrets?: SecretRecord[];
}

/** A protected volume's key (sealed with the data key) and version counter. */
export interface VolumeRecord {
  policy: string;
  workload: string;
  volume: string;
  version: number;
  sealedKey: string;
  createdAt: number;
  updatedAt: number;
}

export interface Store {
  readonly dialect: 'sqlite' | 'postgres';

  getMeta(key: string): Promise<string | undefined>;
  /** Inserts unless present; returns the stored value (the first writer wins across replicas). */
  putMetaIfAbsent(key: string, value: string): Promise<string>;
  /** Inserts or replaces (recovery records, re-sealed data key). */
  putMeta(key: string, value: string): Promise<void>;

  upsertOwner(owner: OwnerRecord): Promise<void>;
  getOwner(kid: string): Promise<OwnerRecord | undefined>;
  listOwners(): Promise<OwnerRecord[]>;

  /** The current version's number and hash only (a one-row read): callers that cache versions by hash use it. */
  getPolicyHeadRef(name: string): Promise<{ version: number; hash: string } | undefined>;
  getPolicyHead(name: string): Promise<PolicyVersionRecord | undefined>;
  listPolicyVersions(name: string, limit: number): Promise<PolicyVersionRecord[]>;
  /** Throws PREDECESSOR_MISMATCH when the head moved. One transaction. */
  applyPolicy(input: ApplyPolicyInput): Promise<void>;

  getSecret(policy: string, name: string): Promise<SecretRecord | undefined>;
  listSecretNames(policy: string): Promise<string[]>;
  putSecret(secret: SecretRecord): Promise<void>;

  /** Inserts the session of an answered RCAR challenge; false (and nothing written) if its id exists: the challenge was already spent. */
  insertSession(session: SessionRecord): Promise<boolean>;
  /** Whether the session row exists (the challenge was spent), without reading it. */
  sessionExists(id: string): Promise<boolean>;
  getSession(id: string): Promise<SessionRecord | undefined>;
  /** Sessions, jtis and per-instance secret values past their expiry. */
  purgeExpired(now: number): Promise<void>;
  /**
   * Keeps `rec` unless a value for (instance, policy, name) exists; returns the stored sealed
   * value either way (the first writer wins, also across replicas).
   */
  putInstanceSecretIfAbsent(rec: InstanceSecretRecord): Promise<string>;
  getInstanceSecret(instance: string, policy: string, name: string): Promise<string | undefined>;

  /** Records a token id; false when it was seen before (replay). */
  rememberJti(jti: string, expiresAt: number, now: number): Promise<boolean>;

  addEvent(event: EventRecord): Promise<void>;
  listEvents(options: { limit: number; policy?: string; before?: number }): Promise<EventRecord[]>;

  /** Runs fn in one transaction (nested calls join it). Retried by callers on conflicts. */
  transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T>;

  /** Registers a policy owner key unless the kid is known (an admin stays an admin). */
  addPolicyOwner(owner: OwnerRecord): Promise<void>;

  createPending(p: PendingRecord): Promise<void>;
  getPending(id: string): Promise<PendingRecord | undefined>;
  listPending(policy: string, status?: PendingRecord['status']): Promise<PendingRecord[]>;
  /** Compare-and-set of the status; false when it was not `from` any more. */
  setPendingStatus(id: string, from: PendingRecord['status'], to: PendingRecord['status'], at: number): Promise<boolean>;
  /** False when this owner already decided on this update. */
  addApproval(a: ApprovalRecord): Promise<boolean>;
  listApprovals(pendingId: string): Promise<ApprovalRecord[]>;

  /**
   * Inside a transaction: serializes audit appends across replicas until commit (PostgreSQL
   * advisory transaction lock; SQLite transactions are serialized already). Without it,
   * concurrent appenders race for the same seq and all but one retry.
   */
  lockAuditChain(): Promise<void>;
  /** The newest entry's seq and hash (the chain head), if any. */
  auditHead(): Promise<Pick<AuditRecord, 'seq' | 'hash'> | undefined>;
  /** Fails (unique violation) when seq is taken: the caller retries with the new head. */
  insertAudit(rec: AuditRecord): Promise<void>;
  listAudit(options: { afterSeq?: number; limit: number; policy?: string; desc?: boolean }): Promise<AuditRecord[]>;

  /** Inserts unless the id exists; returns the stored record (first writer wins). */
  putCaIfAbsent(rec: CaRecord): Promise<CaRecord>;
  insertCa(rec: CaRecord): Promise<void>;
  latestCa(kind: CaRecord['kind']): Promise<CaRecord | undefined>;
  listCa(kind: CaRecord['kind'], limit: number): Promise<CaRecord[]>;
  revokeSerial(serial: string, at: number, reason: string): Promise<boolean>;
  listRevoked(): Promise<{ serial: string; at: number; reason: string }[]>;
  getRevoked(serial: string): Promise<{ serial: string; at: number; reason: string } | undefined>;
  /** Issued workload certificates (migration 0004). */
  recordCert(rec: IssuedCertRecord): Promise<void>;
  getCert(serial: string): Promise<IssuedCertRecord | undefined>;
  /** Certificates of a workload still valid at `validAt`, newest first. */
  listCerts(policy: string, workload: string, validAt: number, limit: number): Promise<IssuedCertRecord[]>;
  /**
   * Housekeeping of the deployment CA's records, one transaction (docs/kbs.md "Revocation"):
   * deletes issued certificates with `notAfter <= certsExpiredBefore` together with their
   * revocations, and revocations of serials without an issuance record (forced revocations)
   * made at or before `unrecordedRevokedBefore`. A revocation of a recorded certificate that is
   * still valid is never removed. Returns how many rows of each kind went.
   */
  pruneCertificates(certsExpiredBefore: number, unrecordedRevokedBefore: number): Promise<{ certs: number; revoked: number }>;

  /** Counts one activation unless `max` is reached; returns the new count or false. */
  countActivation(policy: string, workload: string, max: number | undefined): Promise<number | false>;
  listActivations(policy: string): Promise<Record<string, number>>;

  /** Protected volumes: inserts unless present; returns the stored record (first writer wins). */
  putVolumeIfAbsent(rec: VolumeRecord): Promise<VolumeRecord>;
  getVolume(policy: string, workload: string, volume: string): Promise<VolumeRecord | undefined>;
  listVolumes(policy: string): Promise<VolumeRecord[]>;
  /** Compare-and-set of the version counter (forward only); false when it was not `from` any more. */
  advanceVolume(policy: string, workload: string, volume: string, from: number, to: number, at: number): Promise<boolean>;

  ping(): Promise<void>;
  close(): Promise<void>;
}
