import { createPrivateKey, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { FlattenedEncrypt, GeneralEncrypt, flattenedDecrypt, generalDecrypt, type FlattenedJWE, type GeneralJWE } from 'jose';
import { CocoonError } from '../errors.js';
import { ANNOTATION_KEYS_PREFIX, type KeyWrapper } from './ocicrypt.js';

/**
 * ocicrypt's JWE recipients (`org.opencontainers.image.enc.keys.jwe`): the private layer
 * options encrypted with A256GCM to one or more public keys — `RSA-OAEP` (SHA-1, what
 * ocicrypt/go-jose use) for RSA keys, `ECDH-ES+A256KW` for EC keys. One recipient is written
 * in flattened JSON serialisation (as go-jose's FullSerialize and skopeo do), several in
 * general serialisation; both are read.
 */

export const ANNOTATION_JWE = `${ANNOTATION_KEYS_PREFIX}jwe`;
const MAX_KEY_FILE = 64 * 1024;
const MAX_JWE = 1 << 20;
const MAX_RECIPIENTS = 64;

function algFor(key: KeyObject): 'RSA-OAEP' | 'ECDH-ES+A256KW' {
  const t = key.asymmetricKeyType;
  if (t === 'rsa') return 'RSA-OAEP';
  if (t === 'ec') {
    const crv = key.asymmetricKeyDetails?.namedCurve;
    if (crv !== 'prime256v1' && crv !== 'secp384r1' && crv !== 'secp521r1') throw new CocoonError('BAD_USAGE', `unsupported EC curve ${crv ?? '?'} for a JWE recipient (P-256, P-384, P-521)`);
    return 'ECDH-ES+A256KW';
  }
  throw new CocoonError('BAD_USAGE', `unsupported key type ${t ?? '?'} for a JWE recipient (RSA or EC)`);
}

async function readKeyFile(path: string): Promise<Buffer> {
  let b: Buffer;
  try {
    b = await readFile(path);
  } catch (err) {
    throw new CocoonError((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (b.length > MAX_KEY_FILE) throw new CocoonError('INPUT_TOO_LARGE', `key file ${path}: larger than ${MAX_KEY_FILE} bytes`);
  return b;
}

function isJwkText(b: Buffer): boolean {
  return b.toString('utf8').trimStart().startsWith('{');
}

/** A public key (PEM/DER SPKI, PEM certificate, or JWK) for `--recipient jwe:FILE`. */
export async function loadPublicKey(path: string): Promise<KeyObject> {
  const b = await readKeyFile(path);
  try {
    const k = isJwkText(b) ? createPublicKey({ key: JSON.parse(b.toString('utf8')) as JsonWebKey, format: 'jwk' }) : createPublicKey(b.includes('-----BEGIN') ? b.toString('utf8') : { key: b, format: 'der', type: 'spki' });
    algFor(k);
    return k;
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new CocoonError('INPUT_MALFORMED', `${path}: not a public key or certificate (PEM, DER or JWK)`, { cause: err });
  }
}

/** A private key (PEM PKCS#8/PKCS#1/SEC1, DER PKCS#8, or JWK) for `--key FILE` / skopeo's `--decryption-key`. */
export async function loadPrivateKey(path: string, passphrase?: string): Promise<KeyObject> {
  const b = await readKeyFile(path);
  try {
    const k = isJwkText(b)
      ? createPrivateKey({ key: JSON.parse(b.toString('utf8')) as JsonWebKey, format: 'jwk' })
      : b.includes('-----BEGIN')
        ? createPrivateKey({ key: b.toString('utf8'), ...(passphrase !== undefined ? { passphrase } : {}) })
        : createPrivateKey({ key: b, format: 'der', type: 'pkcs8' });
    algFor(k);
    return k;
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new CocoonError('INPUT_MALFORMED', `${path}: not a usable private key (PEM, DER or JWK; encrypted keys need a passphrase)`, { cause: err });
  }
}

export class JweWrapper implements KeyWrapper {
  readonly annotation = ANNOTATION_JWE;

  constructor(
    private readonly recipients: readonly KeyObject[],
    private readonly privateKeys: readonly KeyObject[] = [],
  ) {
    if (recipients.length > MAX_RECIPIENTS) throw new CocoonError('BAD_USAGE', `at most ${MAX_RECIPIENTS} JWE recipients`);
    for (const r of recipients) algFor(r);
  }

  async wrap(optsData: Buffer): Promise<string> {
    const [only, ...more] = this.recipients;
    if (!only) throw new CocoonError('BAD_USAGE', 'a JWE recipient needs a public key');
    if (more.length === 0) {
      const jwe = await new FlattenedEncrypt(optsData).setProtectedHeader({ alg: algFor(only), enc: 'A256GCM' }).encrypt(only);
      return Buffer.from(JSON.stringify(jwe)).toString('base64');
    }
    const enc = new GeneralEncrypt(optsData).setProtectedHeader({ enc: 'A256GCM' });
    for (const r of this.recipients) enc.addRecipient(r).setUnprotectedHeader({ alg: algFor(r) });
    return Buffer.from(JSON.stringify(await enc.encrypt())).toString('base64');
  }

  async unwrap(annotationValue: string): Promise<Buffer> {
    if (annotationValue.length > MAX_JWE) throw new CocoonError('IMAGE_INVALID', 'JWE annotation too large');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(annotationValue)) throw new CocoonError('IMAGE_INVALID', 'JWE annotation: not base64');
    let jwe: Record<string, unknown>;
    try {
      jwe = JSON.parse(Buffer.from(annotationValue, 'base64').toString('utf8')) as Record<string, unknown>;
    } catch {
      throw new CocoonError('IMAGE_INVALID', 'JWE annotation: not base64 JSON');
    }
    if (typeof jwe !== 'object' || jwe === null || typeof jwe.ciphertext !== 'string') throw new CocoonError('IMAGE_INVALID', 'JWE annotation: not a JWE in JSON serialisation');
    if (Array.isArray(jwe.recipients) && jwe.recipients.length > MAX_RECIPIENTS) throw new CocoonError('IMAGE_INVALID', 'JWE annotation: too many recipients');
    if (this.privateKeys.length === 0) throw new CocoonError('LAYER_DECRYPT_FAILED', 'no private key for the JWE recipients');
    const opts = { keyManagementAlgorithms: ['RSA-OAEP', 'RSA-OAEP-256', 'ECDH-ES+A256KW', 'ECDH-ES+A128KW', 'ECDH-ES+A192KW'], contentEncryptionAlgorithms: ['A256GCM', 'A128GCM', 'A192GCM'] };
    for (const key of this.privateKeys) {
      try {
        const r = Array.isArray(jwe.recipients) ? await generalDecrypt(jwe as unknown as GeneralJWE, key, opts) : await flattenedDecrypt(jwe as unknown as FlattenedJWE, key, opts);
        return Buffer.from(r.plaintext);
      } catch {
        /* try the next key */
      }
    }
    throw new CocoonError('LAYER_DECRYPT_FAILED', 'none of the given private keys is a recipient of this layer');
  }
}
