import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { CocoonError } from '../errors.js';
import { canonicalJson } from '../crypto/canonical-json.js';
import { blobPath, openBlobStream, readLayout } from './layout.js';
import { workloadMeasurement, type LaunchConfig } from './measure.js';
import { MediaType, isDigest, layerFormat, type Descriptor, type ImageConfig, type ImageManifest } from './oci.js';
import { unpackLayer, type UnpackOptions } from './unpack.js';

export { decryptPayloadLayers, type DecryptPayloadArgs, type DecryptOptions } from './decrypt.js';

/** The wrapped image (docs/internals.md §1): its payload.json and how to find its parts. */

export const PAYLOAD_DIR = '/cocoon/payload';
export const PAYLOAD_JSON_PATH = 'cocoon/payload/payload.json';
export const PAYLOAD_MAX_BYTES = 4 << 20;

export const LAUNCHER_ENTRYPOINT = ['/cocoon/lib/ld-linux-x86-64.so.2', '--library-path', '/cocoon/lib', '/cocoon/bin/node', '/cocoon/launcher.mjs', 'launch'];
export const LAUNCHER_ENV = [`COCOON_PAYLOAD=${PAYLOAD_DIR}`];

export const Label = {
  wrapped: 'dev.cocoon.wrapped',
  measurement: 'dev.cocoon.measurement',
  policy: 'dev.cocoon.policy',
  workload: 'dev.cocoon.workload',
  launcherDigest: 'dev.cocoon.launcher-digest',
  /** KBS resource holding the image key. */
  kbsResource: 'dev.cocoon.kbs-resource',
  /** Manifest digest of the image that was wrapped. */
  sourceDigest: 'dev.cocoon.source-digest',
} as const;

export interface WrappedLayer {
  mediaType: string;
  /** Digest of the ciphertext (the file under payload/blobs/sha256/). */
  digest: string;
  size: number;
  /** Digest of the plaintext, uncompressed tar. */
  diffID: string;
  annotations: Record<string, string>;
}

export interface WrappedPayload {
  schemaVersion: 1;
  policy: string;
  workload: string;
  kbsResource: string;
  config: LaunchConfig;
  layers: WrappedLayer[];
  launcherDigest: string;
  measurement: string;
}

const POLICY_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const RESOURCE_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(\/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){2}$/;

export function checkPolicyName(policy: string): void {
  if (!POLICY_RE.test(policy)) throw new CocoonError('BAD_USAGE', `policy must look like <org>/<app>: ${JSON.stringify(policy)}`);
}
export function checkWorkloadName(workload: string): void {
  if (!NAME_RE.test(workload)) throw new CocoonError('BAD_USAGE', `bad workload name ${JSON.stringify(workload)}`);
}
export function checkKbsResource(resource: string): void {
  if (!RESOURCE_RE.test(resource)) throw new CocoonError('BAD_USAGE', `KBS resource must look like <repo>/<type>/<tag>: ${JSON.stringify(resource)}`);
}

/** Deterministic serialisation (canonical JSON). */
export function serializeWrappedPayload(p: WrappedPayload): Buffer {
  return Buffer.from(canonicalJson(p));
}

// ---- strict parsing ------------------------------------------------------------------------

function bad(what: string): never {
  throw new CocoonError('IMAGE_INVALID', `payload.json: ${what}`);
}
function o(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(`${what} must be an object`);
  return v as Record<string, unknown>;
}
function s(v: unknown, what: string, max = 4096): string {
  if (typeof v !== 'string' || v.length > max) bad(`${what} must be a string (at most ${max})`);
  return v;
}
function sa(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || v.length > 4096) bad(`${what} must be an array of strings`);
  return v.map((x, i) => s(x, `${what}[${i}]`, 1 << 16));
}
function dg(v: unknown, what: string): string {
  if (!isDigest(v)) bad(`${what} must be sha256:<64 hex>`);
  return v;
}

export function parseLaunchConfig(v: unknown, what = 'config'): LaunchConfig {
  const c = o(v, what);
  return {
    entrypoint: sa(c.entrypoint, `${what}.entrypoint`),
    cmd: sa(c.cmd, `${what}.cmd`),
    env: sa(c.env, `${what}.env`),
    workingDir: s(c.workingDir, `${what}.workingDir`),
    user: s(c.user, `${what}.user`, 256),
  };
}

