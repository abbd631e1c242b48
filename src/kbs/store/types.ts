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
  nonce: string;
  nonceUsed: boolean;
  createdAt: number;
  expiresAt: number;
  /** Set once attested. */
  teePubkey: string | null;
  /** JSON of the attestation outcome (policy, workload, insecure, token expiry). */
  attestation: string | null;
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
}

export interface Store {
  readonly dialect: 'sqlite' | 'postgres';

  getMeta(key: string): Promise<string | undefined>;
  /** Inserts unless present; returns the stored value (the first writer wins across replicas). */
  putMetaIfAbsent(key: string, value: string): Promise<string>;

  upsertOwner(owner: OwnerRecord): Promise<void>;
  getOwner(kid: string): Promise<OwnerRecord | undefined>;
  listOwners(): Promise<OwnerRecord[]>;

  getPolicyHead(name: string): Promise<PolicyVersionRecord | undefined>;
  listPolicyVersions(name: string, limit: number): Promise<PolicyVersionRecord[]>;
  /** Throws PREDECESSOR_MISMATCH when the head moved. One transaction. */
  applyPolicy(input: ApplyPolicyInput): Promise<void>;

  getSecret(policy: string, name: string): Promise<SecretRecord | undefined>;
  listSecretNames(policy: string): Promise<string[]>;
  putSecret(secret: SecretRecord): Promise<void>;

  createSession(session: SessionRecord): Promise<void>;
  getSession(id: string): Promise<SessionRecord | undefined>;
  /** Atomically marks the session's nonce used; false if it was already used, expired or absent. */
  consumeNonce(id: string, now: number): Promise<boolean>;
  completeSession(id: string, teePubkey: string, attestation: string, expiresAt: number): Promise<void>;
  purgeExpired(now: number): Promise<void>;

  /** Records a token id; false when it was seen before (replay). */
  rememberJti(jti: string, expiresAt: number, now: number): Promise<boolean>;

  addEvent(event: EventRecord): Promise<void>;
  listEvents(options: { limit: number; policy?: string; before?: number }): Promise<EventRecord[]>;

  ping(): Promise<void>;
  close(): Promise<void>;
}
