import { CocoonError, type ErrorCode } from '../errors.js';

/** Hard cap on any single evidence / collateral blob handed to a parser. */
export const MAX_EVIDENCE_BYTES = 1 << 20;

export function fail(code: ErrorCode, message: string, details?: Record<string, unknown>): never {
  throw new CocoonError(code, message, details ? { details } : undefined);
}

export function need(cond: unknown, code: ErrorCode, message: string): asserts cond {
  if (!cond) fail(code, message);
}

export const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

const HEX_RE = /^(?:[0-9a-fA-F]{2})*$/;
const B64_RE = /^[A-Za-z0-9+/_-]*={0,2}$/;

/** Strict hex decoding (even length, hex digits only). */
export function fromHex(s: string, what = 'hex string', code: ErrorCode = 'EVIDENCE_MALFORMED'): Buffer {
  const t = s.trim();
  if (t.length > 2 * MAX_EVIDENCE_BYTES) fail('INPUT_TOO_LARGE', `${what} too large`);
  if (!HEX_RE.test(t)) fail(code, `${what} is not valid hex`);
  return Buffer.from(t, 'hex');
}

/** Strict base64 / base64url decoding (whitespace ignored). */
export function fromBase64(s: string, what = 'base64 string', code: ErrorCode = 'EVIDENCE_MALFORMED'): Buffer {
  const t = s.replace(/\s+/g, '');
  if (t.length > 2 * MAX_EVIDENCE_BYTES) fail('INPUT_TOO_LARGE', `${what} too large`);
  if (!B64_RE.test(t) || t.length % 4 === 1) fail(code, `${what} is not valid base64`);
  const url = t.includes('-') || t.includes('_');
  return Buffer.from(t, url ? 'base64url' : 'base64');
}

/** Bounded little/big-endian reader; every overrun is an EVIDENCE_MALFORMED CocoonError. */
export class Reader {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    private readonly what: string,
    private readonly code: ErrorCode = 'EVIDENCE_MALFORMED',
  ) {}
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  private ensure(n: number): void {
    if (n < 0 || this.pos + n > this.buf.length) fail(this.code, `${this.what}: truncated at offset ${this.pos} (need ${n} bytes)`);
  }
  take(n: number): Buffer {
    this.ensure(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  u8(): number {
    this.ensure(1);
    return this.buf[this.pos++]!;
  }
  u16le(): number {
    this.ensure(2);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }
  u32le(): number {
    this.ensure(4);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  u16be(): number {
    this.ensure(2);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32be(): number {
    this.ensure(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64be(): bigint {
    this.ensure(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  /** TPM2B: u16 big-endian size then bytes, with an explicit cap. */
  tpm2b(max: number): Buffer {
    const n = this.u16be();
    if (n > max) fail(this.code, `${this.what}: size field ${n} exceeds ${max}`);
    return this.take(n);
  }
}
