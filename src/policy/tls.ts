/**
 * `tls:` of a workload (docs/tls.md): TLS proxies the launcher runs with the attested
 * workload certificate. The same shape travels in the launch plan, so the launcher parses it
 * with the same strict function.
 */
import { SEGMENT_RE, WORKLOAD_NAME_RE } from './names.js';

export const CLIENT_CERT_MODES = ['required', 'optional', 'none'] as const;
export type ClientCertMode = (typeof CLIENT_CERT_MODES)[number];

export interface TlsIngress {
  /** Port the launcher listens on (all interfaces), TLS. */
  listen: number;
  /** Port of the app on 127.0.0.1 inside the TEE, plaintext. */
  to: number;
  clientCert: ClientCertMode;
}

export interface TlsEgress {
  /** Port on 127.0.0.1 inside the TEE where the app connects in plaintext. */
  listen: number;
  /** Remote `host:port` the launcher opens TLS to. */
  to: string;
  host: string;
  port: number;
  /** Identity the peer certificate's workload-identity extension must name. */
  expect: { policy: string; workload: string };
}

export interface TlsSpec {
  ingress: TlsIngress[];
  egress: TlsEgress[];
}

export const TLS_LIMITS = { ingress: 16, egress: 16 };
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

/** Strict parse of a `tls` value (plain JSON/YAML data). Throws TlsSpecError. */
export function parseTlsSpec(value: unknown): TlsSpec {
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
    const r = record(e, p, ['listen', 'to', 'clientCert'], ['listen', 'to']);
    const listen = port(r.listen, `${p}.listen`);
    claim(listen, `${p}.listen`);
    const mode = r.clientCert ?? 'required';
    if (typeof mode !== 'string' || !(CLIENT_CERT_MODES as readonly string[]).includes(mode)) fail(`${p}.clientCert`, `must be one of ${CLIENT_CERT_MODES.join(', ')}`);
    return { listen, to: port(r.to, `${p}.to`), clientCert: mode as ClientCertMode };
  });
  const egress = list(o.egress, '.egress', TLS_LIMITS.egress).map((e, i): TlsEgress => {
    const p = `.egress[${i}]`;
    const r = record(e, p, ['listen', 'to', 'expect'], ['listen', 'to', 'expect']);
    const listen = port(r.listen, `${p}.listen`);
    claim(listen, `${p}.listen`);
    const { host, port: remotePort } = parseHostPort(r.to, `${p}.to`);
    const x = record(r.expect, `${p}.expect`, ['policy', 'workload'], ['policy', 'workload']);
    const pol = x.policy;
    if (typeof pol !== 'string' || pol.split('/').length !== 2 || !pol.split('/').every((s) => SEGMENT_RE.test(s))) fail(`${p}.expect.policy`, 'must be a policy name "org/app"');
    if (typeof x.workload !== 'string' || !WORKLOAD_NAME_RE.test(x.workload)) fail(`${p}.expect.workload`, 'must be a workload name');
    return { listen, to: r.to as string, host, port: remotePort, expect: { policy: pol, workload: x.workload } };
  });
  if (ingress.length + egress.length === 0) fail('', 'declare at least one ingress or egress entry (or omit "tls")');
  return { ingress, egress };
}

/** Wire form (what the policy says; `host`/`port` are derived). */
export function tlsSpecToWire(spec: TlsSpec): unknown {
  return {
    ingress: spec.ingress.map((i) => ({ listen: i.listen, to: i.to, clientCert: i.clientCert })),
    egress: spec.egress.map((e) => ({ listen: e.listen, to: e.to, expect: { policy: e.expect.policy, workload: e.expect.workload } })),
  };
}
