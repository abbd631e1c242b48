import { createHmac } from 'node:crypto';
import { chmod, open, unlink } from 'node:fs/promises';
import { CompactEncrypt, calculateJwkThumbprint, compactDecrypt, exportJWK, generateKeyPair, importJWK } from 'jose';
import type { JWK } from 'jose';
import { combineShares, splitSecret } from '../crypto/shamir.js';
import { publicPart } from './owner-key.js';
import type { Share } from '../crypto/shamir.js';
import { CocoonError } from '../errors.js';
import { readJwkFile } from '../crypto/jwk-file.js';
import { DATA_KEY_META } from './sealer.js';
import type { Sealer } from './sealer.js';
import type { Store } from './store/types.js';

export const RECOVERY_META = 'recovery';

/**
 * Owner recovery of the data key: m-of-n Shamir shares (src/crypto/shamir.ts), each encrypted
 * (JWE ECDH-ES+A256KW / A256GCM) to one admin owner's P-256 public key or, when the owner has
 * one, to its *recovery recipient* (`serve --recovery-recipient OWNER_KID=FILE`: a P-256,
 * P-384 or X25519 public key — how owners with Ed25519 signing keys get a share), and kept in
 * the store. When the sealer is lost (TPM replaced, seal.key deleted), m owners decrypt their
 * shares offline and `cocoon recover apply` rebuilds the data key and re-seals it.
 */
export interface RecoveryRecord {
  v: 1;
  threshold: number;
  /** HMAC-SHA256(dataKey, "cocoon-recovery-check"), hex: recognizes the right key. */
  check: string;
  createdAt: number;
  /**
   * kid: the owner's. recipient: RFC 7638 thumbprint of the recovery recipient key the share is
   * encrypted to; absent when it is encrypted to the owner's own (P-256) key.
   */
  shares: { kid: string; x: number; jwe: string; recipient?: string }[];
}

const KEY_ALG = 'ECDH-ES+A256KW';
const KID_RE = /^[A-Za-z0-9_-]{43}$/;

/** What a recovery recipient may be: ECDH-ES capable public keys. */
function recipientKind(jwk: JWK): string | undefined {
  if (jwk.kty === 'EC' && (jwk.crv === 'P-256' || jwk.crv === 'P-384') && typeof jwk.x === 'string' && typeof jwk.y === 'string') return jwk.crv;
  if (jwk.kty === 'OKP' && jwk.crv === 'X25519' && typeof jwk.x === 'string') return 'X25519';
  return undefined;
}

/** Checks a recovery recipient's public JWK (EC P-256/P-384 or OKP X25519) and returns its public members only. */
export function recoveryRecipientJwk(jwk: JWK, name = 'recovery recipient'): JWK {
  if (typeof jwk !== 'object' || jwk === null || !recipientKind(jwk)) {
    throw new CocoonError('BAD_USAGE', `${name} must be a public JWK of kty EC (crv P-256 or P-384) or OKP (crv X25519)${jwk?.kty === 'OKP' && jwk.crv === 'Ed25519' ? ' — Ed25519 is a signing key; create an X25519 key with `cocoon recover keygen`' : ''}`);
  }
  if (jwk.d !== undefined) throw new CocoonError('BAD_USAGE', `${name} is a private key: pass its public JWK (the private one stays with the owner)`);
  return publicPart(jwk);
}

/**
 * `serve --recovery-recipient OWNER_KID=FILE` (repeatable) → owner kid → recipient public JWK.
 * Malformed specs, unreadable or unsuitable files and an owner named twice are BAD_USAGE.
 */
export async function readRecoveryRecipients(specs: readonly string[]): Promise<Record<string, JWK>> {
  const out: Record<string, JWK> = {};
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const [kid, file] = eq < 0 ? ['', ''] : [spec.slice(0, eq), spec.slice(eq + 1)];
    if (!KID_RE.test(kid) || file === '') throw new CocoonError('BAD_USAGE', `--recovery-recipient must be OWNER_KID=FILE (the owner's 43-character key id, as in its .pub.jwk), got "${spec.slice(0, 200)}"`);
    if (out[kid]) throw new CocoonError('BAD_USAGE', `--recovery-recipient names owner ${kid} twice`);
    const jwk = await readJwkFile(file, '--recovery-recipient', { unreadable: 'BAD_USAGE' });
    out[kid] = recoveryRecipientJwk(jwk, `--recovery-recipient ${file}`);
  }
  return out;
}

