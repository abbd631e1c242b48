import type { Claims, TeeKind } from '../attestation/types.js';
import { LAYER_KEY_SECRET } from './names.js';
import type { AcceptRule, Policy, WorkloadSpec } from './types.js';

/** What the appraisal of one piece of verified evidence needs from the verifier's result. */
export interface AppraisalInput {
  tee: TeeKind;
  /** Lower-case hex workload measurement, if the evidence carries one. */
  measurement: string | undefined;
  debug: boolean;
  /** Whether the server accepts simulated evidence at all. */
  allowSim: boolean;
  /** Normalized claims of the verifier (src/attestation naming: mrenclave, mr_td, rtmr0, pcr00, …). */
  claims?: Claims;
  /** TCB status where the TEE reports one (DCAP, SNP); absent for sim. */
  tcbStatus?: string;
  advisories?: readonly string[];
}

/** `initDataUnbound`: some rule matched but for its `initData: bound` (the KBS answers INIT_DATA_NOT_BOUND). */
export type Appraisal = { allowed: true; ruleIndex: number } | { allowed: false; reason: string; reasons: string[]; initDataUnbound?: true };

/** Claims the KBS adds once TOML init-data is bound (src/kbs/init-data.ts): the register, and `<algorithm>:<hex digest>`. */
export const INIT_DATA_BINDING_CLAIM = 'init_data_binding';
export const INIT_DATA_DIGEST_CLAIM = 'init_data_digest';
/** The register that carries the init-data digest, per TEE (CoCo: SNP HOST_DATA, TDX MRCONFIGID). */
export const INIT_DATA_REGISTERS: Partial<Record<TeeKind, { claim: 'host_data' | 'mr_config_id'; bytes: number }>> = {
  snp: { claim: 'host_data', bytes: 32 },
  tdx: { claim: 'mr_config_id', bytes: 48 },
};

/** The claim that carries the workload measurement: `workload_measurement`, or `measurement` for sim. */
export function workloadMeasurementOf(tee: TeeKind, claims: Claims): string | undefined {
  const v = claims.workload_measurement ?? (tee === 'sim' ? claims.measurement : undefined);
  return typeof v === 'string' ? v.toLowerCase() : undefined;
}

/** Any-of over the workload's accept rules; returns the reason of every rule on denial. */
export function evaluateAccept(workload: WorkloadSpec, input: AppraisalInput): Appraisal {
  const mismatches = workload.accept.map((rule, i) => ruleMismatch(rule, input, i));
  const ok = mismatches.findIndex((m) => m === null);
  if (ok >= 0) return { allowed: true, ruleIndex: ok };
  const failed = mismatches.filter((m): m is Mismatch => m !== null);
  const list = failed.map((m) => m.reason);
  // The init-data check runs last: a rule failing on it passed every other check.
  const initDataUnbound = failed.some((m) => m.initDataUnbound === true);
  return { allowed: false, reason: list.join('; '), reasons: list, ...(initDataUnbound ? { initDataUnbound: true as const } : {}) };
}

