/**
 * `tls:` of a workload (docs/tls.md): TLS proxies the launcher runs with the attested
 * workload certificate. The same shape travels in the launch plan, so the launcher parses it
 * with the same strict function.
 */
import { WORKLOAD_NAME_RE, isPolicyName } from './names.js';

export const CLIENT_CERT_MODES = ['required', 'optional', 'none'] as const;
export type ClientCertMode = (typeof CLIENT_CERT_MODES)[number];

/** A workload named by the identity extension of its deployment-CA certificate. */
export interface PeerName {
  policy: string;
  workload: string;
}

export interface TlsIngress {
  /** Port the launcher listens on (all interfaces), TLS. */
  listen: number;
  /** Port of the app on 127.0.0.1 inside the TEE, plaintext. */
  to: number;
  clientCert: ClientCertMode;
  /**
   * Only with `clientCert: required`: the workloads whose certificates this ingress admits
   * (names resolved to their policy). Absent: any workload of the deployment.
   */
  allow?: PeerName[];
}

export interface TlsEgress {
  /** Port on 127.0.0.1 inside the TEE where the app connects in plaintext. */
  listen: number;
  /** Remote `host:port` the launcher opens TLS to. */
  to: string;
  host: string;
  port: number;
  /** Identity the peer certificate's workload-identity extension must name. */
  expect: PeerName;
}

export interface TlsSpec {
  ingress: TlsIngress[];
  egress: TlsEgress[];
}

export const TLS_LIMITS = { ingress: 16, egress: 16, allow: 64 };
const HOST_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const IPV6_RE = /^[0-9A-Fa-f:.]{2,45}$/;

/** Problem in a `tls` value: `path` is relative to the `tls` node (e.g. `.ingress[0].listen`). */
export class TlsSpecError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
  }
}

function fail(path: string, message: string): never {
  throw new TlsSpecError(path, message);
}

function record(v: unknown, path: string, allowed: string[], required: string[]): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, 'must be a mapping');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!allowed.includes(k)) fail(`${path}.${k}`, `unknown field "${k.slice(0, 64)}"`);
  for (const k of required) if (o[k] === undefined) fail(path, `missing required field "${k}"`);
  return o;
}

function port(v: unknown, path: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) fail(path, 'must be a port number 1–65535');
  return v;
}

/** `org/app#workload`: how logs, `cocoon ca revoke --workload` and `allow` entries name a workload. */
export function peerNameText(p: PeerName): string {
  return `${p.policy}#${p.workload}`;
}

function policyName(v: unknown, path: string): string {
  if (typeof v !== 'string' || !isPolicyName(v)) fail(path, 'must be a policy name "org/app"');
  return v;
}

function workloadName(v: unknown, path: string): string {
  if (typeof v !== 'string' || !WORKLOAD_NAME_RE.test(v)) fail(path, 'must be a workload name');
  return v;
}

/**
 * One `allow` entry: `web` (a workload of this policy), `org/app#web`, or the mapping egress's
 * `expect` uses, `{policy: org/app, workload: web}` (`policy` defaults to this policy).
 */
