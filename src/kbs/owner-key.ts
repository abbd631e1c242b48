import { chmod, open, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { SignJWT, calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { CocoonError } from '../errors.js';
import { readJwkFile } from '../crypto/jwk-file.js';

/** Owner keys sign the owner API's bearer tokens. ES256 (P-256) by default; EdDSA (Ed25519) accepted. */
export type OwnerAlg = 'ES256' | 'EdDSA';

export interface OwnerKeyFiles {
  kid: string;
  publicJwk: JWK;
  privateFile: string;
  publicFile: string;
}

/**
 * `cocoon init`: creates an owner key pair. The private JWK is written exclusively with mode
 * 0600 (never overwritten); the public JWK next to it is what `cocoon serve --owner` registers.
 */
export async function createOwnerKey(privateFile: string, publicFile = `${privateFile.replace(/\.jwk$/, '')}.pub.jwk`): Promise<OwnerKeyFiles> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  const publicJwk = publicPart(jwk);
  const kid = await calculateJwkThumbprint(publicJwk, 'sha256');
  let handle;
  try {
    handle = await open(privateFile, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CocoonError(code === 'EEXIST' ? 'CONFLICT' : 'IO_ERROR', `cannot create owner key ${privateFile}: ${code === 'EEXIST' ? 'file exists' : (err as Error).message}`);
  }
  try {
    await handle.writeFile(JSON.stringify({ ...jwk, kid, alg: 'ES256' }, null, 2) + '\n');
  } finally {
    await handle.close();
  }
  await chmod(privateFile, 0o600);
  const pub = { ...publicJwk, kid, alg: 'ES256', use: 'sig' };
  await writeFile(publicFile, JSON.stringify(pub, null, 2) + '\n', { mode: 0o644 });
  return { kid, publicJwk: pub, privateFile, publicFile };
}

export interface OwnerSigningKey {
  kid: string;
  alg: OwnerAlg;
  key: CryptoKey;
  publicJwk: JWK;
}

/** Loads an owner private JWK file (must not be readable by others). */
export async function loadOwnerPrivateKey(file: string): Promise<OwnerSigningKey> {
  return ownerSigningKey(await readJwkFile(file, 'owner key', { ownerOnly: true }));
}

export async function ownerSigningKey(jwk: JWK): Promise<OwnerSigningKey> {
  if (typeof jwk.d !== 'string') throw new CocoonError('BAD_USAGE', 'owner key is not a private JWK');
  const alg = ownerAlgOf(jwk);
  const publicJwk = publicPart(jwk);
  const kid = await calculateJwkThumbprint(publicJwk, 'sha256');
  const key = (await importJWK({ ...jwk, alg }, alg)) as CryptoKey;
  return { kid, alg, key, publicJwk: { ...publicJwk, kid, alg } };
}

/** Reads a public (or private: the private part is dropped) owner JWK file, for `serve --owner`. */
export async function loadOwnerPublicJwk(file: string): Promise<JWK> {
  const jwk = await readJwkFile(file, 'owner key');
  ownerAlgOf(jwk);
  return publicPart(jwk);
}

export function ownerAlgOf(jwk: JWK): OwnerAlg {
  if (jwk.kty === 'EC' && jwk.crv === 'P-256' && typeof jwk.x === 'string' && typeof jwk.y === 'string') return 'ES256';
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519' && typeof jwk.x === 'string') return 'EdDSA';
  throw new CocoonError('BAD_USAGE', 'owner keys must be P-256 (ES256) or Ed25519 (EdDSA) JWKs');
}

/** Only the public members, in a fixed shape (thumbprint input). */
export function publicPart(jwk: JWK): JWK {
  if (jwk.kty === 'EC') return { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y };
  if (jwk.kty === 'OKP') return { kty: 'OKP', crv: jwk.crv, x: jwk.x };
  throw new CocoonError('BAD_USAGE', `unsupported owner key type ${String(jwk.kty)}`);
}

/**
 * An owner token (docs/kbs.md "Owner API"): a JWS by the owner key for one KBS (`aud`), bound
 * to one request (`htm`, `htu`), short-lived, with a single-use `jti`; `claims` adds members
 * (e.g. the dashboard login's purpose and role).
 */
export async function signOwnerToken(key: OwnerSigningKey, o: { audience: string; method: string; path: string; ttlS: number; now?: Date; claims?: Record<string, unknown> }): Promise<string> {
  const now = Math.floor((o.now ?? new Date()).getTime() / 1000);
  return new SignJWT({ ...o.claims, htm: o.method, htu: o.path })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
    .setAudience(o.audience)
    .setIssuedAt(now)
    .setExpirationTime(now + o.ttlS)
    .setJti(randomBytes(18).toString('base64url'))
    .sign(key.key);
}
