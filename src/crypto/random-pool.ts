import { randomFillSync } from 'node:crypto';

/**
 * Random bytes for the KBS's hot path (JWE content keys and IVs, challenge ids, event ids),
 * drawn from a 4 KiB buffer that one call to OpenSSL's DRBG refills. Under load each
 * `randomBytes` call costs several microseconds, and an RCAR round trip made four of them;
 * node:crypto's own `randomUUID` pools the same way. Bytes handed out are wiped from the pool.
 */
const POOL_BYTES = 4096;
/** Larger requests go to the DRBG directly. */
const MAX_POOLED = 256;
const pool = Buffer.alloc(POOL_BYTES);
let offset = POOL_BYTES;

export function pooledRandomBytes(n: number): Buffer {
  return pooledRandomFill(Buffer.alloc(n), 0, n);
}

/** Fills `target[at, at + n)` with random bytes from the pool; returns `target`. */
export function pooledRandomFill(target: Buffer, at: number, n: number): Buffer {
  if (n > MAX_POOLED) return randomFillSync(target, at, n);
  if (offset + n > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  pool.copy(target, at, offset, offset + n);
  pool.fill(0, offset, offset + n);
  offset += n;
  return target;
}

/**
 * A UUIDv7 (RFC 9562 §5.7): 48-bit Unix milliseconds, then 74 random bits. Rows keyed by it
 * are appended at the end of their index instead of at a random page, so a group commit
 * writes one index page rather than one per row.
 */
export function uuidV7(nowMs: number): string {
  const b = pooledRandomBytes(16);
  b.writeUIntBE(nowMs, 0, 6);
  b[6] = 0x70 | ((b[6] as number) & 0x0f);
  b[8] = 0x80 | ((b[8] as number) & 0x3f);
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