function allowEntry(v: unknown, path: string, own: string | undefined): PeerName {
  let policy: string | undefined;
  let workload: string;
  if (typeof v === 'string') {
    const m = /^(?:([^#]{1,127})#)?([^#]{1,64})$/.exec(v);
    if (!m || (m[1] !== undefined && !isPolicyName(m[1])) || !WORKLOAD_NAME_RE.test(m[2] as string)) {
      fail(path, `must name a workload of this policy ("web") or of another policy ("org/app#web"), not "${v.slice(0, 64)}"`);
    }
    [policy, workload] = [m[1], m[2] as string];
  } else {
    const r = record(v, path, ['policy', 'workload'], ['workload']);
    policy = r.policy === undefined ? undefined : policyName(r.policy, `${path}.policy`);
    workload = workloadName(r.workload, `${path}.workload`);
  }
  if (policy === undefined) {
    if (own === undefined) fail(path, 'name the policy too: "org/app#workload"');
    policy = own;
  }
  return { policy, workload };
}

/** Splits and checks `host:port` (`[v6]:port` for IPv6). */
export function parseHostPort(v: unknown, path: string): { host: string; port: number } {
  if (typeof v !== 'string' || v.length > 300) fail(path, 'must be "host:port"');
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(v);
  if (!m) fail(path, 'must be "host:port" (IPv6 as "[addr]:port")');
  const host = (m[1] ?? m[2]) as string;
  const ok = m[1] !== undefined ? IPV6_RE.test(host) && host.includes(':') : IPV4_RE.test(host) || (HOST_RE.test(host) && !/^[\d.]+$/.test(host));
  if (!ok) fail(path, `invalid host "${host.slice(0, 64)}"`);
  return { host, port: port(Number(m[3]), path) };
}

/**
 * Strict parse of a `tls` value (plain JSON/YAML data). Throws TlsSpecError. `policy` (the
 * policy the workload belongs to) resolves `allow` entries that name a workload without a policy.
 */
export function parseTlsSpec(value: unknown, context: { policy?: string } = {}): TlsSpec {
  const o = record(value, '', ['ingress', 'egress'], []);
  const used = new Map<number, string>();
  const claim = (p: number, path: string) => {
    const prev = used.get(p);
    if (prev) fail(path, `port ${p} is already used by ${prev}`);
    used.set(p, path.slice(1));
  };
  const list = (v: unknown, path: string, max: number): unknown[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v)) fail(path, 'must be a list');
    if (v.length > max) fail(path, `at most ${max} entries`);
    return v;
  };
  const ingress = list(o.ingress, '.ingress', TLS_LIMITS.ingress).map((e, i): TlsIngress => {
    const p = `.ingress[${i}]`;
    const r = record(e, p, ['listen', 'to', 'clientCert', 'allow'], ['listen', 'to']);
    const listen = port(r.listen, `${p}.listen`);
    claim(listen, `${p}.listen`);
    const mode = r.clientCert ?? 'required';
    if (typeof mode !== 'string' || !(CLIENT_CERT_MODES as readonly string[]).includes(mode)) fail(`${p}.clientCert`, `must be one of ${CLIENT_CERT_MODES.join(', ')}`);
    const entry: TlsIngress = { listen, to: port(r.to, `${p}.to`), clientCert: mode as ClientCertMode };
    if (r.allow !== undefined) {
      if (mode !== 'required') fail(`${p}.allow`, `only with clientCert: required (this ingress has clientCert: ${mode}, so a client needs no identity to check)`);
      const names = list(r.allow, `${p}.allow`, TLS_LIMITS.allow);
      if (names.length === 0) fail(`${p}.allow`, 'at least one workload (omit "allow" to admit any workload of the deployment)');
      const seen = new Set<string>();
      entry.allow = names.map((n, j) => {
        const peer = allowEntry(n, `${p}.allow[${j}]`, context.policy);
        if (seen.has(peerNameText(peer))) fail(`${p}.allow[${j}]`, `${peerNameText(peer)} is listed twice`);
        seen.add(peerNameText(peer));
        return peer;
      });
    }
    return entry;
  });
  const egress = list(o.egress, '.egress', TLS_LIMITS.egress).map((e, i): TlsEgress => {
    const p = `.egress[${i}]`;
    const r = record(e, p, ['listen', 'to', 'expect'], ['listen', 'to', 'expect']);
    const listen = port(r.listen, `${p}.listen`);
    claim(listen, `${p}.listen`);
    const { host, port: remotePort } = parseHostPort(r.to, `${p}.to`);
    const x = record(r.expect, `${p}.expect`, ['policy', 'workload'], ['policy', 'workload']);
    const expect = { policy: policyName(x.policy, `${p}.expect.policy`), workload: workloadName(x.workload, `${p}.expect.workload`) };
    return { listen, to: r.to as string, host, port: remotePort, expect };
  });
  if (ingress.length + egress.length === 0) fail('', 'declare at least one ingress or egress entry (or omit "tls")');
  return { ingress, egress };
}

/** Wire form (what the policy says; `host`/`port` are derived, `allow` entries are written `org/app#workload`). */
export function tlsSpecToWire(spec: TlsSpec): unknown {
  return {
    ingress: spec.ingress.map((i) => ({ listen: i.listen, to: i.to, clientCert: i.clientCert, ...(i.allow ? { allow: i.allow.map(peerNameText) } : {}) })),
    egress: spec.egress.map((e) => ({ listen: e.listen, to: e.to, expect: { policy: e.expect.policy, workload: e.expect.workload } })),
  };
}
