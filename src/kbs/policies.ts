import { CocoonError } from '../errors.js';
import { canonicalJson } from '../crypto/canonical-json.js';
import { sha256Hex } from '../crypto/hash.js';
import { parsePolicy } from '../policy/parse.js';
import type { Policy } from '../policy/types.js';
import type { KbsContext } from './context.js';
import { generateRandomSecret, sealSecret } from './secrets.js';
import type { PolicyVersionRecord, SecretRecord } from './store/types.js';

export interface CurrentPolicy {
  record: PolicyVersionRecord;
  policy: Policy;
}

/** Parsed policies by version hash; a version never changes once stored. */
const parsedCache = new Map<string, Policy>();
const CACHE_MAX = 256;

export function policyFileName(name: string): string {
  return `${name}.yaml`;
}

/** Hash of one version, chained over its predecessor (tamper evidence for the history). */
export function policyVersionHash(name: string, version: number, predecessor: string | null, yaml: string): string {
  return `sha256:${sha256Hex(canonicalJson({ name, version, predecessor, yaml: sha256Hex(yaml) }))}`;
}

export async function currentPolicy(ctx: KbsContext, name: string): Promise<CurrentPolicy | undefined> {
  const record = await ctx.store.getPolicyHead(name);
  if (!record) return undefined;
  let policy = parsedCache.get(record.hash);
  if (!policy) {
    policy = parsePolicy(record.yaml, { file: policyFileName(name) });
    if (parsedCache.size >= CACHE_MAX) parsedCache.clear();
    parsedCache.set(record.hash, policy);
  }
  return { record, policy };
}

export interface ApplyResult {
  name: string;
  version: number;
  hash: string;
}

/**
 * Validates and stores a new version. `predecessor` must name the current head when one
 * exists (optimistic concurrency); random secrets are generated once, on first appearance.
 */
export async function applyPolicy(ctx: KbsContext, input: { name: string; yaml: string; predecessor?: string; owner: string }): Promise<ApplyResult> {
  const policy = parsePolicy(input.yaml, { file: policyFileName(input.name) });
  if (policy.name !== input.name) {
    throw new CocoonError('POLICY_INVALID', `${policyFileName(input.name)}:1:1: policy name "${policy.name}" does not match the URL (${input.name})`, {
      details: { file: policyFileName(input.name), line: 1, column: 1 },
    });
  }
  const head = await ctx.store.getPolicyHead(input.name);
  const expected = head?.hash ?? null;
  if (head && input.predecessor === undefined) {
    throw new CocoonError('PREDECESSOR_MISMATCH', `policy ${input.name} exists (version ${head.version}); pass its hash as predecessor`, { details: { current: head.hash, version: head.version } });
  }
  if (input.predecessor !== undefined && input.predecessor !== expected) {
    throw new CocoonError('PREDECESSOR_MISMATCH', `predecessor ${input.predecessor} is not the current version of ${input.name}`, {
      details: { current: expected, version: head?.version ?? 0 },
    });
  }
  const version = (head?.version ?? 0) + 1;
  const hash = policyVersionHash(input.name, version, expected, input.yaml);
  const at = ctx.now().getTime();
  const existing = new Set(await ctx.store.listSecretNames(input.name));
  const newSecrets: SecretRecord[] = [];
  for (const [secretName, spec] of Object.entries(policy.secrets)) {
    if (spec.kind !== 'random' || existing.has(secretName)) continue;
    newSecrets.push({ policy: input.name, name: secretName, kind: spec.kind, sealed: sealSecret(ctx, input.name, secretName, generateRandomSecret(spec)), createdAt: at, updatedAt: at });
  }
  await ctx.store.applyPolicy({
    record: { name: input.name, version, hash, predecessor: expected, yaml: input.yaml, createdAt: at, createdBy: input.owner },
    expectedHead: expected,
    newSecrets,
  });
  ctx.log.info({ policy: input.name, version, hash, owner: input.owner, generated: newSecrets.length }, 'policy applied');
  return { name: input.name, version, hash };
}
