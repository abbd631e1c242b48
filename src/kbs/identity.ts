import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { CocoonError } from '../errors.js';
import { readOrCreateKeyFile } from './sealer.js';

export const IDENTITY_FILE = 'kbs-identity.jwk';

/** The KBS signing identity (P-256, ES256): signs EAR tokens; its id is the owner tokens' `aud`. */
export interface KbsIdentity {
  id: string;
  kid: string;
  publicJwk: JWK;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

export async function generateIdentityJwk(): Promise<JWK> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  return exportJWK(privateKey);
}

/** Loads `<dataDir>/kbs-identity.jwk`, generating it (0600) on first start. */
export async function loadOrCreateIdentity(dataDir: string): Promise<KbsIdentity> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, IDENTITY_FILE);
  // Generated up front because readOrCreateKeyFile creates the file synchronously after an exclusive open.
  const candidate = await generateIdentityJwk();
  const jwk = await readOrCreateKeyFile(path, () => JSON.stringify(candidate) + '\n', (text) => parseJwk(text, path));
  return identityFromJwk(jwk);
}

/** Loads an existing `<dataDir>/kbs-identity.jwk` without ever creating one (`serve --workers` workers). */
export async function readIdentity(dataDir: string): Promise<KbsIdentity> {
  const path = join(dataDir, IDENTITY_FILE);
  try {
    const info = await stat(path);
    if ((info.mode & 0o077) !== 0) throw new CocoonError('IO_ERROR', `${path} is accessible by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`);
    // the bound readOrCreateKeyFile (loadOrCreateIdentity) applies
    if (!info.isFile() || info.size > 64 * 1024) throw new CocoonError('IO_ERROR', `${path} is not a key file (not a regular file, or larger than 64 KiB)`);
    return await identityFromJwk(parseJwk(await readFile(path, 'utf8'), path));
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new CocoonError('IO_ERROR', `cannot read the KBS identity ${path}: ${(err as Error).message}`, { cause: err });
  }
}

export async function identityFromJwk(jwk: JWK): Promise<KbsIdentity> {
  if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || typeof jwk.d !== 'string') throw new CocoonError('IO_ERROR', 'KBS identity must be a private P-256 JWK');
  const publicJwk: JWK = { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y };
  const kid = await calculateJwkThumbprint(publicJwk, 'sha256');
  const privateKey = (await importJWK({ ...jwk, alg: 'ES256' }, 'ES256')) as CryptoKey;
  const publicKey = (await importJWK({ ...publicJwk, alg: 'ES256' }, 'ES256')) as CryptoKey;
  return { id: `urn:cocoon:kbs:${kid}`, kid, publicJwk: { ...publicJwk, kid, alg: 'ES256', use: 'sig' }, privateKey, publicKey };
}

function parseJwk(text: string, path: string): JWK {
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as JWK;
  } catch {
    // fall through
  }
  throw new CocoonError('IO_ERROR', `${path} is not a JWK`);
}
