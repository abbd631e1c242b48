import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { CocoonError, isCocoonError } from '../errors.js';
import { ociDigest } from '../crypto/hash.js';
import { DockerArchiveSink, DockerArchiveSource } from './docker-archive.js';
import { LayoutWriter, blobPath, openBlobStream, platformMatches, readBlob, readIndex, selectPlatformManifest } from './layout.js';
import { ANNOTATION_REF_NAME, LIMITS, MediaType, parseImageConfig, parseIndex, parseManifest, type Descriptor, type ImageConfig, type ImageManifest, type Platform } from './oci.js';
import { formatImageReference, type DockerReference, type ImageReference } from './reference.js';
import { ProgressTap, RegistryClient, type RegistryOptions } from './registry.js';
import { chain } from './streams.js';

/**
 * Where images come from and go to. Every transport (OCI layout, docker-archive, registry)
 * implements ImageSource and/or ImageSink; `copyImage` moves an image between any two,
 * optionally transforming each layer (ocicrypt encrypt/decrypt), streaming every blob.
 */

export interface SourceImage {
  manifestBytes: Buffer;
  manifestMediaType: string;
  manifestDigest: string;
  manifest: ImageManifest;
  configBytes: Buffer;
  config: ImageConfig;
}

export interface ImageSource {
  readonly name: string;
  /** Registry and repository, when blobs could be mounted from here. */
  readonly registryRepo?: { host: string; repo: string };
  resolve(): Promise<SourceImage>;
  /** A blob stream that errors with DIGEST_MISMATCH unless it matches the descriptor. */
  openBlob(desc: Descriptor): Promise<Readable>;
  close(): Promise<void>;
}

export interface BlobInfo {
  mediaType: string;
  /** Known digest and size (plain copies); transformed layers are hashed on the way. */
  expected?: { digest: string; size: number };
}

export interface PutBlobResult {
  digest: string;
  size: number;
  /** Set when the sink stored the blob in another form (docker-archive decompresses layers). */
  mediaType?: string;
}

export interface ImageSink {
  readonly name: string;
  /** True when the blob is already there (or was mounted from `from`): the copy skips it. */
  hasBlob(desc: Descriptor, from?: { host: string; repo: string }): Promise<boolean>;
  putBlob(stream: Readable, info: BlobInfo): Promise<PutBlobResult>;
  /** Stores the manifest under the destination's tag; returns its digest. */
  putManifest(bytes: Buffer, mediaType: string, platform?: Platform): Promise<string>;
  /** Finishes the destination (index.json, archive file); called once after the manifest. */
  close(): Promise<void>;
  /** Discards partial output after a failure. */
  abort(): Promise<void>;
}

export interface TransportOptions {
  platform?: Platform;
  registry?: RegistryOptions;
}

/** An explicitly requested platform must match the image's config (single-platform images). */
function checkConfigPlatform(config: ImageConfig, want: Platform | undefined, name: string): ImageConfig {
  if (want && !platformMatches({ os: config.os, architecture: config.architecture, ...(config.variant ? { variant: config.variant } : {}) }, want)) {
    throw new CocoonError('NOT_FOUND', `${name} is ${config.os}/${config.architecture}, not ${want.os}/${want.architecture}${want.variant ? `/${want.variant}` : ''}`);
  }
  return config;
}

// ---- OCI layout ---------------------------------------------------------------------------------

export class LayoutSource implements ImageSource {
  readonly name: string;
  constructor(
    readonly dir: string,
    private readonly tag: string | undefined,
    private readonly platform: Platform | undefined,
  ) {
    this.name = `oci:${dir}${tag !== undefined ? `:${tag}` : ''}`;
  }

  async resolve(): Promise<SourceImage> {
    const index = await readIndex(this.dir);
    let candidates = index.manifests;
    if (this.tag !== undefined) {
      candidates = candidates.filter((m) => m.annotations?.[ANNOTATION_REF_NAME] === this.tag);
      if (candidates.length === 0) throw new CocoonError('NOT_FOUND', `${this.name}: no manifest named ${JSON.stringify(this.tag)}`);
    }
    const only = candidates.length === 1 ? candidates[0] : undefined;
    const onlyFits = only !== undefined && (this.platform === undefined || only.platform === undefined || platformMatches(only.platform, this.platform));
    let desc = only && onlyFits ? only : selectPlatformManifest({ schemaVersion: 2, manifests: candidates }, this.platform, `${this.dir}/index.json`);
    if (desc.mediaType === MediaType.index || desc.mediaType === MediaType.dockerManifestList) {
      const nested = parseIndex(await readBlob(this.dir, desc, LIMITS.indexBytes));
      desc = selectPlatformManifest(nested, this.platform, `index ${desc.digest}`);
    }
    if (desc.mediaType !== MediaType.manifest && desc.mediaType !== MediaType.dockerManifest) throw new CocoonError('IMAGE_INVALID', `${this.name}: unsupported manifest media type ${desc.mediaType}`);
    const manifestBytes = await readBlob(this.dir, desc, LIMITS.manifestBytes);
    const manifest = parseManifest(manifestBytes);
    const configBytes = await readBlob(this.dir, manifest.config, LIMITS.configBytes);
    const config = checkConfigPlatform(parseImageConfig(configBytes), this.platform, this.name);
    return { manifestBytes, manifestMediaType: desc.mediaType, manifestDigest: desc.digest, manifest, configBytes, config };
  }

