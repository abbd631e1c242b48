import { mkdir, readdir } from 'node:fs/promises';
import { CocoonError } from '../errors.js';
import { layerFormat, MediaType, type Descriptor } from './oci.js';
import { ANNOTATION_KEYS_PREFIX, ANNOTATION_PUBOPTS, LayerDecryptStream, decodePublicOptions, type KeyWrapper } from './ocicrypt.js';
import { openPrivateOptions } from './crypt.js';
import { unpackLayer, type UnpackOptions } from './unpack.js';
import { Label, parseWrappedPayload, readPayloadJson, type WrappedPayload } from './wrapped.js';
import type { ImageSource, Progress } from './transport.js';
import { ProgressTap } from './registry.js';

/** `cocoon image inspect` and `cocoon image unpack` on any ImageSource. */

export interface InspectedLayer {
  mediaType: string;
  digest: string;
  size: number;
  diffID?: string;
  compression: string;
  encrypted: boolean;
  /** Recipient schemes of an encrypted layer (jwe, provider.cocoon, …). */
  recipients?: string[];
  annotations?: Record<string, string>;
}

export interface InspectResult {
  name: string;
  manifestDigest: string;
  manifestMediaType: string;
  configDigest: string;
  platform: string;
  created?: string;
  config: {
    Entrypoint?: string[];
    Cmd?: string[];
    Env?: string[];
    WorkingDir?: string;
    User?: string;
    ExposedPorts?: string[];
    Volumes?: string[];
    StopSignal?: string;
  };
  labels: Record<string, string>;
  layers: InspectedLayer[];
  size: number;
  /** Present for Cocoon-wrapped images: what payload.json says. */
  wrapped?: {
    measurement: string;
    policy: string;
    workload: string;
    kbsResource: string;
    launcherDigest: string;
    launchConfig: WrappedPayload['config'];
    encryptedLayers: Array<{ digest: string; size: number; diffID: string; mediaType: string }>;
  };
}

export async function inspectImage(src: ImageSource): Promise<InspectResult> {
  const img = await src.resolve();
  const c = img.config.config ?? {};
  const layers: InspectedLayer[] = img.manifest.layers.map((l, i) => {
    const fmt = layerFormat(l.mediaType);
    const out: InspectedLayer = { mediaType: l.mediaType, digest: l.digest, size: l.size, compression: fmt.compression, encrypted: fmt.encrypted };
    const diffID = img.config.rootfs.diff_ids[i];
    if (diffID) out.diffID = diffID;
    if (fmt.encrypted) {
      out.recipients = Object.keys(l.annotations ?? {})
        .filter((k) => k.startsWith(ANNOTATION_KEYS_PREFIX))
        .map((k) => k.slice(ANNOTATION_KEYS_PREFIX.length));
    }
    if (l.annotations) out.annotations = Object.fromEntries(Object.entries(l.annotations).filter(([k]) => !k.startsWith(ANNOTATION_KEYS_PREFIX) && k !== ANNOTATION_PUBOPTS));
    return out;
  });
  const labels = c.Labels ?? {};
  const result: InspectResult = {
    name: src.name,
    manifestDigest: img.manifestDigest,
    manifestMediaType: img.manifestMediaType,
    configDigest: img.manifest.config.digest,
    platform: `${img.config.os}/${img.config.architecture}${img.config.variant ? `/${img.config.variant}` : ''}`,
    config: {
      ...(c.Entrypoint ? { Entrypoint: c.Entrypoint } : {}),
      ...(c.Cmd ? { Cmd: c.Cmd } : {}),
      ...(c.Env ? { Env: c.Env } : {}),
      ...(c.WorkingDir ? { WorkingDir: c.WorkingDir } : {}),
      ...(c.User ? { User: c.User } : {}),
      ...(c.ExposedPorts ? { ExposedPorts: Object.keys(c.ExposedPorts) } : {}),
      ...(c.Volumes ? { Volumes: Object.keys(c.Volumes) } : {}),
      ...(c.StopSignal ? { StopSignal: c.StopSignal } : {}),
    },
    labels,
    layers,
    size: img.manifest.layers.reduce((a, l) => a + l.size, img.manifest.config.size),
  };
  if (img.config.created) result.created = img.config.created;
  const payloadLayer = img.manifest.layers[1];
  if (labels[Label.wrapped] === '1' && img.manifest.layers.length === 2 && payloadLayer && payloadLayer.mediaType === MediaType.layerTar) {
    const payload = parseWrappedPayload(await readPayloadJson(await src.openBlob(payloadLayer)));
    if (labels[Label.measurement] !== payload.measurement) throw new CocoonError('MEASUREMENT_MISMATCH', 'image labels disagree with payload.json');
    result.wrapped = {
      measurement: payload.measurement,
      policy: payload.policy,
      workload: payload.workload,
      kbsResource: payload.kbsResource,
      launcherDigest: payload.launcherDigest,
      launchConfig: payload.config,
      encryptedLayers: payload.layers.map((l) => ({ digest: l.digest, size: l.size, diffID: l.diffID, mediaType: l.mediaType })),
    };
  }
  return result;
}

