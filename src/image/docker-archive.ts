import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { CocoonError, isCocoonError } from '../errors.js';
import { ociDigest } from '../crypto/hash.js';
import { decompressStages, layerStreamError } from './compression.js';
import { LIMITS, MediaType, digestHex, layerFormat, parseImageConfig, parseJsonBytes, parseManifest, type Compression, type Descriptor } from './oci.js';
import { familiarName, type DockerReference } from './reference.js';
import { HashTap, VerifyTap, chain } from './streams.js';
import type { BlobInfo, ImageSink, ImageSource, PutBlobResult, SourceImage } from './transport.js';

/**
 * `docker save` archives (docker-archive): a tar holding manifest.json
 * (`[{"Config","RepoTags","Layers"}]`), the config JSON and one tar per layer. Read by indexing
 * the tar once (entry offsets), then streaming entries in place; written from a staging
 * directory into a tar, atomically.
 */

const MAX_ENTRIES = 100_000;
const MAX_MANIFEST_JSON = 4 << 20;

interface Entry {
  offset: number;
  size: number;
}

function parseOctal(b: Buffer, off: number, len: number): number {
  const field = b.subarray(off, off + len);
  if ((field[0] ?? 0) & 0x80) {
    // base-256
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + (field[i] ?? 0);
    if (!Number.isSafeInteger(n)) throw new CocoonError('IMAGE_INVALID', 'docker archive: size field too large');
    return n;
  }
  const s = field.toString('latin1').replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new CocoonError('IMAGE_INVALID', 'docker archive: bad octal field in tar header');
  return parseInt(s, 8);
}

function cstr(b: Buffer, off: number, len: number): string {
  const f = b.subarray(off, off + len);
  const z = f.indexOf(0);
  return f.subarray(0, z < 0 ? f.length : z).toString('utf8');
}

function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < data.length) {
    const sp = data.indexOf(0x20, i);
    if (sp < 0) break;
    const len = Number(data.subarray(i, sp).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= 0 || i + len > data.length) throw new CocoonError('IMAGE_INVALID', 'docker archive: bad PAX record');
    const rec = data.subarray(sp + 1, i + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    i += len;
  }
  return out;
}

function normalize(name: string): string {
  let n = name;
  while (n.startsWith('./')) n = n.slice(2);
  return n.replace(/\/+$/, '');
}

/** Offsets and sizes of the regular files in a tar (headers only are read). */
export async function indexTar(file: string): Promise<Map<string, Entry>> {
  const fh = await open(file, 'r').catch((err: unknown) => {
    throw new CocoonError((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `docker archive ${file}: ${(err as Error).message}`, { cause: err });
  });
  const entries = new Map<string, Entry>();
  try {
    const total = (await fh.stat()).size;
    const h = Buffer.alloc(512);
    let pos = 0;
    let paxPath: string | undefined;
    let paxSize: number | undefined;
    let longName: string | undefined;
    let count = 0;
    while (pos + 512 <= total) {
      const { bytesRead } = await fh.read(h, 0, 512, pos);
      if (bytesRead !== 512) throw new CocoonError('IMAGE_INVALID', 'docker archive: truncated tar header');
      if (h.every((x) => x === 0)) break;
      if (++count > MAX_ENTRIES) throw new CocoonError('IMAGE_INVALID', `docker archive: more than ${MAX_ENTRIES} entries`);
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : (h[i] ?? 0);
      if (parseOctal(h, 148, 8) !== sum) throw new CocoonError('IMAGE_INVALID', 'docker archive: tar header checksum mismatch');
      const type = String.fromCharCode(h[156] ?? 0);
      let size = parseOctal(h, 124, 12);
      const dataPos = pos + 512;
      if (type === 'x' || type === 'L') {
        if (size > 1 << 20) throw new CocoonError('IMAGE_INVALID', 'docker archive: extended header too large');
        const data = Buffer.alloc(size);
        if ((await fh.read(data, 0, size, dataPos)).bytesRead !== size) throw new CocoonError('IMAGE_INVALID', 'docker archive: truncated extended header');
        if (type === 'x') {
          const pax = parsePax(data);
          paxPath = pax.path;
          if (pax.size !== undefined) paxSize = Number(pax.size);
        } else longName = data.toString('utf8').replace(/\0+$/, '');
      } else if (type === 'g') {
        // global header: ignored
      } else {
        if (paxSize !== undefined) size = paxSize;
        const magic = h.subarray(257, 263).toString('latin1');
        const prefix = magic.startsWith('ustar') ? cstr(h, 345, 155) : '';
        const name = normalize(paxPath ?? longName ?? (prefix ? `${prefix}/${cstr(h, 0, 100)}` : cstr(h, 0, 100)));
        if (type === '0' || type === '\0' || type === '7') {
          if (dataPos + size > total) throw new CocoonError('IMAGE_INVALID', `docker archive: entry ${name} runs past the end`);
          entries.set(name, { offset: dataPos, size });
        } else if (type === '1' || type === '2') {
          // links (old docker save writes symlinked layer dirs): resolve to the target entry
          const target = normalize(cstr(h, 157, 100));
          const resolved = type === '2' ? normalize(join(dirname(name), target)) : target;
          const t = entries.get(resolved);
          if (t) entries.set(name, t);
        }
        paxPath = undefined;
        paxSize = undefined;
        longName = undefined;
      }
      if (!Number.isSafeInteger(size) || size < 0) throw new CocoonError('IMAGE_INVALID', 'docker archive: bad entry size');
      pos = dataPos + Math.ceil(size / 512) * 512;
    }
  } finally {
    await fh.close();
  }
  return entries;
}

async function readEntry(file: string, e: Entry, max: number, what: string): Promise<Buffer> {
  if (e.size > max) throw new CocoonError('INPUT_TOO_LARGE', `${what}: ${e.size} bytes exceeds ${max}`);
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(e.size);
    const { bytesRead } = await fh.read(b, 0, e.size, e.offset);
    if (bytesRead !== e.size) throw new CocoonError('IMAGE_INVALID', `${what}: short read`);
    return b;
  } finally {
    await fh.close();
  }
}

