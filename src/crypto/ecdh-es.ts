/**
 * JWE with ECDH-ES+A256KW key agreement and A256GCM content encryption (RFC 7518 §4.6, §4.4,
 * §5.3; Concat KDF, empty apu/apv when encrypting), flattened JSON serialisation — what an RCAR resource
 * is wrapped in for the TEE's ephemeral key. Both ends are on node:crypto's ECDH: jose goes
 * through WebCrypto, whose per-call job dispatch and key import cost several times the
 * curve arithmetic, and both the KBS (every release) and a launcher (every boot) run this on
 * their hot path. Tests check interop with jose in both directions.
 */
import { ECDH, createCipheriv, createDecipheriv, createECDH, createHash } from 'node:crypto';
import { pooledRandomBytes } from './random-pool.js';
import { CocoonError } from '../errors.js';

export type EcCurve = 'P-256' | 'P-384' | 'P-521';
export const ECDH_ES_A256KW = 'ECDH-ES+A256KW';

/** A public EC JWK exactly as RCAR's tee-pubkey carries it. */
export interface EcPublicJwk {
  kty: 'EC';
  crv: EcCurve;
  x: string;
  y: string;
  alg?: string;
}

export interface FlattenedJweObject {
  protected: string;
  encrypted_key: string;
  iv: string;
  ciphertext: string;
  tag: string;
}

const OPENSSL_CURVE: Record<EcCurve, string> = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' };
export const EC_COORD_BYTES: Record<EcCurve, number> = { 'P-256': 32, 'P-384': 48, 'P-521': 66 };
const KW_IV = Buffer.from('A6A6A6A6A6A6A6A6', 'hex');
const B64URL = /^[A-Za-z0-9_-]*$/;
const JWE_MEMBERS = new Set(['protected', 'encrypted_key', 'iv', 'ciphertext', 'tag']);
/** Largest protected header accepted when decrypting (ours is ~200 bytes). */
const MAX_PROTECTED = 1024;

export function isEcCurve(crv: unknown): crv is EcCurve {
  return crv === 'P-256' || crv === 'P-384' || crv === 'P-521';
}

/** An ephemeral key pair for receiving JWEs: the private half never leaves the ECDH object. */
export interface EcdhKeyPair {
  publicJwk: EcPublicJwk;
  ecdh: ECDH;
  crv: EcCurve;
}

export function generateEcdhKeyPair(crv: EcCurve = 'P-256'): EcdhKeyPair {
  const ecdh = createECDH(OPENSSL_CURVE[crv]);
  ecdh.generateKeys();
  return { publicJwk: { kty: 'EC', crv, ...coordinates(ecdh.getPublicKey(), crv) }, ecdh, crv };
}

function coordinates(point: Buffer, crv: EcCurve): { x: string; y: string } {
  const n = EC_COORD_BYTES[crv];
  return { x: point.subarray(1, 1 + n).toString('base64url'), y: point.subarray(1 + n).toString('base64url') };
}

/** The uncompressed point (0x04 ‖ X ‖ Y) of a JWK; lengths checked, the curve check is ECDH's own. */
function pointOf(jwk: { crv?: unknown; x?: unknown; y?: unknown }, what: string): { crv: EcCurve; point: Buffer } {
  if (!isEcCurve(jwk.crv)) throw malformed(`${what}: curve must be P-256, P-384 or P-521`);
  const n = EC_COORD_BYTES[jwk.crv];
  const x = typeof jwk.x === 'string' && B64URL.test(jwk.x) ? Buffer.from(jwk.x, 'base64url') : undefined;
  const y = typeof jwk.y === 'string' && B64URL.test(jwk.y) ? Buffer.from(jwk.y, 'base64url') : undefined;
  if (x?.length !== n || y?.length !== n) throw malformed(`${what}: x and y must be ${n}-byte ${jwk.crv} coordinates`);
  return { crv: jwk.crv, point: Buffer.concat([Buffer.from([4]), x, y]) };
}

