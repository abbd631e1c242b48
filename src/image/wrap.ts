import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CocoonError } from '../errors.js';
import { decompressStages, layerStreamError } from './compression.js';
import { LayoutWriter, atomicWrite, blobPath, openBlobStream, readLayout, sink, type ResolvedImage } from './layout.js';
import { isLauncherExcluded, launcherFiles, launcherDigest as computeLauncherDigest, workloadMeasurement, type LaunchConfig } from './measure.js';
import { GRAMINE_APP_ROOT, GRAMINE_DIR, GRAMINE_MANIFEST_PATH, gramineManifest, type GramineOptions } from './gramine.js';
import { sha256Hex } from '../crypto/hash.js';
import { ANNOTATION_REF_NAME, MediaType, digestHex, isDigest, layerFormat, type ContainerConfig, type Descriptor, type ImageConfig, type ImageManifest, type Platform } from './oci.js';
import { KekWrapper, LayerEncryptStream, deriveLayerKey, encryptedMediaType, encryptionAnnotations, kbsKid, CIPHER_AES_CTR_HMAC, type KeyWrapper } from './ocicrypt.js';
import { HashTap, Tee, chain } from './streams.js';
import { deterministicGzip, packTar, resolveMtime, tarDirectory, type TarEntry } from './tar.js';
import {
  LAUNCHER_ENTRYPOINT,
  LAUNCHER_ENV,
  Label,
  checkKbsResource,
  checkPolicyName,
  checkWorkloadName,
  serializeWrappedPayload,
  type WrappedLayer,
  type WrappedPayload,
} from './wrapped.js';

export { decryptPayloadLayers } from './decrypt.js';

/** `cocoon wrap`: an OCI image in, a wrapped OCI image (docs/internals.md §1) out. */

export interface WrapOptions {
  source: { layoutDir: string; ref?: string; platform?: Platform };
  dest: { layoutDir: string; ref?: string };
  /** Directory whose content becomes /cocoon/ (launcher, node, libs). */
  launcherDir: string;
  policy: string;
  workload: string;
  /** 32-byte image KEK (the policy's layer-key secret). */
  kek: Buffer;
  /** KBS resource holding the KEK; default `<policy>/layer-key`. */
  kbsResource?: string;
  /** Further recipients of every layer key (e.g. JWE public keys; randomised ones make the output non-reproducible). */
  recipients?: KeyWrapper[];
  /** Archive mtime; default SOURCE_DATE_EPOCH or 0. */
  mtime?: number;
  /**
   * Cache of compressed launcher layers (keyed by launcher digest, mtime and zlib version,
   * verified by digest on reuse); default $COCOON_CACHE/launcher-layers or
   * ~/.cache/cocoon/launcher-layers; false disables it.
   */
  launcherCacheDir?: string | false;
  /** Called for progress messages (e.g. cache hits). */
  onProgress?: (message: string) => void;
  /**
   * `gramine`: also write a Gramine manifest (/cocoon/gramine/cocoon.manifest, in the payload
   * layer) whose trusted files are the launcher files and payload.json (docs/tee-support.md).
   */
  libos?: 'gramine';
  gramine?: GramineOptions;
}

export interface WrapResult {
  manifestDigest: string;
  configDigest: string;
  measurement: string;
  launcherDigest: string;
  layers: WrappedLayer[];
  /** With `libos: 'gramine'`: where the manifest is in the image, and its SHA-256 (hex). */
  gramineManifest?: { path: string; sha256: string };
}

// ---- planning (no I/O) ----------------------------------------------------------------------

/** The launch configuration of the original image, normalised as the measurement uses it. */
export function launchConfigOf(config: ImageConfig): LaunchConfig {
  const c = config.config ?? {};
  return {
    entrypoint: c.Entrypoint ?? [],
    cmd: c.Cmd ?? [],
    env: c.Env ?? [],
    workingDir: c.WorkingDir || '/',
    user: c.User || '0:0',
  };
}

