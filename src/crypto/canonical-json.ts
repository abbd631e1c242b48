import { CocoonError } from '../errors.js';

/**
 * RFC 8785 (JCS) canonical JSON for the values Cocoon hashes: objects with keys sorted by
 * UTF-16 code units, no whitespace, numbers in ECMAScript form. Used for report_data binding
 * and the workload measurement, so it must be byte-stable across versions.
 */
export function canonicalJson(value: unknown): string {
  return serialize(value, 0);
}

function serialize(value: unknown, depth: number): string {
  if (depth > 64) throw new CocoonError('INPUT_MALFORMED', 'canonical JSON: nesting too deep');
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new CocoonError('INPUT_MALFORMED', 'canonical JSON: non-finite number');
      return JSON.stringify(value);
    case 'string':
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map((v) => serialize(v, depth + 1)).join(',')}]`;
      const entries = Object.entries(value as Record<string, unknown>)
        .filter(([, v]) => v !== undefined)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${serialize(v, depth + 1)}`).join(',')}}`;
    }
    default:
      throw new CocoonError('INPUT_MALFORMED', `canonical JSON: unsupported type ${typeof value}`);
  }
}
