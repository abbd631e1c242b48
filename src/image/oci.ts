import { CocoonError } from '../errors.js';

/** OCI image-spec v1.1 shapes, and strict parsers for the untrusted JSON that carries them. */

export const MediaType = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';

export const LIMITS = {
  indexBytes: 4 << 20,
  manifestBytes: 4 << 20,
  configBytes: 8 << 20,
  maxLayers: 512,
  maxManifests: 4096,
  maxAnnotationBytes: 1 << 20,
} as const;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** The subset of the OCI container config Cocoon reads or writes. */
export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
}

export interface ImageConfig {
  architecture: string;
  os: string;
  variant?: string;
  created?: string;
  author?: string;
  config?: ContainerConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
}

export type Compression = 'none' | 'gzip' | 'zstd';

export interface LayerFormat {
  compression: Compression;
  encrypted: boolean;
}

const LAYER_FORMATS: ReadonlyMap<string, LayerFormat> = (() => {
  const m = new Map<string, LayerFormat>();
  const bases: Array<[string, Compression]> = [
    ['tar', 'none'],
    ['tar+gzip', 'gzip'],
    ['tar+zstd', 'zstd'],
  ];
  for (const prefix of ['application/vnd.oci.image.layer.v1.', 'application/vnd.oci.image.layer.nondistributable.v1.']) {
    for (const [suffix, compression] of bases) {
      m.set(prefix + suffix, { compression, encrypted: false });
      m.set(`${prefix + suffix}+encrypted`, { compression, encrypted: true });
    }
  }
  m.set(MediaType.dockerLayerGzip, { compression: 'gzip', encrypted: false });
  m.set('application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', { compression: 'gzip', encrypted: false });
  return m;
})();

/** Compression and encryption of a layer, from its media type; IMAGE_INVALID when unknown. */
export function layerFormat(mediaType: string): LayerFormat {
  const f = LAYER_FORMATS.get(mediaType);
  if (!f) throw new CocoonError('IMAGE_INVALID', `unsupported layer media type ${JSON.stringify(mediaType)}`);
  return f;
}

export function isDigest(s: unknown): s is string {
  return typeof s === 'string' && DIGEST_RE.test(s);
}

export function digestHex(digest: string): string {
  if (!isDigest(digest)) throw new CocoonError('IMAGE_INVALID', `bad digest ${JSON.stringify(digest).slice(0, 80)}`);
  return digest.slice('sha256:'.length);
}

// ---- strict JSON reading -------------------------------------------------------------------

type Json = Record<string, unknown>;

function fail(where: string, what: string): never {
  throw new CocoonError('IMAGE_INVALID', `${where}: ${what}`, { details: { where } });
}

export function parseJsonBytes(bytes: Uint8Array, maxBytes: number, where: string): unknown {
  if (bytes.byteLength > maxBytes) {
    throw new CocoonError('INPUT_TOO_LARGE', `${where}: ${bytes.byteLength} bytes exceeds ${maxBytes}`, { details: { where } });
  }
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch {
    return fail(where, 'not valid JSON');
  }
}

function obj(v: unknown, where: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(where, 'expected an object');
  return v as Json;
}

function str(v: unknown, where: string, max = 4096): string {
  if (typeof v !== 'string') fail(where, 'expected a string');
  if (v.length > max) fail(where, `string longer than ${max}`);
  return v;
}

function optStr(v: unknown, where: string, max = 4096): string | undefined {
  return v === undefined || v === null ? undefined : str(v, where, max);
}

function strArray(v: unknown, where: string, maxItems = 4096, maxLen = 1 << 16): string[] {
  if (!Array.isArray(v)) fail(where, 'expected an array of strings');
  if (v.length > maxItems) fail(where, `more than ${maxItems} items`);
  return v.map((x, i) => str(x, `${where}[${i}]`, maxLen));
}

function optStrArray(v: unknown, where: string): string[] | undefined {
  return v === undefined || v === null ? undefined : strArray(v, where);
}

function strMap(v: unknown, where: string, maxValue = LIMITS.maxAnnotationBytes): Record<string, string> {
  const o = obj(v, where);
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(o)) out[k] = str(x, `${where}.${k}`, maxValue);
  return out;
}

function emptyObjMap(v: unknown, where: string): Record<string, Record<string, never>> {
  const o = obj(v, where);
  const out: Record<string, Record<string, never>> = {};
  for (const k of Object.keys(o)) {
    obj(o[k], `${where}.${k}`);
    out[k] = {};
  }
  return out;
}

function schemaVersion2(v: unknown, where: string): 2 {
  if (v !== 2) fail(where, 'schemaVersion must be 2');
  return 2;
}

export function parseDescriptor(v: unknown, where: string): Descriptor {
  const o = obj(v, where);
  const mediaType = str(o.mediaType, `${where}.mediaType`, 255);
  if (!/^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$/.test(mediaType)) fail(`${where}.mediaType`, 'malformed media type');
  const digest = o.digest;
  if (!isDigest(digest)) fail(`${where}.digest`, 'expected sha256:<64 lowercase hex>');
  const size = o.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) fail(`${where}.size`, 'expected a non-negative integer');
  const d: Descriptor = { mediaType, digest, size };
  if (o.annotations !== undefined) d.annotations = strMap(o.annotations, `${where}.annotations`);
  if (o.platform !== undefined) {
    const p = obj(o.platform, `${where}.platform`);
    d.platform = { architecture: str(p.architecture, `${where}.platform.architecture`, 64), os: str(p.os, `${where}.platform.os`, 64) };
    const variant = optStr(p.variant, `${where}.platform.variant`, 64);
    if (variant !== undefined) d.platform.variant = variant;
  }
  if (o.urls !== undefined) d.urls = strArray(o.urls, `${where}.urls`, 64);
  return d;
}

