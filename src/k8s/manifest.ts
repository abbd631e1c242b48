/**
 * Kubernetes manifests as plain data: bounded, strict multi-document YAML in, deterministic
 * multi-document YAML out. Nothing here talks to a cluster.
 */
import { parseAllDocuments, stringify } from 'yaml';
import { CocoonError } from '../errors.js';

/** A Kubernetes object as parsed from YAML or built by a renderer. */
export type K8sObject = Record<string, unknown> & { apiVersion: string; kind: string };

export interface ParseLimits {
  /** Maximum input size in bytes (default 4 MiB). */
  maxBytes?: number;
  /** Maximum number of objects (default 500). */
  maxObjects?: number;
}

const DEFAULT_MAX_BYTES = 4 * 1024 * 1024;
const DEFAULT_MAX_OBJECTS = 500;

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Parses multi-document YAML into Kubernetes objects. Empty documents are skipped, `kind: List`
 * is expanded, duplicate keys, YAML errors, non-mapping documents and objects without
 * apiVersion/kind are INPUT_MALFORMED with the document number; oversized input INPUT_TOO_LARGE.
 */
export function parseManifests(text: string, source = 'input', limits: ParseLimits = {}): K8sObject[] {
  const maxBytes = limits.maxBytes ?? DEFAULT_MAX_BYTES;
  const maxObjects = limits.maxObjects ?? DEFAULT_MAX_OBJECTS;
  if (Buffer.byteLength(text, 'utf8') > maxBytes) {
    throw new CocoonError('INPUT_TOO_LARGE', `${source}: larger than ${maxBytes} bytes`);
  }
  const docs = parseAllDocuments(text, { uniqueKeys: true, prettyErrors: true, strict: true, version: '1.2' });
  const list = Array.isArray(docs) ? docs : [];
  const out: K8sObject[] = [];
  list.forEach((doc, index) => {
    const where = `${source}: document ${index + 1}`;
    const first = doc.errors[0];
    if (first) throw new CocoonError('INPUT_MALFORMED', `${where}: ${first.message.split('\n')[0] ?? 'YAML error'}`);
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 50 });
    } catch (err) {
      throw new CocoonError('INPUT_MALFORMED', `${where}: ${(err as Error).message}`, { cause: err });
    }
    if (value === null || value === undefined) return;
    const items = isRecord(value) && value.kind === 'List' && Array.isArray(value.items) ? value.items : [value];
    for (const item of items) {
      out.push(checkObject(item, where));
      if (out.length > maxObjects) throw new CocoonError('INPUT_TOO_LARGE', `${source}: more than ${maxObjects} objects`);
    }
  });
  return out;
}

function checkObject(value: unknown, where: string): K8sObject {
  if (!isRecord(value)) throw new CocoonError('INPUT_MALFORMED', `${where}: expected a Kubernetes object (a mapping)`);
  if (typeof value.apiVersion !== 'string' || value.apiVersion === '') throw new CocoonError('INPUT_MALFORMED', `${where}: missing apiVersion`);
  if (typeof value.kind !== 'string' || value.kind === '') throw new CocoonError('INPUT_MALFORMED', `${where}: missing kind`);
  if (value.metadata !== undefined && !isRecord(value.metadata)) throw new CocoonError('INPUT_MALFORMED', `${where}: metadata must be a mapping`);
  return value as K8sObject;
}

/** `Kind/name` (with namespace when set) for messages. */
export function describe(obj: K8sObject): string {
  const meta = isRecord(obj.metadata) ? obj.metadata : {};
  const name = typeof meta.name === 'string' ? meta.name : typeof meta.generateName === 'string' ? `${meta.generateName}*` : '(unnamed)';
  return `${obj.kind}/${name}`;
}

export function objectName(obj: K8sObject): string {
  const meta = isRecord(obj.metadata) ? obj.metadata : {};
  return typeof meta.name === 'string' ? meta.name : '';
}

/** Deterministic multi-document YAML: objects in the given order, keys in insertion order. */
export function toYaml(objects: readonly unknown[]): string {
  return objects.map((o) => stringify(o, { lineWidth: 0, aliasDuplicateObjects: false })).join('---\n');
}

/** Deep copy of JSON-shaped data. */
export function clone<T>(value: T): T {
  return structuredClone(value);
}
