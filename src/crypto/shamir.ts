import { randomBytes } from 'node:crypto';
import { CocoonError } from '../errors.js';

/**
 * Shamir secret sharing over GF(2^8) (AES field, polynomial x^8+x^4+x^3+x+1), byte by byte.
 *
 * Written here rather than taken from npm: it is ~100 lines, the few maintained packages
 * either pull in their own RNG/encodings or were unmaintained, and the data key's recovery
 * path deserves code that is reviewed with the rest of the product and tested against the
 * field's properties (test/crypto/shamir.test.ts). Threshold m: any m shares recover the
 * secret; m−1 shares reveal nothing about it (information-theoretically).
 */

const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
(() => {
  let x = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = x;
    LOG[x] = i;
    // multiply by the generator 3: x*2 ^ x, reduced by 0x11b
    let x2 = x << 1;
    if (x2 & 0x100) x2 ^= 0x11b;
    x = x2 ^ x;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255] as number;
})();

export function gfMul(a: number, b: number): number {
  if (a === 0 || b === 0) return 0;
  return EXP[(LOG[a] as number) + (LOG[b] as number)] as number;
}

export function gfDiv(a: number, b: number): number {
  if (b === 0) throw new CocoonError('INTERNAL', 'GF(256) division by zero');
  if (a === 0) return 0;
  return EXP[(LOG[a] as number) + 255 - (LOG[b] as number)] as number;
}

export interface Share {
  /** Evaluation point 1–255. */
  x: number;
  y: Buffer;
}

export const MAX_SHARES = 255;
export const MAX_SECRET_BYTES = 4096;

/** Splits `secret` into `n` shares, any `threshold` of which recover it. */
export function splitSecret(secret: Uint8Array, n: number, threshold: number): Share[] {
  if (!Number.isInteger(n) || !Number.isInteger(threshold) || threshold < 1 || threshold > n || n > MAX_SHARES) {
    throw new CocoonError('BAD_USAGE', `need 1 ≤ threshold ≤ shares ≤ ${MAX_SHARES} (got ${threshold} of ${n})`);
  }
  if (secret.length === 0 || secret.length > MAX_SECRET_BYTES) throw new CocoonError('BAD_USAGE', `secret must be 1–${MAX_SECRET_BYTES} bytes`);
  const shares: Share[] = Array.from({ length: n }, (_, i) => ({ x: i + 1, y: Buffer.alloc(secret.length) }));
  const coeffs = Buffer.alloc(threshold);
  for (let b = 0; b < secret.length; b++) {
    coeffs[0] = secret[b] as number;
    randomBytes(threshold - 1).copy(coeffs, 1);
    for (const s of shares) {
      // Horner: a0 + x(a1 + x(a2 + …))
      let y = 0;
      for (let k = threshold - 1; k >= 0; k--) y = gfMul(y, s.x) ^ (coeffs[k] as number);
      s.y[b] = y;
    }
  }
  coeffs.fill(0);
  return shares;
}

/** Lagrange interpolation at 0. Needs at least the threshold number of distinct shares (fewer give garbage, not an error). */
export function combineShares(shares: readonly Share[]): Buffer {
  if (shares.length === 0) throw new CocoonError('BAD_USAGE', 'no shares');
  const len = shares[0]?.y.length ?? 0;
  const seen = new Set<number>();
  for (const s of shares) {
    if (!Number.isInteger(s.x) || s.x < 1 || s.x > 255) throw new CocoonError('INPUT_MALFORMED', `share x must be 1–255, got ${s.x}`);
    if (seen.has(s.x)) throw new CocoonError('INPUT_MALFORMED', `duplicate share x=${s.x}`);
    if (s.y.length !== len || len === 0 || len > MAX_SECRET_BYTES) throw new CocoonError('INPUT_MALFORMED', 'shares differ in length');
    seen.add(s.x);
  }
  // basis_i(0) = Π_{j≠i} x_j / (x_j − x_i); in GF(2^8) subtraction is xor
  const basis = shares.map((si, i) => {
    let num = 1;
    let den = 1;
    shares.forEach((sj, j) => {
      if (i === j) return;
      num = gfMul(num, sj.x);
      den = gfMul(den, sj.x ^ si.x);
    });
    return gfDiv(num, den);
  });
  const out = Buffer.alloc(len);
  for (let b = 0; b < len; b++) {
    let v = 0;
    shares.forEach((s, i) => {
      v ^= gfMul(s.y[b] as number, basis[i] as number);
    });
    out[b] = v;
  }
  return out;
}
