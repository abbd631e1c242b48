import { createCipheriv, createDecipheriv, createHmac, hkdfSync, timingSafeEqual, type Cipher, type Decipher, type Hmac } from 'node:crypto';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { CocoonError, isCocoonError } from '../errors.js';
import { isDigest } from './oci.js';

/**
 * ocicrypt layer encryption (containers/ocicrypt): cipher AES_256_CTR_HMAC_SHA256, public
 * options in `org.opencontainers.image.enc.pubopts`, private options wrapped per recipient in
 * `org.opencontainers.image.enc.keys.<scheme>`. Recipients are KeyWrapper implementations;
 * Cocoon's own is the KEK-based provider annotation (docs/internals.md §3). A JWE wrapper
 * (`enc.keys.jwe`) implements the same interface.
 */

export const CIPHER_AES_CTR_HMAC = 'AES_256_CTR_HMAC_SHA256';
export const ANNOTATION_PUBOPTS = 'org.opencontainers.image.enc.pubopts';
export const ANNOTATION_KEYS_PREFIX = 'org.opencontainers.image.enc.keys.';
export const ANNOTATION_PROVIDER_COCOON = 'org.opencontainers.image.enc.keys.provider.cocoon';

const KEY_LEN = 32;
const NONCE_LEN = 16;
const HMAC_LEN = 32;
const MAX_ANNOTATION = 1 << 20;

export interface PrivateLayerOptions {
  symkey: Buffer;
  /** Digest of the unencrypted blob (what the cipher consumed), as ocicrypt records it. */
  digest: string;
  nonce: Buffer;
}

export interface PublicLayerOptions {
  cipher: string;
  hmac: Buffer;
}

// ---- option (de)serialisation, byte-compatible with ocicrypt's Go structs ---------------

/** `{"symkey","digest","cipheroptions":{"nonce"}}` in ocicrypt's field order. */
export function encodePrivateOptions(p: PrivateLayerOptions): Buffer {
  return Buffer.from(
    `{"symkey":${JSON.stringify(p.symkey.toString('base64'))},"digest":${JSON.stringify(p.digest)},"cipheroptions":{"nonce":${JSON.stringify(p.nonce.toString('base64'))}}}`,
  );
}

function b64Field(v: unknown, len: number, what: string, code: 'LAYER_DECRYPT_FAILED' | 'IMAGE_INVALID'): Buffer {
  if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) throw new CocoonError(code, `${what}: expected base64`);
  const b = Buffer.from(v, 'base64');
  if (b.length !== len) throw new CocoonError(code, `${what}: expected ${len} bytes`);
  return b;
}

export function decodePrivateOptions(bytes: Uint8Array): PrivateLayerOptions {
  let o: { symkey?: unknown; digest?: unknown; cipheroptions?: { nonce?: unknown } | null };
  try {
    o = JSON.parse(Buffer.from(bytes).toString('utf8')) as typeof o;
  } catch {
    throw new CocoonError('LAYER_DECRYPT_FAILED', 'private layer options: not JSON');
  }
  if (typeof o !== 'object' || o === null) throw new CocoonError('LAYER_DECRYPT_FAILED', 'private layer options: not an object');
  if (!isDigest(o.digest)) throw new CocoonError('LAYER_DECRYPT_FAILED', 'private layer options: bad digest');
  return {
    symkey: b64Field(o.symkey, KEY_LEN, 'private layer options symkey', 'LAYER_DECRYPT_FAILED'),
    digest: o.digest,
    nonce: b64Field(o.cipheroptions?.nonce, NONCE_LEN, 'private layer options nonce', 'LAYER_DECRYPT_FAILED'),
  };
}

/** base64 of `{"cipher","hmac","cipheroptions":{}}` (ocicrypt's field order). */
export function encodePublicOptions(p: PublicLayerOptions): string {
  const json = `{"cipher":${JSON.stringify(p.cipher)},"hmac":${JSON.stringify(p.hmac.toString('base64'))},"cipheroptions":{}}`;
  return Buffer.from(json).toString('base64');
}

export function decodePublicOptions(annotation: string): PublicLayerOptions {
  if (annotation.length > MAX_ANNOTATION) throw new CocoonError('IMAGE_INVALID', 'pubopts annotation too large');
  let o: { cipher?: unknown; hmac?: unknown };
  try {
    o = JSON.parse(Buffer.from(annotation, 'base64').toString('utf8')) as typeof o;
  } catch {
    throw new CocoonError('IMAGE_INVALID', 'pubopts annotation: not base64 JSON');
  }
  if (typeof o !== 'object' || o === null) throw new CocoonError('IMAGE_INVALID', 'pubopts annotation: not an object');
  if (o.cipher !== CIPHER_AES_CTR_HMAC) throw new CocoonError('IMAGE_INVALID', `unsupported layer cipher ${JSON.stringify(o.cipher)}`);
  return { cipher: o.cipher, hmac: b64Field(o.hmac, HMAC_LEN, 'pubopts hmac', 'IMAGE_INVALID') };
}

