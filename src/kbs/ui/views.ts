import { X509Certificate } from 'node:crypto';
import { CocoonError } from '../../errors.js';
import { auditPublicKey, verifyStoreAudit } from '../audit.js';
import type { AuditVerdict } from '../audit.js';
import type { KbsContext } from '../context.js';
import { currentPolicy, isAdmin, pendingView, requirePolicyAccess } from '../policies.js';
import type { CurrentPolicy } from '../policies.js';
import type { AuditRecord, EventRecord, PolicyVersionRecord } from '../store/types.js';
import { toUiEvent } from './live.js';
import type { AuditVerdict as UiAuditVerdict, CaInfo, CertInfo, PolicyDetail, SecretView, UiEvent, VersionView, WorkloadView } from './wire.js';

const AUDIT_SCAN_PAGE = 1000;
const MAX_POLICIES = 500;
export const EVENT_SCAN_LIMIT = 500;
const MAX_CLAIMS_JSON = 16 * 1024;

/**
 * Names of the policies this KBS holds. The store has no "list policies" query, so the
 * names are read from the audit chain (every version is applied with a `policy.apply`
 * entry) — incrementally, from the last entry this replica has seen.
 */
export class PolicyIndex {
  private afterSeq = 0;
  private readonly names = new Set<string>();
  private scanning: Promise<void> | undefined;

  constructor(private readonly ctx: KbsContext) {}

  async list(): Promise<string[]> {
    this.scanning ??= this.scan().finally(() => {
      this.scanning = undefined;
    });
    await this.scanning;
    return [...this.names].sort();
  }

  private async scan(): Promise<void> {
    for (;;) {
      const page = await this.ctx.store.listAudit({ afterSeq: this.afterSeq, limit: AUDIT_SCAN_PAGE });
      for (const e of page) if (e.policy && e.action === 'policy.apply' && this.names.size < MAX_POLICIES) this.names.add(e.policy);
      if (page.length > 0) this.afterSeq = (page[page.length - 1] as AuditRecord).seq;
      if (page.length < AUDIT_SCAN_PAGE) return;
    }
  }
}

export interface Viewer {
  kid: string;
  role: 'owner' | 'auditor';
}

async function mayRead(ctx: KbsContext, kid: string, head: CurrentPolicy): Promise<boolean> {
  try {
    await requirePolicyAccess(ctx, kid, head.record.name, head.policy);
    return true;
  } catch (err) {
    if (err instanceof CocoonError && err.code === 'FORBIDDEN') return false;
    throw err;
  }
}

/** The current versions of the policies this owner may read (its own, or all unowned ones for an admin). */
export async function visiblePolicies(ctx: KbsContext, index: PolicyIndex, kid: string): Promise<CurrentPolicy[]> {
  const out: CurrentPolicy[] = [];
  for (const name of await index.list()) {
    const head = await currentPolicy(ctx, name);
    if (head && (await mayRead(ctx, kid, head))) out.push(head);
  }
  return out;
}

function fingerprint(pem: string): CertInfo | null {
  try {
    const c = new X509Certificate(pem);
    return { subject: c.subject.replace(/\n/g, ', '), serial: c.serialNumber.toLowerCase(), sha256: c.fingerprint256, notAfter: new Date(c.validTo).toISOString() };
  } catch {
    return null;
  }
}

export async function caInfo(ctx: KbsContext): Promise<CaInfo> {
  const ca = (ctx as Partial<KbsContext>).ca;
  if (!ca || typeof ca.chainPem !== 'function') return { available: false, reason: 'not available on this KBS' };
  try {
    const pem = await ca.chainPem();
    return { available: true, root: fingerprint(pem.root), intermediate: fingerprint(pem.intermediate) };
  } catch (err) {
    ctx.log.warn({ err }, 'dashboard: deployment CA not readable');
    return { available: false, reason: 'the deployment CA could not be read' };
  }
}

/** Recent events this owner may see (admins: all; others: their policies), newest first. */
export async function visibleEvents(ctx: KbsContext, kid: string, policies: CurrentPolicy[], options: { policy?: string; limit?: number } = {}): Promise<EventRecord[]> {
  const limit = Math.min(options.limit ?? EVENT_SCAN_LIMIT, EVENT_SCAN_LIMIT);
  const names = new Set(policies.map((p) => p.record.name));
  if (options.policy !== undefined) {
    if (!names.has(options.policy)) return [];
    return ctx.store.listEvents({ limit, policy: options.policy });
  }
  if (await isAdmin(ctx, kid)) return ctx.store.listEvents({ limit });
  const lists = await Promise.all([...names].map((policy) => ctx.store.listEvents({ limit, policy })));
  return lists
    .flat()
    .sort((a, b) => b.at - a.at)
    .slice(0, limit);
}

export function eventVisible(e: EventRecord, admin: boolean, names: Set<string>): boolean {
  return admin || (e.policy !== null && names.has(e.policy));
}

export interface EventFilter {
  workload?: string;
  status?: string;
  code?: string;
  kind?: string;
}

export function filterEvents(events: EventRecord[], f: EventFilter): UiEvent[] {
  return events
    .filter((e) => (f.workload === undefined || e.workload === f.workload) && (f.status === undefined || e.status === f.status) && (f.code === undefined || (f.code === 'none' ? e.code === null : e.code === f.code)) && (f.kind === undefined || e.kind === f.kind))
    .map(toUiEvent);
}