export interface RecoveryPlan {
  /** Owners that get a share, in the given order; `key` is the public JWK the share is encrypted to. */
  holders: { kid: string; key: JWK; recipient?: string }[];
  /** Owners that get none, with the reason. */
  skipped: { kid: string; reason: string }[];
}

/** Who gets a share: owners with a recovery recipient (to it), else owners with P-256 keys; others are skipped. */
export async function planRecovery(owners: readonly JWK[], recipients: Readonly<Record<string, JWK>> = {}): Promise<RecoveryPlan> {
  const plan: RecoveryPlan = { holders: [], skipped: [] };
  const kids = new Set<string>();
  for (const owner of owners) {
    const kid = await calculateJwkThumbprint(publicPart(owner), 'sha256');
    kids.add(kid);
    const r = recipients[kid];
    if (r) {
      const key = recoveryRecipientJwk(r, `recovery recipient of ${kid}`);
      plan.holders.push({ kid, key, recipient: await calculateJwkThumbprint(key, 'sha256') });
    } else if (owner.kty === 'EC' && owner.crv === 'P-256') {
      plan.holders.push({ kid, key: publicPart(owner) });
    } else {
      plan.skipped.push({ kid, reason: `${String(owner.kty)} ${String(owner.crv)} key and no recovery recipient (only P-256 owner keys receive shares directly; give it one with --recovery-recipient ${kid}=FILE)` });
    }
  }
  const stray = Object.keys(recipients).filter((k) => !kids.has(k));
  if (stray.length > 0) throw new CocoonError('BAD_USAGE', `recovery recipient for ${stray.join(', ')}: no such admin owner (register its public key with serve --owner)`);
  return plan;
}

export interface ShareFile {
  v: 1;
  kid: string;
  x: number;
  y: string;
}

const checkValue = (key: Uint8Array) => createHmac('sha256', key).update('cocoon-recovery-check').digest('hex');