export function planWrappedConfig(
  source: ImageConfig,
  p: { measurement: string; policy: string; workload: string; launcherDigest: string; diffIDs: [string, string]; kbsResource?: string; sourceDigest?: string },
): ImageConfig {
  const sc = source.config ?? {};
  const cc: ContainerConfig = { Entrypoint: LAUNCHER_ENTRYPOINT, Cmd: [], Env: LAUNCHER_ENV, WorkingDir: '/' };
  if (sc.ExposedPorts) cc.ExposedPorts = sc.ExposedPorts;
  if (sc.Volumes) cc.Volumes = sc.Volumes;
  if (sc.StopSignal) cc.StopSignal = sc.StopSignal;
  cc.Labels = {
    ...(sc.Labels ?? {}),
    [Label.wrapped]: '1',
    [Label.measurement]: p.measurement,
    [Label.policy]: p.policy,
    [Label.workload]: p.workload,
    [Label.launcherDigest]: p.launcherDigest,
    ...(p.kbsResource !== undefined ? { [Label.kbsResource]: p.kbsResource } : {}),
    ...(p.sourceDigest !== undefined ? { [Label.sourceDigest]: p.sourceDigest } : {}),
  };
  const out: ImageConfig = { architecture: source.architecture, os: source.os, config: cc, rootfs: { type: 'layers', diff_ids: [...p.diffIDs] } };
  if (source.variant) out.variant = source.variant;
  return out;
}

export function planManifest(config: Descriptor, layers: Descriptor[]): ImageManifest {
  return { schemaVersion: 2, mediaType: MediaType.manifest, config, layers };
}

/** Entries of the payload layer: payload.json first, then the ciphertext blobs. */
export function planPayloadEntries(payloadJson: Buffer, blobs: Array<{ digest: string; size: number; file: string }>, gramineManifestText?: Buffer): TarEntry[] {
  const dir = (name: string, mode = 0o755): TarEntry => ({ name, type: 'directory', mode, uid: 0, gid: 0 });
  const entries: TarEntry[] = [
    dir('cocoon'),
    dir('cocoon/payload'),
    { name: 'cocoon/payload/payload.json', type: 'file', mode: 0o644, uid: 0, gid: 0, size: payloadJson.length, content: payloadJson },
  ];
  if (gramineManifestText) {
    // the manifest, and the host directory backing the encrypted application root
    entries.push(
      dir(GRAMINE_DIR.slice(1)),
      { name: GRAMINE_MANIFEST_PATH.slice(1), type: 'file', mode: 0o644, uid: 0, gid: 0, size: gramineManifestText.length, content: gramineManifestText },
      dir(GRAMINE_APP_ROOT.slice(1), 0o700),
    );
  }
  entries.push(
    dir('cocoon/payload/blobs'),
    dir('cocoon/payload/blobs/sha256'),
  );
  const seen = new Set<string>();
  for (const b of blobs) {
    if (seen.has(b.digest)) continue;
    seen.add(b.digest);
    entries.push({ name: `cocoon/payload/blobs/sha256/${digestHex(b.digest)}`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: b.size, content: () => createReadStream(b.file) });
  }
  return entries;
}

