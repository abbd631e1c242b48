/** Decoding of evidence files: raw binary, hex, base64, or JSON. */
import { fail, fromBase64, fromHex, MAX_EVIDENCE_BYTES } from './bytes.js';

export type DecodedEvidence = { kind: 'bytes'; bytes: Buffer } | { kind: 'json'; json: unknown };

/** Raw binary stays binary; text that parses as JSON is JSON; else hex, else base64. */
export function decodeEvidence(data: Uint8Array | string): DecodedEvidence {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length > 4 * MAX_EVIDENCE_BYTES) fail('INPUT_TOO_LARGE', 'evidence larger than 4 MiB');
  // fast path: binary evidence has control bytes early on (quotes and reports start with small LE integers)
  for (let i = 0; i < Math.min(buf.length, 64); i++) {
    const c = buf[i]!;
    if (c < 0x09 || (c > 0x0d && c < 0x20) || c === 0x7f) return { kind: 'bytes', bytes: buf };
  }
  const text = buf.toString('utf8').trim();
  const printable = /^[\x20-\x7e\s]*$/.test(text);
  if (printable && text.length > 0) {
    if (text.startsWith('{') || text.startsWith('[')) {
      try {
        return { kind: 'json', json: JSON.parse(text) };
      } catch {
        fail('EVIDENCE_MALFORMED', 'evidence looks like JSON but does not parse');
      }
    }
    const compact = text.replace(/\s+/g, '');
    if (/^(?:0x)?[0-9a-fA-F]+$/.test(compact) && compact.length % 2 === 0) return { kind: 'bytes', bytes: fromHex(compact.replace(/^0x/, ''), 'evidence') };
    if (/^[A-Za-z0-9+/_=-]+$/.test(compact)) return { kind: 'bytes', bytes: fromBase64(compact, 'evidence') };
  }
  return { kind: 'bytes', bytes: buf };
}

/** For tees with binary evidence: a JSON string value or {quote|report|...} wrapper is unwrapped. */
export function evidenceBytes(d: DecodedEvidence): Buffer {
  if (d.kind === 'bytes') return d.bytes;
  const j = d.json;
  if (typeof j === 'object' && j !== null && !Array.isArray(j)) {
    for (const k of ['quote', 'report', 'attestation_report', 'evidence']) {
      const v = (j as Record<string, unknown>)[k];
      if (typeof v === 'string') {
        const inner = decodeEvidence(v);
        if (inner.kind === 'bytes') return inner.bytes;
      }
      if (Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0 && x <= 255)) return Buffer.from(v as number[]);
    }
  }
  return fail('EVIDENCE_MALFORMED', 'expected binary evidence (raw, hex or base64)');
}