export function parseIndex(bytes: Uint8Array): ImageIndex {
  const o = obj(parseJsonBytes(bytes, LIMITS.indexBytes, 'index'), 'index');
  const index: ImageIndex = { schemaVersion: schemaVersion2(o.schemaVersion, 'index'), manifests: [] };
  if (o.mediaType !== undefined) {
    const mt = str(o.mediaType, 'index.mediaType');
    if (mt !== MediaType.index && mt !== MediaType.dockerManifestList) fail('index.mediaType', `unexpected ${mt}`);
    index.mediaType = mt;
  }
  if (!Array.isArray(o.manifests)) fail('index.manifests', 'expected an array');
  if (o.manifests.length > LIMITS.maxManifests) fail('index.manifests', 'too many entries');
  index.manifests = o.manifests.map((m, i) => parseDescriptor(m, `index.manifests[${i}]`));
  if (o.annotations !== undefined) index.annotations = strMap(o.annotations, 'index.annotations');
  return index;
}

export function parseManifest(bytes: Uint8Array): ImageManifest {
  const o = obj(parseJsonBytes(bytes, LIMITS.manifestBytes, 'manifest'), 'manifest');
  const sv = schemaVersion2(o.schemaVersion, 'manifest');
  let mediaType: string | undefined;
  if (o.mediaType !== undefined) {
    mediaType = str(o.mediaType, 'manifest.mediaType');
    if (mediaType !== MediaType.manifest && mediaType !== MediaType.dockerManifest) fail('manifest.mediaType', `unexpected ${mediaType}`);
  }
  const config = parseDescriptor(o.config, 'manifest.config');
  if (config.mediaType !== MediaType.config && config.mediaType !== MediaType.dockerConfig) {
    fail('manifest.config.mediaType', `not an image config: ${config.mediaType}`);
  }
  if (!Array.isArray(o.layers)) fail('manifest.layers', 'expected an array');
  if (o.layers.length > LIMITS.maxLayers) fail('manifest.layers', `more than ${LIMITS.maxLayers} layers`);
  const layers = o.layers.map((l, i) => parseDescriptor(l, `manifest.layers[${i}]`));
  const m: ImageManifest = { schemaVersion: sv, config, layers };
  if (mediaType !== undefined) m.mediaType = mediaType;
  if (o.annotations !== undefined) m.annotations = strMap(o.annotations, 'manifest.annotations');
  return m;
}

function parseContainerConfig(v: unknown): ContainerConfig {
  const o = obj(v, 'config.config');
  const c: ContainerConfig = {};
  const user = optStr(o.User, 'config.config.User', 256);
  if (user !== undefined) c.User = user;
  if (o.ExposedPorts !== undefined && o.ExposedPorts !== null) c.ExposedPorts = emptyObjMap(o.ExposedPorts, 'config.config.ExposedPorts');
  const env = optStrArray(o.Env, 'config.config.Env');
  if (env !== undefined) c.Env = env;
  const ep = optStrArray(o.Entrypoint, 'config.config.Entrypoint');
  if (ep !== undefined) c.Entrypoint = ep;
  const cmd = optStrArray(o.Cmd, 'config.config.Cmd');
  if (cmd !== undefined) c.Cmd = cmd;
  if (o.Volumes !== undefined && o.Volumes !== null) c.Volumes = emptyObjMap(o.Volumes, 'config.config.Volumes');
  const wd = optStr(o.WorkingDir, 'config.config.WorkingDir');
  if (wd !== undefined) c.WorkingDir = wd;
  if (o.Labels !== undefined && o.Labels !== null) c.Labels = strMap(o.Labels, 'config.config.Labels', 1 << 16);
  const ss = optStr(o.StopSignal, 'config.config.StopSignal', 64);
  if (ss !== undefined) c.StopSignal = ss;
  return c;
}

export function parseImageConfig(bytes: Uint8Array): ImageConfig {
  const o = obj(parseJsonBytes(bytes, LIMITS.configBytes, 'config'), 'config');
  const rootfs = obj(o.rootfs, 'config.rootfs');
  if (rootfs.type !== 'layers') fail('config.rootfs.type', 'must be "layers"');
  const diffIds = strArray(rootfs.diff_ids, 'config.rootfs.diff_ids', LIMITS.maxLayers, 80);
  diffIds.forEach((d, i) => {
    if (!isDigest(d)) fail(`config.rootfs.diff_ids[${i}]`, 'expected sha256:<64 lowercase hex>');
  });
  const cfg: ImageConfig = {
    architecture: str(o.architecture, 'config.architecture', 64),
    os: str(o.os, 'config.os', 64),
    rootfs: { type: 'layers', diff_ids: diffIds },
  };
  const variant = optStr(o.variant, 'config.variant', 64);
  if (variant !== undefined) cfg.variant = variant;
  const created = optStr(o.created, 'config.created', 64);
  if (created !== undefined) cfg.created = created;
  const author = optStr(o.author, 'config.author');
  if (author !== undefined) cfg.author = author;
  if (o.config !== undefined && o.config !== null) cfg.config = parseContainerConfig(o.config);
  return cfg;
}