function serialize(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

// ---- I/O ------------------------------------------------------------------------------------

async function run(what: string, streams: Array<Readable | Transform | NodeJS.WritableStream>): Promise<void> {
  try {
    await (pipeline as (...s: unknown[]) => Promise<void>)(...streams);
  } catch (err) {
    throw layerStreamError(err, what);
  }
}

interface EncryptedTemp {
  layer: WrappedLayer;
  file: string;
}

/**
 * Encrypts one source layer in a single read: the blob is teed into a decompress-and-hash branch
 * that computes its diffID while it is encrypted. Keys are derived from the config's (claimed)
 * diffID; if the computed one differs the layer is refused (DIGEST_MISMATCH) and its temp file
 * removed, so the result is the same as verifying first.
 */
async function encryptLayer(src: ResolvedImage, desc: Descriptor, index: number, diffID: string, writer: LayoutWriter, kek: Buffer, wrappers: KeyWrapper[]): Promise<EncryptedTemp> {
  const fmt = layerFormat(desc.mediaType);
  if (fmt.encrypted) throw new CocoonError('IMAGE_INVALID', `layer ${desc.digest} is already encrypted`);
  // An uncompressed source layer is gzipped first (deterministically), so its plaintext blob is a function of the source.
  const plainMediaType = fmt.compression === 'zstd' ? MediaType.layerZstd : MediaType.layerGzip;
  const { symkey, nonce } = deriveLayerKey(kek, diffID, desc.digest);
  const plainTap = new HashTap();
  const enc = new LayerEncryptStream(symkey, nonce);
  const cipherTap = new HashTap();
  const diffTap = new HashTap();
  const file = writer.tempPath();
  try {
    await run(`layer ${desc.digest}`, [
      openBlobStream(src.layoutDir, desc),
      new Tee([...decompressStages(fmt.compression), diffTap, sink()]),
      ...(fmt.compression === 'none' ? [deterministicGzip()] : []),
      plainTap,
      enc,
      cipherTap,
      createWriteStream(file, { flags: 'wx' }),
    ]);
    if (diffTap.digest !== diffID) {
      throw new CocoonError('DIGEST_MISMATCH', `layer ${index} (${desc.digest}): diffID ${diffTap.digest} differs from the config's ${diffID}`);
    }
    const annotations = await encryptionAnnotations(wrappers, { symkey, nonce, digest: plainTap.digest }, { cipher: CIPHER_AES_CTR_HMAC, hmac: enc.hmac });
    return { file, layer: { mediaType: encryptedMediaType(plainMediaType), digest: cipherTap.digest, size: cipherTap.bytes, diffID, annotations } };
  } catch (err) {
    await rm(file, { force: true });
    throw err;
  }
}

// ---- the launcher layer and its cache ---------------------------------------------------------

export function defaultCacheDir(): string {
  const env = process.env.COCOON_CACHE;
  return env && env.length > 0 ? env : join(homedir(), '.cache', 'cocoon');
}

interface LauncherBlob {
  digest: string;
  size: number;
  diffID: string;
}

function parseCacheMeta(text: string): LauncherBlob | undefined {
  try {
    const o = JSON.parse(text) as Partial<LauncherBlob>;
    if (isDigest(o.digest) && isDigest(o.diffID) && typeof o.size === 'number' && Number.isSafeInteger(o.size) && o.size > 0) return { digest: o.digest, size: o.size, diffID: o.diffID };
  } catch {
    /* a broken entry is a miss */
  }
  return undefined;
}

/**
 * Writes the launcher layer into the destination. A cached blob (same launcher digest, mtime
 * and zlib, hence the same bytes) is re-verified by digest while it is copied; a mismatch
 * falls back to compressing again and replaces the entry. Cache failures never fail a wrap.
 */
async function launcherLayer(writer: LayoutWriter, opts: WrapOptions, launcherDigest: string, mtime: number): Promise<LauncherBlob> {
  const cacheRoot = opts.launcherCacheDir === false ? undefined : join(opts.launcherCacheDir ?? defaultCacheDir(), 'launcher-layers');
  const key = createHash('sha256').update(`cocoon-launcher-layer/v1\0${launcherDigest}\0${mtime}\0zlib ${process.versions.zlib ?? ''}`).digest('hex');
  const metaPath = cacheRoot ? join(cacheRoot, `${key}.json`) : undefined;
  const blobCache = cacheRoot ? join(cacheRoot, `${key}.tar.gz`) : undefined;
  if (metaPath && blobCache) {
    const meta = parseCacheMeta(await readFile(metaPath, 'utf8').catch(() => ''));
    if (meta) {
      try {
        const r = await writer.putStream(createReadStream(blobCache));
        if (r.digest === meta.digest && r.size === meta.size) {
          const now = new Date();
          await utimes(metaPath, now, now).catch(() => undefined); // recently used: pruned last
          opts.onProgress?.('launcher layer reused from cache');
          return meta;
        }
        opts.onProgress?.('launcher layer cache entry did not verify: rebuilding it');
      } catch {
        /* unreadable cache entry: rebuild */
      }
    }
  }
  const tarTap = new HashTap();
  const launcherTar = tarDirectory(opts.launcherDir, { prefix: 'cocoon', owner: { uid: 0, gid: 0 }, exclude: isLauncherExcluded, mtime });
  const blob = await writer.putStream(chain(launcherTar, tarTap, deterministicGzip()));
  const out: LauncherBlob = { digest: blob.digest, size: blob.size, diffID: tarTap.digest };
  if (cacheRoot && metaPath && blobCache) {
    const tmp = `${blobCache}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      await mkdir(cacheRoot, { recursive: true, mode: 0o700 });
      await copyFile(blobPath(writer.layoutDir, blob.digest), tmp);
      await rename(tmp, blobCache);
      await atomicWrite(metaPath, JSON.stringify(out));
      await pruneLauncherCache(cacheRoot, LAUNCHER_CACHE_KEEP);
    } catch {
      await rm(tmp, { force: true }).catch(() => undefined);
    }
  }
  return out;
}

/** Entries kept in the launcher-layer cache (each rebuild of the launcher makes a new one of ≈ 40 MB). */
export const LAUNCHER_CACHE_KEEP = 4;

/** Keeps the `keep` most recently written entries (and removes stale temp files). */
async function pruneLauncherCache(dir: string, keep: number): Promise<void> {
  const names = await readdir(dir);
  const metas: Array<{ key: string; mtime: number }> = [];
  for (const n of names) {
    const st = await stat(join(dir, n)).catch(() => undefined);
    if (!st) continue;
    if (n.includes('.tmp-') && Date.now() - st.mtimeMs > 3600_000) await rm(join(dir, n), { force: true });
    else if (n.endsWith('.json') && /^[0-9a-f]{64}\.json$/.test(n)) metas.push({ key: n.slice(0, 64), mtime: st.mtimeMs });
  }
  metas.sort((a, b) => b.mtime - a.mtime);
  for (const m of metas.slice(keep)) {
    await rm(join(dir, `${m.key}.json`), { force: true });
    await rm(join(dir, `${m.key}.tar.gz`), { force: true });
  }
}

/**
 * Wraps an OCI image. Same source, launcher directory, names, KEK and mtime ⇒ byte-identical
 * manifest (hence digest) and measurement. Never holds a layer in memory: intermediate
 * ciphertexts are temp files in the destination's blob directory, removed at the end.
 */
export async function wrapImage(opts: WrapOptions): Promise<WrapResult> {
  checkPolicyName(opts.policy);
  checkWorkloadName(opts.workload);
  if (!Buffer.isBuffer(opts.kek) || opts.kek.length !== 32) throw new CocoonError('BAD_USAGE', 'the layer KEK must be 32 bytes');
  const kbsResource = opts.kbsResource ?? `${opts.policy}/layer-key`;
  checkKbsResource(kbsResource);
  const mtime = resolveMtime(opts.mtime);

  const src = await readLayout(opts.source.layoutDir, opts.source.ref, opts.source.platform);
  const diffIdsClaimed = src.config.rootfs.diff_ids;
  if (diffIdsClaimed.length !== src.manifest.layers.length) {
    throw new CocoonError('IMAGE_INVALID', `config lists ${diffIdsClaimed.length} diff_ids for ${src.manifest.layers.length} layers`);
  }
  if (src.manifest.layers.length === 0) throw new CocoonError('IMAGE_INVALID', 'source image has no layers');

  const launcherDigest = await computeLauncherDigest(opts.launcherDir);
  const writer = await LayoutWriter.open(opts.dest.layoutDir);
  const kekWrapper = new KekWrapper(opts.kek, kbsKid(kbsResource));
  const wrappers: KeyWrapper[] = [kekWrapper, ...(opts.recipients ?? [])];
  const temps: EncryptedTemp[] = [];
  try {
    for (const [i, desc] of src.manifest.layers.entries()) {
      if (layerFormat(desc.mediaType).encrypted) throw new CocoonError('IMAGE_INVALID', `layer ${i} (${desc.digest}) is already encrypted`);
      const claimed = diffIdsClaimed[i];
      if (claimed === undefined) throw new CocoonError('IMAGE_INVALID', `layer ${i}: no diffID in the config`);
      temps.push(await encryptLayer(src, desc, i, claimed, writer, opts.kek, wrappers));
    }
    const layers = temps.map((t) => t.layer);
    const config = launchConfigOf(src.config);
    const measurement = workloadMeasurement({ launcherDigest, layers: layers.map((l) => l.diffID), config, policy: opts.policy, workload: opts.workload });
    const payload: WrappedPayload = { schemaVersion: 1, policy: opts.policy, workload: opts.workload, kbsResource, config, layers, launcherDigest, measurement };

    const payloadJson = serializeWrappedPayload(payload);
    let gramine: { text: Buffer; sha256: string } | undefined;
    if (opts.libos === 'gramine') {
      const text = Buffer.from(gramineManifest({ launcherFiles: await launcherFiles(opts.launcherDir), payloadSha256: sha256Hex(payloadJson), measurement, ...(opts.gramine ? { options: opts.gramine } : {}) }));
      gramine = { text, sha256: sha256Hex(text) };
    } else if (opts.libos !== undefined) {
      throw new CocoonError('BAD_USAGE', `unknown LibOS ${JSON.stringify(opts.libos)} (supported: gramine)`);
    }

    // layer 1: payload (uncompressed tar: digest == diffID)
    const payloadEntries = planPayloadEntries(
      payloadJson,
      temps.map((t) => ({ digest: t.layer.digest, size: t.layer.size, file: t.file })),
      gramine?.text,
    );
    const payloadBlob = await writer.putStream(packTar(payloadEntries, { mtime }));

    // layer 0: launcher under /cocoon/, root-owned, gzip (cached: compressing node takes seconds)
    const launcher = await launcherLayer(writer, opts, launcherDigest, mtime);

    const wrappedConfig = planWrappedConfig(src.config, {
      measurement,
      policy: opts.policy,
      workload: opts.workload,
      launcherDigest,
      diffIDs: [launcher.diffID, payloadBlob.digest],
      kbsResource,
      sourceDigest: src.manifestDigest,
    });
    const configDesc = await writer.putBytes(serialize(wrappedConfig), MediaType.config);
    const manifest = planManifest(configDesc, [
      { mediaType: MediaType.layerGzip, digest: launcher.digest, size: launcher.size },
      { mediaType: MediaType.layerTar, digest: payloadBlob.digest, size: payloadBlob.size },
    ]);
    const manifestDesc = await writer.putBytes(serialize(manifest), MediaType.manifest);
    const indexEntry: Descriptor = { ...manifestDesc, platform: { architecture: src.config.architecture, os: src.config.os } };
    if (opts.dest.ref !== undefined) indexEntry.annotations = { [ANNOTATION_REF_NAME]: opts.dest.ref };
    await writer.writeIndex([indexEntry]);
    return {
      manifestDigest: manifestDesc.digest,
      configDigest: configDesc.digest,
      measurement,
      launcherDigest,
      layers,
      ...(gramine ? { gramineManifest: { path: GRAMINE_MANIFEST_PATH, sha256: gramine.sha256 } } : {}),
    };
  } finally {
    await Promise.all(temps.map((t) => rm(t.file, { force: true })));
  }
}
