import type { ErrorCode } from '../errors.js';
import { fail } from './bytes.js';

/** One DER TLV. `raw` is the whole encoding, `value` the contents. */
export interface Tlv {
  tag: number;
  value: Buffer;
  raw: Buffer;
}

const MAX_DEPTH = 32;

/** Reads one TLV at `pos`; definite lengths only, at most 4 length bytes. */
export function readTlv(buf: Buffer, pos: number, code: ErrorCode = 'EVIDENCE_MALFORMED'): { tlv: Tlv; next: number } {
  if (pos + 2 > buf.length) fail(code, 'DER: truncated header');
  const tag = buf[pos]!;
  if ((tag & 0x1f) === 0x1f) fail(code, 'DER: multi-byte tags unsupported');
  let len = buf[pos + 1]!;
  let p = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) fail(code, 'DER: unsupported length encoding');
    if (p + n > buf.length) fail(code, 'DER: truncated length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[p + i]!;
    p += n;
  }
  if (p + len > buf.length) fail(code, 'DER: value exceeds buffer');
  return { tlv: { tag, value: buf.subarray(p, p + len), raw: buf.subarray(pos, p + len) }, next: p + len };
}

/** Parses exactly one TLV covering all of `buf` (trailing data rejected). */
export function parseDer(buf: Buffer, code: ErrorCode = 'EVIDENCE_MALFORMED'): Tlv {
  const { tlv, next } = readTlv(buf, 0, code);
  if (next !== buf.length) fail(code, 'DER: trailing data');
  return tlv;
}

/** Children of a constructed value. */
export function children(t: Tlv, code: ErrorCode = 'EVIDENCE_MALFORMED'): Tlv[] {
  const out: Tlv[] = [];
  let p = 0;
  while (p < t.value.length) {
    const { tlv, next } = readTlv(t.value, p, code);
    out.push(tlv);
    p = next;
    if (out.length > 100000) fail(code, 'DER: too many elements');
  }
  return out;
}

export function expectTag(t: Tlv | undefined, tag: number, what: string, code: ErrorCode = 'EVIDENCE_MALFORMED'): Tlv {
  if (!t || t.tag !== tag) fail(code, `DER: ${what}: expected tag 0x${tag.toString(16)}, got ${t ? '0x' + t.tag.toString(16) : 'nothing'}`);
  return t;
}

export function oidToString(b: Buffer, code: ErrorCode = 'EVIDENCE_MALFORMED'): string {
  if (b.length === 0 || b.length > 64) fail(code, 'DER: bad OID length');
  const arcs: number[] = [];
  let v = 0;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    v = v * 128 + (c & 0x7f);
    if (v > Number.MAX_SAFE_INTEGER / 256) fail(code, 'DER: OID arc too large');
    if (!(c & 0x80)) {
      arcs.push(v);
      v = 0;
    }
  }
  if (arcs.length === 0) fail(code, 'DER: truncated OID');
  const first = arcs[0]!;
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80];
  return [...head, ...arcs.slice(1)].join('.');
}

/** Unsigned big-endian integer value of an INTEGER / raw bytes (small values only). */
export function uintValue(b: Buffer, code: ErrorCode = 'EVIDENCE_MALFORMED'): number {
  if (b.length > 7) fail(code, 'DER: integer too large');
  let v = 0;
  for (const c of b) v = v * 256 + c;
  return v;
}

/** UTCTime (0x17) / GeneralizedTime (0x18) → Date. */
export function parseTime(t: Tlv, code: ErrorCode = 'EVIDENCE_MALFORMED'): Date {
  const s = t.value.toString('latin1');
  let m: RegExpMatchArray | null;
  if (t.tag === 0x17) {
    m = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s);
    if (!m) fail(code, 'DER: bad UTCTime');
    const yy = Number(m[1]);
    return new Date(Date.UTC(yy >= 50 ? 1900 + yy : 2000 + yy, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
  }
  if (t.tag === 0x18) {
    m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s);
    if (!m) fail(code, 'DER: bad GeneralizedTime');
    return new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
  }
  return fail(code, 'DER: expected a time');
}

/** Depth-limited walk: calls `visit` for every (OID, value) pair found as SEQUENCE { OID, value }. */
export function walkOidPairs(t: Tlv, visit: (oid: string, value: Tlv) => void, code: ErrorCode = 'EVIDENCE_MALFORMED', depth = 0): void {
  if (depth > MAX_DEPTH) fail(code, 'DER: nesting too deep');
  if (t.tag !== 0x30 && t.tag !== 0x31) return;
  const items = children(t, code);
  if (items.length === 2 && items[0]!.tag === 0x06) {
    const oid = oidToString(items[0]!.value, code);
    const v = items[1]!;
    if (v.tag === 0x30) walkOidPairs(v, visit, code, depth + 1);
    else visit(oid, v);
    return;
  }
  for (const c of items) walkOidPairs(c, visit, code, depth + 1);
}

// ---- minimal encoder (used for CRL/cert fixtures in tests and small re-encodings) ----

function encLen(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  while (n > 0) {
    bytes.unshift(n & 0xff);
    n = Math.floor(n / 256);
  }
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function encTlv(tag: number, value: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([tag]), encLen(value.length), value]);
}
