/**
 * The Cocoon runtime event log: what the launcher extended into a runtime measurement register
 * (a vTPM PCR or TDX RTMR3) before attesting, and its replay by the verifier. Pure.
 *
 * Format (JSON, inside the evidence as `cocoon_event_log`):
 *   { "v": 1, "register": "pcr23" | "rtmr3", "alg": "sha256" | "sha384",
 *     "events": [ { "digest": "<hex>", "event": { "type": "cocoon.workload", "measurement": "<hex sha384>",
 *                                                  "policy": "org/app", "workload": "name" } } ] }
 * digest = alg(canonicalJson(event)); the register is replayed from all zeros:
 *   R := alg(R ‖ digest) for each event. The workload measurement is exposed only when the replay
 * equals the register value that the hardware signed.
 */
import { createHash } from 'node:crypto';
import { canonicalJson } from '../crypto/canonical-json.js';
import { CocoonError } from '../errors.js';

export const EVENT_LOG_KEY = 'cocoon_event_log';
export const WORKLOAD_EVENT = 'cocoon.workload';
const MAX_EVENTS = 64;

export type EventLogAlg = 'sha256' | 'sha384';

export interface WorkloadEvent {
  type: typeof WORKLOAD_EVENT;
  measurement: string;
  policy: string;
  workload: string;
}

export interface CocoonEventLog {
  v: 1;
  /** `pcr<N>` (vTPM, N 0–23) or `rtmr<N>` (TDX, N 0–3). */
  register: string;
  alg: EventLogAlg;
  events: Array<{ digest: string; event: WorkloadEvent }>;
}

const REGISTER_RE = /^(?:pcr(?:[0-9]|1[0-9]|2[0-3])|rtmr[0-3])$/;
const SIZE: Record<EventLogAlg, number> = { sha256: 32, sha384: 48 };

export function eventDigest(alg: EventLogAlg, event: WorkloadEvent): Buffer {
  return createHash(alg).update(canonicalJson(event)).digest();
}

export function workloadEvent(measurement: string, policy: string, workload: string): WorkloadEvent {
  return { type: WORKLOAD_EVENT, measurement, policy, workload };
}

/** Register value after extending `digests` into an all-zero register. */
export function replayRegister(alg: EventLogAlg, digests: readonly Buffer[], initial?: Buffer): Buffer {
  let r = initial ?? Buffer.alloc(SIZE[alg]);
  for (const d of digests) r = createHash(alg).update(r).update(d).digest();
  return r;
}

function bad(message: string): never {
  throw new CocoonError('EVENT_LOG_MALFORMED', `event log: ${message}`);
}

function str(v: unknown, what: string, re: RegExp): string {
  if (typeof v !== 'string' || !re.test(v)) bad(`${what} is missing or malformed`);
  return v;
}

function exactKeys(o: Record<string, unknown>, keys: string[], what: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) bad(`${what} has an unknown member "${k.slice(0, 32)}"`);
}