  async openBlob(desc: Descriptor): Promise<Readable> {
    return openBlobStream(this.dir, desc);
  }

  async close(): Promise<void> {
    /* nothing held open */
  }
}

export class LayoutSink implements ImageSink {
  readonly name: string;
  private writer: LayoutWriter | undefined;
  private entry: Descriptor | undefined;

  constructor(
    readonly dir: string,
    private readonly tag: string | undefined,
  ) {
    this.name = `oci:${dir}${tag !== undefined ? `:${tag}` : ''}`;
  }

  private async w(): Promise<LayoutWriter> {
    this.writer ??= await LayoutWriter.open(this.dir);
    return this.writer;
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    const st = await stat(blobPath(this.dir, desc.digest)).catch(() => undefined);
    return st !== undefined && st.isFile() && st.size === desc.size;
  }

  async putBlob(stream: Readable, info: BlobInfo): Promise<PutBlobResult> {
    const r = await (await this.w()).putStream(stream);
    if (info.expected && (info.expected.digest !== r.digest || info.expected.size !== r.size)) {
      throw new CocoonError('DIGEST_MISMATCH', `blob: content does not match ${info.expected.digest}`);
    }
    return r;
  }

  async putManifest(bytes: Buffer, mediaType: string, platform?: Platform): Promise<string> {
    const d = await (await this.w()).putBytes(bytes, mediaType);
    this.entry = { ...d, ...(platform ? { platform } : {}), ...(this.tag !== undefined ? { annotations: { [ANNOTATION_REF_NAME]: this.tag } } : {}) };
    return d.digest;
  }

  async close(): Promise<void> {
    if (!this.entry) throw new CocoonError('INTERNAL', `${this.name}: no manifest written`);
    await (await this.w()).writeIndex([this.entry]);
  }

  async abort(): Promise<void> {
    /* blobs are content-addressed and harmless; index.json was not touched */
  }
}

// ---- registry -----------------------------------------------------------------------------------

export class RegistrySource implements ImageSource {
  readonly name: string;
  readonly registryRepo: { host: string; repo: string };
  private constructor(
    private readonly client: RegistryClient,
    private readonly ref: DockerReference,
    private readonly platform: Platform | undefined,
  ) {
    this.name = formatImageReference({ transport: 'docker', ref });
    this.registryRepo = { host: client.host, repo: client.repo };
  }

  static async open(ref: DockerReference, opts: TransportOptions): Promise<RegistrySource> {
    return new RegistrySource(await RegistryClient.open(ref, opts.registry ?? {}), ref, opts.platform);
  }

  async resolve(): Promise<SourceImage> {
    const reference = this.ref.digest ?? this.ref.tag ?? 'latest';
    let m = await this.client.getManifest(reference, Math.max(LIMITS.manifestBytes, LIMITS.indexBytes));
    let mt = mediaTypeOf(m.bytes, m.mediaType);
    if (mt === MediaType.index || mt === MediaType.dockerManifestList) {
      const desc = selectPlatformManifest(parseIndex(m.bytes), this.platform, `${this.name} index`);
      m = await this.client.getManifest(desc.digest);
      mt = mediaTypeOf(m.bytes, m.mediaType);
    }
    if (mt !== MediaType.manifest && mt !== MediaType.dockerManifest) throw new CocoonError('IMAGE_INVALID', `${this.name}: unsupported manifest media type ${mt}`);
    const manifest = parseManifest(m.bytes);
    const configBytes = await readStream(await this.client.openBlob(manifest.config), LIMITS.configBytes);
    const config = checkConfigPlatform(parseImageConfig(configBytes), this.platform, this.name);
    return { manifestBytes: m.bytes, manifestMediaType: mt, manifestDigest: m.digest, manifest, configBytes, config };
  }

  openBlob(desc: Descriptor): Promise<Readable> {
    return this.client.openBlob(desc);
  }

  async close(): Promise<void> {
    this.client.close();
  }
}