function entryStream(file: string, e: Entry): Readable {
  return e.size === 0 ? createReadStream(file, { start: 0, end: -1 }) : createReadStream(file, { start: e.offset, end: e.offset + e.size - 1, highWaterMark: 1 << 20 });
}

async function sniffCompression(file: string, e: Entry): Promise<Compression> {
  const b = await readEntry(file, { offset: e.offset, size: Math.min(4, e.size) }, 4, 'layer');
  if (b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.length === 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}

const MEDIA_BY_COMPRESSION: Record<Compression, string> = { none: MediaType.layerTar, gzip: MediaType.layerGzip, zstd: MediaType.layerZstd };

interface ArchiveManifestEntry {
  Config: string;
  RepoTags: string[];
  Layers: string[];
}

function parseArchiveManifest(bytes: Buffer): ArchiveManifestEntry[] {
  const v = parseJsonBytes(bytes, MAX_MANIFEST_JSON, 'manifest.json');
  if (!Array.isArray(v) || v.length === 0 || v.length > 1024) throw new CocoonError('IMAGE_INVALID', 'docker archive manifest.json: expected a non-empty array');
  return v.map((x, i) => {
    const o = x as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || typeof o.Config !== 'string' || !Array.isArray(o.Layers)) throw new CocoonError('IMAGE_INVALID', `docker archive manifest.json[${i}]: expected Config and Layers`);
    if (o.Layers.length > LIMITS.maxLayers || !o.Layers.every((l) => typeof l === 'string' && l.length < 4096)) throw new CocoonError('IMAGE_INVALID', `docker archive manifest.json[${i}].Layers: bad entries`);
    const tags = Array.isArray(o.RepoTags) ? o.RepoTags.filter((t): t is string => typeof t === 'string' && t.length < 1024) : [];
    return { Config: o.Config, RepoTags: tags, Layers: o.Layers as string[] };
  });
}

export class DockerArchiveSource implements ImageSource {
  readonly name: string;
  private index: Map<string, Entry> | undefined;
  /** layer digest → archive entry and how to read it */
  private readonly layers = new Map<string, { entry: Entry; expectDigest: string }>();

  constructor(
    private readonly file: string,
    private readonly ref?: DockerReference,
  ) {
    this.name = `docker-archive:${file}`;
  }

  private async entry(name: string): Promise<Entry> {
    this.index ??= await indexTar(this.file);
    const e = this.index.get(normalize(name));
    if (!e) throw new CocoonError('IMAGE_INVALID', `docker archive ${this.file}: no entry ${JSON.stringify(name.slice(0, 200))}`);
    return e;
  }