// ---- key derivation -------------------------------------------------------------------------

function checkKek(kek: Uint8Array): void {
  if (kek.byteLength !== 32) throw new CocoonError('BAD_USAGE', 'the layer KEK must be 32 bytes');
}

/**
 * Per-layer symkey and nonce from the KEK, so that wrap is reproducible. Besides the diffID
 * the info binds the digest of the blob being encrypted: two different compressions of the
 * same tar must not share a CTR keystream.
 */
export function deriveLayerKey(kek: Uint8Array, diffID: string, blobDigest: string): { symkey: Buffer; nonce: Buffer } {
  checkKek(kek);
  const okm = Buffer.from(hkdfSync('sha256', kek, Buffer.from('cocoon/ocicrypt/v1'), Buffer.from(`layer-key\0${diffID}\0${blobDigest}`), KEY_LEN + NONCE_LEN));
  return { symkey: okm.subarray(0, KEY_LEN), nonce: okm.subarray(KEY_LEN) };
}

// ---- the layer cipher as streams ----------------------------------------------------------

/** Encrypting Transform; `hmac` (over the ciphertext, ocicrypt style) is available after 'end'. */
export class LayerEncryptStream extends Transform {
  private readonly cipher: Cipher;
  private readonly mac: Hmac;
  private result: Buffer | undefined;

  constructor(symkey: Uint8Array, nonce: Uint8Array) {
    super();
    if (symkey.byteLength !== KEY_LEN || nonce.byteLength !== NONCE_LEN) throw new CocoonError('INTERNAL', 'layer cipher: bad key or nonce length');
    this.cipher = createCipheriv('aes-256-ctr', symkey, nonce);
    this.mac = createHmac('sha256', symkey);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const out = this.cipher.update(chunk);
    this.mac.update(out);
    cb(null, out);
  }

  override _flush(cb: TransformCallback): void {
    const tail = this.cipher.final();
    if (tail.length > 0) {
      this.mac.update(tail);
      this.push(tail);
    }
    this.result = this.mac.digest();
    cb();
  }

  get hmac(): Buffer {
    if (!this.result) throw new CocoonError('INTERNAL', 'layer cipher: hmac read before end of stream');
    return this.result;
  }
}

/**
 * Decrypting Transform. Plaintext flows before the HMAC is known, so the stream errors with
 * LAYER_AUTH_FAILED at its end on a bad HMAC; run verifyLayerHmac first when the consumer
 * must not see unauthenticated plaintext.
 */
export class LayerDecryptStream extends Transform {
  private readonly decipher: Decipher;
  private readonly mac: Hmac;

  constructor(
    symkey: Uint8Array,
    nonce: Uint8Array,
    private readonly expectedHmac: Uint8Array,
  ) {
    super();
    if (symkey.byteLength !== KEY_LEN || nonce.byteLength !== NONCE_LEN) throw new CocoonError('LAYER_DECRYPT_FAILED', 'layer cipher: bad key or nonce length');
    this.decipher = createDecipheriv('aes-256-ctr', symkey, nonce);
    this.mac = createHmac('sha256', symkey);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.mac.update(chunk);
    cb(null, this.decipher.update(chunk));
  }

  override _flush(cb: TransformCallback): void {
    const tail = this.decipher.final();
    if (tail.length > 0) this.push(tail);
    if (!hmacEqual(this.mac.digest(), this.expectedHmac)) {
      cb(new CocoonError('LAYER_AUTH_FAILED', 'layer HMAC does not match: the ciphertext was modified'));
      return;
    }
    cb();
  }
}

function hmacEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}

/** Checks the HMAC of a whole ciphertext stream without producing plaintext. */
export async function verifyLayerHmac(stream: Readable, opts: { symkey: Uint8Array; hmac: Uint8Array }): Promise<void> {
  const mac = createHmac('sha256', opts.symkey);
  try {
    for await (const chunk of stream) mac.update(chunk as Buffer);
  } catch (err) {
    if (isCocoonError(err)) throw err;
    throw new CocoonError('IO_ERROR', `reading layer ciphertext: ${(err as Error).message}`, { cause: err });
  }
  if (!hmacEqual(mac.digest(), opts.hmac)) throw new CocoonError('LAYER_AUTH_FAILED', 'layer HMAC does not match: the ciphertext was modified');
}

// ---- recipients (key wrapping) --------------------------------------------------------------

/** One way of sealing the private options to a recipient; one annotation per scheme. */
export interface KeyWrapper {
  /** Annotation key, e.g. `org.opencontainers.image.enc.keys.provider.cocoon` or `…keys.jwe`. */
  readonly annotation: string;
  /** Seals private options (JSON bytes); returns the annotation value. */
  wrap(optsData: Buffer): Promise<string>;
  /** Opens an annotation value; LAYER_DECRYPT_FAILED when this key cannot. */
  unwrap(annotationValue: string): Promise<Buffer>;
}

interface ProviderAnnotation {
  kid: string;
  wrapped_data: string;
  iv: string;
  wrap_type: 'A256GCM';
}

