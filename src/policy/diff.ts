import { tlsSpecToWire } from './tls.js';
import type { Policy, Template } from './types.js';

export interface PolicyChange {
  op: 'added' | 'removed' | 'changed';
  /** Dotted path, e.g. `workloads.redis.accept[0].measurement`. */
  path: string;
  from?: unknown;
  to?: unknown;
}

/** The policy as plain JSON (templates as their source text, owners by name and kid). */
export function policyView(p: Policy): Record<string, unknown> {
  const tpl = (t: Template) => t.source;
  return {
    name: p.name,
    owners: Object.fromEntries(p.owners.map((o) => [o.name, o.kid])),
    approvals: p.approvals,
    exports: p.exports,
    secrets: p.secrets,
    workloads: Object.fromEntries(
      Object.entries(p.workloads).map(([n, w]) => [
        n,
        {
          accept: w.accept,
          ...(w.maxActivations !== undefined ? { maxActivations: w.maxActivations } : {}),
          secrets: w.secrets,
          env: Object.fromEntries(Object.entries(w.env).map(([k, t]) => [k, tpl(t)])),
          files: Object.fromEntries(w.files.map((f) => [f.path, { mode: `0${f.mode.toString(8)}`, content: tpl(f.content) }])),
          args: w.args ? w.args.map(tpl) : null,
          ...(w.tls ? { tls: tlsSpecToWire(w.tls) } : {}),
          ...(w.workloadCert ? { workloadCert: true } : {}),
        },
      ]),
    ),
  };
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function walk(a: unknown, b: unknown, path: string, out: PolicyChange[]): void {
  if (isObj(a) && isObj(b)) {
    for (const k of Object.keys(a)) {
      const p = path ? `${path}.${k}` : k;
      if (!(k in b)) out.push({ op: 'removed', path: p, from: a[k] });
      else walk(a[k], b[k], p, out);
    }
    for (const k of Object.keys(b)) if (!(k in a)) out.push({ op: 'added', path: path ? `${path}.${k}` : k, to: b[k] });
    return;
  }
  if (Array.isArray(a) && Array.isArray(b) && a.every(isObj) && b.every(isObj)) {
    const n = Math.max(a.length, b.length);
    for (let i = 0; i < n; i++) {
      const p = `${path}[${i}]`;
      if (i >= a.length) out.push({ op: 'added', path: p, to: b[i] });
      else if (i >= b.length) out.push({ op: 'removed', path: p, from: a[i] });
      else walk(a[i], b[i], p, out);
    }
    return;
  }
  if (JSON.stringify(a) !== JSON.stringify(b)) out.push({ op: 'changed', path, from: a, to: b });
}

/** What replacing `from` (undefined: nothing yet) by `to` changes. Secret values are never part of a policy. */
export function diffPolicies(from: Policy | undefined, to: Policy): PolicyChange[] {
  const out: PolicyChange[] = [];
  walk(from ? policyView(from) : {}, policyView(to), '', out);
  return out;
}

/** One line per change: `+ path: value`, `- path: value`, `~ path: old → new`. */
export function formatPolicyDiff(changes: readonly PolicyChange[]): string {
  if (changes.length === 0) return 'no changes';
  const v = (x: unknown) => {
    const s = JSON.stringify(x);
    return s.length > 160 ? `${s.slice(0, 157)}…` : s;
  };
  return changes.map((c) => (c.op === 'added' ? `+ ${c.path}: ${v(c.to)}` : c.op === 'removed' ? `- ${c.path}: ${v(c.from)}` : `~ ${c.path}: ${v(c.from)} → ${v(c.to)}`)).join('\n');
}