export class RegistrySink implements ImageSink {
  readonly name: string;
  private constructor(
    private readonly client: RegistryClient,
    private readonly ref: DockerReference,
  ) {
    this.name = formatImageReference({ transport: 'docker', ref });
  }

  static async open(ref: DockerReference, opts: TransportOptions): Promise<RegistrySink> {
    return new RegistrySink(await RegistryClient.open(ref, opts.registry ?? {}), ref);
  }

  async hasBlob(desc: Descriptor, from?: { host: string; repo: string }): Promise<boolean> {
    if (await this.client.hasBlob(desc.digest, 'pull,push')) return true;
    if (from && from.host === this.client.host && from.repo !== this.client.repo) return this.client.mountBlob(desc.digest, from.repo);
    return false;
  }

  putBlob(stream: Readable, info: BlobInfo): Promise<PutBlobResult> {
    return this.client.uploadBlob(stream, info.expected);
  }

  async putManifest(bytes: Buffer, mediaType: string): Promise<string> {
    const d = ociDigest(bytes);
    if (this.ref.digest !== undefined && this.ref.tag === undefined && this.ref.digest !== d) {
      throw new CocoonError('BAD_USAGE', `${this.name}: the written manifest has digest ${d}; push by tag instead`);
    }
    return this.client.putManifest(this.ref.tag ?? d, bytes, mediaType);
  }

  async close(): Promise<void> {
    this.client.close();
  }

  async abort(): Promise<void> {
    this.client.close();
  }
}

function mediaTypeOf(bytes: Buffer, header: string): string {
  if (header && header !== 'application/json' && header !== 'text/plain') return header;
  try {
    const o = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown; manifests?: unknown };
    if (typeof o.mediaType === 'string') return o.mediaType;
    return Array.isArray(o.manifests) ? MediaType.index : MediaType.manifest;
  } catch {
    throw new CocoonError('IMAGE_INVALID', 'manifest is not JSON');
  }
}

