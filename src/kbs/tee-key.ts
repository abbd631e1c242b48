import { createCipheriv, createHash, createPublicKey, diffieHellman, generateKeyPairSync, randomBytes } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { FlattenedEncrypt, importJWK } from 'jose';
import type { FlattenedJWE, JWK } from 'jose';
import { CocoonError } from '../errors.js';

export type TeeKeyAlg = 'ECDH-ES+A256KW' | 'RSA-OAEP-256';

export interface TeePubkey {
  jwk: JWK;
  alg: TeeKeyAlg;
}

const B64URL = /^[A-Za-z0-9_-]+$/;
const EC_COORD_LEN: Record<string, number> = { 'P-256': 43, 'P-384': 64, 'P-521': 88 };

/**
 * Strictly parses the `tee-pubkey` of RCAR runtime-data: public EC (P-256/384/521) or RSA
 * (2048–8192 bit) JWK, no private members. The normalized JWK is what report_data binds, so
 * it is returned exactly as received (after validation), not re-serialized with extra members.
 */
export function parseTeePubkey(value: unknown): TeePubkey {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('tee-pubkey must be a JWK object');
  const jwk = value as Record<string, unknown>;
  const allowed = new Set(['kty', 'crv', 'x', 'y', 'n', 'e', 'alg', 'use', 'kid']);
  for (const [k, v] of Object.entries(jwk)) {
    if (!allowed.has(k)) throw bad(`tee-pubkey member "${k}" is not allowed`);
    if (typeof v !== 'string' || v.length > 2048) throw bad(`tee-pubkey member "${k}" must be a string`);
  }
  if (jwk.kty === 'EC') {
    const len = EC_COORD_LEN[String(jwk.crv)];
    if (!len) throw bad('tee-pubkey curve must be P-256, P-384 or P-521');
    for (const c of ['x', 'y'] as const) {
      const v = jwk[c];
      if (typeof v !== 'string' || !B64URL.test(v) || v.length !== len) throw bad(`tee-pubkey ${c} is not a ${String(jwk.crv)} coordinate`);
    }
    if (jwk.alg !== undefined && jwk.alg !== 'ECDH-ES+A256KW') throw bad('EC tee-pubkey alg must be ECDH-ES+A256KW');
    return { jwk: jwk as JWK, alg: 'ECDH-ES+A256KW' };
  }
  if (jwk.kty === 'RSA') {
    const n = jwk.n;
    const e = jwk.e;
    if (typeof n !== 'string' || !B64URL.test(n) || n.length < 342 || n.length > 1366) throw bad('tee-pubkey RSA modulus must be 2048-8192 bits');
    if (typeof e !== 'string' || !B64URL.test(e) || e.length > 8) throw bad('tee-pubkey RSA exponent invalid');
    if (jwk.alg !== undefined && jwk.alg !== 'RSA-OAEP-256') throw bad('RSA tee-pubkey alg must be RSA-OAEP-256 (RSA1_5 is refused)');
    return { jwk: jwk as JWK, alg: 'RSA-OAEP-256' };
  }
  throw bad('tee-pubkey kty must be EC or RSA');
}

/** Flattened JWE of `plaintext` to the TEE's ephemeral key (A256GCM content encryption). */
export async function encryptToTee(tee: TeePubkey, plaintext: Uint8Array): Promise<FlattenedJWE> {
  if (tee.alg === 'ECDH-ES+A256KW') return ecdhEsA256kw(tee.jwk, plaintext);
  let key;
  try {
    key = await importJWK({ ...tee.jwk, alg: tee.alg }, tee.alg);
  } catch (err) {
    throw bad(`tee-pubkey cannot be imported: ${(err as Error).message}`);
  }
  return new FlattenedEncrypt(plaintext).setProtectedHeader({ alg: tee.alg, enc: 'A256GCM' }).encrypt(key);
}

const CURVES: Record<string, string> = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' };
const KW_IV = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/**
 * Imported tee-pubkeys by coordinates: a session's key is used for every resource it fetches,
 * and importing a JWK costs more than the ECDH itself. Public keys only; bounded.
 */
const recipientCache = new Map<string, KeyObject>();
const RECIPIENT_CACHE_MAX = 1024;

function recipientKey(jwk: JWK): KeyObject {
  const id = `${String(jwk.crv)}.${String(jwk.x)}.${String(jwk.y)}`;
  const cached = recipientCache.get(id);
  if (cached) return cached;
  let key: KeyObject;
  try {
    key = createPublicKey({ key: { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y } as never, format: 'jwk' });
  } catch (err) {
    throw bad(`tee-pubkey cannot be imported: ${(err as Error).message}`);
  }
  if (recipientCache.size >= RECIPIENT_CACHE_MAX) recipientCache.delete(recipientCache.keys().next().value as string);
  recipientCache.set(id, key);
  return key;
}

/**
 * ECDH-ES+A256KW / A256GCM (RFC 7518 §4.6, §4.4, §5.3) on node:crypto: the same JWE jose
 * produces (tests decrypt it with jose), at a fraction of WebCrypto's per-call cost — the
 * release path runs it for every resource. Concat KDF with empty apu/apv.
 */
function ecdhEsA256kw(jwk: JWK, plaintext: Uint8Array): FlattenedJWE {
  const curve = CURVES[String(jwk.crv)];
  if (!curve) throw bad('tee-pubkey curve must be P-256, P-384 or P-521');
  const recipient = recipientKey(jwk);
  const eph = generateKeyPairSync('ec', { namedCurve: curve });
  const epk = eph.publicKey.export({ format: 'jwk' });
  const z = diffieHellman({ privateKey: eph.privateKey, publicKey: recipient });
  const alg = Buffer.from('ECDH-ES+A256KW', 'ascii');
  const otherInfo = Buffer.concat([u32(alg.length), alg, u32(0), u32(0), u32(256)]);
  const kek = createHash('sha256').update(u32(1)).update(z).update(otherInfo).digest();
  z.fill(0);
  const cek = randomBytes(32);
  const wrap = createCipheriv('id-aes256-wrap', kek, KW_IV);
  const encryptedKey = Buffer.concat([wrap.update(cek), wrap.final()]);
  kek.fill(0);
  const header = { alg: 'ECDH-ES+A256KW', enc: 'A256GCM', epk: { x: epk.x, crv: epk.crv, kty: 'EC', y: epk.y } };
  const protectedB64 = Buffer.from(JSON.stringify(header), 'utf8').toString('base64url');
  const iv = randomBytes(12);
  const gcm = createCipheriv('aes-256-gcm', cek, iv);
  gcm.setAAD(Buffer.from(protectedB64, 'ascii'));
  const ciphertext = Buffer.concat([gcm.update(plaintext), gcm.final()]);
  const tag = gcm.getAuthTag();
  cek.fill(0);
  return {
    protected: protectedB64,
    encrypted_key: encryptedKey.toString('base64url'),
    iv: iv.toString('base64url'),
    ciphertext: ciphertext.toString('base64url'),
    tag: tag.toString('base64url'),
  };
}

function bad(message: string): CocoonError {
  return new CocoonError('INPUT_MALFORMED', message);
}
