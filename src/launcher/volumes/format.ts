import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import { chmod, chown, lstat, mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../../errors.js';

/**
 * The on-disk format of a protected volume (docs/volumes.md): an encrypted, authenticated
 * directory store kept in an untrusted host directory.
 *
 *   STORE/manifest.json   {"format","volume","version","nonce","body"}; body = AES-256-GCM of the
 *                         entry list, AAD binds format, volume name and volume version
 *   STORE/blobs/<32 hex>  one file's content: chunks of 64 KiB plaintext, each
 *                         nonce(12) ‖ ciphertext ‖ tag(16); the AAD binds volume, path, blob id,
 *                         file version, the volume version the file was written at, the chunk
 *                         index and a final-chunk flag (truncation at a chunk boundary fails)
 *
 * Keys: HKDF-SHA256 of the 32-byte volume key released by the KBS, per volume name.
 */
export const VOLUME_FORMAT = 'cocoon-volume/1';
export const CHUNK_SIZE = 64 * 1024;
const NONCE = 12;
const TAG = 16;
export const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;
export const MAX_ENTRIES = 262_144;
export const MAX_FILE_BYTES = 1024 * 1024 * 1024;
const MAX_PATH = 4096;
const BLOB_RE = /^[0-9a-f]{32}$/;

export interface VolumeEntry {
  /** Relative POSIX path inside the volume (no `.`/`..`, no empty segments). */
  path: string;
  type: 'dir' | 'file';
  mode: number;
  uid: number;
  gid: number;
  /** Files only. */
  size?: number;
  blob?: string;
  /** Incremented each time this path's content changes. */
  fileVersion?: number;
  /** Volume version at which this content was written (bound in the chunk AAD). */
  writtenAt?: number;
  /** SHA-256 (hex) of the plaintext. */
  sha256?: string;
}

export interface VolumeManifest {
  volume: string;
  version: number;
  entries: VolumeEntry[];
}

interface Keys {
  enc: Buffer;
}

function keysOf(key: Uint8Array, volume: string): Keys {
  if (key.length !== 32) throw new CocoonError('INPUT_MALFORMED', 'volume key must be 32 bytes');
  return { enc: Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), `${VOLUME_FORMAT} enc ${volume}`, 32)) };
}

function tampered(volume: string, what: string): CocoonError {
  return new CocoonError('VOLUME_TAMPERED', `protected volume ${volume}: ${what} — the volume was modified outside the TEE or is corrupt; refusing to use it`);
}

function manifestAad(volume: string, version: number): Buffer {
  return Buffer.from(`${VOLUME_FORMAT}\0manifest\0${volume}\0${version}`, 'utf8');
}

function chunkAad(volume: string, e: VolumeEntry, index: number, final: boolean): Buffer {
  return Buffer.from(`${VOLUME_FORMAT}\0chunk\0${volume}\0${e.path}\0${e.blob ?? ''}\0${e.fileVersion ?? 0}\0${e.writtenAt ?? 0}\0${index}\0${final ? 1 : 0}`, 'utf8');
}

function chunkCount(size: number): number {
  return size === 0 ? 1 : Math.ceil(size / CHUNK_SIZE);
}

/** Byte length of a blob holding `size` plaintext bytes. */
export function blobLength(size: number): number {
  return size + chunkCount(size) * (NONCE + TAG);
}

export function encryptBlob(key: Uint8Array, volume: string, entry: VolumeEntry, plaintext: Uint8Array): Buffer {
  const { enc } = keysOf(key, volume);
  const n = chunkCount(plaintext.length);
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const nonce = randomBytes(NONCE);
    const c = createCipheriv('aes-256-gcm', enc, nonce);
    c.setAAD(chunkAad(volume, entry, i, i === n - 1));
    parts.push(nonce, c.update(plaintext.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE)), c.final(), c.getAuthTag());
  }
  return Buffer.concat(parts);
}

