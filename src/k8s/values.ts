/**
 * Strict reading of user-supplied values (Helm-style `-f values.yaml`): deep merge over
 * defaults (maps merge, lists and scalars replace — Helm's rule), unknown keys and wrong
 * types are BAD_USAGE naming the dotted path.
 */
import { parseDocument } from 'yaml';
import { CocoonError } from '../errors.js';
import { isRecord } from './manifest.js';

export function deepMerge<T>(base: T, override: unknown): T {
  if (!isRecord(base) || !isRecord(override)) return (override === undefined ? base : override) as T;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(override)) {
    if (v === null) continue; // Helm: null keeps the default here (deleting keys is not supported)
    out[k] = k in base ? deepMerge((base as Record<string, unknown>)[k], v) : v;
  }
  return out as T;
}

/** Throws BAD_USAGE for any key of `value` that `shape` does not have (recursively, maps only). */
export function rejectUnknownKeys(value: unknown, shape: unknown, path: string, freeForm: readonly string[]): void {
  if (!isRecord(value) || !isRecord(shape)) return;
  for (const k of Object.keys(value)) {
    const p = path ? `${path}.${k}` : k;
    if (!(k in shape)) throw new CocoonError('BAD_USAGE', `values: unknown key "${p}"`);
    if (freeForm.includes(p)) continue;
    rejectUnknownKeys(value[k], shape[k], p, freeForm);
  }
}

export function expectType(value: unknown, type: 'string' | 'number' | 'boolean' | 'object' | 'array', path: string): void {
  const ok = type === 'array' ? Array.isArray(value) : type === 'object' ? isRecord(value) : typeof value === type;
  if (!ok) throw new CocoonError('BAD_USAGE', `values: ${path} must be a${type === 'object' || type === 'array' ? 'n' : ''} ${type === 'object' ? 'map' : type}`);
}

export function expectStringMap(value: unknown, path: string): Record<string, string> {
  expectType(value, 'object', path);
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (typeof v !== 'string') throw new CocoonError('BAD_USAGE', `values: ${path}.${k} must be a string`);
  }
  return value as Record<string, string>;
}

export const QUANTITY_RE = /^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/;
export const DNS_LABEL_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

const MAX_VALUES_BYTES = 1024 * 1024;

/**
 * One strict YAML document as plain data: at most `maxBytes` (else INPUT_TOO_LARGE), duplicate
 * keys and aliases refused; any YAML error is BAD_USAGE. Messages start with `source`.
 */
export function parseStrictYaml(text: string, source: string, maxBytes: number): unknown {
  if (Buffer.byteLength(text) > maxBytes) throw new CocoonError('INPUT_TOO_LARGE', `${source}: larger than ${maxBytes} bytes`);
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
  const first = doc.errors[0];
  if (first) throw new CocoonError('BAD_USAGE', `${source}: ${first.message.split('\n')[0] ?? 'YAML error'}`);
  try {
    return doc.toJS({ maxAliasCount: 0 }) as unknown;
  } catch (err) {
    throw new CocoonError('BAD_USAGE', `${source}: ${(err as Error).message}`, { cause: err });
  }
}

/** A values file: one YAML mapping (or empty), strict (duplicate keys are errors), at most 1 MiB. */
export function parseValuesYaml(text: string, source = 'values'): Record<string, unknown> {
  const value = parseStrictYaml(text, source, MAX_VALUES_BYTES);
  if (value === null || value === undefined) return {};
  if (!isRecord(value)) throw new CocoonError('BAD_USAGE', `${source}: expected a mapping of values`);
  return value;
}
