import type { JWK } from 'jose';
import { CocoonError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import { readFileBounded } from '../util/read-bounded.js';

/** A JWK file is far smaller than this (an RSA-8192 private JWK is ≈ 6 KiB). */
export const MAX_JWK_FILE = 16 * 1024;

/**
 * Reads a JWK file: at most 16 KiB, one JSON object (INPUT_MALFORMED otherwise); a private key
 * file (`ownerOnly`) must not be accessible by group or others. What the key must be is the
 * caller's check.
 */
export async function readJwkFile(file: string, what: string, options: { ownerOnly?: boolean; unreadable?: ErrorCode } = {}): Promise<JWK> {
  const text = (await readFileBounded(file, { max: MAX_JWK_FILE, what, ...options })).toString('utf8');
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as JWK;
  } catch {
    // reported below
  }
  throw new CocoonError('INPUT_MALFORMED', `${what} ${file} is not a JWK`);
}