async function readStream(s: Readable, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of s) {
    n += (c as Buffer).length;
    if (n > max) {
      s.destroy();
      throw new CocoonError('INPUT_TOO_LARGE', `blob larger than ${max} bytes`);
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

// ---- opening ------------------------------------------------------------------------------------

export async function openSource(ref: ImageReference, opts: TransportOptions = {}): Promise<ImageSource> {
  switch (ref.transport) {
    case 'oci':
      return new LayoutSource(ref.dir, ref.tag, opts.platform);
    case 'docker-archive':
      return new DockerArchiveSource(ref.file, ref.ref);
    case 'docker':
      return RegistrySource.open(ref.ref, opts);
  }
}

export async function openSink(ref: ImageReference, opts: TransportOptions = {}): Promise<ImageSink> {
  switch (ref.transport) {
    case 'oci':
      return new LayoutSink(ref.dir, ref.tag);
    case 'docker-archive':
      return new DockerArchiveSink(ref.file, ref.ref);
    case 'docker':
      return RegistrySink.open(ref.ref, opts);
  }
}

// ---- copying ------------------------------------------------------------------------------------

export interface Progress {
  start(id: string, label: string, total: number): void;
  advance(id: string, bytes: number): void;
  done(id: string, note: string): void;
}

/** What a layer transform returns: the new stream and, after it ended, the final descriptor fields. */
export interface TransformedLayer {
  stream: Readable;
  /** Called after the sink stored the stream; gives the new descriptor (mediaType, annotations…). */
  finish(stored: PutBlobResult): Promise<Descriptor>;
}

export interface LayerContext {
  index: number;
  /** Number of layers in the image. */
  count: number;
  /** The config's diffID for this layer (as claimed by the source; not verified here). */
  diffID: string | undefined;
}

export type LayerTransform = (layer: Descriptor, ctx: LayerContext, open: () => Promise<Readable>) => Promise<TransformedLayer | undefined>;

export interface CopyOptions {
  transform?: LayerTransform;
  progress?: Progress;
  /** Convert the manifest to OCI media types when anything changes (default true). */
  toOci?: boolean;
  /** Layers in flight at once (default 3). */
  concurrency?: number;
}

export interface CopyResult {
  manifestDigest: string;
  sourceManifestDigest: string;
  configDigest: string;
  layers: Array<Descriptor & { skipped?: boolean }>;
}

const DOCKER_TO_OCI: Record<string, string> = {
  [MediaType.dockerLayerGzip]: MediaType.layerGzip,
  'application/vnd.docker.image.rootfs.diff.tar': MediaType.layerTar,
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
};

export function ociLayerMediaType(mt: string): string {
  return DOCKER_TO_OCI[mt] ?? mt;
}

function sameDescriptor(a: Descriptor, b: Descriptor): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Copies one image (one platform) from `src` to `dst`. Unchanged blobs already present at the
 * destination are skipped (or mounted across repositories); the manifest bytes are kept when
 * nothing changed, so the digest survives a plain copy.
 */
export async function copyImage(src: ImageSource, dst: ImageSink, opts: CopyOptions = {}): Promise<CopyResult> {
  const progress = opts.progress;
  const layersOut: Array<Descriptor & { skipped?: boolean }> = [];
  try {
    const img = await src.resolve();
    const count = img.manifest.layers.length;
    const copyLayer = async (i: number, layer: Descriptor): Promise<Descriptor & { skipped?: boolean }> => {
      const id = `layer ${i + 1}/${count}`;
      const label = `${id} ${layer.digest.slice(7, 19)}`;
      const open = async (): Promise<Readable> => {
        const s = await src.openBlob(layer);
        return progress ? chain(s, new ProgressTap((n) => progress.advance(id, n))) : s;
      };
      const t = opts.transform ? await opts.transform(layer, { index: i, count, diffID: img.config.rootfs.diff_ids[i] }, open) : undefined;
      if (!t) {
        progress?.start(id, label, layer.size);
        if (await dst.hasBlob(layer, src.registryRepo)) {
          progress?.done(id, 'exists');
          return { ...layer, skipped: true };
        }
        const r = await dst.putBlob(await open(), { mediaType: layer.mediaType, expected: { digest: layer.digest, size: layer.size } });
        progress?.done(id, 'copied');
        return r.mediaType ? { mediaType: r.mediaType, digest: r.digest, size: r.size } : { ...layer };
      }
      progress?.start(id, label, layer.size);
      const stored = await dst.putBlob(t.stream, { mediaType: layer.mediaType });
      const d = await t.finish(stored);
      progress?.done(id, 'done');
      return stored.mediaType ? { ...d, mediaType: stored.mediaType, digest: stored.digest, size: stored.size } : d;
    };
    // layers move concurrently (like skopeo), results keep their order
    const results: Array<Descriptor & { skipped?: boolean }> = new Array<Descriptor>(count);
    let next = 0;
    let failed = false;
    const worker = async (): Promise<void> => {
      while (!failed && next < count) {
        const i = next++;
        try {
          results[i] = await copyLayer(i, img.manifest.layers[i] as Descriptor);
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    const settled = await Promise.allSettled(Array.from({ length: Math.min(Math.max(1, opts.concurrency ?? 3), Math.max(count, 1)) }, worker));
    const firstError = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (firstError) throw firstError.reason;
    layersOut.push(...results);
    const plainLayers = layersOut.map(({ skipped: _s, ...d }) => d);
    const unchanged = plainLayers.length === img.manifest.layers.length && plainLayers.every((d, i) => sameDescriptor(d, img.manifest.layers[i] as Descriptor));

    // config
    const cfgDesc = img.manifest.config;
    if (!(await dst.hasBlob(cfgDesc, src.registryRepo))) {
      await dst.putBlob(bufferStream(img.configBytes), { mediaType: cfgDesc.mediaType, expected: { digest: cfgDesc.digest, size: cfgDesc.size } });
    }

    let manifestBytes = img.manifestBytes;
    let manifestMediaType = img.manifestMediaType;
    if (!unchanged) {
      const toOci = opts.toOci !== false;
      const m: ImageManifest = {
        schemaVersion: 2,
        mediaType: toOci ? MediaType.manifest : (img.manifest.mediaType ?? MediaType.manifest),
        config: toOci && cfgDesc.mediaType === MediaType.dockerConfig ? { ...cfgDesc, mediaType: MediaType.config } : cfgDesc,
        layers: plainLayers.map((d) => (toOci ? { ...d, mediaType: ociLayerMediaType(d.mediaType) } : d)),
      };
      if (img.manifest.annotations) m.annotations = img.manifest.annotations;
      manifestBytes = Buffer.from(JSON.stringify(m));
      manifestMediaType = m.mediaType ?? MediaType.manifest;
    }
    const manifestDigest = await dst.putManifest(manifestBytes, manifestMediaType, { os: img.config.os, architecture: img.config.architecture, ...(img.config.variant ? { variant: img.config.variant } : {}) });
    await dst.close();
    return { manifestDigest, sourceManifestDigest: img.manifestDigest, configDigest: cfgDesc.digest, layers: layersOut };
  } catch (err) {
    await dst.abort().catch(() => undefined);
    throw isCocoonError(err) ? err : new CocoonError('IO_ERROR', (err as Error).message, { cause: err });
  }
}

function bufferStream(b: Buffer): Readable {
  return Readable.from([b]);
}