/** Refuses (INPUT_MALFORMED) an EC public JWK whose point is not on its curve: checked once, where the key arrives. */
export function assertEcPublicKey(jwk: { crv?: unknown; x?: unknown; y?: unknown }, what: string): void {
  const { crv, point } = pointOf(jwk, what);
  try {
    ECDH.convertKey(point, OPENSSL_CURVE[crv]);
  } catch (err) {
    throw malformed(`${what}: not a valid point on the curve`, err);
  }
}

/** Z = ECDH(own, peer); a point not on the curve is refused by OpenSSL (invalid-curve attacks). */
function agree(ecdh: ECDH, peer: Buffer, what: string): Buffer {
  try {
    return ecdh.computeSecret(peer);
  } catch (err) {
    throw malformed(`${what}: not a valid point on the curve`, err);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

const EMPTY = Buffer.alloc(0);
const ALG_ID = Buffer.from(ECDH_ES_A256KW, 'ascii');
const ROUND_1 = u32(1);

/** The Concat KDF OtherInfo: AlgorithmID ‖ PartyUInfo ‖ PartyVInfo ‖ SuppPubInfo (keydatalen 256). */
function otherInfoOf(apu: Buffer, apv: Buffer): Buffer {
  return Buffer.concat([u32(ALG_ID.length), ALG_ID, u32(apu.length), apu, u32(apv.length), apv, u32(256)]);
}

/** OtherInfo with empty apu/apv: every JWE we encrypt, and most we receive (built once). */
const OTHER_INFO_EMPTY = otherInfoOf(EMPTY, EMPTY);

/**
 * Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) for a 256-bit KEK, one SHA-256 round. We send
 * empty apu/apv; a received JWE's apu/apv (RFC 7518 §4.6.1.2-3, optional) are honoured.
 */
function concatKdf(z: Buffer, apu: Buffer = EMPTY, apv: Buffer = EMPTY): Buffer {
  const otherInfo = apu.length === 0 && apv.length === 0 ? OTHER_INFO_EMPTY : otherInfoOf(apu, apv);
  const kek = createHash('sha256').update(ROUND_1).update(z).update(otherInfo).digest();
  z.fill(0);
  return kek;
}

/**
 * One ECDH object per curve for the sender's ephemeral keys: `generateKeys` replaces its key
 * pair on every encryption (creating the object costs as much again). The last ephemeral
 * private key stays in it until the next encryption, as a discarded object's would until it
 * is collected.
 */
const ephemeral = new Map<EcCurve, ECDH>();

/** Encrypts `plaintext` to `recipient` with a fresh ephemeral key, CEK and IV. */
export function encryptEcdhEs(recipient: EcPublicJwk, plaintext: Uint8Array): FlattenedJweObject {
  const { crv, point } = pointOf(recipient, 'recipient key');
  let eph = ephemeral.get(crv);
  if (!eph) {
    eph = createECDH(OPENSSL_CURVE[crv]);
    ephemeral.set(crv, eph);
  }
  eph.generateKeys();
  const kek = concatKdf(agree(eph, point, 'recipient key'));
  const epk = coordinates(eph.getPublicKey(), crv);
  const cek = pooledRandomBytes(32);
  const wrap = createCipheriv('id-aes256-wrap', kek, KW_IV);
  const encryptedKey = Buffer.concat([wrap.update(cek), wrap.final()]);
  kek.fill(0);
  const header = { alg: ECDH_ES_A256KW, enc: 'A256GCM', epk: { x: epk.x, crv, kty: 'EC', y: epk.y } };
  const protectedB64 = Buffer.from(JSON.stringify(header), 'utf8').toString('base64url');
  const iv = pooledRandomBytes(12);
  const gcm = createCipheriv('aes-256-gcm', cek, iv);
  gcm.setAAD(Buffer.from(protectedB64, 'ascii'));
  const ciphertext = Buffer.concat([gcm.update(plaintext), gcm.final()]);
  const tag = gcm.getAuthTag();
  cek.fill(0);
  return { protected: protectedB64, encrypted_key: encryptedKey.toString('base64url'), iv: iv.toString('base64url'), ciphertext: ciphertext.toString('base64url'), tag: tag.toString('base64url') };
}

/**
 * Decrypts a flattened ECDH-ES+A256KW / A256GCM JWE with the key pair's private key. Strict:
 * exactly those algorithms, no `zip`/`crit`, no unprotected header or AAD, an ephemeral key on
 * the key pair's curve; any tampering fails the key unwrap or the GCM tag. Errors are
 * INPUT_MALFORMED and never include key material.
 */
export function decryptEcdhEs(jwe: unknown, key: EcdhKeyPair): Buffer {
  if (typeof jwe !== 'object' || jwe === null || Array.isArray(jwe)) throw malformed('JWE must be a JSON object');
  const j = jwe as Record<string, unknown>;
  for (const k of Object.keys(j)) if (!JWE_MEMBERS.has(k)) throw malformed(`JWE member ${JSON.stringify(k.slice(0, 40))} is not supported`);
  const field = (name: string, max: number): Buffer => {
    const v = j[name];
    if (typeof v !== 'string' || v.length > max || !B64URL.test(v)) throw malformed(`JWE ${name} must be base64url`);
    return Buffer.from(v, 'base64url');
  };
  const protectedB64 = j.protected;
  if (typeof protectedB64 !== 'string' || protectedB64.length > MAX_PROTECTED || !B64URL.test(protectedB64)) throw malformed('JWE protected header must be base64url');
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(Buffer.from(protectedB64, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw malformed('JWE protected header is not JSON', err);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw malformed('JWE protected header must be an object');
  if (header.alg !== ECDH_ES_A256KW || header.enc !== 'A256GCM') throw malformed('JWE must be ECDH-ES+A256KW with A256GCM');
  if ('zip' in header || 'crit' in header) throw malformed('JWE zip/crit are not supported');
  const epk = header.epk as Record<string, unknown> | undefined;
  if (typeof epk !== 'object' || epk === null || epk.kty !== 'EC') throw malformed('JWE epk must be an EC public key');
  const { crv, point } = pointOf(epk, 'JWE epk');
  if (crv !== key.crv) throw malformed(`JWE epk is on ${crv}, the key is on ${key.crv}`);
  const encryptedKey = field('encrypted_key', 64);
  const iv = field('iv', 32);
  const tag = field('tag', 32);
  const ciphertext = field('ciphertext', 64 * 1024 * 1024);
  if (encryptedKey.length !== 40 || iv.length !== 12 || tag.length !== 16) throw malformed('JWE encrypted_key, iv or tag has the wrong length');
  const partyInfo = (name: 'apu' | 'apv'): Buffer => {
    const v = header[name];
    if (v === undefined) return EMPTY;
    if (typeof v !== 'string' || !B64URL.test(v)) throw malformed(`JWE ${name} must be base64url`);
    return Buffer.from(v, 'base64url');
  };
  const apu = partyInfo('apu');
  const apv = partyInfo('apv');
  const kek = concatKdf(agree(key.ecdh, point, 'JWE epk'), apu, apv);
  let cek: Buffer;
  try {
    const unwrap = createDecipheriv('id-aes256-wrap', kek, KW_IV);
    cek = Buffer.concat([unwrap.update(encryptedKey), unwrap.final()]);
  } catch (err) {
    throw malformed('JWE does not decrypt with this key (key unwrap failed)', err);
  } finally {
    kek.fill(0);
  }
  try {
    const gcm = createDecipheriv('aes-256-gcm', cek, iv, { authTagLength: 16 });
    gcm.setAAD(Buffer.from(protectedB64, 'ascii'));
    gcm.setAuthTag(tag);
    return Buffer.concat([gcm.update(ciphertext), gcm.final()]);
  } catch (err) {
    throw malformed('JWE does not decrypt with this key (authentication failed)', err);
  } finally {
    cek.fill(0);
  }
}

function malformed(message: string, cause?: unknown): CocoonError {
  return new CocoonError('INPUT_MALFORMED', message, cause === undefined ? undefined : { cause });
}