  async resolve(): Promise<SourceImage> {
    const entries = parseArchiveManifest(await readEntry(this.file, await this.entry('manifest.json'), MAX_MANIFEST_JSON, 'manifest.json'));
    let chosen = entries[0];
    if (this.ref) {
      const want = familiarName(this.ref);
      chosen = entries.find((e) => e.RepoTags.some((t) => t === want || t === `${this.ref?.domain}/${this.ref?.path}:${this.ref?.tag ?? 'latest'}`));
      if (!chosen) throw new CocoonError('NOT_FOUND', `docker archive ${this.file}: no image tagged ${want}`);
    } else if (entries.length > 1) throw new CocoonError('BAD_USAGE', `docker archive ${this.file} holds ${entries.length} images: name one (docker-archive:FILE:NAME:TAG)`);
    if (!chosen) throw new CocoonError('IMAGE_INVALID', 'docker archive: empty manifest.json');
    const configBytes = await readEntry(this.file, await this.entry(chosen.Config), LIMITS.configBytes, 'config');
    const config = parseImageConfig(configBytes);
    if (config.rootfs.diff_ids.length !== chosen.Layers.length) throw new CocoonError('IMAGE_INVALID', `docker archive: config lists ${config.rootfs.diff_ids.length} diff_ids for ${chosen.Layers.length} layers`);
    const layers: Descriptor[] = [];
    for (const [i, l] of chosen.Layers.entries()) {
      const e = await this.entry(l);
      const compression = await sniffCompression(this.file, e);
      const diffID = config.rootfs.diff_ids[i] ?? '';
      let digest: string;
      if (compression === 'none') digest = diffID;
      else {
        // a compressed layer's digest is not written anywhere: hash it once
        const tap = new HashTap();
        await pipeline(entryStream(this.file, e), tap, async (s: AsyncIterable<unknown>) => {
          for await (const _ of s) void _;
        });
        digest = tap.digest;
      }
      this.layers.set(digest, { entry: e, expectDigest: digest });
      layers.push({ mediaType: MEDIA_BY_COMPRESSION[compression], digest, size: e.size });
    }
    const configDesc: Descriptor = { mediaType: MediaType.config, digest: ociDigest(configBytes), size: configBytes.length };
    const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.manifest, config: configDesc, layers }));
    return { manifestBytes, manifestMediaType: MediaType.manifest, manifestDigest: ociDigest(manifestBytes), manifest: parseManifest(manifestBytes), configBytes, config };
  }

  async openBlob(desc: Descriptor): Promise<Readable> {
    const l = this.layers.get(desc.digest);
    if (!l) throw new CocoonError('NOT_FOUND', `docker archive ${this.file}: no blob ${desc.digest}`);
    return chain(entryStream(this.file, l.entry), new VerifyTap(desc, `layer ${desc.digest}`));
  }

  async close(): Promise<void> {
    /* nothing held open */
  }
}

interface Staged {
  file: string;
  size: number;
  /** name inside the archive */
  name: string;
}

/**
 * Writes a docker-archive. Layers are stored uncompressed (`<diffID hex>/layer.tar`, as
 * `docker save` and skopeo do), so their descriptors change; encrypted layers are refused.
 */
export class DockerArchiveSink implements ImageSink {
  readonly name: string;
  private staging: string | undefined;
  private readonly staged = new Map<string, Staged>();
  private manifest: { config: string; layers: string[] } | undefined;
  private counter = 0;

  constructor(
    private readonly file: string,
    private readonly ref?: DockerReference,
  ) {
    this.name = `docker-archive:${file}`;
  }

  private async stagingDir(): Promise<string> {
    this.staging ??= await mkdtemp(join(dirname(this.file), `.${basename(this.file)}.staging-`)).catch((err: unknown) => {
      throw new CocoonError('IO_ERROR', `cannot write next to ${this.file}: ${(err as Error).message}`, { cause: err });
    });
    return this.staging;
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    return this.staged.has(desc.digest);
  }

