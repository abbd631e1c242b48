import type { JWK } from 'jose';
import { CocoonError } from '../../errors.js';
import { parsePolicy } from '../../policy/parse.js';
import { loadOwnerPrivateKey, signOwnerToken } from '../owner-key.js';
import type { OwnerSigningKey } from '../owner-key.js';
import type { PendingView } from '../policies.js';
import type { RevokeResult } from '../revoke.js';
import type { AuditRecord, EventRecord } from '../store/types.js';
import { TransientError, errorFromResponse, httpRequest, parseJsonBody, trimBase } from './http.js';

export interface OwnerClientOptions {
  kbsUrl: string;
  /** Private owner JWK file (0600), or an already loaded key. */
  ownerKeyFile?: string;
  ownerKey?: OwnerSigningKey;
  /** Default 15 s. */
  timeoutMs?: number;
  /** Owner token lifetime; at most 300 s. Default 60 s. */
  tokenTtlS?: number;
  fetchImpl?: typeof fetch;
}

export interface KbsIdentityInfo {
  id: string;
  publicKey: JWK;
  allowSim: boolean;
  protocol: string;
  warning?: string;
}

export interface PolicyRef {
  name: string;
  version: number;
  hash: string;
  /** Present when the update waits for more owner approvals. */
  pending?: { id: string; approvals: number; threshold: number };
}

/** A policy update waiting for owner approvals (GET …/pending). */
export type PendingUpdate = PendingView;

/** One link of the audit chain, as GET /cocoon/v1/audit returns it. */
export type AuditEntry = AuditRecord;

export interface CaCertificates {
  root: string;
  intermediate: string;
  chain: string;
  workloadIdentityOid: string;
}

/** The answer of POST /cocoon/v1/ca/revoke. */
export type { RevokeResult } from '../revoke.js';

export interface PolicyVersionInfo extends PolicyRef {
  predecessor: string | null;
  createdAt: string;
  createdBy: string;
}

/** An event as GET /cocoon/v1/events returns it. */
export interface AttestationEvent extends Omit<EventRecord, 'at' | 'sessionId'> {
  at: string;
}

/** The CLI's view of the owner API. Every request carries a fresh owner JWS (new jti). */
export class OwnerClient {
  private identityCache: KbsIdentityInfo | undefined;

  private constructor(
    private readonly base: string,
    private readonly key: OwnerSigningKey,
    private readonly opts: OwnerClientOptions,
  ) {}

  static async create(options: OwnerClientOptions): Promise<OwnerClient> {
    const key = options.ownerKey ?? (options.ownerKeyFile ? await loadOwnerPrivateKey(options.ownerKeyFile) : undefined);
    if (!key) throw new CocoonError('BAD_USAGE', 'an owner key (ownerKeyFile) is required');
    return new OwnerClient(trimBase(options.kbsUrl), key, options);
  }

  get ownerKid(): string {
    return this.key.kid;
  }

  async identity(): Promise<KbsIdentityInfo> {
    if (!this.identityCache) {
      const info = (await this.call('GET', '/cocoon/v1/identity', undefined, false)) as KbsIdentityInfo;
      if (typeof info.id !== 'string') throw new CocoonError('INPUT_MALFORMED', 'KBS identity response has no id');
      this.identityCache = info;
    }
    return this.identityCache;
  }

  /**
   * Checks the policy locally (file:line errors before any network), then applies it. Without
   * `predecessor` the current head is fetched first, i.e. "update whatever is current".
   */
  async applyPolicy(yaml: string, options: { file?: string; predecessor?: string | null } = {}): Promise<PolicyRef> {
    const policy = parsePolicy(yaml, options.file ? { file: options.file } : {});
    // A `predecessor:` written in the file is the owner's explicit claim: send it as is.
    let predecessor: string | null | undefined = options.predecessor !== undefined ? options.predecessor : policy.predecessor;
    if (predecessor === undefined) predecessor = (await this.getPolicy(policy.name).catch((err: unknown) => {
      if (err instanceof CocoonError && err.code === 'NOT_FOUND') return undefined;
      throw err;
    }))?.hash ?? null;
    return (await this.call('PUT', `/cocoon/v1/policies/${policy.name}`, { yaml, ...(predecessor ? { predecessor } : {}) })) as PolicyRef;
  }

  async getPolicy(name: string): Promise<PolicyVersionInfo & { yaml: string }> {
    return (await this.call('GET', `/cocoon/v1/policies/${checkPolicyName(name)}`)) as PolicyVersionInfo & { yaml: string };
  }

  async policyHistory(name: string, limit = 100): Promise<PolicyVersionInfo[]> {
    const res = (await this.call('GET', `/cocoon/v1/policies/${checkPolicyName(name)}/history?limit=${limit}`)) as { versions: PolicyVersionInfo[] };
    return res.versions;
  }

  async putSecret(policy: string, name: string, value: Uint8Array): Promise<{ policy: string; name: string; kind: string; updatedAt: string }> {
    return (await this.call('PUT', `/cocoon/v1/secrets/${checkPolicyName(policy)}/${encodeURIComponent(name)}`, { value: Buffer.from(value).toString('base64') })) as {
      policy: string;
      name: string;
      kind: string;
      updatedAt: string;
    };
  }

