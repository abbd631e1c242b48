import { createHash } from 'node:crypto';
import { isAlias, isMap, isNode, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import type { Document, Node, Pair, YAMLMap } from 'yaml';
import { Compile } from 'typebox/compile';
import { canonicalJson } from '../crypto/canonical-json.js';
import { TEE_KINDS, isTeeKind } from '../attestation/types.js';
import { CocoonError } from '../errors.js';
import { ENV_NAME_RE, LAUNCH_PLAN_RESOURCE, LAYER_KEY_SECRET, WORKLOAD_CERT_RESOURCE_NAME, MEASUREMENT_RE, SECRET_NAME_RE, SEGMENT_RE, WORKLOAD_NAME_RE } from './names.js';
import { TemplateError, parseTemplate, templateSecrets } from './template.js';
import { POLICY_JSON_SCHEMA } from './schema.js';
import { TlsSpecError, parseTlsSpec } from './tls.js';
import { VolumeSpecError, parseVolumesSpec } from './volumes.js';
import { KEY_TYPES, KEY_USAGES, RANDOM_ENCODINGS, SECRET_FIELDS, isStructuredSecret, workloadCertGranted } from './types.js';
import type { AcceptRule, FileSpec, KeyType, KeyUsageName, Policy, PolicyOwner, RandomEncoding, SecretField, SecretScope, SecretSpec, SgxRule, SourcePosition, Template, WorkloadSpec } from './types.js';

/** Name of the deployment CA as an x509 `issuer`. */
export const DEPLOYMENT_CA = 'deployment';
const HEX_RE = (bytes: number) => new RegExp(`^[0-9a-f]{${bytes * 2}}$`);
const TDX_FIELDS = ['mr_td', 'rtmr0', 'rtmr1', 'rtmr2', 'rtmr3', 'mr_config_id'];
const SNP_FIELDS: Record<string, number> = { measurement: 48, host_data: 32 };
const FIELDS_OF: Record<string, readonly SecretField[]> = { keypair: ['key', 'public'], x509: ['cert', 'key', 'chain', 'public'], 'x509-ca': ['cert', 'key', 'public'] };
let compiledSchema: ReturnType<typeof Compile> | undefined;

export const MAX_POLICY_BYTES = 256 * 1024;
const LIMITS = { secrets: 256, workloads: 64, accept: 32, tee: 16, grants: 256, env: 256, files: 64, args: 256, template: 64 * 1024 };

export interface ParseOptions {
  /** Shown in error positions; defaults to `policy.yaml`. */
  file?: string;
}

type AnyNode = Node | null | undefined;

/** Parses and validates a policy. Every problem is POLICY_INVALID with file:line:column. */
export function parsePolicy(text: string, options: ParseOptions = {}): Policy {
  const file = options.file ?? 'policy.yaml';
  if (Buffer.byteLength(text, 'utf8') > MAX_POLICY_BYTES) {
    throw new CocoonError('POLICY_INVALID', `${file}:1:1: policy larger than ${MAX_POLICY_BYTES} bytes`, { details: { file, line: 1, column: 1 } });
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false, strict: true, version: '1.2' });
  const ctx = new Ctx(file, lineCounter);
  const first = doc.errors[0];
  if (first) ctx.failAt(first.pos[0], first.message.split('\n')[0] ?? 'YAML syntax error');
  const policy = new PolicyParser(ctx).policy(doc.contents as AnyNode);
  checkSchema(doc, ctx);
  return policy;
}

/** JSON Schema errors of a policy value (docs/policy.schema.json); empty when it conforms. */
export function policySchemaErrors(value: unknown): { instancePath: string; schemaPath: string; keyword: string; message: string }[] {
  compiledSchema ??= Compile(POLICY_JSON_SCHEMA as never);
  if (compiledSchema.Check(value)) return [];
  return [...compiledSchema.Errors(value)].map((e) => ({ instancePath: e.instancePath, schemaPath: e.schemaPath, keyword: e.keyword, message: e.message }));
}

/** The published JSON Schema, applied to the document; the first (deepest) error gets the node's position. */
function checkSchema(doc: Document, ctx: Ctx): void {
  const value: unknown = doc.toJS({ maxAliasCount: 0 });
  const all = policySchemaErrors(value);
  if (all.length === 0) return;
  const errors = all.filter((e) => !['oneOf', 'anyOf', 'if'].includes(e.keyword));
  errors.sort((a, b) => b.instancePath.split('/').length - a.instancePath.split('/').length);
  const e = errors[0];
  const segments = (e?.instancePath ?? '').split('/').slice(1).map((x) => x.replace(/~1/g, '/').replace(/~0/g, '~'));
  let node: unknown = doc.getIn(segments, true);
  for (let n = segments.length; !node && n > 0; n--) node = doc.getIn(segments.slice(0, n - 1), true);
  const range = (node as { range?: [number, number] } | undefined)?.range;
  const path = segments.join('.') || '(document)';
  const message = e ? (e.message === 'schema is false' ? `unknown field "${segments[segments.length - 1] ?? ''}"` : `${e.message} (JSON Schema ${e.schemaPath})`) : 'does not match the policy JSON Schema';
  ctx.failAt(range?.[0] ?? 0, message, path);
}