export interface UnpackImageOptions extends Omit<UnpackOptions, 'preStages'> {
  /** Recipients able to open encrypted layers. */
  keys?: KeyWrapper[];
  progress?: Progress;
}

/**
 * Unpacks every layer, in order, into `dir` (which must be empty or absent) with the safe
 * unpacker; encrypted layers are decrypted on the way when a key opens them. The diffIDs must
 * match the config (DIGEST_MISMATCH).
 */
export async function unpackImage(src: ImageSource, dir: string, opts: UnpackImageOptions = {}): Promise<{ manifestDigest: string; layers: number; diffIDs: string[]; warnings: string[] }> {
  const img = await src.resolve();
  await mkdir(dir, { recursive: true });
  if ((await readdir(dir)).length > 0) throw new CocoonError('BAD_USAGE', `${dir} is not empty`);
  const diffIDs: string[] = [];
  const warnings: string[] = [];
  if (img.config.rootfs.diff_ids.length !== img.manifest.layers.length) throw new CocoonError('IMAGE_INVALID', 'config diff_ids and manifest layers differ in number');
  for (const [i, layer] of img.manifest.layers.entries()) {
    const fmt = layerFormat(layer.mediaType);
    const id = `layer ${i + 1}/${img.manifest.layers.length}`;
    const stages = [];
    if (fmt.encrypted) {
      if (!opts.keys || opts.keys.length === 0) throw new CocoonError('LAYER_DECRYPT_FAILED', `${id} is encrypted: give --key or --key-file`);
      const priv = await openPrivateOptions(layer.annotations, opts.keys, id);
      const pub = decodePublicOptions(layer.annotations?.[ANNOTATION_PUBOPTS] ?? '');
      // authenticity: the HMAC at the end of the stream; content: the diffID check below
      stages.push(new LayerDecryptStream(priv.symkey, priv.nonce, pub.hmac));
    }
    const progress = opts.progress;
    if (progress) {
      progress.start(id, `${id} ${layer.digest.slice(7, 19)}`, layer.size);
      stages.unshift(new ProgressTap((n) => progress.advance(id, n)));
    }
    const r = await unpackLayer(await src.openBlob(layer as Descriptor), fmt.compression, dir, { ...opts, preStages: stages });
    if (r.diffID !== img.config.rootfs.diff_ids[i]) throw new CocoonError('DIGEST_MISMATCH', `${id}: diffID ${r.diffID} differs from the config's ${img.config.rootfs.diff_ids[i] ?? ''}`);
    progress?.done(id, `${r.entries} entries`);
    diffIDs.push(r.diffID);
    warnings.push(...r.warnings);
  }
  return { manifestDigest: img.manifestDigest, layers: diffIDs.length, diffIDs, warnings };
}