export function decryptBlob(key: Uint8Array, volume: string, entry: VolumeEntry, blob: Uint8Array): Buffer {
  const { enc } = keysOf(key, volume);
  const size = entry.size ?? 0;
  if (blob.length !== blobLength(size)) throw tampered(volume, `file ${entry.path} has ${blob.length} encrypted bytes, expected ${blobLength(size)} (truncated or extended)`);
  const n = chunkCount(size);
  const out = Buffer.alloc(size);
  let off = 0;
  for (let i = 0; i < n; i++) {
    const plainLen = Math.min(CHUNK_SIZE, size - i * CHUNK_SIZE);
    const nonce = blob.subarray(off, off + NONCE);
    const ct = blob.subarray(off + NONCE, off + NONCE + plainLen);
    const tag = blob.subarray(off + NONCE + plainLen, off + NONCE + plainLen + TAG);
    off += NONCE + plainLen + TAG;
    try {
      const d = createDecipheriv('aes-256-gcm', enc, nonce);
      d.setAAD(chunkAad(volume, entry, i, i === n - 1));
      d.setAuthTag(tag);
      const pt = Buffer.concat([d.update(ct), d.final()]);
      pt.copy(out, i * CHUNK_SIZE);
    } catch {
      throw tampered(volume, `file ${entry.path} chunk ${i} failed authentication`);
    }
  }
  if (entry.sha256 !== undefined && createHash('sha256').update(out).digest('hex') !== entry.sha256) throw tampered(volume, `file ${entry.path} content digest mismatch`);
  return out;
}

/** Serialized manifest file bytes. */
export function encodeManifest(key: Uint8Array, m: VolumeManifest): Buffer {
  const { enc } = keysOf(key, m.volume);
  const nonce = randomBytes(NONCE);
  const c = createCipheriv('aes-256-gcm', enc, nonce);
  c.setAAD(manifestAad(m.volume, m.version));
  const body = Buffer.concat([c.update(Buffer.from(JSON.stringify(m.entries), 'utf8')), c.final(), c.getAuthTag()]);
  return Buffer.from(`${JSON.stringify({ format: VOLUME_FORMAT, volume: m.volume, version: m.version, nonce: nonce.toString('base64'), body: body.toString('base64') })}\n`, 'utf8');
}

/** Strict parse and authentication of manifest file bytes. */
export function decodeManifest(key: Uint8Array, volume: string, bytes: Uint8Array): VolumeManifest {
  if (bytes.length > MAX_MANIFEST_BYTES) throw tampered(volume, 'manifest too large');
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw tampered(volume, 'manifest is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw tampered(volume, 'manifest is not an object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['format', 'volume', 'version', 'nonce', 'body'].includes(k)) throw tampered(volume, `manifest has unknown member ${k.slice(0, 32)}`);
  if (o.format !== VOLUME_FORMAT) throw tampered(volume, 'manifest format unknown');
  if (o.volume !== volume) throw tampered(volume, 'manifest belongs to another volume');
  const version = o.version;
  if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 1) throw tampered(volume, 'manifest version invalid');
  if (typeof o.nonce !== 'string' || typeof o.body !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(o.nonce) || !/^[A-Za-z0-9+/]*={0,2}$/.test(o.body)) throw tampered(volume, 'manifest encoding invalid');
  const nonce = Buffer.from(o.nonce, 'base64');
  const body = Buffer.from(o.body, 'base64');
  if (nonce.length !== NONCE || body.length < TAG) throw tampered(volume, 'manifest truncated');
  let plain: Buffer;
  try {
    const { enc } = keysOf(key, volume);
    const d = createDecipheriv('aes-256-gcm', enc, nonce);
    d.setAAD(manifestAad(volume, version));
    d.setAuthTag(body.subarray(body.length - TAG));
    plain = Buffer.concat([d.update(body.subarray(0, body.length - TAG)), d.final()]);
  } catch {
    throw tampered(volume, 'manifest failed authentication (wrong key, altered bytes or altered version)');
  }
  let list: unknown;
  try {
    list = JSON.parse(plain.toString('utf8'));
  } catch {
    throw tampered(volume, 'manifest body is not JSON');
  }
  if (!Array.isArray(list) || list.length > MAX_ENTRIES) throw tampered(volume, 'manifest entry list invalid');
  const seen = new Set<string>();
  const blobs = new Set<string>();
  const entries = list.map((x, i) => {
    const e = parseEntry(x, volume, i);
    if (seen.has(e.path)) throw tampered(volume, `manifest lists ${e.path} twice`);
    const parent = e.path.includes('/') ? e.path.slice(0, e.path.lastIndexOf('/')) : undefined;
    if (parent !== undefined && !seen.has(parent)) throw tampered(volume, `manifest lists ${e.path} before its directory`);
    if (e.blob !== undefined) {
      if (blobs.has(e.blob)) throw tampered(volume, 'manifest reuses a blob');
      blobs.add(e.blob);
    }
    seen.add(e.path);
    return e;
  });
  for (const e of entries) {
    const parent = e.path.includes('/') ? e.path.slice(0, e.path.lastIndexOf('/')) : undefined;
    if (parent !== undefined && entries.find((p) => p.path === parent)?.type !== 'dir') throw tampered(volume, `parent of ${e.path} is not a directory`);
  }
  return { volume, version, entries };
}

