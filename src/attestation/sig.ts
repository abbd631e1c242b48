/** Raw-signature helpers on node:crypto (never throw: a malformed signature is just invalid). */
import { createHash, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { fail } from './bytes.js';
import { publicKeyFromSpki } from './pki.js';

const P256_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex');

/** P-256 public key from a raw 64-byte x‖y point. */
export function p256FromRaw(xy: Buffer): KeyObject {
  if (xy.length !== 64) fail('EVIDENCE_MALFORMED', 'P-256 point must be 64 bytes');
  return publicKeyFromSpki(Buffer.concat([P256_SPKI_PREFIX, Buffer.from([4]), xy]));
}

/** ECDSA over `data` with a fixed-size big-endian r‖s signature. */
export function verifyEcdsaRaw(hash: 'sha256' | 'sha384', key: KeyObject, data: Uint8Array, rs: Uint8Array): boolean {
  try {
    return cryptoVerify(hash, data, { key, dsaEncoding: 'ieee-p1363' }, rs);
  } catch {
    return false;
  }
}

const memo = new Map<string, boolean>();

/** As verifyEcdsaRaw, memoized by the hash of all inputs (for collateral reused across quotes). */
export function verifyEcdsaRawMemo(hash: 'sha256' | 'sha384', key: KeyObject, keyId: string, data: Uint8Array, rs: Uint8Array): boolean {
  const k = createHash('sha256').update(keyId).update(rs).update(data).digest('hex');
  const hit = memo.get(k);
  if (hit !== undefined) return hit;
  const ok = verifyEcdsaRaw(hash, key, data, rs);
  if (memo.size > 4096) memo.clear();
  memo.set(k, ok);
  return ok;
}

export function clearSigMemo(): void {
  memo.clear();
}