/**
 * Cocoon's KEK wrapper: A256GCM under the image KEK, in the shape of CoCo's attestation-agent
 * key provider annotation. The IV is derived from the plaintext (synthetic IV) so output is
 * reproducible while distinct plaintexts never share an IV under one KEK.
 */
export class KekWrapper implements KeyWrapper {
  readonly annotation = ANNOTATION_PROVIDER_COCOON;
  private readonly ivKey: Buffer;

  constructor(
    private readonly kek: Buffer,
    private readonly kid: string,
  ) {
    checkKek(kek);
    this.ivKey = Buffer.from(hkdfSync('sha256', kek, Buffer.from('cocoon/ocicrypt/v1'), Buffer.from('wrap-iv'), 32));
  }

  async wrap(optsData: Buffer): Promise<string> {
    const iv = createHmac('sha256', this.ivKey).update(optsData).digest().subarray(0, 12);
    const c = createCipheriv('aes-256-gcm', this.kek, iv);
    const ct = Buffer.concat([c.update(optsData), c.final(), c.getAuthTag()]);
    const a: ProviderAnnotation = { kid: this.kid, wrapped_data: ct.toString('base64'), iv: iv.toString('base64'), wrap_type: 'A256GCM' };
    return Buffer.from(JSON.stringify(a)).toString('base64');
  }

  async unwrap(annotationValue: string): Promise<Buffer> {
    if (annotationValue.length > MAX_ANNOTATION) throw new CocoonError('IMAGE_INVALID', 'key provider annotation too large');
    let a: Partial<ProviderAnnotation>;
    try {
      a = JSON.parse(Buffer.from(annotationValue, 'base64').toString('utf8')) as Partial<ProviderAnnotation>;
    } catch {
      throw new CocoonError('IMAGE_INVALID', 'key provider annotation: not base64 JSON');
    }
    if (typeof a !== 'object' || a === null || a.wrap_type !== 'A256GCM' || typeof a.wrapped_data !== 'string') {
      throw new CocoonError('IMAGE_INVALID', 'key provider annotation: expected wrap_type A256GCM with wrapped_data');
    }
    const iv = b64Field(a.iv, 12, 'key provider annotation iv', 'IMAGE_INVALID');
    const all = Buffer.from(a.wrapped_data, 'base64');
    if (all.length < 17) throw new CocoonError('IMAGE_INVALID', 'key provider annotation: wrapped_data too short');
    try {
      const d = createDecipheriv('aes-256-gcm', this.kek, iv);
      d.setAuthTag(all.subarray(all.length - 16));
      return Buffer.concat([d.update(all.subarray(0, all.length - 16)), d.final()]);
    } catch (err) {
      throw new CocoonError('LAYER_DECRYPT_FAILED', 'cannot unwrap the layer key: wrong KEK or corrupted annotation', { cause: err });
    }
  }
}

export function kbsKid(resource: string): string {
  return `kbs:///${resource}`;
}

/** Builds the annotations of an encrypted layer descriptor. */
export async function encryptionAnnotations(wrappers: readonly KeyWrapper[], priv: PrivateLayerOptions, pub: PublicLayerOptions): Promise<Record<string, string>> {
  if (wrappers.length === 0) throw new CocoonError('BAD_USAGE', 'encrypting a layer needs at least one recipient');
  const optsData = encodePrivateOptions(priv);
  const out: Record<string, string> = {};
  for (const w of wrappers) {
    const v = await w.wrap(optsData);
    // ocicrypt joins several recipients of one scheme with commas
    out[w.annotation] = out[w.annotation] === undefined ? v : `${out[w.annotation]},${v}`;
  }
  out[ANNOTATION_PUBOPTS] = encodePublicOptions(pub);
  return out;
}

/** Finds a recipient entry this wrapper can open; LAYER_DECRYPT_FAILED if none. */
export async function unwrapPrivateOptions(annotations: Record<string, string> | undefined, wrapper: KeyWrapper): Promise<PrivateLayerOptions> {
  const value = annotations?.[wrapper.annotation];
  if (value === undefined) throw new CocoonError('LAYER_DECRYPT_FAILED', `layer has no ${wrapper.annotation} recipient`);
  let lastErr: unknown;
  for (const part of value.split(',')) {
    try {
      return decodePrivateOptions(await wrapper.unwrap(part));
    } catch (err) {
      lastErr = err;
    }
  }
  if (isCocoonError(lastErr, 'IMAGE_INVALID')) throw lastErr;
  throw new CocoonError('LAYER_DECRYPT_FAILED', 'no recipient of this layer could be opened with the given key', { cause: lastErr });
}

export function encryptedMediaType(mediaType: string): string {
  return mediaType.endsWith('+encrypted') ? mediaType : `${mediaType}+encrypted`;
}

export function decryptedMediaType(mediaType: string): string {
  return mediaType.endsWith('+encrypted') ? mediaType.slice(0, -'+encrypted'.length) : mediaType;
}
