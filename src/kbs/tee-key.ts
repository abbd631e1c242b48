import { FlattenedEncrypt, importJWK } from 'jose';
import type { FlattenedJWE, JWK } from 'jose';
import { CocoonError } from '../errors.js';
import { EC_COORD_BYTES, encryptEcdhEs, isEcCurve } from '../crypto/ecdh-es.js';
import type { EcPublicJwk } from '../crypto/ecdh-es.js';

export type TeeKeyAlg = 'ECDH-ES+A256KW' | 'RSA-OAEP-256';

export interface TeePubkey {
  jwk: JWK;
  alg: TeeKeyAlg;
}

const B64URL = /^[A-Za-z0-9_-]+$/;

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
    if (!isEcCurve(jwk.crv)) throw bad('tee-pubkey curve must be P-256, P-384 or P-521');
    const len = Math.ceil((EC_COORD_BYTES[jwk.crv] * 4) / 3);
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
  if (tee.alg === 'ECDH-ES+A256KW') return encryptEcdhEs(tee.jwk as EcPublicJwk, plaintext);
  let key;
  try {
    key = await importJWK({ ...tee.jwk, alg: tee.alg }, tee.alg);
  } catch (err) {
    throw bad(`tee-pubkey cannot be imported: ${(err as Error).message}`);
  }
  return new FlattenedEncrypt(plaintext).setProtectedHeader({ alg: tee.alg, enc: 'A256GCM' }).encrypt(key);
}

function bad(message: string): CocoonError {
  return new CocoonError('INPUT_MALFORMED', message);
}