function claimAt(claims: Claims, path: string): unknown {
  if (path in claims) return claims[path];
  const [head, ...rest] = path.split('.');
  let v: unknown = claims[head ?? ''];
  for (const k of rest) v = typeof v === 'object' && v !== null ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

function hexClaim(claims: Claims, name: string): string | undefined {
  const v = claims[name];
  return typeof v === 'string' ? v.toLowerCase() : undefined;
}

/** Why one accept rule does not match; `initDataUnbound` when only its `initData: bound` failed. */
interface Mismatch {
  reason: string;
  initDataUnbound?: true;
}

function ruleMismatch(rule: AcceptRule, input: AppraisalInput, index: number): Mismatch | null {
  const reason = ruleMismatchReason(rule, input, index);
  if (reason === null) return null;
  return typeof reason === 'string' ? { reason } : reason;
}

function ruleMismatchReason(rule: AcceptRule, input: AppraisalInput, index: number): string | Mismatch | null {
  const at = `accept[${index}]`;
  const claims = input.claims ?? {};
  if (!rule.tee.includes(input.tee)) return `${at}: TEE kind ${input.tee} not in [${rule.tee.join(', ')}]`;
  if (input.tee === 'sim' && !input.allowSim) return `${at}: simulated TEE not allowed by this server`;
  if (rule.measurement !== undefined) {
    if (!input.measurement) return `${at}: evidence carries no workload measurement`;
    if (input.measurement.toLowerCase() !== rule.measurement) return `${at}: measurement ${input.measurement.slice(0, 16)}… not accepted`;
  }
  if (rule.sgx && input.tee === 'sgx') {
    const s = rule.sgx;
    const mrenclave = hexClaim(claims, 'mrenclave');
    if (s.mrenclave && (!mrenclave || !s.mrenclave.includes(mrenclave))) return `${at}: mrenclave ${mrenclave?.slice(0, 16) ?? '-'}… not accepted`;
    if (s.mrsigner && hexClaim(claims, 'mrsigner') !== s.mrsigner) return `${at}: mrsigner not accepted`;
    if (s.isvprodid !== undefined && claims.isvprodid !== s.isvprodid) return `${at}: isvprodid ${String(claims.isvprodid)} is not ${s.isvprodid}`;
    if (s.minIsvsvn !== undefined && !(typeof claims.isvsvn === 'number' && claims.isvsvn >= s.minIsvsvn)) return `${at}: isvsvn ${String(claims.isvsvn)} below ${s.minIsvsvn}`;
  }
  const exact = (group: string, values: Record<string, string> | undefined, applies: boolean): string | null => {
    if (!values || !applies) return null;
    for (const [k, v] of Object.entries(values)) {
      const got = hexClaim(claims, k);
      if (got !== v) return `${at}: ${group}.${k} ${got ? `${got.slice(0, 16)}…` : '(absent)'} not accepted`;
    }
    return null;
  };
  const tdx = exact('tdx', rule.tdx, input.tee === 'tdx' || input.tee === 'az-tdx-vtpm');
  if (tdx) return tdx;
  const snp = exact('snp', rule.snp, input.tee === 'snp' || input.tee === 'az-snp-vtpm');
  if (snp) return snp;
  if (rule.pcrs) {
    const e = exact('pcrs', rule.pcrs, true);
    if (e) return e;
  }
  // A TEE-specific block only constrains its own TEE; a rule must still pin *something* for this one.
  const pinned =
    rule.measurement !== undefined ||
    rule.pcrs !== undefined ||
    (rule.sgx !== undefined && input.tee === 'sgx') ||
    (rule.tdx !== undefined && (input.tee === 'tdx' || input.tee === 'az-tdx-vtpm')) ||
    (rule.snp !== undefined && (input.tee === 'snp' || input.tee === 'az-snp-vtpm'));
  if (!pinned) return `${at}: the rule pins no measurement for ${input.tee}`;
  if (input.tcbStatus !== undefined) {
    const statuses = rule.tcb?.statuses ?? ['UpToDate'];
    if (!statuses.includes(input.tcbStatus)) return `${at}: TCB status ${input.tcbStatus} not in [${statuses.join(', ')}]`;
    const tolerated = rule.tcb?.advisories ?? [];
    const open = (input.advisories ?? []).filter((a) => !tolerated.includes(a));
    if (open.length > 0) return `${at}: advisories not tolerated: ${open.slice(0, 8).join(', ')}`;
  }
  for (const [k, min] of Object.entries(rule.minSvn ?? {})) {
    const v = claimAt(claims, k);
    if (typeof v !== 'number' || v < min) return `${at}: ${k} ${typeof v === 'number' ? v : '(absent)'} below ${min}`;
  }
  if (input.debug && !rule.debug) return `${at}: debug evidence refused`;
  // Checked last, so that a rule failing only here is recognisable (initDataUnbound).
  if (rule.initData === 'bound') {
    const reg = INIT_DATA_REGISTERS[input.tee];
    if (!reg) return { reason: `${at}: init-data is not bound: ${input.tee} evidence has no init-data register (snp host_data, tdx mr_config_id)`, initDataUnbound: true };
    if (claims[INIT_DATA_BINDING_CLAIM] !== reg.claim) return { reason: `${at}: init-data is not bound to the evidence's ${reg.claim} (send TOML init-data whose digest the host set at launch)`, initDataUnbound: true };
  }
  return null;
}

/** Secrets a workload may fetch: its grants plus the policy's layer key. */
export function grantedSecrets(policy: Policy, workloadName: string): Set<string> {
  const w = policy.workloads[workloadName];
  const out = new Set<string>(w?.secrets ?? []);
  if (w && policy.secrets[LAYER_KEY_SECRET]) out.add(LAYER_KEY_SECRET);
  return out;
}