/** Strict parse of the event log JSON (unknown members and event types are refused). */
export function parseEventLog(v: unknown): CocoonEventLog {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad('not an object');
  const o = v as Record<string, unknown>;
  exactKeys(o, ['v', 'register', 'alg', 'events'], 'log');
  if (o.v !== 1) bad(`version ${String(o.v).slice(0, 16)} is not 1`);
  const register = str(o.register, 'register', REGISTER_RE);
  const alg = o.alg;
  if (alg !== 'sha256' && alg !== 'sha384') bad('alg must be sha256 or sha384');
  if (register.startsWith('rtmr') && alg !== 'sha384') bad('RTMR events are SHA-384');
  if (!Array.isArray(o.events) || o.events.length === 0 || o.events.length > MAX_EVENTS) bad(`events must be a list of 1–${MAX_EVENTS}`);
  const events = o.events.map((e: unknown, i: number) => {
    if (typeof e !== 'object' || e === null || Array.isArray(e)) bad(`events[${i}] is not an object`);
    const eo = e as Record<string, unknown>;
    exactKeys(eo, ['digest', 'event'], `events[${i}]`);
    const digest = str(eo.digest, `events[${i}].digest`, new RegExp(`^[0-9a-f]{${SIZE[alg] * 2}}$`));
    const ev = eo.event;
    if (typeof ev !== 'object' || ev === null || Array.isArray(ev)) bad(`events[${i}].event is not an object`);
    const evo = ev as Record<string, unknown>;
    exactKeys(evo, ['type', 'measurement', 'policy', 'workload'], `events[${i}].event`);
    if (evo.type !== WORKLOAD_EVENT) bad(`events[${i}] has unknown type`);
    const event: WorkloadEvent = {
      type: WORKLOAD_EVENT,
      measurement: str(evo.measurement, `events[${i}].event.measurement`, /^[0-9a-f]{96}$/),
      policy: str(evo.policy, `events[${i}].event.policy`, /^[a-z0-9][a-z0-9._-]{0,62}\/[a-z0-9][a-z0-9._-]{0,62}$/),
      workload: str(evo.workload, `events[${i}].event.workload`, /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/),
    };
    return { digest, event };
  });
  return { v: 1, register, alg, events };
}

export interface ReplayedLog {
  register: string;
  alg: EventLogAlg;
  /** The workload measurement of the (single) workload event. */
  measurement: string;
  policy: string;
  workload: string;
}

/**
 * Replays the log against the register value the hardware signed (`quoted`, hex). Throws
 * EVENT_LOG_MALFORMED for a bad log and EVENT_LOG_MISMATCH when the replay differs.
 */
export function replayEventLog(raw: unknown, quoted: (register: string, alg: EventLogAlg) => string | undefined): ReplayedLog {
  const log = parseEventLog(raw);
  const digests = log.events.map(({ digest, event }, i) => {
    const d = eventDigest(log.alg, event);
    if (d.toString('hex') !== digest) throw new CocoonError('EVENT_LOG_MISMATCH', `event log: events[${i}].digest is not ${log.alg}(event)`);
    return d;
  });
  const workloads = log.events.filter((e) => e.event.type === WORKLOAD_EVENT);
  if (workloads.length !== 1) bad(`exactly one ${WORKLOAD_EVENT} event expected, got ${workloads.length}`);
  const value = quoted(log.register, log.alg);
  if (value === undefined) throw new CocoonError('EVENT_LOG_MISMATCH', `event log: register ${log.register} (${log.alg}) is not covered by the signed evidence`);
  const replayed = replayRegister(log.alg, digests).toString('hex');
  if (replayed !== value.toLowerCase()) throw new CocoonError('EVENT_LOG_MISMATCH', `event log: replay of ${log.register} gives ${replayed.slice(0, 16)}…, the signed value is ${value.slice(0, 16)}…`);
  const w = workloads[0]!.event;
  return { register: log.register, alg: log.alg, measurement: w.measurement, policy: w.policy, workload: w.workload };
}

/**
 * Verifier hook: when verified evidence JSON carries a `cocoon_event_log`, replay it against
 * the signed register claims (`pcrNN` with `pcr_alg`, or `rtmrN`) and, only when it matches,
 * add the workload measurement as the claims `measurement` and `workload_measurement` (plus
 * `workload_register`). Returns false when the evidence has no event log.
 */
export function applyEventLog(evidenceJson: unknown, claims: Record<string, unknown>): boolean {
  if (typeof evidenceJson !== 'object' || evidenceJson === null || Array.isArray(evidenceJson)) return false;
  const raw = (evidenceJson as Record<string, unknown>)[EVENT_LOG_KEY];
  if (raw === undefined) return false;
  const replayed = replayEventLog(raw, (register, alg) => {
    const v = claims[register];
    if (typeof v !== 'string') return undefined;
    if (register.startsWith('pcr') && claims.pcr_alg !== alg) return undefined;
    return v;
  });
  claims.measurement = replayed.measurement;
  claims.workload_measurement = replayed.measurement;
  claims.workload_register = `${replayed.register}:${replayed.alg}`;
  return true;
}
