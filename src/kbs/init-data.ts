/**
 * Init-data (docs/tee-support.md "Init-data binding"): the document a host hands to a
 * confidential VM at launch, whose digest the hardware reports — SNP `HOST_DATA` (32 bytes),
 * TDX `MRCONFIGID` (48 bytes). The shape and digest rule are those of Confidential Containers
 * (trustee kbs/docs/initdata.md, spec version 0.1.0): a TOML document with `version`,
 * `algorithm` (sha256 | sha384 | sha512) and a `data` map of strings; the digest is the
 * algorithm over the exact bytes of the document, truncated or zero-padded at the end to the
 * register's size. Cocoon reads its selection from the `[data]` entry `cocoon.json`
 * (`{"policy":"org/app","workload":"name","kbs"?:"url"}`), so once the register binds the
 * document, the host can no longer point a VM at another policy or workload.
 */
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { parse, stringify } from 'smol-toml';
import type { Claims, TeeKind } from '../attestation/types.js';
import { CocoonError } from '../errors.js';
import { WORKLOAD_NAME_RE, isPolicyName } from '../policy/names.js';
import { INIT_DATA_BINDING_CLAIM, INIT_DATA_DIGEST_CLAIM, INIT_DATA_REGISTERS } from '../policy/evaluate.js';

export const INITDATA_VERSION = '0.1.0';
export const INITDATA_ALGORITHMS = ['sha256', 'sha384', 'sha512'] as const;
export type InitDataAlgorithm = (typeof INITDATA_ALGORITHMS)[number];
/** The `[data]` key Cocoon reads its selection from. */
export const COCOON_INITDATA_KEY = 'cocoon.json';
/** Kata Containers pod annotation carrying base64(gzip(init-data TOML)). */
export const KATA_INITDATA_ANNOTATION = 'io.katacontainers.config.hypervisor.cc_init_data';
/** Bound on the init-data document (the RCAR route caps `body` at the same size). */
export const MAX_INITDATA_BYTES = 64 * 1024;
const MAX_DATA_ENTRIES = 64;
const MAX_KEY_LENGTH = 256;

export interface InitDataDocument {
  version: string;
  algorithm: InitDataAlgorithm;
  data: Record<string, string>;
}

/** Cocoon's entry of the init-data `[data]` map. */
export interface CocoonInitData {
  policy: string;
  workload: string;
  /** KBS URL the launcher should use (informational for the KBS). */
  kbs?: string;
}

/** What the attest request's `init-data` says: the selection, and for TOML the digest to bind. */
export interface ParsedInitData {
  format: 'json' | 'toml';
  target: { policy: string; workload: string };
  toml?: { algorithm: InitDataAlgorithm; digest: Buffer };
}

export interface InitDataBinding {
  register: 'host_data' | 'mr_config_id';
  algorithm: InitDataAlgorithm;
  /** Lower-case hex digest of the document (before truncation/padding). */
  digest: string;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function isInitDataAlgorithm(v: unknown): v is InitDataAlgorithm {
  return typeof v === 'string' && (INITDATA_ALGORITHMS as readonly string[]).includes(v);
}

/** The init-data digest: `algorithm` over the document's exact UTF-8 bytes. */
export function initDataDigest(toml: string | Buffer, algorithm: InitDataAlgorithm): Buffer {
  return createHash(algorithm).update(typeof toml === 'string' ? Buffer.from(toml, 'utf8') : toml).digest();
}

/** The value a register of `bytes` bytes must hold for `digest`: truncated, or zero-padded at the end. */
export function registerValue(digest: Buffer, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  digest.copy(out, 0, 0, Math.min(bytes, digest.length));
  return out;
}

/** Parses and checks an init-data TOML document (bounded, strict) and computes its digest. */
export function parseInitDataToml(text: string): { doc: InitDataDocument; digest: Buffer } {
  if (Buffer.byteLength(text, 'utf8') > MAX_INITDATA_BYTES) throw new CocoonError('INPUT_TOO_LARGE', `init-data larger than ${MAX_INITDATA_BYTES} bytes`);
  let raw: Record<string, unknown>;
  try {
    raw = parse(text, { maxDepth: 8, unsafeKeyBehaviour: 'throw' }) as Record<string, unknown>;
  } catch (err) {
    throw new CocoonError('INPUT_MALFORMED', `init-data is not TOML: ${(err as Error).message.split('\n')[0]?.slice(0, 200) ?? ''}`);
  }
  for (const k of Object.keys(raw)) {
    if (k !== 'version' && k !== 'algorithm' && k !== 'data') throw new CocoonError('INPUT_MALFORMED', `init-data: unknown top-level key "${k.slice(0, 64)}" (version, algorithm, data)`);
  }
  if (raw.version !== INITDATA_VERSION) throw new CocoonError('INPUT_MALFORMED', `init-data version must be "${INITDATA_VERSION}"`);
  if (!isInitDataAlgorithm(raw.algorithm)) throw new CocoonError('INPUT_MALFORMED', `init-data algorithm must be one of ${INITDATA_ALGORITHMS.join(', ')}`);
  const data = raw.data ?? {};
  if (!isRecord(data)) throw new CocoonError('INPUT_MALFORMED', 'init-data data must be a table');
  const entries = Object.entries(data);
  if (entries.length > MAX_DATA_ENTRIES) throw new CocoonError('INPUT_MALFORMED', `init-data data has more than ${MAX_DATA_ENTRIES} entries`);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) {
    if (k.length === 0 || k.length > MAX_KEY_LENGTH) throw new CocoonError('INPUT_MALFORMED', 'init-data data keys must be 1–256 characters');
    if (typeof v !== 'string') throw new CocoonError('INPUT_MALFORMED', `init-data data "${k.slice(0, 64)}" must be a string`);
    out[k] = v;
  }
  const doc: InitDataDocument = { version: INITDATA_VERSION, algorithm: raw.algorithm, data: out };
  return { doc, digest: initDataDigest(text, doc.algorithm) };
}

