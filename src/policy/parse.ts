import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import type { Node, Pair, YAMLMap } from 'yaml';
import { TEE_KINDS, isTeeKind } from '../attestation/types.js';
import { CocoonError } from '../errors.js';
import { ENV_NAME_RE, LAUNCH_PLAN_RESOURCE, LAYER_KEY_SECRET, MEASUREMENT_RE, SECRET_NAME_RE, SEGMENT_RE, WORKLOAD_NAME_RE } from './names.js';
import { TemplateError, parseTemplate, templateSecrets } from './template.js';
import { RANDOM_ENCODINGS } from './types.js';
import type { AcceptRule, FileSpec, Policy, RandomEncoding, SecretSpec, SourcePosition, Template, WorkloadSpec } from './types.js';

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
  return new PolicyParser(ctx).policy(doc.contents as AnyNode);
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
    const fields = this.fields(map, '(document)', ['name', 'version', 'secrets', 'workloads'], ['name', 'workloads']);
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
      workloads[e.key] = this.workload(e.value, `workloads.${e.key}`, secrets);
    }
    return { name, org: parts[0] as string, app: parts[1] as string, secrets, workloads };
  }

  private secrets(node: AnyNode): Record<string, SecretSpec> {
    const out: Record<string, SecretSpec> = {};
    const map = this.map(node, 'secrets');
    const entries = this.entries(map, 'secrets');
    if (entries.length > LIMITS.secrets) this.ctx.fail(map, `at most ${LIMITS.secrets} secrets`, 'secrets');
    for (const e of entries) {
      const path = `secrets.${e.key}`;
      if (!SECRET_NAME_RE.test(e.key)) this.ctx.fail(e.keyNode, 'invalid secret name', path);
      if (e.key === LAUNCH_PLAN_RESOURCE) this.ctx.fail(e.keyNode, `"${LAUNCH_PLAN_RESOURCE}" is reserved`, path);
      const smap = this.map(e.value, path);
      const kindEntry = this.fields(smap, path, ['kind', 'size', 'encoding', 'ownerReadable'], ['kind']).get('kind') as Entry;
      const kind = this.string(kindEntry.value, `${path}.kind`);
      const allowed = kind === 'random' ? ['kind', 'size', 'encoding', 'ownerReadable'] : ['kind', 'ownerReadable'];
      const f = this.fields(smap, path, allowed, kind === 'random' ? ['kind', 'size'] : ['kind']);
      const ownerReadableEntry = f.get('ownerReadable');
      const ownerReadable = ownerReadableEntry ? this.bool(ownerReadableEntry.value, `${path}.ownerReadable`) : false;
      if (kind === 'random') {
        const sizeEntry = f.get('size') as Entry;
        const size = this.scalar(sizeEntry.value, `${path}.size`);
        if (typeof size !== 'number' || !Number.isInteger(size) || size < 1 || size > 4096) {
          this.ctx.fail(sizeEntry.value, 'size must be an integer number of bytes from 1 to 4096', `${path}.size`);
        }
        const encEntry = f.get('encoding');
        const encoding = encEntry ? this.string(encEntry.value, `${path}.encoding`) : 'bytes';
        if (!(RANDOM_ENCODINGS as readonly string[]).includes(encoding)) {
          this.ctx.fail(encEntry?.value, `encoding must be one of ${RANDOM_ENCODINGS.join(', ')}`, `${path}.encoding`);
        }
        out[e.key] = { kind, size, encoding: encoding as RandomEncoding, ownerReadable };
      } else if (kind === 'imported') {
        out[e.key] = { kind, ownerReadable };
      } else if (kind === 'layer-key') {
        if (e.key !== LAYER_KEY_SECRET) this.ctx.fail(e.keyNode, `a secret of kind layer-key must be named "${LAYER_KEY_SECRET}"`, path);
        out[e.key] = { kind, ownerReadable };
      } else {
        this.ctx.fail(kindEntry.value, 'kind must be one of random, imported, layer-key', `${path}.kind`);
      }
    }
    return out;
  }

  private workload(node: AnyNode, path: string, secrets: Record<string, SecretSpec>): WorkloadSpec {
    const map = this.map(node, path);
    const f = this.fields(map, path, ['accept', 'secrets', 'env', 'files', 'args'], ['accept']);
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
    return { accept, secrets: grantList, env, files, args };
  }

  private acceptRule(node: AnyNode, path: string): AcceptRule {
    const map = this.map(node, path);
    const f = this.fields(map, path, ['tee', 'measurement', 'debug'], ['tee', 'measurement']);
    const teeEntry = f.get('tee') as Entry;
    const teeSeq = this.seq(teeEntry.value, `${path}.tee`, LIMITS.tee);
    if (teeSeq.length === 0) this.ctx.fail(teeEntry.value, 'at least one TEE kind is required', `${path}.tee`);
    const tee = teeSeq.map((n, i) => {
      const t = this.string(n, `${path}.tee[${i}]`);
      if (!isTeeKind(t)) this.ctx.fail(n, `unknown TEE kind "${t}" (one of ${TEE_KINDS.join(', ')})`, `${path}.tee[${i}]`);
      return t;
    });
    const mEntry = f.get('measurement') as Entry;
    const measurement = this.string(mEntry.value, `${path}.measurement`).toLowerCase();
    if (!MEASUREMENT_RE.test(measurement)) this.ctx.fail(mEntry.value, 'measurement must be 96 hex characters (SHA-384)', `${path}.measurement`);
    const dEntry = f.get('debug');
    const debug = dEntry ? this.bool(dEntry.value, `${path}.debug`) : false;
    return { tee: [...new Set(tee)], measurement, debug };
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
    for (const ref of templateSecrets(t)) {
      const spec = secrets[ref.secret];
      if (!spec) this.ctx.fail(node, `unknown secret "${ref.secret}" in template`, path);
      if (!granted.has(ref.secret)) this.ctx.fail(node, `secret "${ref.secret}" is not granted to this workload (add it to "secrets")`, path);
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

function isSafeAbsolutePath(p: string): boolean {
  if (p.length > 1024 || !p.startsWith('/') || p === '/' || p.includes('\0')) return false;
  return p
    .slice(1)
    .split('/')
    .every((seg) => seg !== '' && seg !== '.' && seg !== '..');
}