/** What the attestation recorded in its session: verified claims, TCB status (sessions expire with their token). */
export async function eventClaims(ctx: KbsContext, sessionId: string | null): Promise<{ available: boolean; claims?: unknown; tcbStatus?: string; advisories?: string[]; measurement?: string | null; debug?: boolean; reason?: string }> {
  if (!sessionId) return { available: false, reason: 'this event has no attestation session' };
  const session = await ctx.store.getSession(sessionId);
  if (!session?.attestation) return { available: false, reason: 'the attestation session has expired; its claims are no longer stored (the audit log keeps the measurement)' };
  let grant: Record<string, unknown>;
  try {
    grant = JSON.parse(session.attestation) as Record<string, unknown>;
  } catch {
    return { available: false, reason: 'the recorded attestation is not readable' };
  }
  let claims: unknown = grant.claims ?? {};
  if (JSON.stringify(claims).length > MAX_CLAIMS_JSON) claims = { truncated: true };
  return {
    available: true,
    claims,
    ...(typeof grant.tcbStatus === 'string' ? { tcbStatus: grant.tcbStatus } : {}),
    advisories: Array.isArray(grant.advisories) ? grant.advisories.filter((a): a is string => typeof a === 'string').slice(0, 64) : [],
    measurement: typeof grant.measurement === 'string' ? grant.measurement : null,
    debug: grant.debug === true,
  };
}

/** Successful activations per policy and workload (when this KBS's store counts them). */
export async function activationCounts(ctx: KbsContext, policies: CurrentPolicy[]): Promise<Map<string, Record<string, number>>> {
  const out = new Map<string, Record<string, number>>();
  const store = ctx.store as Partial<Pick<KbsContext['store'], 'listActivations'>>;
  if (typeof store.listActivations !== 'function') return out;
  for (const p of policies) out.set(p.record.name, await store.listActivations.call(ctx.store, p.record.name));
  return out;
}

export function workloadsView(policies: CurrentPolicy[], events: EventRecord[], activations = new Map<string, Record<string, number>>()): WorkloadView[] {
  return policies.flatMap((p) =>
    Object.entries(p.policy.workloads).map(([name, w]) => {
      const mine = events.filter((e) => e.policy === p.record.name && e.workload === name && e.kind === 'attest');
      const last = mine[0];
      const lastOk = mine.find((e) => e.status === 'affirming');
      return {
        policy: p.record.name,
        version: p.record.version,
        name,
        accept: w.accept,
        maxActivations: w.maxActivations ?? null,
        activations: activations.get(p.record.name)?.[name] ?? null,
        secrets: grantsOf(p, name),
        lastAttestation: last ? toUiEvent(last) : null,
        lastAccepted: lastOk ? toUiEvent(lastOk) : null,
        recentAttestations: mine.length,
      };
    }),
  );
}

function grantsOf(p: CurrentPolicy, workload: string): string[] {
  const w = p.policy.workloads[workload];
  if (!w) return [];
  const names = new Set(w.secrets);
  if (p.policy.secrets['layer-key']) names.add('layer-key');
  return [...names].sort();
}

/** Secret metadata only: name, kind, options, who receives it. Values are never read here. */
export async function secretsView(ctx: KbsContext, policies: CurrentPolicy[]): Promise<SecretView[]> {
  const out: SecretView[] = [];
  for (const p of policies) {
    const stored = new Set(await ctx.store.listSecretNames(p.record.name));
    for (const [name, spec] of Object.entries(p.policy.secrets)) {
      const receivers = Object.keys(p.policy.workloads).filter((w) => grantsOf(p, w).includes(name));
      const scope = 'scope' in spec && spec.scope ? spec.scope : 'shared';
      out.push({
        policy: p.record.name,
        name,
        kind: spec.kind,
        scope,
        ownerReadable: spec.ownerReadable,
        from: spec.kind === 'imported' && spec.from ? `${spec.from.policy}/${spec.from.secret}` : null,
        exportedTo: p.policy.exports[name] ?? [],
        stored: scope === 'instance' ? null : stored.has(name),
        receivers,
      });
    }
  }
  return out;
}

export async function policyDetail(ctx: KbsContext, head: CurrentPolicy, historyLimit: number): Promise<PolicyDetail> {
  const versions = await ctx.store.listPolicyVersions(head.record.name, historyLimit);
  const pending = await ctx.store.listPending(head.record.name, 'pending');
  return {
    name: head.record.name,
    current: versionView(head.record),
    owners: head.policy.owners.map((o) => ({ name: o.name, kid: o.kid })),
    approvals: head.policy.approvals,
    history: versions.map(versionView),
    pending: await Promise.all(pending.slice(0, 50).map((p) => pendingView(ctx.store, p))),
  };
}

function versionView(v: PolicyVersionRecord): VersionView {
  return { version: v.version, hash: v.hash, predecessor: v.predecessor, createdAt: new Date(v.createdAt).toISOString(), createdBy: v.createdBy, yaml: v.yaml };
}

/** Whole-chain verification, cached for a few seconds per chain head. */
export class AuditVerifier {
  private cached: { head: string; at: number; verdict: AuditVerdict } | undefined;

  constructor(
    private readonly ctx: KbsContext,
    private readonly cacheMs = 5000,
  ) {}

  async verdict(): Promise<UiAuditVerdict> {
    const last = await this.ctx.store.auditHead();
    const head = last?.hash ?? 'empty';
    const now = Date.now();
    if (!this.cached || this.cached.head !== head || now - this.cached.at > this.cacheMs) {
      this.cached = { head, at: now, verdict: await verifyStoreAudit(this.ctx.store, auditPublicKey(this.ctx.identity.publicJwk)) };
    }
    return { ...this.cached.verdict, checkedAt: new Date(this.cached.at).toISOString() };
  }
}