/** Cocoon's selection from a parsed JSON value (the `cocoon.json` entry, or the legacy JSON init-data body). */
function selection(v: unknown, where: string, allowKbs: boolean): CocoonInitData {
  if (!isRecord(v)) throw new CocoonError('INPUT_MALFORMED', `${where} must be a JSON object`);
  for (const k of Object.keys(v)) {
    if (k !== 'policy' && k !== 'workload' && !(allowKbs && k === 'kbs')) throw new CocoonError('INPUT_MALFORMED', `${where}: unknown member "${k.slice(0, 64)}"`);
  }
  const { policy, workload, kbs } = v;
  if (typeof policy !== 'string' || !isPolicyName(policy)) throw new CocoonError('INPUT_MALFORMED', `${where} policy must be "org/app"`);
  if (typeof workload !== 'string' || !WORKLOAD_NAME_RE.test(workload)) throw new CocoonError('INPUT_MALFORMED', `${where} workload name invalid`);
  if (kbs !== undefined && (typeof kbs !== 'string' || kbs.length > 2048 || !/^https?:\/\//.test(kbs))) throw new CocoonError('INPUT_MALFORMED', `${where} kbs must be an http(s) URL`);
  return { policy, workload, ...(kbs !== undefined ? { kbs } : {}) };
}

/** The `cocoon.json` entry of an init-data document. */
export function cocoonEntryOf(doc: InitDataDocument): CocoonInitData {
  const entry = doc.data[COCOON_INITDATA_KEY];
  if (entry === undefined) throw new CocoonError('INPUT_MALFORMED', `init-data has no [data] "${COCOON_INITDATA_KEY}" entry naming the policy and workload`);
  let v: unknown;
  try {
    v = JSON.parse(entry);
  } catch {
    throw new CocoonError('INPUT_MALFORMED', `init-data "${COCOON_INITDATA_KEY}" is not JSON`);
  }
  return selection(v, `init-data "${COCOON_INITDATA_KEY}"`, true);
}

/**
 * The attest request's `init-data`: `{format: "json", body: "{policy, workload}"}` (Cocoon's
 * unbound selection) or `{format: "toml", body: <CoCo init-data document>}`.
 */
export function parseInitData(initData: { format: string; body: string } | undefined): ParsedInitData {
  if (!initData) throw new CocoonError('POLICY_DENIED', 'init-data {policy, workload} is required to select a policy');
  if (initData.format === 'toml') {
    const { doc, digest } = parseInitDataToml(initData.body);
    const { policy, workload } = cocoonEntryOf(doc);
    return { format: 'toml', target: { policy, workload }, toml: { algorithm: doc.algorithm, digest } };
  }
  if (initData.format !== 'json') throw new CocoonError('INPUT_MALFORMED', `init-data format ${initData.format.slice(0, 16)} is not supported (json, toml)`);
  let v: unknown;
  try {
    v = JSON.parse(initData.body);
  } catch {
    throw new CocoonError('INPUT_MALFORMED', 'init-data body is not JSON');
  }
  const { policy, workload } = selection(v, 'init-data', false);
  return { format: 'json', target: { policy, workload } };
}

/**
 * Checks TOML init-data against the verified evidence. SNP (`host_data`) and TDX
 * (`mr_config_id`) evidence must carry the digest (else INIT_DATA_MISMATCH, whatever the
 * policy says, as CoCo's verifiers do); then the claims `init_data_binding` (the register) and
 * `init_data_digest` (`<algorithm>:<hex>`) record the binding for the appraisal (accept rules
 * with `initData: bound`) and for every later re-appraisal. Other TEEs have no such register
 * here: the init-data stays unbound. Returns the binding, or undefined.
 */
export function bindInitData(parsed: ParsedInitData, tee: TeeKind, claims: Claims): InitDataBinding | undefined {
  delete claims[INIT_DATA_BINDING_CLAIM];
  delete claims[INIT_DATA_DIGEST_CLAIM];
  const reg = INIT_DATA_REGISTERS[tee];
  if (!parsed.toml || !reg) return undefined;
  const got = claims[reg.claim];
  const want = registerValue(parsed.toml.digest, reg.bytes).toString('hex');
  if (typeof got !== 'string' || got.toLowerCase() !== want) {
    throw new CocoonError('INIT_DATA_MISMATCH', `the evidence's ${reg.claim} (${typeof got === 'string' ? `${got.slice(0, 16)}…` : 'absent'}) is not the ${parsed.toml.algorithm} digest of the init-data sent (${want.slice(0, 16)}…)`);
  }
  const binding: InitDataBinding = { register: reg.claim, algorithm: parsed.toml.algorithm, digest: parsed.toml.digest.toString('hex') };
  claims[INIT_DATA_BINDING_CLAIM] = binding.register;
  claims[INIT_DATA_DIGEST_CLAIM] = `${binding.algorithm}:${binding.digest}`;
  return binding;
}

export interface RenderedInitData {
  toml: string;
  algorithm: InitDataAlgorithm;
  /** Hex digest of `toml`. */
  digest: string;
  /** SNP HOST_DATA (32 bytes, hex). */
  hostData: string;
  /** TDX MRCONFIGID (48 bytes, hex). */
  mrConfigId: string;
  /** Value of the Kata annotation io.katacontainers.config.hypervisor.cc_init_data. */
  annotation: string;
}

/** The digests and the Kata annotation value of an init-data document (exact text). */
export function describeInitData(toml: string): RenderedInitData {
  const { doc, digest } = parseInitDataToml(toml);
  return {
    toml,
    algorithm: doc.algorithm,
    digest: digest.toString('hex'),
    hostData: registerValue(digest, 32).toString('hex'),
    mrConfigId: registerValue(digest, 48).toString('hex'),
    annotation: kataAnnotationValue(toml),
  };
}

/** base64(gzip(toml)), as the Kata runtime expects (it gunzips and hashes the TOML text). */
export function kataAnnotationValue(toml: string): string {
  return gzipSync(Buffer.from(toml, 'utf8'), { level: 9 }).toString('base64');
}

/** The TOML text inside a Kata cc_init_data annotation value (bounded). */
export function decodeKataAnnotation(value: string): string {
  if (value.length > MAX_INITDATA_BYTES * 2) throw new CocoonError('INPUT_TOO_LARGE', `${KATA_INITDATA_ANNOTATION} larger than ${MAX_INITDATA_BYTES * 2} characters`);
  try {
    return gunzipSync(Buffer.from(value, 'base64'), { maxOutputLength: MAX_INITDATA_BYTES }).toString('utf8');
  } catch (err) {
    throw new CocoonError('INPUT_MALFORMED', `${KATA_INITDATA_ANNOTATION} is not base64 gzip (or larger than ${MAX_INITDATA_BYTES} bytes): ${(err as Error).message.slice(0, 120)}`);
  }
}

/**
 * Cocoon's init-data document for a policy/workload: `cocoon.json` plus any further `data`
 * entries (e.g. `policy.rego` for the Kata agent). Deterministic for the same input.
 */
export function renderInitData(o: { policy: string; workload: string; kbsUrl?: string; algorithm?: InitDataAlgorithm; data?: Record<string, string> }): RenderedInitData {
  const algorithm = o.algorithm ?? 'sha256';
  if (!isInitDataAlgorithm(algorithm)) throw new CocoonError('BAD_USAGE', `algorithm must be one of ${INITDATA_ALGORITHMS.join(', ')}`);
  const entry = selection({ policy: o.policy, workload: o.workload, ...(o.kbsUrl !== undefined ? { kbs: o.kbsUrl } : {}) }, 'init-data', true);
  const data: Record<string, string> = { ...(o.data ?? {}), [COCOON_INITDATA_KEY]: JSON.stringify(entry) };
  const sorted = Object.fromEntries(Object.keys(data).sort().map((k) => [k, data[k] as string]));
  const toml = stringify({ version: INITDATA_VERSION, algorithm, data: sorted });
  const text = toml.endsWith('\n') ? toml : `${toml}\n`;
  return describeInitData(text);
}
