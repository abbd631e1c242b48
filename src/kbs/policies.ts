import { randomUUID } from 'node:crypto';
import { CocoonError } from '../errors.js';
import { canonicalJson } from '../crypto/canonical-json.js';
import { sha256Hex } from '../crypto/hash.js';
import { parsePolicy } from '../policy/parse.js';
import type { Policy } from '../policy/types.js';
import { appendAudit, withRetry } from './audit.js';
import type { KbsContext } from './context.js';
import { generateRandomSecret, readSecret, sealSecret } from './secrets.js';
import { generateStructured } from './secret-gen.js';
import type { CaRecord, PendingRecord, PolicyVersionRecord, SecretRecord, Store } from './store/types.js';

export interface CurrentPolicy {
  record: PolicyVersionRecord;
  policy: Policy;
}

/** Stored versions with their parsed policy, by store and version hash (the record's createdAt/By are the store's own). */
const versionCaches = new WeakMap<Store, Map<string, CurrentPolicy>>();
const CACHE_MAX = 256;

export function policyFileName(name: string): string {
  return `${name}.yaml`;
}

/** Hash of one version, chained over its predecessor (tamper evidence for the history). */
export function policyVersionHash(name: string, version: number, predecessor: string | null, yaml: string): string {
  return `sha256:${sha256Hex(canonicalJson({ name, version, predecessor, yaml: sha256Hex(yaml) }))}`;
}

/**
 * The current version of a policy. Every attestation and release asks (a change takes effect
 * at once, on every replica), so only the head's hash is read; the version itself comes from
 * the cache when this process has read it from this store before.
 */
export async function currentPolicy(ctx: KbsContext, name: string): Promise<CurrentPolicy | undefined> {
  const ref = await ctx.store.getPolicyHeadRef(name);
  if (!ref) return undefined;
  let versions = versionCaches.get(ctx.store);
  if (!versions) {
    versions = new Map();
    versionCaches.set(ctx.store, versions);
  }
  const cached = versions.get(ref.hash);
  if (cached?.record.name === name) return cached;
  const record = await ctx.store.getPolicyHead(name);
  if (!record) return undefined;
  const current = { record, policy: parsePolicy(record.yaml, { file: policyFileName(record.name) }) };
  if (versions.size >= CACHE_MAX) versions.clear();
  versions.set(record.hash, current);
  return current;
}

/**
 * Who may read or change a policy: its listed owners; a policy without `owners` (and the
 * creation of a new policy) belongs to the KBS's bootstrap (admin) owners. Everyone else is
 * FORBIDDEN — including admins not listed by a policy that has owners.
 */
export async function requirePolicyAccess(ctx: KbsContext, ownerKid: string, name: string, policy: Policy | undefined): Promise<void> {
  if (policy && policy.owners.length > 0) {
    if (!policy.owners.some((o) => o.kid === ownerKid)) throw new CocoonError('FORBIDDEN', `you are not an owner of policy ${name}`);
    return;
  }
  if (!(await isAdmin(ctx, ownerKid))) throw new CocoonError('FORBIDDEN', policy ? `policy ${name} is managed by the KBS administrators` : `only KBS administrators may create policy ${name}`);
}

/** The current version of a policy, if this owner may read it (403 before 404: no probing of names). */
export async function readablePolicy(ctx: KbsContext, ownerKid: string, name: string): Promise<CurrentPolicy> {
  const head = await currentPolicy(ctx, name);
  await requirePolicyAccess(ctx, ownerKid, name, head?.policy);
  if (!head) throw new CocoonError('NOT_FOUND', `no policy ${name}`);
  return head;
}

export async function isAdmin(ctx: KbsContext, ownerKid: string): Promise<boolean> {
  return (await ctx.store.getOwner(ownerKid))?.role === 'admin';
}

export interface ApplyResult {
  name: string;
  version: number;
  hash: string;
  /** Set when the update waits for more approvals (the version/hash above are still the current head). */
  pending?: { id: string; approvals: number; threshold: number };
}