  async putBlob(stream: Readable, info: BlobInfo): Promise<PutBlobResult> {
    const dir = await this.stagingDir();
    const isConfig = info.mediaType === MediaType.config || info.mediaType === MediaType.dockerConfig;
    const tmp = join(dir, `blob-${this.counter++}`);
    if (isConfig) {
      const tap = new HashTap();
      await pipeline(stream, tap, createWriteStream(tmp, { flags: 'wx' }));
      if (info.expected && info.expected.digest !== tap.digest) throw new CocoonError('DIGEST_MISMATCH', `config: content does not match ${info.expected.digest}`);
      this.staged.set(tap.digest, { file: tmp, size: tap.bytes, name: `${digestHex(tap.digest)}.json` });
      return { digest: tap.digest, size: tap.bytes };
    }
    const fmt = layerFormat(info.mediaType);
    if (fmt.encrypted) throw new CocoonError('BAD_USAGE', 'a docker-archive cannot hold encrypted layers: decrypt first or write oci:/docker://');
    const inTap = new HashTap();
    const outTap = new HashTap();
    try {
      await pipeline([stream, inTap, ...decompressStages(fmt.compression), outTap, createWriteStream(tmp, { flags: 'wx' })]);
    } catch (err) {
      throw layerStreamError(err, `layer ${info.expected?.digest ?? ''}`);
    }
    if (info.expected && info.expected.digest !== inTap.digest) throw new CocoonError('DIGEST_MISMATCH', `layer: content does not match ${info.expected.digest}`);
    const entry: Staged = { file: tmp, size: outTap.bytes, name: `${digestHex(outTap.digest)}/layer.tar` };
    this.staged.set(outTap.digest, entry);
    // the copy engine refers to the layer by what it sent; keep both names
    this.staged.set(inTap.digest, entry);
    return { digest: outTap.digest, size: outTap.bytes, mediaType: MediaType.layerTar };
  }

  async putManifest(bytes: Buffer): Promise<string> {
    const m = parseManifest(bytes);
    const cfg = this.staged.get(m.config.digest);
    if (!cfg) throw new CocoonError('INTERNAL', 'docker archive: manifest before its config');
    const layers = m.layers.map((l) => {
      const s = this.staged.get(l.digest);
      if (!s) throw new CocoonError('INTERNAL', `docker archive: manifest before layer ${l.digest}`);
      return s.name;
    });
    this.manifest = { config: cfg.name, layers };
    return ociDigest(bytes);
  }

  async close(): Promise<void> {
    if (!this.manifest) throw new CocoonError('INTERNAL', 'docker archive: nothing to write');
    const tmp = `${this.file}.tmp-${process.pid}`;
    const pack = tar.pack();
    const out = pipeline(pack as unknown as Readable, createWriteStream(tmp, { flags: 'w' }));
    const addFile = async (name: string, s: Staged): Promise<void> => {
      const st = await stat(s.file);
      await new Promise<void>((resolve, reject) => {
        const e = pack.entry({ name, size: st.size, mode: 0o644, mtime: new Date(0), type: 'file' }, (err) => (err ? reject(err) : resolve()));
        const r = createReadStream(s.file);
        r.on('error', reject);
        r.pipe(e);
      });
    };
    try {
      const written = new Set<string>();
      const byName = new Map([...this.staged.values()].map((s) => [s.name, s]));
      for (const name of [...this.manifest.layers, this.manifest.config]) {
        if (written.has(name)) continue;
        written.add(name);
        const s = byName.get(name);
        if (!s) throw new CocoonError('INTERNAL', `docker archive: missing ${name}`);
        await addFile(name, s);
      }
      const repoTags = this.ref ? [familiarName(this.ref)] : [];
      const mj = Buffer.from(JSON.stringify([{ Config: this.manifest.config, RepoTags: repoTags, Layers: this.manifest.layers }]));
      await new Promise<void>((resolve, reject) => pack.entry({ name: 'manifest.json', size: mj.length, mode: 0o644, mtime: new Date(0) }, mj, (err) => (err ? reject(err) : resolve())));
      pack.finalize();
      await out;
      await rename(tmp, this.file);
    } catch (err) {
      pack.destroy();
      await out.catch(() => undefined);
      await rm(tmp, { force: true });
      throw isCocoonError(err) ? err : new CocoonError('IO_ERROR', `writing ${this.file}: ${(err as Error).message}`, { cause: err });
    } finally {
      await this.abort();
    }
  }

  async abort(): Promise<void> {
    if (this.staging) await rm(this.staging, { recursive: true, force: true });
    this.staging = undefined;
  }
}