function uint(v: unknown, max: number): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;
}

export function isVolumePath(p: string): boolean {
  if (p.length === 0 || p.length > MAX_PATH || p.includes('\0')) return false;
  return p.split('/').every((s) => s !== '' && s !== '.' && s !== '..' && s.length <= 255);
}

function parseEntry(x: unknown, volume: string, i: number): VolumeEntry {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw tampered(volume, `manifest entry ${i} invalid`);
  const o = x as Record<string, unknown>;
  const bad = (): CocoonError => tampered(volume, `manifest entry ${i} invalid`);
  if (typeof o.path !== 'string' || !isVolumePath(o.path)) throw bad();
  if (!uint(o.mode, 0o7777) || !uint(o.uid, 0xffffffff) || !uint(o.gid, 0xffffffff)) throw bad();
  if (o.type === 'dir') {
    if (Object.keys(o).some((k) => !['path', 'type', 'mode', 'uid', 'gid'].includes(k))) throw bad();
    return { path: o.path, type: 'dir', mode: o.mode, uid: o.uid, gid: o.gid };
  }
  if (o.type !== 'file') throw bad();
  if (Object.keys(o).some((k) => !['path', 'type', 'mode', 'uid', 'gid', 'size', 'blob', 'fileVersion', 'writtenAt', 'sha256'].includes(k))) throw bad();
  if (!uint(o.size, MAX_FILE_BYTES) || typeof o.blob !== 'string' || !BLOB_RE.test(o.blob) || !uint(o.fileVersion, Number.MAX_SAFE_INTEGER) || !uint(o.writtenAt, Number.MAX_SAFE_INTEGER)) throw bad();
  if (typeof o.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(o.sha256)) throw bad();
  return { path: o.path, type: 'file', mode: o.mode, uid: o.uid, gid: o.gid, size: o.size, blob: o.blob, fileVersion: o.fileVersion, writtenAt: o.writtenAt, sha256: o.sha256 };
}

const MANIFEST = 'manifest.json';

/** The authenticated manifest of a store directory, or undefined for a store never written. */
export async function readStoreManifest(storeDir: string, volume: string, key: Uint8Array): Promise<VolumeManifest | undefined> {
  let bytes: Buffer;
  try {
    const st = await stat(join(storeDir, MANIFEST));
    if (st.size > MAX_MANIFEST_BYTES) throw tampered(volume, 'manifest too large');
    bytes = await readFile(join(storeDir, MANIFEST));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (err instanceof CocoonError) throw err;
    throw new CocoonError('IO_ERROR', `protected volume ${volume}: cannot read the manifest: ${(err as Error).message}`, { cause: err });
  }
  return decodeManifest(key, volume, bytes);
}

