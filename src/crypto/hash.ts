import { createHash, timingSafeEqual } from 'node:crypto';

export type HashAlg = 'sha256' | 'sha384' | 'sha512';

export function digest(alg: HashAlg, data: string | Uint8Array): Buffer {
  return createHash(alg).update(data).digest();
}

export const sha256Hex = (data: string | Uint8Array): string => digest('sha256', data).toString('hex');
export const sha384Hex = (data: string | Uint8Array): string => digest('sha384', data).toString('hex');

/** OCI digest string (`sha256:<hex>`). */
export const ociDigest = (data: string | Uint8Array): string => `sha256:${sha256Hex(data)}`;

/** Constant-time equality of two byte strings (false on length mismatch). */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
