import { CocoonError } from '../errors.js';
import { renderTemplate, renderTemplateText } from '../policy/template.js';
import { ENV_NAME_RE, LAYER_KEY_SECRET } from '../policy/names.js';
import type { Policy, SecretField } from '../policy/types.js';
import { parseTlsSpec, tlsSpecToWire, TlsSpecError } from '../policy/tls.js';
import type { TlsSpec } from '../policy/tls.js';
import { parseVolumeGrants } from './volume-plan.js';
import type { VolumeGrant, VolumeGrantWire } from './volume-plan.js';

/** Wire shape (docs/internals.md §5): binary values are base64. */
export interface LaunchPlanWire {
  policy: string;
  workload: string;
  insecure: boolean;
  layerKey: string | null;
  env: Record<string, string>;
  files: { path: string; mode: number; content: string }[];
  args: string[] | null;
  /** Present when the workload declares `tls` (docs/tls.md). */
  tls?: unknown;
  /** Present when the workload declares `volumes` (docs/volumes.md); added by the release. */
  volumes?: VolumeGrantWire[];
}

/** Decoded plan, as the launcher uses it. */
export interface LaunchPlan {
  policy: string;
  workload: string;
  insecure: boolean;
  layerKey: Buffer;
  env: Record<string, string>;
  files: { path: string; mode: number; content: Buffer }[];
  args: string[] | null;
  tls?: TlsSpec;
  /** Protected volumes: keys and the KBS's version counters (empty when none). */
  volumes?: VolumeGrant[];
}

export const MAX_LAUNCH_PLAN_BYTES = 32 * 1024 * 1024;

/** Renders a workload's plan; `lookup` returns a granted secret's bytes (SECRET_MISSING otherwise). */
export function renderLaunchPlan(policy: Policy, workload: string, insecure: boolean, lookup: (name: string, field?: SecretField) => Uint8Array): LaunchPlanWire {
  const w = policy.workloads[workload];
  if (!w) throw new CocoonError('POLICY_DENIED', `workload ${workload} is not in policy ${policy.name}`);
  const env: Record<string, string> = {};
  for (const [k, t] of Object.entries(w.env)) env[k] = renderTemplateText(t, lookup);
  return {
    policy: policy.name,
    workload,
    insecure,
    layerKey: policy.secrets[LAYER_KEY_SECRET] ? Buffer.from(lookup(LAYER_KEY_SECRET)).toString('base64') : null,
    env,
    files: w.files.map((f) => ({ path: f.path, mode: f.mode, content: renderTemplate(f.content, lookup).toString('base64') })),
    args: w.args ? w.args.map((t) => renderTemplateText(t, lookup)) : null,
    ...(w.tls ? { tls: tlsSpecToWire(w.tls) } : {}),
  };
}

/** Strict parse of the launch-plan resource bytes (launcher side). */
export function parseLaunchPlan(bytes: Uint8Array | undefined): LaunchPlan {
  if (!bytes) throw new CocoonError('INPUT_MALFORMED', 'launch plan missing from the KBS response');
  if (bytes.length > MAX_LAUNCH_PLAN_BYTES) throw new CocoonError('INPUT_TOO_LARGE', 'launch plan too large');
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new CocoonError('INPUT_MALFORMED', 'launch plan is not JSON');
  }
  const o = obj(v, 'launch plan');
  const keys = ['policy', 'workload', 'insecure', 'layerKey', 'env', 'files', 'args', 'tls', 'volumes'];
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw bad(`unknown member ${k}`);
  const policy = str(o.policy, 'policy');
  const workload = str(o.workload, 'workload');
  if (typeof o.insecure !== 'boolean') throw bad('insecure must be a boolean');
  if (typeof o.layerKey !== 'string') throw bad('layerKey is missing (policy declares no layer-key secret)');
  const layerKey = b64(o.layerKey, 'layerKey');
  if (layerKey.length !== 32) throw bad('layerKey must be 32 bytes');
  const env: Record<string, string> = {};
  for (const [k, val] of Object.entries(obj(o.env, 'env'))) {
    if (!ENV_NAME_RE.test(k)) throw bad(`invalid env name ${k.slice(0, 64)}`);
    env[k] = str(val, `env.${k}`);
  }
  if (!Array.isArray(o.files)) throw bad('files must be a list');
  const files = o.files.map((f, i) => {
    const fo = obj(f, `files[${i}]`);
    const mode = fo.mode;
    if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o777) throw bad(`files[${i}].mode invalid`);
    return { path: str(fo.path, `files[${i}].path`), mode, content: b64(fo.content, `files[${i}].content`) };
  });
  let args: string[] | null = null;
  if (o.args !== null) {
    if (!Array.isArray(o.args)) throw bad('args must be a list or null');
    args = o.args.map((a, i) => str(a, `args[${i}]`));
  }
  let tls: TlsSpec | undefined;
  if (o.tls !== undefined) {
    try {
      tls = parseTlsSpec(o.tls, { policy });
    } catch (err) {
      if (err instanceof TlsSpecError) throw bad(`tls${err.path}: ${err.message}`);
      throw err;
    }
  }
  const volumes = o.volumes === undefined ? undefined : parseVolumeGrants(o.volumes);
  return { policy, workload, insecure: o.insecure, layerKey, env, files, args, ...(tls ? { tls } : {}), ...(volumes ? { volumes } : {}) };
}

function bad(message: string): CocoonError {
  return new CocoonError('INPUT_MALFORMED', `launch plan: ${message}`);
}
function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`${what} must be an object`);
  return v as Record<string, unknown>;
}
function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw bad(`${what} must be a string`);
  return v;
}
function b64(v: unknown, what: string): Buffer {
  const s = str(v, what);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw bad(`${what} must be base64`);
  return Buffer.from(s, 'base64');
}