export async function setupRecovery(store: Store, dataKey: Uint8Array, owners: readonly JWK[], threshold: number, now: number, recipients: Readonly<Record<string, JWK>> = {}): Promise<RecoveryRecord> {
  const { holders, skipped } = await planRecovery(owners, recipients);
  if (holders.length === 0) {
    throw new CocoonError('BAD_USAGE', `recovery needs admin owners with P-256 keys or a recovery recipient (Ed25519 keys cannot receive encrypted shares); none of ${owners.length}: ${skipped.map((o) => `${o.kid}: ${o.reason}`).join('; ') || 'no admin owners'}`);
  }
  if (threshold < 1 || threshold > holders.length) {
    throw new CocoonError('BAD_USAGE', `recovery threshold must be 1–${holders.length} (admin owners with P-256 keys or a recovery recipient)${skipped.length > 0 ? `; without a share: ${skipped.map((o) => o.kid).join(', ')}` : ''}`);
  }
  const shares = splitSecret(dataKey, holders.length, threshold);
  const record: RecoveryRecord = { v: 1, threshold, check: checkValue(dataKey), createdAt: now, shares: [] };
  for (const [i, holder] of holders.entries()) {
    const share = shares[i] as Share;
    const key = await importJWK({ ...holder.key, alg: KEY_ALG }, KEY_ALG);
    const jwe = await new CompactEncrypt(Buffer.from(JSON.stringify({ x: share.x, y: share.y.toString('base64') }))).setProtectedHeader({ alg: KEY_ALG, enc: 'A256GCM', cty: 'cocoon-recovery-share' }).encrypt(key);
    share.y.fill(0);
    record.shares.push({ kid: holder.kid, x: share.x, jwe, ...(holder.recipient ? { recipient: holder.recipient } : {}) });
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

/**
 * Reads the private JWK a share is decrypted with (0600): an owner's P-256 key, or the private
 * key of its recovery recipient (P-256, P-384 or X25519).
 */
export async function readRecoveryPrivateJwk(file: string): Promise<JWK> {
  const jwk = await readJwkFile(file, 'key', { ownerOnly: true, unreadable: 'BAD_USAGE' });
  if (typeof jwk.d !== 'string' || !recipientKind(jwk)) {
    throw new CocoonError('BAD_USAGE', `recovery shares are decrypted with a private P-256 owner key or the private key of the owner's recovery recipient (P-256, P-384 or X25519 JWK)${jwk?.kty === 'OKP' && jwk.crv === 'Ed25519' ? '; an Ed25519 owner key holds no share: use its recovery recipient key' : ''}`);
  }
  return jwk;
}

/** Decrypts the share addressed to this key (an owner's P-256 key, or a recovery recipient's key). */
export async function decryptShare(record: RecoveryRecord, privateJwk: JWK): Promise<ShareFile> {
  if (typeof privateJwk.d !== 'string' || !recipientKind(privateJwk)) {
    throw new CocoonError('FORBIDDEN', 'only private P-256 owner keys and recovery recipient keys (P-256, P-384, X25519) hold recovery shares; an Ed25519 owner\'s share is encrypted to its recovery recipient');
  }
  const pub = publicPart(privateJwk);
  const thumb = await calculateJwkThumbprint(pub, 'sha256');
  const entry = record.shares.find((s) => (s.recipient ?? s.kid) === thumb);
  if (!entry) {
    if (record.shares.some((s) => s.kid === thumb && s.recipient)) throw new CocoonError('FORBIDDEN', 'this owner\'s share is encrypted to its recovery recipient: decrypt it with that private key');
    throw new CocoonError('FORBIDDEN', 'this key holds no recovery share');
  }
  let plaintext: Uint8Array;
  try {
    // import inside: WebCrypto refuses a private scalar that does not match the public part
    const key = await importJWK({ ...pub, d: privateJwk.d, alg: KEY_ALG } as JWK, KEY_ALG);
    ({ plaintext } = await compactDecrypt(entry.jwe, key, { keyManagementAlgorithms: [KEY_ALG], contentEncryptionAlgorithms: ['A256GCM'] }));
  } catch {
    throw new CocoonError('AUTH_INVALID', 'the recovery share does not decrypt with this key');
  }
  let v: { x?: unknown; y?: unknown } | null;
  try {
    v = JSON.parse(Buffer.from(plaintext).toString('utf8')) as { x?: unknown; y?: unknown } | null;
  } catch {
    throw new CocoonError('INPUT_MALFORMED', 'the recovery share is not JSON');
  }
  if (typeof v?.y !== 'string') throw new CocoonError('INPUT_MALFORMED', 'the recovery share has no value');
  if (v.x !== entry.x) throw new CocoonError('INPUT_MALFORMED', 'recovery share index mismatch');
  return { v: 1, kid: entry.kid, x: entry.x, y: v.y };
}

/**
 * `cocoon recover keygen`: a recovery recipient key pair. The private JWK is written exclusively
 * (0600, never overwritten); the public one is what `serve --recovery-recipient KID=FILE` takes.
 */
export async function createRecoveryKey(privateFile: string, publicFile: string, crv: 'X25519' | 'P-256' | 'P-384' = 'X25519'): Promise<{ thumbprint: string; publicJwk: JWK }> {
  const { privateKey } = await generateKeyPair(KEY_ALG, { crv, extractable: true });
  const jwk = await exportJWK(privateKey);
  const publicJwk = publicPart(jwk);
  const thumbprint = await calculateJwkThumbprint(publicJwk, 'sha256');
  const create = async (file: string, mode: number) =>
    open(file, 'wx', mode).catch((err: unknown) => {
      const code = (err as NodeJS.ErrnoException).code;
      throw new CocoonError(code === 'EEXIST' ? 'CONFLICT' : 'IO_ERROR', `cannot create ${file}: ${code === 'EEXIST' ? 'file exists' : (err as Error).message}`);
    });
  const priv = await create(privateFile, 0o600);
  let pub;
  try {
    pub = await create(publicFile, 0o644);
  } catch (err) {
    await priv.close();
    await unlink(privateFile);
    throw err;
  }
  try {
    await priv.writeFile(JSON.stringify({ ...jwk, kid: thumbprint, alg: KEY_ALG, use: 'enc' }, null, 2) + '\n');
    await pub.writeFile(JSON.stringify({ ...publicJwk, kid: thumbprint, alg: KEY_ALG, use: 'enc' }, null, 2) + '\n');
  } finally {
    await priv.close();
    await pub.close();
  }
  await chmod(privateFile, 0o600);
  return { thumbprint, publicJwk };
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
