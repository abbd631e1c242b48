import type { TeeKind } from '../attestation/types.js';
import { constantTimeEqual } from '../crypto/hash.js';
import { LAYER_KEY_SECRET } from './names.js';
import type { AcceptRule, Policy, WorkloadSpec } from './types.js';

/** What the appraisal of one piece of verified evidence needs from the verifier's claims. */
export interface AppraisalInput {
  tee: TeeKind;
  /** Lower-case hex workload measurement, if the evidence carries one. */
  measurement: string | undefined;
  debug: boolean;
  /** Whether the server accepts simulated evidence at all. */
  allowSim: boolean;
}

export type Appraisal = { allowed: true; ruleIndex: number } | { allowed: false; reason: string; reasons: string[] };

/** Any-of over the workload's accept rules; returns the reason of every rule on denial. */
export function evaluateAccept(workload: WorkloadSpec, input: AppraisalInput): Appraisal {
  const reasons = workload.accept.map((rule, i) => ruleMismatch(rule, input, i));
  const ok = reasons.findIndex((r) => r === null);
  if (ok >= 0) return { allowed: true, ruleIndex: ok };
  const list = reasons.filter((r): r is string => r !== null);
  return { allowed: false, reason: list.join('; '), reasons: list };
}

function ruleMismatch(rule: AcceptRule, input: AppraisalInput, index: number): string | null {
  const at = `accept[${index}]`;
  if (!rule.tee.includes(input.tee)) return `${at}: TEE kind ${input.tee} not in [${rule.tee.join(', ')}]`;
  if (input.tee === 'sim' && !input.allowSim) return `${at}: simulated TEE not allowed by this server`;
  if (!input.measurement) return `${at}: evidence carries no workload measurement`;
  const a = Buffer.from(input.measurement.toLowerCase(), 'utf8');
  const b = Buffer.from(rule.measurement, 'utf8');
  if (!constantTimeEqual(a, b)) return `${at}: measurement ${input.measurement.slice(0, 16)}… not accepted`;
  if (input.debug && !rule.debug) return `${at}: debug evidence refused`;
  return null;
}

/** Secrets a workload may fetch: its grants plus the policy's layer key. */
export function grantedSecrets(policy: Policy, workloadName: string): Set<string> {
  const w = policy.workloads[workloadName];
  const out = new Set<string>(w?.secrets ?? []);
  if (w && policy.secrets[LAYER_KEY_SECRET]) out.add(LAYER_KEY_SECRET);
  return out;
}