export function parseWrappedPayload(bytes: Uint8Array): WrappedPayload {
  if (bytes.byteLength > PAYLOAD_MAX_BYTES) throw new CocoonError('INPUT_TOO_LARGE', `payload.json larger than ${PAYLOAD_MAX_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    bad('not JSON');
  }
  const p = o(raw, 'payload');
  if (p.schemaVersion !== 1) bad('schemaVersion must be 1');
  const policy = s(p.policy, 'policy', 256);
  const workload = s(p.workload, 'workload', 256);
  const kbsResource = s(p.kbsResource, 'kbsResource', 512);
  if (!POLICY_RE.test(policy)) bad('policy must look like <org>/<app>');
  if (!NAME_RE.test(workload)) bad('bad workload name');
  if (!RESOURCE_RE.test(kbsResource)) bad('kbsResource must look like <repo>/<type>/<tag>');
  if (!Array.isArray(p.layers) || p.layers.length === 0 || p.layers.length > 512) bad('layers must be a non-empty array');
  const layers = p.layers.map((l, i): WrappedLayer => {
    const lo = o(l, `layers[${i}]`);
    const mediaType = s(lo.mediaType, `layers[${i}].mediaType`, 255);
    const fmt = layerFormat(mediaType);
    if (!fmt.encrypted) bad(`layers[${i}] is not an encrypted layer`);
    const size = lo.size;
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) bad(`layers[${i}].size`);
    const ann = o(lo.annotations, `layers[${i}].annotations`);
    const annotations: Record<string, string> = {};
    for (const [k, v] of Object.entries(ann)) annotations[k] = s(v, `layers[${i}].annotations.${k}`, 1 << 20);
    return { mediaType, digest: dg(lo.digest, `layers[${i}].digest`), size, diffID: dg(lo.diffID, `layers[${i}].diffID`), annotations };
  });
  const launcherDigest = dg(p.launcherDigest, 'launcherDigest');
  const measurement = s(p.measurement, 'measurement', 96);
  if (!/^[0-9a-f]{96}$/.test(measurement)) bad('measurement must be 96 lowercase hex digits');
  return { schemaVersion: 1, policy, workload, kbsResource, config: parseLaunchConfig(p.config), layers, launcherDigest, measurement };
}

/**
 * Recomputes the measurement from the payload and a launcher digest (the launcher passes the
 * one it computed over its own files); MEASUREMENT_MISMATCH if either differs.
 */
export function verifyPayloadMeasurement(payload: WrappedPayload, actualLauncherDigest: string): string {
  if (actualLauncherDigest !== payload.launcherDigest) {
    throw new CocoonError('MEASUREMENT_MISMATCH', 'launcher files differ from the ones measured at wrap time', {
      details: { expected: payload.launcherDigest, actual: actualLauncherDigest },
    });
  }
  const m = workloadMeasurement({ launcherDigest: actualLauncherDigest, layers: payload.layers.map((l) => l.diffID), config: payload.config, policy: payload.policy, workload: payload.workload });
  if (m !== payload.measurement) throw new CocoonError('MEASUREMENT_MISMATCH', 'payload.json does not match its measurement', { details: { expected: payload.measurement, actual: m } });
  return m;
}

// ---- reading a wrapped image from a layout ---------------------------------------------------

export interface WrappedImageLayer {
  descriptor: Descriptor;
  /** Blob file in the layout. */
  path: string;
}

export interface WrappedImage {
  layoutDir: string;
  manifestDigest: string;
  manifest: ImageManifest;
  config: ImageConfig;
  launcherLayer: WrappedImageLayer;
  payloadLayer: WrappedImageLayer;
  payload: WrappedPayload;
  measurement: string;
  launcherDigest: string;
  policy: string;
  workload: string;
  /** Env of the wrapped image (launcher settings). */
  env: string[];
  /** argv of the wrapped image: Entrypoint followed by Cmd. */
  entrypoint: string[];
}

/** Reads and strictly parses `<payloadDir>/payload.json` (the launcher's first step). */
export async function readPayload(payloadDir: string): Promise<WrappedPayload> {
  const path = join(payloadDir, 'payload.json');
  let bytes: Buffer;
  try {
    const fh = await open(path, 'r');
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new CocoonError('IMAGE_INVALID', `${path} is not a regular file`);
      if (st.size > PAYLOAD_MAX_BYTES) throw new CocoonError('INPUT_TOO_LARGE', `${path} larger than ${PAYLOAD_MAX_BYTES} bytes`);
      bytes = await fh.readFile();
    } finally {
      await fh.close();
    }
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new CocoonError(code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `${path}: ${(err as Error).message}`, { cause: err });
  }
  return parseWrappedPayload(bytes);
}

/** Reads payload.json from the start of a payload layer stream (stops there; destroys the stream). */
export async function readPayloadJson(stream: Readable): Promise<Buffer> {
  const extract = tar.extract();
  stream.on('error', (err) => extract.destroy(err));
  stream.pipe(extract as unknown as NodeJS.WritableStream);
  let seen = 0;
  try {
    for await (const entry of extract) {
      if (++seen > 16) break;
      if (entry.header.name === PAYLOAD_JSON_PATH && entry.header.type === 'file') {
        if ((entry.header.size ?? 0) > PAYLOAD_MAX_BYTES) throw new CocoonError('INPUT_TOO_LARGE', 'payload.json too large');
        const chunks: Buffer[] = [];
        for await (const c of entry) chunks.push(c as Buffer);
        return Buffer.concat(chunks);
      }
      entry.resume();
    }
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new CocoonError('IMAGE_INVALID', `payload layer: ${(err as Error).message}`, { cause: err });
  } finally {
    stream.destroy();
  }
  throw new CocoonError('IMAGE_INVALID', `payload layer has no ${PAYLOAD_JSON_PATH} among its first entries`);
}

/**
 * Reads a wrapped image from an OCI layout (for `cocoon run`): checks its shape and labels
 * and reads payload.json from the payload layer (stopping there: blob digests are verified
 * when the layers are unpacked).
 */
export async function readWrappedImage(layoutDir: string, ref?: string): Promise<WrappedImage> {
  const img = await readLayout(layoutDir, ref);
  const labels = img.config.config?.Labels ?? {};
  if (labels[Label.wrapped] !== '1') throw new CocoonError('IMAGE_INVALID', 'not a Cocoon-wrapped image (label dev.cocoon.wrapped missing)');
  const [l0, l1, ...rest] = img.manifest.layers;
  if (!l0 || !l1 || rest.length > 0) throw new CocoonError('IMAGE_INVALID', 'a wrapped image has exactly two layers');
  if (l0.mediaType !== MediaType.layerGzip || l1.mediaType !== MediaType.layerTar) throw new CocoonError('IMAGE_INVALID', 'wrapped image layers have unexpected media types');
  const payload = parseWrappedPayload(await readPayloadJson(openBlobStream(layoutDir, l1)));
  if (labels[Label.measurement] !== payload.measurement || labels[Label.launcherDigest] !== payload.launcherDigest || labels[Label.policy] !== payload.policy || labels[Label.workload] !== payload.workload) {
    throw new CocoonError('MEASUREMENT_MISMATCH', 'image labels disagree with payload.json');
  }
  return {
    layoutDir,
    manifestDigest: img.manifestDigest,
    manifest: img.manifest,
    config: img.config,
    launcherLayer: { descriptor: l0, path: blobPath(layoutDir, l0.digest) },
    payloadLayer: { descriptor: l1, path: blobPath(layoutDir, l1.digest) },
    payload,
    measurement: payload.measurement,
    launcherDigest: payload.launcherDigest,
    policy: payload.policy,
    workload: payload.workload,
    env: img.config.config?.Env ?? [],
    entrypoint: [...(img.config.config?.Entrypoint ?? []), ...(img.config.config?.Cmd ?? [])],
  };
}

/** Unpacks both layers of a wrapped image into a root filesystem (digests and diffIDs verified). */
export async function unpackWrappedImage(img: WrappedImage, rootfs: string, opts: UnpackOptions = {}): Promise<void> {
  const diffIds = img.config.rootfs.diff_ids;
  for (const [i, layer] of [img.launcherLayer, img.payloadLayer].entries()) {
    const r = await unpackLayer(openBlobStream(img.layoutDir, layer.descriptor), layerFormat(layer.descriptor.mediaType).compression, rootfs, opts);
    if (r.diffID !== diffIds[i]) throw new CocoonError('DIGEST_MISMATCH', `layer ${i}: diffID ${r.diffID} does not match the config's ${diffIds[i] ?? '(none)'}`);
  }
}

/** Alias of unpackWrappedImage. */
export const unpackWrappedLayers = unpackWrappedImage;