function checkName(policy: Policy, name: string): void {
  if (policy.name !== name) {
    throw new CocoonError('POLICY_INVALID', `${policyFileName(name)}:1:1: policy name "${policy.name}" does not match the URL (${name})`, {
      details: { file: policyFileName(name), line: 1, column: 1 },
    });
  }
}

/**
 * Applies (or, when the current version requires m-of-n approvals, proposes) a new version.
 * The predecessor (API field or the file's `predecessor:`) must name the current head.
 */
export async function applyPolicy(ctx: KbsContext, input: { name: string; yaml: string; predecessor?: string; owner: string }): Promise<ApplyResult> {
  const policy = parsePolicy(input.yaml, { file: policyFileName(input.name) });
  checkName(policy, input.name);
  const head = await currentPolicy(ctx, input.name);
  await requirePolicyAccess(ctx, input.owner, input.name, head?.policy);
  if (input.predecessor !== undefined && policy.predecessor !== undefined && input.predecessor !== policy.predecessor) {
    throw new CocoonError('PREDECESSOR_MISMATCH', 'the request and the file name different predecessors');
  }
  const predecessor = input.predecessor ?? policy.predecessor;
  const expected = head?.record.hash ?? null;
  if (head && predecessor === undefined) {
    throw new CocoonError('PREDECESSOR_MISMATCH', `policy ${input.name} exists (version ${head.record.version}); pass its hash as predecessor`, { details: { current: expected, version: head.record.version } });
  }
  if (predecessor !== undefined && predecessor !== expected) {
    throw new CocoonError('PREDECESSOR_MISMATCH', `predecessor ${predecessor} is not the current version of ${input.name}`, { details: { current: expected, version: head?.record.version ?? 0 } });
  }
  const threshold = head?.policy.approvals.threshold ?? 1;
  if (head && threshold > 1) return propose(ctx, input.name, input.yaml, head, threshold, input.owner);
  return activate(ctx, { name: input.name, yaml: input.yaml, policy, head: head?.record, actor: input.owner });
}

async function propose(ctx: KbsContext, name: string, yaml: string, head: CurrentPolicy, threshold: number, owner: string): Promise<ApplyResult> {
  const at = ctx.now().getTime();
  const pending: PendingRecord = { id: randomUUID(), policy: name, baseHash: head.record.hash, baseVersion: head.record.version, yaml, threshold, proposedBy: owner, createdAt: at, status: 'pending', decidedAt: null };
  await withRetry(() =>
    ctx.store.transaction(async (tx) => {
      await tx.createPending(pending);
      await tx.addApproval({ pendingId: pending.id, owner, decision: 'approve', at });
      await appendAudit(tx, ctx.auditKey, { actor: owner, action: 'policy.propose', policy: name, detail: { pending: pending.id, base: head.record.hash, yamlSha256: sha256Hex(yaml), threshold } }, at);
    }),
  );
  ctx.log.info({ policy: name, pending: pending.id, owner, threshold }, 'policy update proposed; waiting for approvals');
  return { name, version: head.record.version, hash: head.record.hash, pending: { id: pending.id, approvals: 1, threshold } };
}

/** A certificate or key the library refuses to make (e.g. an odd SAN) is the policy's fault, not a 500. */
async function generating<T>(policy: string, secret: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    const file = policyFileName(policy);
    throw new CocoonError('POLICY_INVALID', `${file}:1:1: secrets.${secret}: cannot generate it: ${(err as Error).message.slice(0, 200)}`, { details: { file, line: 1, column: 1, path: `secrets.${secret}` } });
  }
}

interface ActivateInput {
  name: string;
  yaml: string;
  policy: Policy;
  head: PolicyVersionRecord | undefined;
  actor: string;
  /** When a pending update reaches its threshold. */
  pending?: { id: string; approver: string; approvals: number };
}