/**
 * Decrypts every entry of `manifest` into `destDir` (which must exist and be empty or be
 * emptied by the caller). Any authentication failure throws VOLUME_TAMPERED before the app runs.
 */
export async function restoreVolume(storeDir: string, key: Uint8Array, manifest: VolumeManifest, destDir: string, options: { chown: boolean }): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for (const e of manifest.entries) {
    const target = join(destDir, e.path);
    if (e.type === 'dir') {
      await mkdir(target, { mode: e.mode });
    } else {
      const blobPath = join(storeDir, 'blobs', e.blob as string);
      let blob: Buffer;
      try {
        const st = await lstat(blobPath);
        if (!st.isFile() || st.size !== blobLength(e.size ?? 0)) throw tampered(manifest.volume, `file ${e.path}: encrypted blob missing or of the wrong length`);
        blob = await readFile(blobPath);
      } catch (err) {
        if (err instanceof CocoonError) throw err;
        throw tampered(manifest.volume, `file ${e.path}: encrypted blob unreadable (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      }
      const plain = decryptBlob(key, manifest.volume, e, blob);
      await writeFile(target, plain, { mode: e.mode, flag: fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW });
      files++;
      bytes += plain.length;
      plain.fill(0);
    }
    if (options.chown) await chown(target, e.uid, e.gid);
    await chmod(target, e.mode); // after chown (which clears set-id bits); not subject to the umask
  }
  return { files, bytes };
}

/** How often a file that changes while it is read is read again before its previous version is kept. */
export const STABLE_READ_ATTEMPTS = 4;

export interface SealOptions {
  /**
   * When nothing changed since `previous` (same entries, no blob written), write nothing and
   * return `unchanged: true` (periodic commits of an idle volume).
   */
  skipUnchanged?: boolean;
  /** Test hook: called after each read of a file (to change it mid-seal). */
  onRead?: (path: string, attempt: number) => Promise<void> | void;
}

export interface SealResult {
  manifest: VolumeManifest;
  written: number;
  reused: number;
  skipped: number;
  /** Files that kept changing while they were read: their previous version (or none) went into this version. */
  unstable: string[];
  /** Nothing changed (`skipUnchanged`): no new version was written. */
  unchanged?: boolean;
}

/** `/proc/self/fd` anchors the walk to opened directories (no path re-resolution a concurrent rename could redirect). */
let procFd: boolean | undefined;
async function hasProcFd(): Promise<boolean> {
  if (procFd === undefined) procFd = await lstat('/proc/self/fd').then((s) => s.isDirectory(), () => false);
  return procFd;
}

const GONE = new Set(['ENOENT', 'ENOTDIR', 'ELOOP', 'ENXIO', 'EISDIR']);
const gone = (err: unknown): boolean => GONE.has((err as NodeJS.ErrnoException).code ?? '');

/**
 * Encrypts `srcDir` (the app's view of the volume) into the store as `version`. New blobs and
 * the new manifest are written and fsynced first; the manifest is replaced atomically (rename),
 * so a crash at any point leaves the previous or the new version, never a mix (blob names are
 * random and never reused); blobs no longer referenced are removed afterwards. Unchanged files
 * keep their blob. Symlinks, sockets and devices are skipped (counted in `skipped`).
 *
 * The app may still be running (periodic commits): every file is sealed from a *stable read*
 * (fstat, read, and — unless it equals the previous version — a second read, fstat; sizes,
 * mtime, ctime and both digests must agree), else read again up to STABLE_READ_ATTEMPTS times,
 * after which its previous version (or nothing, for a new file) goes into this volume version.
 * Entries that disappear during the walk are left out. Directories are opened with O_NOFOLLOW
 * and their children reached through `/proc/self/fd` where it exists, so a directory the app
 * swaps for a symlink mid-walk cannot redirect the launcher outside the volume.
 */
export async function sealVolume(
  storeDir: string,
  key: Uint8Array,
  volume: string,
  previous: VolumeManifest | undefined,
  srcDir: string,
  version: number,
  options: SealOptions = {},
): Promise<SealResult> {
  await mkdir(join(storeDir, 'blobs'), { recursive: true, mode: 0o700 });
  const prevByPath = new Map((previous?.entries ?? []).map((e) => [e.path, e]));
  const entries: VolumeEntry[] = [];
  const unstable: string[] = [];
  let written = 0;
  let reused = 0;
  let skipped = 0;
  const anchored = await hasProcFd();
  const walk = async (rel: string, dirPath: string): Promise<void> => {
    // the directory itself: opened without following a symlink, then addressed through its fd
    let dirFh: FileHandle;
    try {
      dirFh = await open(dirPath, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
    } catch (err) {
      if (rel !== '' && gone(err)) return; // removed or swapped during the walk: left empty
      throw err;
    }
    try {
      const base = anchored ? `/proc/self/fd/${dirFh.fd}` : dirPath;
      let names: string[];
      try {
        names = (await readdir(base)).sort();
      } catch (err) {
        if (rel !== '' && gone(err)) return;
        throw err;
      }
      for (const name of names) {
        const path = rel === '' ? name : `${rel}/${name}`;
        if (!isVolumePath(path)) {
          skipped++;
          continue;
        }
        let st: Awaited<ReturnType<typeof lstat>>;
        try {
          st = await lstat(join(base, name));
        } catch (err) {
          if (gone(err)) continue; // deleted since readdir
          throw err;
        }
        if (entries.length >= MAX_ENTRIES) throw new CocoonError('INPUT_TOO_LARGE', `protected volume ${volume}: more than ${MAX_ENTRIES} entries`);
        const meta = { path, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
        if (st.isDirectory()) {
          entries.push({ ...meta, type: 'dir' });
          await walk(path, join(base, name));
        } else if (st.isFile()) {
          const prev = prevByPath.get(path);
          const read = await readStable(join(base, name), volume, path, prev?.type === 'file' ? prev : undefined, options.onRead);
          if (read === 'gone') continue;
          if (read === 'not-a-file') {
            skipped++;
            continue;
          }
          if (read === 'unstable') {
            unstable.push(path);
            if (prev?.type === 'file') {
              entries.push(prev);
              reused++;
            }
            continue;
          }
          const fmeta = { ...meta, mode: read.mode, uid: read.uid, gid: read.gid };
          if (prev?.type === 'file' && prev.sha256 === read.sha256 && prev.size === read.plain.length) {
            entries.push({ ...prev, ...fmeta, type: 'file' });
            reused++;
            read.plain.fill(0);
          } else {
            const entry: VolumeEntry = { ...fmeta, type: 'file', size: read.plain.length, blob: randomBytes(16).toString('hex'), fileVersion: (prev?.type === 'file' ? (prev.fileVersion ?? 0) : 0) + 1, writtenAt: version, sha256: read.sha256 };
            await writeDurable(join(storeDir, 'blobs', entry.blob as string), encryptBlob(key, volume, entry, read.plain));
            read.plain.fill(0);
            entries.push(entry);
            written++;
          }
        } else {
          skipped++;
        }
      }
    } finally {
      await dirFh.close();
    }
  };
  await walk('', srcDir);
  const manifest: VolumeManifest = { volume, version, entries };
  if (options.skipUnchanged && previous && written === 0 && JSON.stringify(previous.entries) === JSON.stringify(entries)) {
    return { manifest: previous, written, reused, skipped, unstable, unchanged: true };
  }
  const tmp = join(storeDir, `${MANIFEST}.tmp`);
  await writeDurable(tmp, encodeManifest(key, manifest));
  await rename(tmp, join(storeDir, MANIFEST));
  await fsyncDir(storeDir);
  // Garbage: blobs the new manifest does not reference (old versions, interrupted commits).
  const keep = new Set(entries.flatMap((e) => (e.blob ? [e.blob] : [])));
  for (const name of await readdir(join(storeDir, 'blobs'))) if (!keep.has(name)) await rm(join(storeDir, 'blobs', name), { force: true });
  return { manifest, written, reused, skipped, unstable };
}

interface StableRead {
  plain: Buffer;
  sha256: string;
  mode: number;
  uid: number;
  gid: number;
}

const sameStat = (a: BigIntStats, b: BigIntStats): boolean => a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;

/**
 * A consistent read of one file that the app may be writing: see sealVolume. The file is opened
 * with O_NOFOLLOW and O_NONBLOCK (a FIFO swapped in does not block) and checked to be regular.
 */
async function readStable(path: string, volume: string, rel: string, prev: VolumeEntry | undefined, onRead: SealOptions['onRead']): Promise<StableRead | 'gone' | 'not-a-file' | 'unstable'> {
  for (let attempt = 0; attempt < STABLE_READ_ATTEMPTS; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 10 * attempt));
    let fh: FileHandle;
    try {
      fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    } catch (err) {
      if (gone(err)) return 'gone';
      throw err;
    }
    try {
      const before = await fh.stat({ bigint: true });
      if (!before.isFile()) return 'not-a-file';
      if (before.size > BigInt(MAX_FILE_BYTES)) throw new CocoonError('INPUT_TOO_LARGE', `protected volume ${volume}: ${rel} is larger than ${MAX_FILE_BYTES} bytes`);
      const first = await readAll(fh, volume, rel, Number(before.size));
      await onRead?.(rel, attempt);
      const sha256 = createHash('sha256').update(first).digest('hex');
      // equal to the committed version: a state the file had; otherwise read it a second time
      if (!(prev && prev.sha256 === sha256 && prev.size === first.length)) {
        const second = await readAll(fh, volume, rel, first.length);
        const same = second.equals(first);
        second.fill(0);
        if (!same) {
          first.fill(0);
          continue;
        }
      }
      const after = await fh.stat({ bigint: true });
      if (!sameStat(before, after) || BigInt(first.length) !== after.size) {
        first.fill(0);
        continue;
      }
      return { plain: first, sha256, mode: Number(after.mode) & 0o7777, uid: Number(after.uid), gid: Number(after.gid) };
    } finally {
      await fh.close();
    }
  }
  return 'unstable';
}

/**
 * The whole file from offset 0 (positioned reads: the handle is read twice). Read buffers are
 * sized by `sizeHint` (the size just seen), so small files do not cost 1 MiB buffers per read.
 */
async function readAll(fh: FileHandle, volume: string, rel: string, sizeHint: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let pos = 0;
  for (;;) {
    // the expected rest of the file (at most 1 MiB a read), then a small read to find the end
    const buf = Buffer.allocUnsafe(Math.min(CHUNK_SIZE * 16, Math.max(sizeHint - pos, 4096)));
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (bytesRead === 0) break;
    parts.push(buf.subarray(0, bytesRead));
    pos += bytesRead;
    if (pos > MAX_FILE_BYTES) throw new CocoonError('INPUT_TOO_LARGE', `protected volume ${volume}: ${rel} is larger than ${MAX_FILE_BYTES} bytes`);
  }
  const out = Buffer.concat(parts, pos);
  for (const p of parts) p.fill(0);
  return out;
}

async function writeDurable(path: string, data: Uint8Array): Promise<void> {
  const fh = await open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsc.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