/** A YAML value as plain JSON (null for an alias or an empty value), for the parsers of src/policy/{tls,volumes}.ts. */
function plainValue(node: AnyNode): unknown {
  return isMap(node) || isSeq(node) || isScalar(node) ? node.toJSON() : null;
}

/**
 * The node at `rel` (`.ingress[0].allow[1]`, as TlsSpecError paths are written) below `base`,
 * or the deepest one that exists, so an error points at the offending field.
 */
function nodeAt(base: AnyNode, rel: string): AnyNode {
  let node = base;
  for (const m of rel.matchAll(/\.([^.[]+)|\[(\d+)\]/g)) {
    const key = m[1] ?? Number(m[2]);
    const next = isMap(node) || isSeq(node) ? (node.get(key, true) as unknown) : undefined;
    if (!isNode(next)) break;
    node = next;
  }
  return node;
}

/** RFC 7638 thumbprint of an owner's public JWK (EC P-256 or OKP Ed25519). */
export function ownerKeyThumbprint(jwk: Record<string, string>): string {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { crv: jwk.crv, kty: jwk.kty, x: jwk.x };
  return createHash('sha256').update(canonicalJson(members)).digest('base64url');
}

class Ctx {
  constructor(
    readonly file: string,
    readonly lines: LineCounter,
  ) {}

  position(offset: number): SourcePosition {
    const { line, col } = this.lines.linePos(offset);
    return { file: this.file, line, column: col };
  }

  failAt(offset: number, message: string, path?: string): never {
    const pos = this.position(offset);
    throw new CocoonError('POLICY_INVALID', `${pos.file}:${pos.line}:${pos.column}: ${path ? `${path}: ` : ''}${message}`, {
      details: { ...pos, ...(path ? { path } : {}), reason: message },
    });
  }

  fail(node: AnyNode | Pair, message: string, path?: string): never {
    const range = node && 'range' in node ? node.range : undefined;
    return this.failAt(range?.[0] ?? 0, message, path);
  }
}

interface Entry {
  key: string;
  keyNode: Node;
  value: AnyNode;
}

class PolicyParser {
  constructor(private readonly ctx: Ctx) {}

  policy(root: AnyNode): Policy {
    const map = this.map(root, '(document)');
    const fields = this.fields(map, '(document)', ['name', 'version', 'predecessor', 'owners', 'approvals', 'exports', 'secrets', 'workloads'], ['name', 'workloads']);
    const versionNode = fields.get('version');
    if (versionNode) {
      const v = this.scalar(versionNode.value, 'version');
      if (v !== 1) this.ctx.fail(versionNode.value, 'only policy format version 1 is supported', 'version');
    }
    const nameEntry = fields.get('name') as Entry;
    const name = this.string(nameEntry.value, 'name');
    const parts = name.split('/');
    if (parts.length !== 2 || !parts.every((p) => SEGMENT_RE.test(p))) {
      this.ctx.fail(nameEntry.value, 'must be "org/app" (lower-case letters, digits, ".", "_", "-")', 'name');
    }
    const secretsEntry = fields.get('secrets');
    const secrets = secretsEntry ? this.secrets(secretsEntry.value) : {};
    const workloadsEntry = fields.get('workloads') as Entry;
    const workloads: Record<string, WorkloadSpec> = {};
    const wmap = this.map(workloadsEntry.value, 'workloads');
    const wentries = this.entries(wmap, 'workloads');
    if (wentries.length === 0) this.ctx.fail(wmap, 'at least one workload is required', 'workloads');
    if (wentries.length > LIMITS.workloads) this.ctx.fail(wmap, `at most ${LIMITS.workloads} workloads`, 'workloads');
    for (const e of wentries) {
      if (!WORKLOAD_NAME_RE.test(e.key)) this.ctx.fail(e.keyNode, 'invalid workload name', `workloads.${e.key}`);
      workloads[e.key] = this.workload(e.value, `workloads.${e.key}`, secrets, name);
    }
    for (const e of wentries) this.checkIngressAllow(e, name, workloads);
    const policy: Policy = { name, org: parts[0] as string, app: parts[1] as string, owners: [], approvals: { threshold: 1 }, exports: {}, secrets, workloads };
    const pred = fields.get('predecessor');
    if (pred) {
      const v = this.string(pred.value, 'predecessor');
      if (!/^sha256:[0-9a-f]{64}$/.test(v)) this.ctx.fail(pred.value, 'predecessor must be "sha256:" and 64 hex characters', 'predecessor');
      policy.predecessor = v;
    }
    const ownersEntry = fields.get('owners');
    if (ownersEntry) policy.owners = this.owners(ownersEntry.value);
    const approvals = fields.get('approvals');
    if (approvals) {
      const am = this.map(approvals.value, 'approvals');
      const t = this.fields(am, 'approvals', ['threshold'], ['threshold']).get('threshold') as Entry;
      const threshold = this.scalar(t.value, 'approvals.threshold');
      if (typeof threshold !== 'number' || !Number.isInteger(threshold) || threshold < 1) this.ctx.fail(t.value, 'threshold must be a positive integer', 'approvals.threshold');
      if (threshold > Math.max(1, policy.owners.length)) this.ctx.fail(t.value, `threshold ${threshold} exceeds the number of owners (${policy.owners.length})`, 'approvals.threshold');
      policy.approvals = { threshold };
    }
    const exportsEntry = fields.get('exports');
    if (exportsEntry) {
      const em = this.map(exportsEntry.value, 'exports');
      for (const e of this.entries(em, 'exports')) {
        const spec = secrets[e.key];
        if (!spec) this.ctx.fail(e.keyNode, `unknown secret "${e.key}"`, `exports.${e.key}`);
        if (spec.kind === 'imported' && spec.from) this.ctx.fail(e.keyNode, 'a secret imported from another policy cannot be re-exported', `exports.${e.key}`);
        if ('scope' in spec && spec.scope === 'instance') this.ctx.fail(e.keyNode, 'a per-instance secret cannot be exported', `exports.${e.key}`);
        policy.exports[e.key] = this.seq(e.value, `exports.${e.key}`, 64).map((n, i) => {
          const v = this.string(n, `exports.${e.key}[${i}]`);
          if (!isPolicyNameStr(v) || v === name) this.ctx.fail(n, 'must be another policy "org/app"', `exports.${e.key}[${i}]`);
          return v;
        });
      }
    }
    return policy;
  }

  private owners(node: AnyNode): PolicyOwner[] {
    const seq = this.seq(node, 'owners', 32);
    if (seq.length === 0) this.ctx.fail(node, 'at least one owner (or omit "owners")', 'owners');
    const out: PolicyOwner[] = [];
    seq.forEach((n, i) => {
      const p = `owners[${i}]`;
      const f = this.fields(this.map(n, p), p, ['name', 'key'], ['name', 'key']);
      const name = this.string((f.get('name') as Entry).value, `${p}.name`);
      const keyEntry = f.get('key') as Entry;
      const km = this.map(keyEntry.value, `${p}.key`);
      const key: Record<string, string> = {};
      for (const e of this.entries(km, `${p}.key`)) key[e.key] = this.string(e.value, `${p}.key.${e.key}`);
      const b64u = /^[A-Za-z0-9_-]{43}$/;
      const ok = (key.kty === 'EC' && key.crv === 'P-256' && b64u.test(key.x ?? '') && b64u.test(key.y ?? '')) || (key.kty === 'OKP' && key.crv === 'Ed25519' && b64u.test(key.x ?? ''));
      if (!ok || key.d !== undefined) this.ctx.fail(keyEntry.value, 'key must be a public JWK: EC P-256 {kty, crv, x, y} or OKP Ed25519 {kty, crv, x}', `${p}.key`);
      const kid = ownerKeyThumbprint(key);
      if (out.some((o) => o.kid === kid || o.name === name)) this.ctx.fail(n, 'duplicate owner (name or key)', p);
      out.push({ name, key: key.kty === 'EC' ? { kty: 'EC', crv: 'P-256', x: key.x as string, y: key.y as string } : { kty: 'OKP', crv: 'Ed25519', x: key.x as string }, kid });
    });
    return out;
  }

  private secrets(node: AnyNode): Record<string, SecretSpec> {
    const out: Record<string, SecretSpec> = {};
    const map = this.map(node, 'secrets');
    const entries = this.entries(map, 'secrets');
    if (entries.length > LIMITS.secrets) this.ctx.fail(map, `at most ${LIMITS.secrets} secrets`, 'secrets');
    for (const e of entries) {
      const path = `secrets.${e.key}`;
      if (!SECRET_NAME_RE.test(e.key)) this.ctx.fail(e.keyNode, 'invalid secret name', path);
      if (e.key === LAUNCH_PLAN_RESOURCE || e.key === WORKLOAD_CERT_RESOURCE_NAME) this.ctx.fail(e.keyNode, `"${e.key}" is reserved`, path);
      const smap = this.map(e.value, path);
      const kindEntry = this.fields(smap, path, ['kind', 'size', 'encoding', 'ownerReadable', 'scope', 'keyType', 'issuer', 'usage', 'subject', 'sans', 'validityDays', 'keyUsage', 'from'], ['kind']).get('kind') as Entry;
      const kind = this.string(kindEntry.value, `${path}.kind`);
      const allowedByKind: Record<string, [string[], string[]]> = {
        random: [['kind', 'size', 'encoding', 'ownerReadable', 'scope'], ['kind', 'size']],
        keypair: [['kind', 'keyType', 'ownerReadable', 'scope'], ['kind', 'keyType']],
        x509: [['kind', 'issuer', 'usage', 'keyType', 'subject', 'sans', 'validityDays', 'keyUsage', 'ownerReadable', 'scope'], ['kind']],
        'x509-ca': [['kind', 'keyType', 'subject', 'validityDays', 'ownerReadable'], ['kind']],
        imported: [['kind', 'ownerReadable', 'from'], ['kind']],
        'layer-key': [['kind', 'ownerReadable'], ['kind']],
      };
      const rule = allowedByKind[kind];
      if (!rule) this.ctx.fail(kindEntry.value, `kind must be one of ${Object.keys(allowedByKind).join(', ')}`, `${path}.kind`);
      const f = this.fields(smap, path, rule[0], rule[1]);
      const ownerReadableEntry = f.get('ownerReadable');
      const ownerReadable = ownerReadableEntry ? this.bool(ownerReadableEntry.value, `${path}.ownerReadable`) : false;
      const scopeEntry = f.get('scope');
      let scope: SecretScope | undefined;
      if (scopeEntry) {
        const v = this.string(scopeEntry.value, `${path}.scope`);
        if (v !== 'shared' && v !== 'instance') this.ctx.fail(scopeEntry.value, 'scope must be shared or instance', `${path}.scope`);
        scope = v;
      }
      const withScope = <T extends object>(o: T): T => (scope ? { ...o, scope } : o);
      const keyType = (): KeyType => {
        const kt = f.get('keyType');
        if (!kt) return 'P-256';
        const v = this.string(kt.value, `${path}.keyType`);
        if (!(KEY_TYPES as readonly string[]).includes(v)) this.ctx.fail(kt.value, `keyType must be one of ${KEY_TYPES.join(', ')}`, `${path}.keyType`);
        return v as KeyType;
      };
      const intField = (field: string, dflt: number, min: number, max: number): number => {
        const en = f.get(field);
        if (!en) return dflt;
        const v = this.scalar(en.value, `${path}.${field}`);
        if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) this.ctx.fail(en.value, `${field} must be an integer from ${min} to ${max}`, `${path}.${field}`);
        return v;
      };
      const subject = (dflt: string): string => {
        const en = f.get('subject');
        if (!en) return dflt;
        const v = this.string(en.value, `${path}.subject`);
        if (v.length > 256 || !/^(?:[A-Za-z]{1,8}=[^,=+\\"<>;#]{1,64})(?:,\s?[A-Za-z]{1,8}=[^,=+\\"<>;#]{1,64})*$/.test(v)) this.ctx.fail(en.value, 'subject must be a simple DN such as "CN=shop, O=Example"', `${path}.subject`);
        return v;
      };
      if (kind === 'random') {
        const size = intField('size', 0, 1, 4096);
        const encEntry = f.get('encoding');
        const encoding = encEntry ? this.string(encEntry.value, `${path}.encoding`) : 'bytes';
        if (!(RANDOM_ENCODINGS as readonly string[]).includes(encoding)) {
          this.ctx.fail(encEntry?.value, `encoding must be one of ${RANDOM_ENCODINGS.join(', ')}`, `${path}.encoding`);
        }
        out[e.key] = withScope({ kind, size, encoding: encoding as RandomEncoding, ownerReadable });
      } else if (kind === 'keypair') {
        out[e.key] = withScope({ kind, keyType: keyType(), ownerReadable });
      } else if (kind === 'x509') {
        const issuerEntry = f.get('issuer');
        const issuer = issuerEntry ? this.string(issuerEntry.value, `${path}.issuer`) : DEPLOYMENT_CA;
        if (issuer !== DEPLOYMENT_CA && out[issuer]?.kind !== 'x509-ca') this.ctx.fail(issuerEntry?.value ?? e.keyNode, `issuer must be "${DEPLOYMENT_CA}" or an x509-ca secret declared above`, `${path}.issuer`);
        const usageEntry = f.get('usage');
        const usage = usageEntry ? this.string(usageEntry.value, `${path}.usage`) : 'server';
        if (usage !== 'server' && usage !== 'client') this.ctx.fail(usageEntry?.value, 'usage must be server or client', `${path}.usage`);
        const sans: string[] = [];
        const sansEntry = f.get('sans');
        if (sansEntry) {
          this.seq(sansEntry.value, `${path}.sans`, 64).forEach((n, i) => {
            const v = this.string(n, `${path}.sans[${i}]`);
            if (!isSan(v)) this.ctx.fail(n, 'a SAN is a DNS name (wildcard allowed in the first label), an IP address, or "uri:…"/"email:…"', `${path}.sans[${i}]`);
            sans.push(v);
          });
        }
        const kuEntry = f.get('keyUsage');
        const keyUsage: KeyUsageName[] = [];
        if (kuEntry) {
          this.seq(kuEntry.value, `${path}.keyUsage`, 4).forEach((n, i) => {
            const v = this.string(n, `${path}.keyUsage[${i}]`);
            if (!(KEY_USAGES as readonly string[]).includes(v)) this.ctx.fail(n, `keyUsage must be one of ${KEY_USAGES.join(', ')}`, `${path}.keyUsage[${i}]`);
            keyUsage.push(v as KeyUsageName);
          });
        } else keyUsage.push('digitalSignature');
        out[e.key] = withScope({ kind, issuer, usage, keyType: keyType(), subject: subject(`CN=${sans[0] ?? e.key}`), sans, validityDays: intField('validityDays', 30, 1, 825), keyUsage, ownerReadable });
      } else if (kind === 'x509-ca') {
        out[e.key] = { kind, keyType: keyType(), subject: subject(`CN=${e.key}`), validityDays: intField('validityDays', 365, 1, 3650), ownerReadable };
      } else if (kind === 'imported') {
        const fromEntry = f.get('from');
        if (fromEntry) {
          const v = this.string(fromEntry.value, `${path}.from`);
          const m = /^([a-z0-9][a-z0-9._-]{0,62}\/[a-z0-9][a-z0-9._-]{0,62})\/([A-Za-z0-9][A-Za-z0-9._-]{0,63})$/.exec(v);
          if (!m) this.ctx.fail(fromEntry.value, 'from must be "org/app/secret"', `${path}.from`);
          out[e.key] = { kind, ownerReadable, from: { policy: m[1] as string, secret: m[2] as string } };
        } else out[e.key] = { kind, ownerReadable };
      } else {
        if (e.key !== LAYER_KEY_SECRET) this.ctx.fail(e.keyNode, `a secret of kind layer-key must be named "${LAYER_KEY_SECRET}"`, path);
        out[e.key] = { kind: 'layer-key', ownerReadable };
      }
    }
    return out;
  }

  /**
   * `tls.ingress[].allow` naming a workload of this policy: it must be declared and get a
   * workload certificate (`tls` or `workloadCert`), or no client could ever match.
   */
  private checkIngressAllow(e: Entry, policyName: string, workloads: Record<string, WorkloadSpec>): void {
    const ingress = workloads[e.key]?.tls?.ingress ?? [];
    ingress.forEach((ing, i) =>
      ing.allow?.forEach((peer, j) => {
        if (peer.policy !== policyName) return;
        const target = workloads[peer.workload];
        const rel = `.ingress[${i}].allow[${j}]`;
        const at = nodeAt(isMap(e.value) ? e.value.get('tls', true) : undefined, rel);
        const path = `workloads.${e.key}.tls${rel}`;
        if (!target) this.ctx.fail(at, `unknown workload "${peer.workload}" of this policy (declare it, or name another policy's workload as "org/app#${peer.workload}")`, path);
        if (!workloadCertGranted(target)) this.ctx.fail(at, `workload "${peer.workload}" gets no workload certificate (it declares neither tls nor workloadCert: true), so it could never connect`, path);
      }),
    );
  }

  private workload(node: AnyNode, path: string, secrets: Record<string, SecretSpec>, policyName: string): WorkloadSpec {
    const map = this.map(node, path);
    const f = this.fields(map, path, ['accept', 'maxActivations', 'secrets', 'env', 'files', 'args', 'tls', 'volumes', 'workloadCert'], ['accept']);
    const acceptEntry = f.get('accept') as Entry;
    const acceptSeq = this.seq(acceptEntry.value, `${path}.accept`, LIMITS.accept);
    if (acceptSeq.length === 0) this.ctx.fail(acceptEntry.value, 'at least one accept rule is required', `${path}.accept`);
    const accept = acceptSeq.map((n, i) => this.acceptRule(n, `${path}.accept[${i}]`));

    const granted = new Set<string>();
    if (secrets[LAYER_KEY_SECRET]) granted.add(LAYER_KEY_SECRET);
    const grantsEntry = f.get('secrets');
    const grantList: string[] = [];
    if (grantsEntry) {
      this.seq(grantsEntry.value, `${path}.secrets`, LIMITS.grants).forEach((n, i) => {
        const p = `${path}.secrets[${i}]`;
        const s = this.string(n, p);
        if (!secrets[s]) this.ctx.fail(n, `unknown secret "${s}"`, p);
        if (!grantList.includes(s)) grantList.push(s);
        granted.add(s);
      });
    }
    const template = (n: AnyNode, p: string, text: boolean): Template => this.template(n, p, secrets, granted, text);

    const env: Record<string, Template> = {};
    const envEntry = f.get('env');
    if (envEntry) {
      const emap = this.map(envEntry.value, `${path}.env`);
      const entries = this.entries(emap, `${path}.env`);
      if (entries.length > LIMITS.env) this.ctx.fail(emap, `at most ${LIMITS.env} variables`, `${path}.env`);
      for (const e of entries) {
        if (!ENV_NAME_RE.test(e.key)) this.ctx.fail(e.keyNode, 'invalid environment variable name', `${path}.env.${e.key}`);
        env[e.key] = template(e.value, `${path}.env.${e.key}`, true);
      }
    }
    const files: FileSpec[] = [];
    const filesEntry = f.get('files');
    if (filesEntry) {
      const seen = new Set<string>();
      this.seq(filesEntry.value, `${path}.files`, LIMITS.files).forEach((n, i) => {
        const p = `${path}.files[${i}]`;
        const fm = this.map(n, p);
        const ff = this.fields(fm, p, ['path', 'mode', 'content'], ['path', 'content']);
        const pathEntry = ff.get('path') as Entry;
        const filePath = this.string(pathEntry.value, `${p}.path`);
        if (!isSafeAbsolutePath(filePath)) this.ctx.fail(pathEntry.value, 'must be an absolute, normalized path without ".." (max 1024 chars)', `${p}.path`);
        if (seen.has(filePath)) this.ctx.fail(pathEntry.value, 'duplicate file path', `${p}.path`);
        seen.add(filePath);
        let mode = 0o400;
        const modeEntry = ff.get('mode');
        if (modeEntry) {
          const m = this.scalar(modeEntry.value, `${p}.mode`);
          if (typeof m !== 'string' || !/^0?[0-7]{3}$/.test(m)) this.ctx.fail(modeEntry.value, 'mode must be a quoted octal string such as "0400"', `${p}.mode`);
          mode = parseInt(m, 8);
        }
        files.push({ path: filePath, mode, content: template((ff.get('content') as Entry).value, `${p}.content`, false) });
      });
    }
    let args: Template[] | null = null;
    const argsEntry = f.get('args');
    if (argsEntry) {
      const seq = this.seq(argsEntry.value, `${path}.args`, LIMITS.args);
      if (seq.length === 0) this.ctx.fail(argsEntry.value, 'args must not be empty (omit it to keep the image command)', `${path}.args`);
      args = seq.map((n, i) => template(n, `${path}.args[${i}]`, true));
    }
    const spec: WorkloadSpec = { accept, secrets: grantList, env, files, args };
    const maxEntry = f.get('maxActivations');
    if (maxEntry) {
      const v = this.scalar(maxEntry.value, `${path}.maxActivations`);
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 2 ** 31 - 1) this.ctx.fail(maxEntry.value, 'maxActivations must be a positive integer', `${path}.maxActivations`);
      spec.maxActivations = v;
    }
    const certEntry = f.get('workloadCert');
    if (certEntry && this.bool(certEntry.value, `${path}.workloadCert`)) spec.workloadCert = true;
    const tlsEntry = f.get('tls');
    if (tlsEntry) {
      try {
        spec.tls = parseTlsSpec(plainValue(tlsEntry.value), { policy: policyName });
      } catch (err) {
        if (!(err instanceof TlsSpecError)) throw err;
        this.ctx.fail(nodeAt(tlsEntry.value, err.path), err.message, `${path}.tls${err.path}`);
      }
    }
    const volumesEntry = f.get('volumes');
    if (volumesEntry) {
      try {
        spec.volumes = parseVolumesSpec(plainValue(volumesEntry.value));
      } catch (err) {
        if (!(err instanceof VolumeSpecError)) throw err;
        this.ctx.fail(nodeAt(volumesEntry.value, err.path), err.message, `${path}.volumes${err.path}`);
      }
    }
    return spec;
  }

  private acceptRule(node: AnyNode, path: string): AcceptRule {
    const map = this.map(node, path);
    const f = this.fields(map, path, ['tee', 'measurement', 'sgx', 'tdx', 'snp', 'pcrs', 'tcb', 'minSvn', 'initData', 'debug'], ['tee']);
    const teeEntry = f.get('tee') as Entry;
    const teeSeq = this.seq(teeEntry.value, `${path}.tee`, LIMITS.tee);
    if (teeSeq.length === 0) this.ctx.fail(teeEntry.value, 'at least one TEE kind is required', `${path}.tee`);
    const tee = teeSeq.map((n, i) => {
      const t = this.string(n, `${path}.tee[${i}]`);
      if (!isTeeKind(t)) this.ctx.fail(n, `unknown TEE kind "${t}" (one of ${TEE_KINDS.join(', ')})`, `${path}.tee[${i}]`);
      return t;
    });
    const dEntry = f.get('debug');
    const rule: AcceptRule = { tee: [...new Set(tee)], debug: dEntry ? this.bool(dEntry.value, `${path}.debug`) : false };
    const hex = (n: AnyNode, p: string, bytes: number): string => {
      const v = this.string(n, p).toLowerCase();
      if (!HEX_RE(bytes).test(v)) this.ctx.fail(n, `must be ${bytes * 2} hex characters`, p);
      return v;
    };
    const uint = (n: AnyNode, p: string): number => {
      const v = this.scalar(n, p);
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 2 ** 32) this.ctx.fail(n, 'must be a non-negative integer', p);
      return v;
    };
    const mEntry = f.get('measurement');
    if (mEntry) {
      const measurement = this.string(mEntry.value, `${path}.measurement`).toLowerCase();
      if (!MEASUREMENT_RE.test(measurement)) this.ctx.fail(mEntry.value, 'measurement must be 96 hex characters (SHA-384)', `${path}.measurement`);
      rule.measurement = measurement;
    }
    const sgxEntry = f.get('sgx');
    if (sgxEntry) {
      const p = `${path}.sgx`;
      const sf = this.fields(this.map(sgxEntry.value, p), p, ['mrenclave', 'mrsigner', 'isvprodid', 'minIsvsvn'], []);
      const sgx: SgxRule = {};
      const me = sf.get('mrenclave');
      if (me) sgx.mrenclave = isSeq(me.value) ? this.seq(me.value, `${p}.mrenclave`, 32).map((n, i) => hex(n, `${p}.mrenclave[${i}]`, 32)) : [hex(me.value, `${p}.mrenclave`, 32)];
      const ms = sf.get('mrsigner');
      if (ms) sgx.mrsigner = hex(ms.value, `${p}.mrsigner`, 32);
      const pid = sf.get('isvprodid');
      if (pid) sgx.isvprodid = uint(pid.value, `${p}.isvprodid`);
      const svn = sf.get('minIsvsvn');
      if (svn) sgx.minIsvsvn = uint(svn.value, `${p}.minIsvsvn`);
      if (!sgx.mrenclave && !sgx.mrsigner) this.ctx.fail(sgxEntry.value, 'sgx needs mrenclave or mrsigner', p);
      if (sgx.mrsigner && sgx.isvprodid === undefined) this.ctx.fail(sgxEntry.value, 'mrsigner needs isvprodid (and usually minIsvsvn)', p);
      rule.sgx = sgx;
    }
    const hexMap = (key: string, allowed: Record<string, number>): Record<string, string> | undefined => {
      const en = f.get(key);
      if (!en) return undefined;
      const p = `${path}.${key}`;
      const m = this.map(en.value, p);
      const out: Record<string, string> = {};
      for (const e of this.entries(m, p)) {
        const bytes = allowed[e.key];
        if (bytes === undefined) this.ctx.fail(e.keyNode, `unknown field "${e.key}" (allowed: ${Object.keys(allowed).join(', ')})`, p);
        out[e.key] = hex(e.value, `${p}.${e.key}`, bytes);
      }
      if (Object.keys(out).length === 0) this.ctx.fail(en.value, 'at least one value', p);
      return out;
    };
    const tdx = hexMap('tdx', Object.fromEntries(TDX_FIELDS.map((k) => [k, 48])));
    if (tdx) rule.tdx = tdx;
    const snp = hexMap('snp', SNP_FIELDS);
    if (snp) rule.snp = snp;
    const pcrsEntry = f.get('pcrs');
    if (pcrsEntry) {
      const p = `${path}.pcrs`;
      const pcrs: Record<string, string> = {};
      for (const e of this.entries(this.map(pcrsEntry.value, p), p)) {
        if (!/^pcr(0[0-9]|1[0-9]|2[0-3])$/.test(e.key)) this.ctx.fail(e.keyNode, 'PCR names are pcr00 … pcr23', p);
        const v = this.string(e.value, `${p}.${e.key}`).toLowerCase();
        if (!/^([0-9a-f]{40}|[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128})$/.test(v)) this.ctx.fail(e.value, 'a PCR value is 40, 64, 96 or 128 hex characters', `${p}.${e.key}`);
        pcrs[e.key] = v;
      }
      if (Object.keys(pcrs).length === 0) this.ctx.fail(pcrsEntry.value, 'at least one PCR', p);
      rule.pcrs = pcrs;
    }
    const tcbEntry = f.get('tcb');
    if (tcbEntry) {
      const p = `${path}.tcb`;
      const tf = this.fields(this.map(tcbEntry.value, p), p, ['statuses', 'advisories'], []);
      const list = (key: string, re: RegExp, max: number): string[] => {
        const en = tf.get(key);
        if (!en) return [];
        return this.seq(en.value, `${p}.${key}`, max).map((n, i) => {
          const v = this.string(n, `${p}.${key}[${i}]`);
          if (!re.test(v)) this.ctx.fail(n, `invalid ${key.slice(0, -1)}`, `${p}.${key}[${i}]`);
          return v;
        });
      };
      const statuses = list('statuses', /^[A-Za-z]{1,64}$/, 16);
      rule.tcb = { statuses: statuses.length ? statuses : ['UpToDate'], advisories: list('advisories', /^[A-Za-z0-9-]{1,64}$/, 256) };
    }
    const svnEntry = f.get('minSvn');
    if (svnEntry) {
      const p = `${path}.minSvn`;
      const minSvn: Record<string, number> = {};
      for (const e of this.entries(this.map(svnEntry.value, p), p)) {
        if (!/^[a-z][a-z0-9_.]{0,63}$/.test(e.key)) this.ctx.fail(e.keyNode, 'claim names are lower-case (e.g. isvsvn, guest_svn, current_tcb.snp)', p);
        minSvn[e.key] = uint(e.value, `${p}.${e.key}`);
      }
      rule.minSvn = minSvn;
    }
    const idEntry = f.get('initData');
    if (idEntry) {
      const v = this.string(idEntry.value, `${path}.initData`);
      if (v !== 'bound') this.ctx.fail(idEntry.value, 'initData must be "bound" (TOML init-data bound through snp host_data / tdx mr_config_id)', `${path}.initData`);
      if (!rule.tee.some((t) => t === 'snp' || t === 'tdx')) this.ctx.fail(idEntry.value, 'initData: bound needs tee snp or tdx (the TEEs with an init-data register)', `${path}.initData`);
      rule.initData = 'bound';
    }
    if (!rule.measurement && !rule.sgx && !rule.tdx && !rule.snp && !rule.pcrs) {
      this.ctx.fail(map, 'an accept rule needs at least one measurement: measurement, sgx, tdx, snp or pcrs', path);
    }
    if (rule.sgx && !rule.tee.includes('sgx')) this.ctx.fail(map, 'sgx values given but tee does not list sgx', path);
    if (rule.tdx && !rule.tee.some((t) => t === 'tdx' || t === 'az-tdx-vtpm')) this.ctx.fail(map, 'tdx values given but tee lists neither tdx nor az-tdx-vtpm', path);
    if (rule.snp && !rule.tee.some((t) => t === 'snp' || t === 'az-snp-vtpm')) this.ctx.fail(map, 'snp values given but tee lists neither snp nor az-snp-vtpm', path);
    return rule;
  }

  private template(node: AnyNode, path: string, secrets: Record<string, SecretSpec>, granted: Set<string>, text: boolean): Template {
    const source = this.string(node, path, true);
    if (source.length > LIMITS.template) this.ctx.fail(node, `template longer than ${LIMITS.template} characters`, path);
    let t: Template;
    try {
      t = parseTemplate(source);
    } catch (err) {
      if (err instanceof TemplateError) this.ctx.fail(node, err.message, path);
      throw err;
    }
    for (const part of t.parts) {
      if (!('secret' in part)) continue;
      // `secret.a.key` may name a secret called "a.key": the declared secret wins.
      if (part.field && !secrets[part.secret] && secrets[`${part.secret}.${part.field}`]) {
        part.secret = `${part.secret}.${part.field}`;
        delete part.field;
      }
    }
    for (const ref of templateSecrets(t)) {
      const spec = secrets[ref.secret];
      if (!spec) this.ctx.fail(node, `unknown secret "${ref.secret}" in template`, path);
      if (!granted.has(ref.secret)) this.ctx.fail(node, `secret "${ref.secret}" is not granted to this workload (add it to "secrets")`, path);
      if (isStructuredSecret(spec)) {
        const fields = FIELDS_OF[spec.kind] ?? SECRET_FIELDS;
        if (!ref.field || !fields.includes(ref.field)) this.ctx.fail(node, `secret "${ref.secret}" (${spec.kind}) needs a field: ${fields.map((x) => `.${x}`).join(', ')}`, path);
        continue;
      }
      if (ref.field) this.ctx.fail(node, `secret "${ref.secret}" (${spec.kind}) has no field .${ref.field}`, path);
      const binary = spec.kind === 'layer-key' || (spec.kind === 'random' && spec.encoding === 'bytes');
      if (text && binary && ref.filter === 'raw') this.ctx.fail(node, `secret "${ref.secret}" is binary; use "| hex" or "| base64" in env/args`, path);
    }
    return t;
  }

  // ---- node helpers ----

  private map(node: AnyNode, path: string): YAMLMap {
    this.noAlias(node, path);
    if (!isMap(node)) this.ctx.fail(node, 'expected a mapping', path);
    return node;
  }

  private seq(node: AnyNode, path: string, max: number): AnyNode[] {
    this.noAlias(node, path);
    if (!isSeq(node)) this.ctx.fail(node, 'expected a list', path);
    if (node.items.length > max) this.ctx.fail(node, `at most ${max} entries`, path);
    return node.items as AnyNode[];
  }

  private scalar(node: AnyNode, path: string): unknown {
    this.noAlias(node, path);
    if (!isScalar(node)) this.ctx.fail(node, 'expected a scalar value', path);
    return node.value;
  }

  private string(node: AnyNode, path: string, allowEmpty = false): string {
    const v = this.scalar(node, path);
    if (typeof v !== 'string') this.ctx.fail(node, 'expected a string', path);
    if (!allowEmpty && v.length === 0) this.ctx.fail(node, 'must not be empty', path);
    return v;
  }

  private bool(node: AnyNode, path: string): boolean {
    const v = this.scalar(node, path);
    if (typeof v !== 'boolean') this.ctx.fail(node, 'expected true or false', path);
    return v;
  }

  private entries(map: YAMLMap, path: string): Entry[] {
    return map.items.map((pair) => {
      const keyNode = pair.key as AnyNode;
      if (!isScalar(keyNode) || typeof keyNode.value !== 'string') this.ctx.fail(keyNode ?? map, 'keys must be strings', path);
      return { key: keyNode.value, keyNode, value: pair.value as AnyNode };
    });
  }

  private fields(map: YAMLMap, path: string, allowed: string[], required: string[]): Map<string, Entry> {
    const out = new Map<string, Entry>();
    for (const e of this.entries(map, path)) {
      if (!allowed.includes(e.key)) this.ctx.fail(e.keyNode, `unknown field "${e.key}" (allowed: ${allowed.join(', ')})`, path);
      out.set(e.key, e);
    }
    for (const r of required) if (!out.has(r)) this.ctx.fail(map, `missing required field "${r}"`, path);
    return out;
  }

  private noAlias(node: AnyNode, path: string): void {
    if (isAlias(node)) this.ctx.fail(node, 'YAML aliases are not allowed in policies', path);
  }
}

function isPolicyNameStr(v: string): boolean {
  const parts = v.split('/');
  return parts.length === 2 && parts.every((p) => SEGMENT_RE.test(p));
}

function isSan(v: string): boolean {
  if (v.length > 253) return false;
  if (/^(uri|email):/.test(v)) return v.length > 6 && !/[\s\0]/.test(v);
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(v)) return v.split('.').every((o) => Number(o) <= 255);
  if (/^[0-9a-fA-F:]+$/.test(v) && v.includes(':')) return true;
  return /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(v);
}

function isSafeAbsolutePath(p: string): boolean {
  if (p.length > 1024 || !p.startsWith('/') || p === '/' || p.includes('\0')) return false;
  return p
    .slice(1)
    .split('/')
    .every((seg) => seg !== '' && seg !== '.' && seg !== '..');
}