/** Generates what the new version needs, then stores version, secrets, CA rotation, owners and the audit entry in one transaction. */
async function activate(ctx: KbsContext, a: ActivateInput): Promise<ApplyResult> {
  const version = (a.head?.version ?? 0) + 1;
  const expected = a.head?.hash ?? null;
  const hash = policyVersionHash(a.name, version, expected, a.yaml);
  const at = ctx.now().getTime();
  const intermediate: CaRecord = await ctx.ca.prepareIntermediate();
  const existing = new Set(await ctx.store.listSecretNames(a.name));
  const newSecrets: SecretRecord[] = [];
  const replaceSecrets: SecretRecord[] = [];
  const generated = new Map<string, Buffer>();
  const record = (name: string, kind: string, value: Buffer): SecretRecord => ({ policy: a.name, name, kind, sealed: sealSecret(ctx, a.name, name, value), createdAt: at, updatedAt: at });
  for (const [secretName, spec] of Object.entries(a.policy.secrets)) {
    if ('scope' in spec && spec.scope === 'instance') continue;
    if (spec.kind === 'random' && !existing.has(secretName)) newSecrets.push(record(secretName, spec.kind, generateRandomSecret(spec)));
    if ((spec.kind === 'keypair' || spec.kind === 'x509-ca') && !existing.has(secretName)) {
      const value = await generating(a.name, secretName, () => generateStructured(spec, secretName, { ctx, policy: a.name, sibling: async () => undefined }));
      generated.set(secretName, value);
      newSecrets.push(record(secretName, spec.kind, value));
    }
  }
  for (const [secretName, spec] of Object.entries(a.policy.secrets)) {
    if (spec.kind !== 'x509' || spec.scope === 'instance') continue;
    // Re-issued with every version: it then chains to the intermediate rotated in by this version.
    const value = await generating(a.name, secretName, () =>
      generateStructured(spec, secretName, {
        ctx,
        policy: a.name,
        intermediate,
        sibling: async (n) => generated.get(n) ?? (await readSecret(ctx, a.name, n)),
      }),
    );
    replaceSecrets.push(record(secretName, spec.kind, value));
  }
  const pv: PolicyVersionRecord = { name: a.name, version, hash, predecessor: expected, yaml: a.yaml, createdAt: at, createdBy: a.actor };
  await withRetry(() =>
    ctx.store.transaction(async (tx) => {
      await tx.applyPolicy({ record: pv, expectedHead: expected, newSecrets, replaceSecrets });
      await tx.insertCa(intermediate);
      for (const o of a.policy.owners) await tx.addPolicyOwner({ kid: o.kid, jwk: JSON.stringify(o.key), label: `${a.name}:${o.name}`.slice(0, 200), createdAt: at, role: 'policy' });
      if (a.pending) {
        await tx.addApproval({ pendingId: a.pending.id, owner: a.pending.approver, decision: 'approve', at });
        if (!(await tx.setPendingStatus(a.pending.id, 'pending', 'applied', at))) throw new CocoonError('CONFLICT', 'the pending update was decided concurrently');
      }
      await appendAudit(
        tx,
        ctx.auditKey,
        {
          actor: a.pending?.approver ?? a.actor,
          action: 'policy.apply',
          policy: a.name,
          detail: { version, hash, predecessor: expected, yamlSha256: sha256Hex(a.yaml), proposedBy: a.actor, ...(a.pending ? { pending: a.pending.id, approvals: a.pending.approvals } : {}), intermediate: intermediate.serial, generated: newSecrets.length, reissued: replaceSecrets.length },
        },
        at,
      );
    }),
  );
  ctx.log.info({ policy: a.name, version, hash, owner: a.actor, generated: newSecrets.length, reissued: replaceSecrets.length }, 'policy applied');
  return { name: a.name, version, hash };
}

export interface PendingView {
  id: string;
  policy: string;
  baseHash: string | null;
  baseVersion: number;
  threshold: number;
  proposedBy: string;
  createdAt: string;
  status: PendingRecord['status'];
  approvals: string[];
  rejections: string[];
  yaml: string;
}

