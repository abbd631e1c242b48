import { randomBytes } from 'node:crypto';
import { CocoonError, isCocoonError } from '../errors.js';
import { layerFormat, type Descriptor } from './oci.js';
import {
  ANNOTATION_KEYS_PREFIX,
  ANNOTATION_PUBOPTS,
  CIPHER_AES_CTR_HMAC,
  LayerDecryptStream,
  LayerEncryptStream,
  decodePublicOptions,
  decryptedMediaType,
  deriveLayerKey,
  encryptedMediaType,
  encryptionAnnotations,
  unwrapPrivateOptions,
  type KeyWrapper,
  type PrivateLayerOptions,
} from './ocicrypt.js';
import { chain } from './streams.js';
import { ociLayerMediaType, type LayerTransform } from './transport.js';

/**
 * ocicrypt as layer transforms for copyImage: `cocoon image encrypt` and `cocoon image decrypt`.
 * Encrypted layers keep ocicrypt's shape exactly (media type `…+encrypted`, the private options
 * `digest` = digest of the blob that was encrypted, annotations per recipient scheme), so
 * skopeo/containerd-imgcrypt read them and Cocoon reads theirs.
 */

export interface EncryptTransformOptions {
  /**
   * With a KEK, symkey and nonce are derived from it (HKDF over the diffID and the source blob
   * digest, docs/internals.md §3) so the output is reproducible; without one they are random,
   * as ocicrypt does.
   */
  kek?: Buffer;
  /** Only these layer indexes (0-based; negative counts from the end); default all. */
  layers?: number[];
}

function selected(index: number, count: number, layers: number[] | undefined): boolean {
  if (!layers) return true;
  return layers.some((l) => (l < 0 ? count + l : l) === index);
}

export function encryptTransform(wrappers: KeyWrapper[], opts: EncryptTransformOptions = {}): LayerTransform {
  if (wrappers.length === 0) throw new CocoonError('BAD_USAGE', 'encryption needs at least one --recipient');
  return async (layer, ctx, open) => {
    if (!selected(ctx.index, ctx.count, opts.layers)) return undefined;
    const fmt = layerFormat(layer.mediaType);
    if (fmt.encrypted) throw new CocoonError('IMAGE_INVALID', `layer ${ctx.index} (${layer.digest}) is already encrypted`);
    let symkey: Buffer;
    let nonce: Buffer;
    if (opts.kek) {
      if (!ctx.diffID) throw new CocoonError('IMAGE_INVALID', `layer ${ctx.index}: config has no diffID`);
      ({ symkey, nonce } = deriveLayerKey(opts.kek, ctx.diffID, layer.digest));
    } else {
      symkey = randomBytes(32);
      nonce = randomBytes(16);
    }
    const enc = new LayerEncryptStream(symkey, nonce);
    const stream = chain(await open(), enc);
    return {
      stream,
      async finish(stored): Promise<Descriptor> {
        const annotations = await encryptionAnnotations(wrappers, { symkey, nonce, digest: layer.digest }, { cipher: CIPHER_AES_CTR_HMAC, hmac: enc.hmac });
        return { mediaType: encryptedMediaType(ociLayerMediaType(layer.mediaType)), digest: stored.digest, size: stored.size, annotations: { ...(layer.annotations ?? {}), ...annotations } };
      },
    };
  };
}

/** Opens a layer's private options with the first wrapper that can (LAYER_DECRYPT_FAILED if none). */
export async function openPrivateOptions(annotations: Record<string, string> | undefined, wrappers: KeyWrapper[], what: string): Promise<PrivateLayerOptions> {
  let lastErr: unknown;
  const usable = wrappers.filter((w) => annotations?.[w.annotation] !== undefined);
  for (const w of usable) {
    try {
      return await unwrapPrivateOptions(annotations, w);
    } catch (err) {
      lastErr = err;
    }
  }
  if (isCocoonError(lastErr, 'IMAGE_INVALID')) throw lastErr;
  const schemes = Object.keys(annotations ?? {})
    .filter((k) => k.startsWith(ANNOTATION_KEYS_PREFIX))
    .map((k) => k.slice(ANNOTATION_KEYS_PREFIX.length));
  throw new CocoonError('LAYER_DECRYPT_FAILED', `${what}: none of the given keys opens it (its recipients: ${schemes.join(', ') || 'none'})`, { cause: lastErr });
}

/** Decrypts every encrypted layer; plain layers are copied as they are. */
export function decryptTransform(wrappers: KeyWrapper[]): LayerTransform {
  if (wrappers.length === 0) throw new CocoonError('BAD_USAGE', 'decryption needs at least one --key or --key-file');
  return async (layer, ctx, open) => {
    const fmt = layerFormat(layer.mediaType);
    if (!fmt.encrypted) return undefined;
    const what = `layer ${ctx.index} (${layer.digest})`;
    const priv = await openPrivateOptions(layer.annotations, wrappers, what);
    const pubText = layer.annotations?.[ANNOTATION_PUBOPTS];
    if (pubText === undefined) throw new CocoonError('IMAGE_INVALID', `${what}: no ${ANNOTATION_PUBOPTS}`);
    const pub = decodePublicOptions(pubText);
    const annotations = Object.fromEntries(Object.entries(layer.annotations ?? {}).filter(([k]) => !k.startsWith(ANNOTATION_KEYS_PREFIX) && k !== ANNOTATION_PUBOPTS));
    const mediaType = decryptedMediaType(layer.mediaType);
    return {
      stream: chain(await open(), new LayerDecryptStream(priv.symkey, priv.nonce, pub.hmac)),
      async finish(stored): Promise<Descriptor> {
        // The HMAC (checked at the end of the stream) authenticates the ciphertext. The private
        // options' digest usually names the decrypted blob; skopeo/ocicrypt record the digest of
        // the *uncompressed* input when they compressed an uncompressed layer before encrypting,
        // so a difference is not an error: the stored blob is described by what was written.
        return { mediaType, digest: stored.digest, size: stored.size, ...(Object.keys(annotations).length > 0 ? { annotations } : {}) };
      },
    };
  };
}
