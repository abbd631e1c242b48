import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CocoonError } from '../errors.js';

/**
 * AES-256-GCM for values at rest: `v1.<b64 iv>.<b64 ciphertext‖tag>`. The AAD binds a
 * ciphertext to its row (e.g. `secret:org/app/name`) so rows cannot be swapped in the store.
 */
const PREFIX = 'v1';

export function sealValue(key: Uint8Array, plaintext: Uint8Array, aad: string): string {
  checkKey(key);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  return `${PREFIX}.${iv.toString('base64')}.${ct.toString('base64')}`;
}

export function openValue(key: Uint8Array, sealed: string, aad: string): Buffer {
  checkKey(key);
  const [prefix, ivB64, ctB64, extra] = sealed.split('.');
  if (prefix !== PREFIX || ivB64 === undefined || ctB64 === undefined || extra !== undefined) {
    throw new CocoonError('IO_ERROR', 'sealed value has an unknown format');
  }
  const iv = Buffer.from(ivB64, 'base64');
  const ct = Buffer.from(ctB64, 'base64');
  if (iv.length !== 12 || ct.length < 16) throw new CocoonError('IO_ERROR', 'sealed value is truncated');
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv);
    decipher.setAAD(Buffer.from(aad, 'utf8'));
    decipher.setAuthTag(ct.subarray(ct.length - 16));
    return Buffer.concat([decipher.update(ct.subarray(0, ct.length - 16)), decipher.final()]);
  } catch (err) {
    throw new CocoonError('IO_ERROR', 'sealed value failed authentication (wrong data key or tampered store)', { cause: err });
  }
}

function checkKey(key: Uint8Array): void {
  if (key.length !== 32) throw new CocoonError('INTERNAL', 'data key must be 32 bytes');
}