export async function pendingView(store: Store, p: PendingRecord): Promise<PendingView> {
  const decisions = await store.listApprovals(p.id);
  return {
    id: p.id,
    policy: p.policy,
    baseHash: p.baseHash,
    baseVersion: p.baseVersion,
    threshold: p.threshold,
    proposedBy: p.proposedBy,
    createdAt: new Date(p.createdAt).toISOString(),
    status: p.status,
    approvals: decisions.filter((d) => d.decision === 'approve').map((d) => d.owner),
    rejections: decisions.filter((d) => d.decision === 'reject').map((d) => d.owner),
    yaml: p.yaml,
  };
}

async function loadPending(ctx: KbsContext, name: string, id: string, owner: string): Promise<{ pending: PendingRecord; head: CurrentPolicy }> {
  const head = await currentPolicy(ctx, name);
  await requirePolicyAccess(ctx, owner, name, head?.policy);
  const pending = await ctx.store.getPending(id);
  if (!pending || pending.policy !== name || !head) throw new CocoonError('NOT_FOUND', `no pending update ${id} for ${name}`);
  if (pending.status !== 'pending') throw new CocoonError('CONFLICT', `update ${id} is ${pending.status}`);
  if (pending.baseHash !== head.record.hash) {
    await ctx.store.setPendingStatus(id, 'pending', 'superseded', ctx.now().getTime());
    throw new CocoonError('PREDECESSOR_MISMATCH', `update ${id} was proposed against ${pending.baseHash ?? 'nothing'}, but the policy is now at ${head.record.hash}`, { details: { current: head.record.hash } });
  }
  return { pending, head };
}

export async function approvePending(ctx: KbsContext, name: string, id: string, owner: string): Promise<ApplyResult & { status: 'pending' | 'applied' }> {
  const { pending, head } = await loadPending(ctx, name, id, owner);
  const decisions = await ctx.store.listApprovals(id);
  if (decisions.some((d) => d.owner === owner)) throw new CocoonError('CONFLICT', 'you already decided on this update');
  const approvals = decisions.filter((d) => d.decision === 'approve').length + 1;
  if (approvals >= pending.threshold) {
    const policy = parsePolicy(pending.yaml, { file: policyFileName(name) });
    const result = await activate(ctx, { name, yaml: pending.yaml, policy, head: head.record, actor: pending.proposedBy, pending: { id, approver: owner, approvals } });
    return { ...result, status: 'applied' };
  }
  const at = ctx.now().getTime();
  await withRetry(() =>
    ctx.store.transaction(async (tx) => {
      if (!(await tx.addApproval({ pendingId: id, owner, decision: 'approve', at }))) throw new CocoonError('CONFLICT', 'you already decided on this update');
      await appendAudit(tx, ctx.auditKey, { actor: owner, action: 'policy.approve', policy: name, detail: { pending: id, approvals, threshold: pending.threshold } }, at);
    }),
  );
  return { name, version: head.record.version, hash: head.record.hash, status: 'pending', pending: { id, approvals, threshold: pending.threshold } };
}

export async function rejectPending(ctx: KbsContext, name: string, id: string, owner: string): Promise<{ id: string; status: 'rejected' }> {
  await loadPending(ctx, name, id, owner);
  const at = ctx.now().getTime();
  await withRetry(() =>
    ctx.store.transaction(async (tx) => {
      if (!(await tx.setPendingStatus(id, 'pending', 'rejected', at))) throw new CocoonError('CONFLICT', `update ${id} was decided concurrently`);
      await tx.addApproval({ pendingId: id, owner, decision: 'reject', at });
      await appendAudit(tx, ctx.auditKey, { actor: owner, action: 'policy.reject', policy: name, detail: { pending: id } }, at);
    }),
  );
  return { id, status: 'rejected' };
}
