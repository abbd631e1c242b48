import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { openVerifiedFile } from './layout.js';
import { digestHex, layerFormat } from './oci.js';
import { ANNOTATION_PUBOPTS, KekWrapper, LayerDecryptStream, decodePublicOptions, kbsKid, unwrapPrivateOptions, verifyLayerHmac, type KeyWrapper } from './ocicrypt.js';
import { HashTap } from './streams.js';
import { materializeLinks, unpackLayer, type UnpackLimits, type UnpackOptions } from './unpack.js';
import type { WrappedLayer, WrappedPayload } from './wrapped.js';

/** The launcher's side: decrypt the payload's layers into the application root. */

export interface DecryptOptions extends Omit<UnpackOptions, 'limits' | 'preStages'> {
  /** Unwrap with this recipient instead of the KEK (e.g. a JWE private key). */
  keyWrapper?: KeyWrapper;
}

function ciphertextPath(payloadDir: string, layer: WrappedLayer): string {
  return join(payloadDir, 'blobs', 'sha256', digestHex(layer.digest));
}

/**
 * For each layer in order: unwrap the private options (LAYER_DECRYPT_FAILED on a wrong key),
 * check the HMAC and digest over the whole ciphertext file before any plaintext exists
 * (LAYER_AUTH_FAILED / DIGEST_MISMATCH), then decrypt, decompress and safely unpack into
 * destRoot while hashing; the plaintext blob digest and the diffID must match
 * (DIGEST_MISMATCH). The second read re-checks HMAC and digest too, so a file swapped between
 * the passes fails the call — the caller must then discard destRoot. Returns the diffIDs.
 */
export interface DecryptPayloadArgs {
  payloadDir: string;
  payload: WrappedPayload;
  kek: Buffer;
  destRoot: string;
  limits?: Partial<UnpackLimits>;
  options?: DecryptOptions;
}

export function decryptPayloadLayers(args: DecryptPayloadArgs): Promise<string[]>;
export function decryptPayloadLayers(payloadDir: string, payload: WrappedPayload, kek: Buffer, destRoot: string, limits?: Partial<UnpackLimits>, opts?: DecryptOptions): Promise<string[]>;
export function decryptPayloadLayers(
  a: string | DecryptPayloadArgs,
  payload?: WrappedPayload,
  kek?: Buffer,
  destRoot?: string,
  limits: Partial<UnpackLimits> = {},
  opts: DecryptOptions = {},
): Promise<string[]> {
  if (typeof a === 'string') {
    if (!payload || !kek || destRoot === undefined) throw new CocoonError('BAD_USAGE', 'decryptPayloadLayers: missing arguments');
    return decryptLayers(a, payload, kek, destRoot, limits, opts);
  }
  return decryptLayers(a.payloadDir, a.payload, a.kek, a.destRoot, a.limits ?? {}, a.options ?? {});
}

async function decryptLayers(payloadDir: string, payload: WrappedPayload, kek: Buffer, destRoot: string, limits: Partial<UnpackLimits>, opts: DecryptOptions): Promise<string[]> {
  const wrapper = opts.keyWrapper ?? new KekWrapper(kek, kbsKid(payload.kbsResource));
  const diffIDs: string[] = [];
  // Gramine: symlinks are recorded across all layers and become copies at the end (unpack.ts)
  const links = opts.libos === 'gramine' ? (opts.links ?? new Map<string, string>()) : undefined;
  for (const [i, layer] of payload.layers.entries()) {
    const fmt = layerFormat(layer.mediaType);
    if (!fmt.encrypted) throw new CocoonError('IMAGE_INVALID', `payload layer ${i} is not encrypted`);
    const priv = await unwrapPrivateOptions(layer.annotations, wrapper);
    const pubAnnotation = layer.annotations[ANNOTATION_PUBOPTS];
    if (pubAnnotation === undefined) throw new CocoonError('IMAGE_INVALID', `payload layer ${i} has no ${ANNOTATION_PUBOPTS}`);
    const pub = decodePublicOptions(pubAnnotation);
    const file = ciphertextPath(payloadDir, layer);
    const what = `payload layer ${i} (${layer.digest})`;

    await verifyLayerHmac(openVerifiedFile(file, layer, what), { symkey: priv.symkey, hmac: pub.hmac });

    const plainTap = new HashTap();
    const result = await unpackLayer(openVerifiedFile(file, layer, what), fmt.compression, destRoot, {
      ...opts,
      ...(links ? { links } : {}),
      limits,
      preStages: [new LayerDecryptStream(priv.symkey, priv.nonce, pub.hmac), plainTap],
    });
    if (plainTap.digest !== priv.digest) {
      throw new CocoonError('DIGEST_MISMATCH', `${what}: decrypted blob digest ${plainTap.digest} differs from ${priv.digest}`);
    }
    if (result.diffID !== layer.diffID) {
      throw new CocoonError('DIGEST_MISMATCH', `${what}: diffID ${result.diffID} differs from ${layer.diffID}`, { details: { expected: layer.diffID, actual: result.diffID } });
    }
    diffIDs.push(result.diffID);
  }
  if (links && links.size > 0) await materializeLinks(destRoot, links, { ...(opts.onWarning ? { onWarning: opts.onWarning } : {}), ...(limits.maxEntries !== undefined ? { maxEntries: limits.maxEntries } : {}), ...(limits.maxBytes !== undefined ? { maxBytes: limits.maxBytes } : {}) });
  return diffIDs;
}