  async getSecret(policy: string, name: string): Promise<Buffer> {
    const res = (await this.call('GET', `/cocoon/v1/secrets/${checkPolicyName(policy)}/${encodeURIComponent(name)}`)) as { value?: unknown };
    if (typeof res.value !== 'string') throw new CocoonError('INPUT_MALFORMED', 'secret response has no value');
    return Buffer.from(res.value, 'base64');
  }

  async listEvents(options: { limit?: number; policy?: string } = {}): Promise<AttestationEvent[]> {
    const q = new URLSearchParams();
    if (options.limit !== undefined) q.set('limit', String(options.limit));
    if (options.policy !== undefined) q.set('policy', checkPolicyName(options.policy));
    const qs = q.toString();
    const res = (await this.call('GET', `/cocoon/v1/events${qs ? `?${qs}` : ''}`)) as { events: AttestationEvent[] };
    return res.events;
  }

  async diffPolicy(yaml: string, options: { file?: string } = {}): Promise<{ name: string; current: { version: number; hash: string } | null; changes: { op: string; path: string; from?: unknown; to?: unknown }[] }> {
    const policy = parsePolicy(yaml, options.file ? { file: options.file } : {});
    return (await this.call('POST', `/cocoon/v1/policies/${policy.name}/diff`, { yaml })) as Awaited<ReturnType<OwnerClient['diffPolicy']>>;
  }

  async workloads(name: string): Promise<{ name: string; activations: number; maxActivations: number | null; tees: string[]; secrets: string[] }[]> {
    return ((await this.call('GET', `/cocoon/v1/policies/${checkPolicyName(name)}/workloads`)) as { workloads: Awaited<ReturnType<OwnerClient['workloads']>> }).workloads;
  }

  /** Protected volumes' version counters (docs/volumes.md). */
  async volumes(name: string): Promise<{ workload: string; volume: string; version: number; updatedAt: number }[]> {
    return ((await this.call('GET', `/cocoon/v1/policies/${checkPolicyName(name)}/volumes`)) as { volumes: Awaited<ReturnType<OwnerClient['volumes']>> }).volumes;
  }

  async listPending(name: string): Promise<PendingUpdate[]> {
    return ((await this.call('GET', `/cocoon/v1/policies/${checkPolicyName(name)}/pending`)) as { pending: PendingUpdate[] }).pending;
  }

  async decide(name: string, id: string, decision: 'approve' | 'reject'): Promise<{ status: string; version?: number; hash?: string; pending?: PolicyRef['pending'] }> {
    if (!/^[0-9a-f-]{36}$/.test(id)) throw new CocoonError('BAD_USAGE', `update id must be a UUID: ${id}`);
    return (await this.call('POST', `/cocoon/v1/policies/${checkPolicyName(name)}/pending/${id}/${decision}`, {})) as { status: string };
  }

  /** One page of the audit chain in seq order, after `after`. */
  async audit(options: { after?: number; limit?: number; policy?: string } = {}): Promise<{ publicKey: JWK; entries: AuditEntry[] }> {
    const q = new URLSearchParams();
    if (options.after !== undefined) q.set('after', String(options.after));
    if (options.limit !== undefined) q.set('limit', String(options.limit));
    if (options.policy !== undefined) q.set('policy', checkPolicyName(options.policy));
    const qs = q.toString();
    return (await this.call('GET', `/cocoon/v1/audit${qs ? `?${qs}` : ''}`)) as { publicKey: JWK; entries: AuditEntry[] };
  }

  async caCertificates(): Promise<CaCertificates> {
    return (await this.call('GET', '/cocoon/v1/ca', undefined, false)) as CaCertificates;
  }

  async crl(): Promise<string> {
    return (await this.call('GET', '/cocoon/v1/ca/crl', undefined, false, true)) as string;
  }

  /** Revokes one serial, or (`{workload: 'org/app#name'}`) every current certificate of a workload. */
  async revoke(target: { serial?: string; workload?: string; reason?: string; force?: boolean }): Promise<RevokeResult> {
    return (await this.call('POST', '/cocoon/v1/ca/revoke', target)) as RevokeResult;
  }

  /** Mints a single-use owner token bound to this request's method and path. */
  async mintToken(method: string, path: string): Promise<string> {
    const { id } = await this.identity();
    return signOwnerToken(this.key, { audience: id, method, path, ttlS: Math.min(this.opts.tokenTtlS ?? 60, 300) });
  }

  private async call(method: 'GET' | 'PUT' | 'POST', path: string, body?: unknown, auth = true, text = false): Promise<unknown> {
    const headers: Record<string, string> = {};
    if (auth) headers.authorization = `Bearer ${await this.mintToken(method, path)}`;
    let res;
    try {
      res = await httpRequest(`${this.base}${path}`, {
        method,
        headers,
        body,
        timeoutMs: this.opts.timeoutMs ?? 15_000,
        maxBytes: 8 * 1024 * 1024,
        ...(this.opts.fetchImpl ? { fetchImpl: this.opts.fetchImpl } : {}),
      });
    } catch (err) {
      if (err instanceof TransientError) throw new CocoonError('KBS_UNREACHABLE', `KBS ${this.base}: ${err.message}`);
      throw err;
    }
    if (res.status !== 200) throw errorFromResponse(res, `${method} ${path}`);
    if (text) return res.bytes.toString('utf8');
    return parseJsonBody(res, `${method} ${path}`);
  }
}

function checkPolicyName(name: string): string {
  if (!/^[a-z0-9][a-z0-9._-]{0,62}\/[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) throw new CocoonError('BAD_USAGE', `policy name must be org/app: ${name}`);
  return name;
}
