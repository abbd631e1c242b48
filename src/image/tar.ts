import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { once } from 'node:events';
import { join } from 'node:path';
import type { Readable, Transform, Writable } from 'node:stream';
import { constants as zc, createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { CocoonError, asCocoonError } from '../errors.js';

/**
 * Deterministic tar writing. The same entries give the same bytes: fixed mtime, empty
 * uname/gname, caller-controlled ownership, no atime/ctime, sorted directory walks.
 */

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';

export interface TarEntry {
  /** Relative path inside the archive, without leading '/' (directories without trailing '/'). */
  name: string;
  type: TarEntryType;
  mode: number;
  uid: number;
  gid: number;
  /** Regular files: content size. */
  size?: number;
  /** Symlink target or hardlink target (archive path). */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Regular files: the bytes, or a function opening them as a stream. */
  content?: Buffer | (() => Readable);
}

/** mtime for archives: explicit, else SOURCE_DATE_EPOCH, else 0. */
export function resolveMtime(explicit?: number): number {
  if (explicit !== undefined) return explicit;
  const env = process.env.SOURCE_DATE_EPOCH;
  if (env !== undefined && env !== '') {
    if (!/^\d{1,12}$/.test(env)) throw new CocoonError('BAD_USAGE', 'SOURCE_DATE_EPOCH must be a non-negative integer');
    return Number(env);
  }
  return 0;
}

// ustar's 7-digit octal fields hold ids up to 0o7777777; bigger ids go into PAX records.
const USTAR_MAX_ID = 0o777777;

type PaxHeaders = Partial<tar.Header> & { name: string; pax?: Record<string, string> };

function toHeader(e: TarEntry, mtime: Date): PaxHeaders {
  const isDir = e.type === 'directory';
  const h: PaxHeaders = {
    name: isDir ? `${e.name}/` : e.name,
    type: e.type,
    mode: e.mode & 0o7777,
    uid: e.uid,
    gid: e.gid,
    size: e.type === 'file' ? (e.size ?? (Buffer.isBuffer(e.content) ? e.content.length : 0)) : 0,
    mtime,
    uname: '',
    gname: '',
    devmajor: e.devmajor ?? 0,
    devminor: e.devminor ?? 0,
  };
  if (e.linkname !== undefined) h.linkname = e.linkname;
  const pax: Record<string, string> = {};
  if (e.uid > USTAR_MAX_ID) {
    pax.uid = String(e.uid);
    h.uid = 0;
  }
  if (e.gid > USTAR_MAX_ID) {
    pax.gid = String(e.gid);
    h.gid = 0;
  }
  if (Object.keys(pax).length > 0) h.pax = pax;
  return h;
}

async function writeEntry(pack: tar.Pack, e: TarEntry, mtime: Date): Promise<void> {
  const header = toHeader(e, mtime);
  if (e.type !== 'file') {
    await new Promise<void>((resolve, reject) => pack.entry(header, (err) => (err ? reject(err) : resolve())));
    return;
  }
  if (Buffer.isBuffer(e.content)) {
    const content = e.content;
    await new Promise<void>((resolve, reject) => pack.entry(header, content, (err) => (err ? reject(err) : resolve())));
    return;
  }
  let settle: (err?: Error | null) => void = () => undefined;
  const done = new Promise<void>((res, rej) => {
    settle = (err) => (err ? rej(err) : res());
  });
  const sink = pack.entry(header, (err) => settle(err)) as unknown as Writable;
  if (header.size && header.size > 0) {
    if (!e.content) throw new CocoonError('INTERNAL', `tar entry ${e.name}: no content`);
    for await (const chunk of e.content()) {
      if (!sink.write(chunk as Buffer)) await once(sink, 'drain');
    }
  }
  sink.end();
  await done;
}

/** Packs entries in the given order into a tar stream (uncompressed). */
export function packTar(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>, opts: { mtime?: number } = {}): Readable {
  const pack = tar.pack();
  const mtime = new Date(resolveMtime(opts.mtime) * 1000);
  (async () => {
    for await (const e of entries) await writeEntry(pack, e, mtime);
    pack.finalize();
  })().catch((err: unknown) => pack.destroy(asCocoonError(err, 'IO_ERROR')));
  return pack as unknown as Readable;
}

export interface DirTarOptions {
  /** Archive path prefix, e.g. "cocoon" (no slashes at the ends). */
  prefix?: string;
  /** Emit the prefix directory itself (mode of `dir`). Default true when a prefix is given. */
  includePrefixDir?: boolean;
  mtime?: number;
  /** Replace every entry's owner (e.g. root:root); default keeps the files' uid/gid. */
  owner?: { uid: number; gid: number };
  /** Per-path owner (relative path, no prefix); takes precedence over `owner`. */
  ownerFor?: (relPath: string) => { uid: number; gid: number } | undefined;
  /** Relative paths (posix, no leading '/') to leave out, with everything below them. */
  exclude?: (relPath: string) => boolean;
}

function devNumbers(rdev: number): { devmajor: number; devminor: number } {
  // glibc's gnu_dev_major/minor encoding of dev_t
  const hi = Math.floor(rdev / 2 ** 32);
  const major = ((rdev >>> 8) & 0xfff) | (hi & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  return { devmajor: major, devminor: minor };
}

/**
 * Walks `dir` depth-first, children sorted by byte order of their names, yielding tar
 * entries. Hardlinked files (same inode) after the first become 'link' entries. Sockets are
 * skipped (tar cannot hold them).
 */
export async function* walkDirEntries(dir: string, opts: DirTarOptions = {}): AsyncGenerator<TarEntry> {
  const prefix = opts.prefix ?? '';
  const seen = new Map<string, string>();
  const own = (st: { uid: number; gid: number }, rel = ''): { uid: number; gid: number } => opts.ownerFor?.(rel) ?? opts.owner ?? { uid: st.uid, gid: st.gid };
  const archiveName = (rel: string): string => (prefix && rel ? `${prefix}/${rel}` : prefix || rel);

  const rootSt = await lstat(dir).catch((err: unknown) => {
    throw new CocoonError('NOT_FOUND', `${dir}: ${(err as Error).message}`, { cause: err });
  });
  if (!rootSt.isDirectory()) throw new CocoonError('BAD_USAGE', `${dir} is not a directory`);
  if (prefix && opts.includePrefixDir !== false) {
    yield { name: prefix, type: 'directory', mode: rootSt.mode, ...own(rootSt) };
  }

  async function* walk(rel: string): AsyncGenerator<TarEntry> {
    const abs = rel ? join(dir, rel) : dir;
    const names = (await readdir(abs)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const n of names) {
      const childRel = rel ? `${rel}/${n}` : n;
      if (opts.exclude?.(childRel)) continue;
      const p = join(abs, n);
      const st = await lstat(p);
      const name = archiveName(childRel);
      const base = { name, mode: st.mode, ...own(st, childRel) };
      if (st.isDirectory()) {
        yield { ...base, type: 'directory' };
        yield* walk(childRel);
      } else if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? seen.get(key) : undefined;
        if (first !== undefined) {
          yield { ...base, type: 'link', linkname: first };
        } else {
          if (st.nlink > 1) seen.set(key, name);
          yield { ...base, type: 'file', size: st.size, content: () => createReadStream(p) };
        }
      } else if (st.isSymbolicLink()) {
        yield { ...base, type: 'symlink', linkname: await readlink(p) };
      } else if (st.isFIFO()) {
        yield { ...base, type: 'fifo' };
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        yield { ...base, type: st.isCharacterDevice() ? 'character-device' : 'block-device', ...devNumbers(st.rdev) };
      }
    }
  }
  yield* walk('');
}

/** Deterministic tar stream of a directory tree. */
export function tarDirectory(dir: string, opts: DirTarOptions = {}): Readable {
  return packTar(walkDirEntries(dir, opts), opts.mtime === undefined ? {} : { mtime: opts.mtime });
}

/**
 * gzip whose output depends only on the input: node's zlib writes a header with mtime 0,
 * no file name and no comment, and a fixed level/strategy keeps the deflate stream stable
 * for a given zlib build.
 */
export function deterministicGzip(): Transform {
  return createGzip({ level: 6, memLevel: 8, windowBits: 15, strategy: zc.Z_DEFAULT_STRATEGY, chunkSize: 64 * 1024 });
}
