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
      // Plain loops: the audit chain hashes two of these per RCAR round trip.
      if (Array.isArray(value)) {
        let out = '[';
        for (let i = 0; i < value.length; i++) out += (i === 0 ? '' : ',') + serialize(value[i], depth + 1);
        return `${out}]`;
      }
      const obj = value as Record<string, unknown>;
      // The default sort compares UTF-16 code units, as RFC 8785 §3.2.3 orders keys.
      const keys = Object.keys(obj).sort();
      let out = '{';
      for (const k of keys) {
        const v = obj[k];
        if (v === undefined) continue;
        out += `${out.length === 1 ? '' : ','}${JSON.stringify(k)}:${serialize(v, depth + 1)}`;
      }
      return `${out}}`;
    }
    default:
      throw new CocoonError('INPUT_MALFORMED', `canonical JSON: unsupported type ${typeof value}`);
  }
}
