import type { Generated } from 'kysely';

/** kysely table types. Integers that may exceed 2^31 are bigint columns (pg returns them as strings). */
export interface Database {
  kbs_meta: { key: string; value: string };
  kbs_owners: { kid: string; jwk: string; label: string; created_at: number | string; role: Generated<string> };
  kbs_policies: { name: string; version: number; hash: string; updated_at: number | string };
  kbs_policy_versions: {
    name: string;
    version: number;
    hash: string;
    predecessor: string | null;
    yaml: string;
    created_at: number | string;
    created_by: string;
  };
  kbs_secrets: { policy: string; name: string; kind: string; sealed: string; created_at: number | string; updated_at: number | string };
  kbs_sessions: {
    id: string;
    tee: string;
    nonce: string;
    nonce_used: number;
    created_at: number | string;
    expires_at: number | string;
    tee_pubkey: string | null;
    attestation: string | null;
  };
  kbs_jti: { jti: string; expires_at: number | string };
  kbs_events: {
    seq: Generated<number>;
    id: string;
    at: number | string;
    kind: string;
    status: string;
    tee: string;
    policy: string | null;
    workload: string | null;
    resource: string | null;
    code: string | null;
    detail: string;
    insecure: number;
    session_id: string | null;
  };
  kbs_pending: {
    id: string;
    policy: string;
    base_hash: string | null;
    base_version: number;
    yaml: string;
    threshold: number;
    proposed_by: string;
    created_at: number | string;
    status: string;
    decided_at: number | string | null;
  };
  kbs_approvals: { pending_id: string; owner: string; decision: string; at: number | string };
  kbs_audit: { seq: number | string; at: number | string; actor: string; action: string; policy: string | null; detail: string; prev: string; hash: string; sig: string };
  kbs_ca: { id: string; kind: string; serial: string; cert: string; sealed_key: string; created_at: number | string; not_after: number | string };
  kbs_revoked: { serial: string; at: number | string; reason: string };
  kbs_certs: { serial: string; policy: string; workload: string; issued_at: number | string; not_after: number | string };
  kbs_instance_secrets: { instance: string; policy: string; name: string; sealed: string; expires_at: number | string };
  kbs_activations: { policy: string; workload: string; count: number };
  kbs_volumes: { policy: string; workload: string; volume: string; version: number | string; sealed_key: string; created_at: number | string; updated_at: number | string };
}
