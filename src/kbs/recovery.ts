import { createHmac } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { CompactEncrypt, calculateJwkThumbprint, compactDecrypt, importJWK } from 'jose';
import type { JWK } from 'jose';
import { combineShares, splitSecret } from '../crypto/shamir.js';
import type { Share } from '../crypto/shamir.js';
import { CocoonError } from '../errors.js';
import { DATA_KEY_META } from './sealer.js';
import type { Sealer } from './sealer.js';
import type { Store } from './store/types.js';

export const RECOVERY_META = 'recovery';

/**
 * Owner recovery of the data key: m-of-n Shamir shares (src/crypto/shamir.ts), each encrypted
 * to one owner's P-256 public key (JWE ECDH-ES+A256KW / A256GCM) and kept in the store. When
 * the sealer is lost (TPM replaced, seal.key deleted), m owners decrypt their shares offline
 * and `cocoon recover apply` rebuilds the data key and re-seals it with a new sealer.
 */
export interface RecoveryRecord {
  v: 1;
  threshold: number;
  /** HMAC-SHA256(dataKey, "cocoon-recovery-check"), hex: recognizes the right key. */
  check: string;
  createdAt: number;
  shares: { kid: string; x: number; jwe: string }[];
}

export interface ShareFile {
  v: 1;
  kid: string;
  x: number;
  y: string;
}

const checkValue = (key: Uint8Array) => createHmac('sha256', key).update('cocoon-recovery-check').digest('hex');

export async function setupRecovery(store: Store, dataKey: Uint8Array, owners: readonly JWK[], threshold: number, now: number): Promise<RecoveryRecord> {
  const usable = owners.filter((o) => o.kty === 'EC' && o.crv === 'P-256');
  if (usable.length === 0) throw new CocoonError('BAD_USAGE', 'recovery needs owners with P-256 keys (Ed25519 keys cannot receive encrypted shares)');
  if (threshold < 1 || threshold > usable.length) throw new CocoonError('BAD_USAGE', `recovery threshold must be 1–${usable.length} (owners with P-256 keys)`);
  const shares = splitSecret(dataKey, usable.length, threshold);
  const record: RecoveryRecord = { v: 1, threshold, check: checkValue(dataKey), createdAt: now, shares: [] };
  for (const [i, owner] of usable.entries()) {
    const share = shares[i] as Share;
    const pub: JWK = { kty: 'EC', crv: 'P-256', x: owner.x, y: owner.y };
    const key = await importJWK({ ...pub, alg: 'ECDH-ES+A256KW' }, 'ECDH-ES+A256KW');
    const jwe = await new CompactEncrypt(Buffer.from(JSON.stringify({ x: share.x, y: share.y.toString('base64') }))).setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', cty: 'cocoon-recovery-share' }).encrypt(key);
    share.y.fill(0);
    record.shares.push({ kid: await calculateJwkThumbprint(pub, 'sha256'), x: share.x, jwe });
  }
  await store.putMeta(RECOVERY_META, JSON.stringify(record));
  return record;
}

export async function loadRecovery(store: Store): Promise<RecoveryRecord> {
  const text = await store.getMeta(RECOVERY_META);
  if (!text) throw new CocoonError('NOT_FOUND', 'this KBS has no recovery shares (start it with --recovery-threshold)');
  const r = JSON.parse(text) as RecoveryRecord;
  if (r.v !== 1 || !Array.isArray(r.shares)) throw new CocoonError('INPUT_MALFORMED', 'recovery record malformed');
  return r;
}

/** Reads an owner's private JWK file (0600) for share decryption. */
export async function readOwnerPrivateJwk(file: string): Promise<JWK> {
  const info = await stat(file).catch(() => {
    throw new CocoonError('BAD_USAGE', `cannot read owner key ${file}`);
  });
  if ((info.mode & 0o077) !== 0) throw new CocoonError('IO_ERROR', `owner key ${file} is accessible by other users; chmod 600 it`);
  if (info.size > 16 * 1024) throw new CocoonError('INPUT_TOO_LARGE', `owner key ${file} is too large`);
  const jwk = JSON.parse(await readFile(file, 'utf8')) as JWK;
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || typeof jwk.d !== 'string') throw new CocoonError('BAD_USAGE', 'recovery shares need a private P-256 owner key');
  return jwk;
}

/** Decrypts the share addressed to this owner. */
export async function decryptShare(record: RecoveryRecord, ownerPrivate: JWK): Promise<ShareFile> {
  if (ownerPrivate.kty !== 'EC' || ownerPrivate.crv !== 'P-256' || typeof ownerPrivate.d !== 'string') throw new CocoonError('FORBIDDEN', 'only private P-256 owner keys hold recovery shares');
  const pub: JWK = { kty: 'EC', crv: 'P-256', x: ownerPrivate.x, y: ownerPrivate.y };
  const kid = await calculateJwkThumbprint(pub, 'sha256');
  const entry = record.shares.find((s) => s.kid === kid);
  if (!entry) throw new CocoonError('FORBIDDEN', 'this owner key holds no recovery share');
  const key = await importJWK({ kty: 'EC', crv: 'P-256', x: ownerPrivate.x, y: ownerPrivate.y, d: ownerPrivate.d, alg: 'ECDH-ES+A256KW' } as JWK, 'ECDH-ES+A256KW');
  let plaintext: Uint8Array;
  try {
    ({ plaintext } = await compactDecrypt(entry.jwe, key, { keyManagementAlgorithms: ['ECDH-ES+A256KW'], contentEncryptionAlgorithms: ['A256GCM'] }));
  } catch {
    throw new CocoonError('AUTH_INVALID', 'the recovery share does not decrypt with this owner key');
  }
  const v = JSON.parse(Buffer.from(plaintext).toString('utf8')) as { x: number; y: string };
  if (v.x !== entry.x) throw new CocoonError('INPUT_MALFORMED', 'recovery share index mismatch');
  return { v: 1, kid, x: v.x, y: v.y };
}

export function parseShareFile(text: string, name: string): ShareFile {
  let v: ShareFile;
  try {
    v = JSON.parse(text) as ShareFile;
  } catch {
    throw new CocoonError('INPUT_MALFORMED', `${name} is not a share file`);
  }
  if (v.v !== 1 || typeof v.kid !== 'string' || !Number.isInteger(v.x) || typeof v.y !== 'string' || !/^[A-Za-z0-9+/=]{4,512}$/.test(v.y)) throw new CocoonError('INPUT_MALFORMED', `${name} is not a share file`);
  return v;
}

/** Combines ≥ threshold shares, checks the result against the record, re-seals it with `sealer`. */
export async function recoverDataKey(store: Store, shares: readonly ShareFile[], sealer: Sealer): Promise<{ threshold: number; used: number }> {
  const record = await loadRecovery(store);
  const distinct = new Map(shares.map((s) => [s.x, s]));
  if (distinct.size < record.threshold) throw new CocoonError('BAD_USAGE', `need ${record.threshold} distinct shares, got ${distinct.size}`);
  const key = combineShares([...distinct.values()].map((s) => ({ x: s.x, y: Buffer.from(s.y, 'base64') })));
  try {
    if (checkValue(key) !== record.check) throw new CocoonError('AUTH_INVALID', 'the shares do not combine to this KBS\'s data key');
    await store.putMeta(DATA_KEY_META, await sealer.seal(key));
    return { threshold: record.threshold, used: distinct.size };
  } finally {
    key.fill(0);
  }
}
