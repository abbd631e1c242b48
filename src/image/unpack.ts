import { execFile } from 'node:child_process';
import { constants as fsc, createReadStream, type Stats } from 'node:fs';
import { type FileHandle, chmod, chown, lchown, link, lutimes, lstat, mkdir, open, readdir, readlink, realpath, rm, symlink, unlink, utimes } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { CocoonError } from '../errors.js';
import { DEFAULT_EXPANSION_LIMITS, decompressStages, layerStreamError, type ExpansionLimits } from './compression.js';
import type { Compression } from './oci.js';
import { HashTap } from './streams.js';

/**
 * Safe layer unpacking. Every entry path is resolved component by component with lstat from
 * the root (symlinks followed with the root as '/', escapes refused); the final component is
 * never followed (O_NOFOLLOW | O_EXCL for files, unlink before symlink/link). This relies on
 * being the only writer under `root` while unpacking.
 */

export interface UnpackLimits extends ExpansionLimits {
  maxEntries: number;
}

export const DEFAULT_UNPACK_LIMITS: UnpackLimits = { ...DEFAULT_EXPANSION_LIMITS, maxEntries: 1_000_000 };

export interface UnpackOptions {
  limits?: Partial<UnpackLimits>;
  /** Apply tar ownership; default: when running as root. */
  chown?: boolean;
  /** Create fifos and device nodes (devices need root); default: skip them with a warning. */
  allowDevices?: boolean;
  onWarning?: (message: string) => void;
  /** Transforms applied to the input before decompression (decryption, hashing). */
  preStages?: Transform[];
  /**
   * `gramine`: unpack inside a Gramine enclave, which has no symlink(2), link(2), utimensat(2)
   * or lchown(2) and emulates ownership: no ownership or times are applied, a hard link becomes
   * a copy of its target, and symlinks are recorded in `links` (paths below the root are
   * resolved through them) for materializeLinks() after the last layer — docs/tee-support.md.
   * Without `links` a symlink is refused (TEE_UNSUPPORTED).
   */
  libos?: 'gramine';
  /** Gramine mode: pending symlinks (root-relative path → link target), shared by all layers of one root. */
  links?: Map<string, string>;
}

export interface UnpackResult {
  /** sha256 of the uncompressed tar stream. */
  diffID: string;
  /** Uncompressed tar bytes. */
  bytes: number;
  entries: number;
  warnings: string[];
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE = '.wh..wh..opq';
const MAX_SYMLINK_HOPS = 40;
const MAX_PATH = 4096;

const execFileP = promisify(execFile);

function traversal(name: string, why: string): CocoonError {
  return new CocoonError('PATH_TRAVERSAL', `tar entry ${JSON.stringify(name.slice(0, 200))}: ${why}`, { details: { entry: name.slice(0, 200) } });
}

function invalid(name: string, why: string): CocoonError {
  return new CocoonError('IMAGE_INVALID', `tar entry ${JSON.stringify(name.slice(0, 200))}: ${why}`);
}

/** Entry name → components. Leading '/' and './' mean the root; '..' is refused. */
export function entryComponents(name: string): string[] {
  if (name.length > MAX_PATH) throw invalid(name, 'path too long');
  if (name.includes('\0')) throw invalid(name, 'NUL in path');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw traversal(name, "'..' in path");
  for (const p of parts) if (Buffer.byteLength(p) > 255) throw invalid(name, 'path component too long');
  return parts;
}

/** Writes a stream to a file in ~1 MiB writev batches (one syscall per tar chunk is slow). */
async function writeBatched(fh: FileHandle, body: Readable): Promise<void> {
  let batch: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    batch.push(chunk as Buffer);
    size += (chunk as Buffer).length;
    if (size >= 1 << 20) {
      await writeAll(fh, batch, size);
      batch = [];
      size = 0;
    }
  }
  if (batch.length > 0) await writeAll(fh, batch, size);
}

async function writeAll(fh: FileHandle, batch: Buffer[], size: number): Promise<void> {
  const { bytesWritten } = await fh.writev(batch);
  if (bytesWritten !== size) await fh.write(Buffer.concat(batch).subarray(bytesWritten));
}

function paxId(v: string | undefined): number | undefined {
  return v !== undefined && /^\d{1,10}$/.test(v) ? Number(v) : undefined;
}

function isEnoent(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if (isEnoent(err)) return null;
    throw err;
  }
}

class Extractor {
  entries = 0;
  readonly warnings: string[] = [];
  /** Real paths (relative to root) created by this layer: whiteouts only hide lower layers. */
  private readonly created = new Set<string>();
  private readonly dirMeta = new Map<string, { mode: number; mtime: Date }>();
  /**
   * Parent resolutions already checked in this layer. Only removing a directory or a symlink
   * can change a resolution, and every such removal clears the cache.
   */
  private readonly dirCache = new Map<string, string[]>();
  private readonly umask = process.umask();
  private readonly doChown: boolean;

  constructor(
    private readonly root: string,
    private readonly opts: UnpackOptions,
    private readonly limits: UnpackLimits,
  ) {
    this.gramine = opts.libos === 'gramine';
    this.links = this.gramine ? opts.links : undefined;
    this.doChown = this.gramine ? false : (opts.chown ?? process.getuid?.() === 0);
  }
  private readonly gramine: boolean;
  private readonly links: Map<string, string> | undefined;

  /** Forgets pending symlinks at `rel` and below (they were replaced or removed). */
  private dropLinks(rel: string): void {
    if (!this.links) return;
    for (const k of [...this.links.keys()]) {
      if (k === rel || k.startsWith(`${rel}/`)) {
        this.links.delete(k);
        this.dirCache.clear();
      }
    }
  }

  private warn(msg: string): void {
    this.warnings.push(msg);
    this.opts.onWarning?.(msg);
  }

  private abs(rel: string[]): string {
    return join(this.root, ...rel);
  }

  /**
   * Resolves directory components to real components below root, following symlinks with the
   * root as '/', optionally creating missing directories. PATH_TRAVERSAL on escape.
   */
  private async resolveDir(parts: string[], name: string, create: boolean): Promise<string[] | null> {
    const key = parts.join('/');
    const cached = this.dirCache.get(key);
    if (cached) return [...cached];
    const resolved = await this.walkDir(parts, name, create);
    if (resolved) this.dirCache.set(key, resolved);
    return resolved ? [...resolved] : null;
  }

  private async walkDir(parts: string[], name: string, create: boolean): Promise<string[] | null> {
    const stack: string[] = [];
    const queue = [...parts];
    let hops = 0;
    while (queue.length > 0) {
      const c = queue.shift() as string;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (stack.length === 0) throw traversal(name, 'a symlink on its path leads outside the root');
        stack.pop();
        continue;
      }
      stack.push(c);
      const pending = this.links?.get(stack.join('/'));
      if (pending !== undefined) {
        if (++hops > MAX_SYMLINK_HOPS) throw traversal(name, 'too many symlinks on its path');
        stack.pop();
        if (pending.startsWith('/')) stack.length = 0;
        queue.unshift(...pending.split('/'));
        continue;
      }
      const p = this.abs(stack);
      const st = await lstatOrNull(p);
      if (st === null) {
        if (!create) return null;
        await mkdir(p, { mode: 0o755 });
        this.created.add(stack.join('/'));
        continue;
      }
      if (st.isDirectory()) continue;
      if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) throw traversal(name, 'too many symlinks on its path');
        stack.pop();
        const target = await readlink(p);
        if (target.startsWith('/')) stack.length = 0;
        queue.unshift(...target.split('/'));
        continue;
      }
      throw invalid(name, `${stack.join('/')} is not a directory`);
    }
    return stack;
  }

  /** Removes whatever is at `p` (never following a symlink). */
  private async clear(p: string, keepDir: boolean): Promise<Stats | null> {
    const st = await lstatOrNull(p);
    if (st === null) return null;
    if (st.isDirectory()) {
      if (keepDir) return st;
      this.dirCache.clear();
      this.dropLinks(p.slice(this.root.length + 1));
      await rm(p, { recursive: true, force: true });
    } else {
      if (st.isSymbolicLink()) this.dirCache.clear();
      await unlink(p);
    }
    return null;
  }

  async entry(header: tar.Header, body: Readable): Promise<void> {
    if (++this.entries > this.limits.maxEntries) {
      throw new CocoonError('DECOMPRESSION_BOMB', `layer has more than ${this.limits.maxEntries} entries`);
    }
    const name = header.name;
    const parts = entryComponents(name);
    const leaf = parts.pop();
    if (leaf === undefined) {
      // the root itself ("./"): nothing to create
      body.resume();
      return;
    }
    if (leaf.startsWith(WHITEOUT_PREFIX)) {
      body.resume();
      await this.whiteout(parts, leaf, name);
      return;
    }
    const type = header.type ?? 'file';
    if (type === 'link') {
      body.resume();
      await this.hardlink(parts, leaf, header);
      return;
    }
    const dirRel = await this.resolveDir(parts, name, true);
    if (dirRel === null) throw new CocoonError('INTERNAL', 'unreachable');
    const rel = [...dirRel, leaf];
    const p = this.abs(rel);
    const relKey = rel.join('/');
    const mode = (header.mode ?? 0o644) & 0o7777;
    const pax = (header.pax ?? {}) as Record<string, string | undefined>;
    const uid = paxId(pax.uid) ?? header.uid ?? 0;
    const gid = paxId(pax.gid) ?? header.gid ?? 0;
    const mtime = header.mtime ?? new Date(0);
    // an entry replaces a pending link at its path (paths resolved through it are cached); links
    // below a directory it replaces are dropped by clear()
    if (this.links?.delete(relKey)) this.dirCache.clear();

    switch (type) {
      case 'directory': {
        body.resume();
        const existing = await this.clear(p, true);
        if (!existing) await mkdir(p, { mode: 0o700 });
        if (this.doChown) await chown(p, uid, gid);
        this.dirMeta.set(relKey, { mode, mtime });
        break;
      }
      case 'file':
      case 'contiguous-file': {
        const fh = await this.createFile(p, mode);
        try {
          await writeBatched(fh, body);
          if (this.doChown) await fh.chown(uid, gid);
          // open() applied mode & ~umask; chmod only when that lost bits (or chown cleared setuid/setgid)
          if ((mode & ~this.umask) !== mode || mode & 0o6000) await fh.chmod(mode);
          if (!this.gramine) await fh.utimes(mtime, mtime);
        } finally {
          await fh.close();
        }
        break;
      }
      case 'symlink': {
        body.resume();
        if (this.gramine) {
          if (!this.links) throw new CocoonError('TEE_UNSUPPORTED', `tar entry ${JSON.stringify(name.slice(0, 200))} is a symlink: Gramine has no symlink(2) (docs/tee-support.md)`);
          const target = header.linkname ?? '';
          if (target === '' || target.length > MAX_PATH || target.includes('\0')) throw invalid(name, 'bad symlink target');
          await this.clear(p, false);
          this.links.set(relKey, target);
          this.dirCache.clear();
          break;
        }
        await this.clear(p, false);
        await symlink(header.linkname ?? '', p);
        if (this.doChown) await lchown(p, uid, gid);
        await lutimes(p, mtime, mtime);
        break;
      }
      case 'fifo':
      case 'character-device':
      case 'block-device': {
        body.resume();
        if (!this.opts.allowDevices) {
          this.warn(`skipped ${type} ${name}`);
          return;
        }
        await this.clear(p, false);
        await this.mknod(p, type, header);
        if (this.doChown) await lchown(p, uid, gid);
        await chmod(p, mode);
        break;
      }
      default:
        body.resume();
        this.warn(`skipped unsupported entry type ${String(type)} ${name}`);
        return;
    }
    this.created.add(relKey);
  }

  /** New regular file, never through a symlink; whatever was at `p` is replaced. */
  private async createFile(p: string, mode: number): Promise<FileHandle> {
    const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
    try {
      return await open(p, flags, mode & 0o777);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    await this.clear(p, false);
    return open(p, flags, mode & 0o777);
  }

  private async mknod(p: string, type: string, h: tar.Header): Promise<void> {
    try {
      if (type === 'fifo') await execFileP('mkfifo', ['--', p]);
      else await execFileP('mknod', ['--', p, type === 'character-device' ? 'c' : 'b', String(h.devmajor ?? 0), String(h.devminor ?? 0)]);
    } catch (err) {
      throw new CocoonError('IO_ERROR', `cannot create ${type} ${h.name}: ${(err as Error).message}`, { cause: err });
    }
  }

  private async hardlink(parts: string[], leaf: string, header: tar.Header): Promise<void> {
    const name = header.name;
    const target = header.linkname ?? '';
    const tparts = entryComponents(target);
    const tleaf = tparts.pop();
    if (tleaf === undefined) throw invalid(name, 'hardlink to the root');
    const tdir = await this.resolveDir(tparts, name, false);
    if (tdir === null) throw invalid(name, `hardlink target ${target} does not exist`);
    const linked = this.links?.get([...tdir, tleaf].join('/'));
    if (linked !== undefined) {
      // a hard link to a symlink is the same symlink
      const dirRel = (await this.resolveDir(parts, name, true)) as string[];
      const rel = [...dirRel, leaf];
      await this.clear(this.abs(rel), false);
      this.links?.set(rel.join('/'), linked);
      this.created.add(rel.join('/'));
      return;
    }
    const tpath = this.abs([...tdir, tleaf]);
    const tst = await lstatOrNull(tpath);
    if (tst === null) throw invalid(name, `hardlink target ${target} does not exist`);
    if (tst.isDirectory()) throw invalid(name, 'hardlink to a directory');
    const dirRel = (await this.resolveDir(parts, name, true)) as string[];
    const rel = [...dirRel, leaf];
    const p = this.abs(rel);
    const existing = await lstatOrNull(p);
    if (existing && existing.ino === tst.ino && existing.dev === tst.dev) return;
    await this.clear(p, false);
    if (this.gramine) {
      // no link(2) in Gramine: a copy has the same content and mode (later writes are not shared)
      const fh = await this.createFile(p, tst.mode & 0o7777);
      try {
        await writeBatched(fh, createReadStream(tpath));
        await fh.chmod(tst.mode & 0o7777);
      } finally {
        await fh.close();
      }
    } else await link(tpath, p);
    this.created.add(rel.join('/'));
  }

  private async whiteout(parts: string[], leaf: string, name: string): Promise<void> {
    const dirRel = await this.resolveDir(parts, name, false);
    if (dirRel === null) return;
    const dirPath = this.abs(dirRel);
    if (leaf === OPAQUE) {
      const st = await lstatOrNull(dirPath);
      if (!st?.isDirectory()) return;
      if (this.links) {
        const prefix = dirRel.length ? `${dirRel.join('/')}/` : '';
        for (const k of [...this.links.keys()]) {
          if (k.startsWith(prefix) && !this.created.has(k.slice(0, prefix.length + k.slice(prefix.length).split('/')[0]!.length))) this.dropLinks(k);
        }
      }
      for (const child of await readdir(dirPath)) {
        const rel = [...dirRel, child].join('/');
        if (this.created.has(rel)) continue;
        this.dirCache.clear();
        await rm(join(dirPath, child), { recursive: true, force: true });
      }
      return;
    }
    const hidden = leaf.slice(WHITEOUT_PREFIX.length);
    if (hidden === '' || hidden === '.' || hidden === '..' || hidden.startsWith(WHITEOUT_PREFIX)) throw invalid(name, 'malformed whiteout');
    const rel = [...dirRel, hidden].join('/');
    if (this.created.has(rel)) return;
    this.dropLinks(rel);
    this.dirCache.clear();
    await rm(join(dirPath, hidden), { recursive: true, force: true });
  }

  /** Directory modes and times last, deepest first, so read-only directories could be filled. */
  async finish(): Promise<void> {
    const dirs = [...this.dirMeta.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, meta] of dirs) {
      const p = join(this.root, rel);
      const st = await lstatOrNull(p);
      if (!st?.isDirectory()) continue;
      await chmod(p, meta.mode);
      if (!this.gramine) await utimes(p, meta.mtime, meta.mtime);
    }
  }
}

function resolveLimits(l?: Partial<UnpackLimits>): UnpackLimits {
  return { ...DEFAULT_UNPACK_LIMITS, ...l };
}

async function prepareRoot(root: string): Promise<string> {
  try {
    await mkdir(root, { recursive: true });
    return await realpath(root);
  } catch (err) {
    throw new CocoonError('IO_ERROR', `cannot prepare ${root}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Unpacks an (optionally compressed) layer stream into `root` and returns its diffID. Errors:
 * PATH_TRAVERSAL, DECOMPRESSION_BOMB, IMAGE_INVALID (corrupt streams), IO_ERROR.
 */
export async function unpackLayer(input: Readable, compression: Compression, root: string, opts: UnpackOptions = {}): Promise<UnpackResult> {
  const limits = resolveLimits(opts.limits);
  const realRoot = await prepareRoot(root);
  const ex = new Extractor(realRoot, opts, limits);
  const hash = new HashTap();
  const extract = tar.extract();
  extract.on('entry', (header, source, next) => {
    const body = source as unknown as Readable;
    ex.entry(header, body).then(
      () => next(),
      (err: unknown) => {
        body.resume();
        next(toUnpackError(err, header.name) as Error);
      },
    );
  });
  try {
    const stages: Array<Readable | Transform | NodeJS.WritableStream> = [input, ...(opts.preStages ?? []), ...decompressStages(compression, limits), hash, extract as unknown as NodeJS.WritableStream];
    await (pipeline as (...s: unknown[]) => Promise<void>)(...stages);
    await ex.finish();
  } catch (err) {
    throw layerStreamError(err, 'layer');
  }
  return { diffID: hash.digest, bytes: hash.bytes, entries: ex.entries, warnings: ex.warnings };
}

function toUnpackError(err: unknown, name: string): CocoonError {
  if (err instanceof CocoonError) return err;
  return new CocoonError('IO_ERROR', `unpacking ${JSON.stringify(name.slice(0, 200))}: ${(err as Error).message}`, { cause: err });
}

/**
 * Gramine mode, after the last layer: turns every pending symlink into a copy of what it
 * resolves to inside the root (a file, or a whole directory tree), since Gramine cannot create
 * symlinks. Resolution follows the other pending links, treats the root as '/' ('..' stops
 * there, as after chroot) and never leaves it. Dangling links (e.g. to /proc), links to an
 * ancestor of themselves (e.g. usr/bin/X11 → .) and loops are skipped with a warning; links
 * inside a copied directory are carried over with absolute targets. Copies are not shared:
 * a later write through one path is not seen through the other.
 */
export async function materializeLinks(root: string, links: Map<string, string>, opts: { onWarning?: (message: string) => void; maxEntries?: number; maxBytes?: number } = {}): Promise<{ materialized: number; skipped: number }> {
  const realRoot = await realpath(root);
  const maxEntries = opts.maxEntries ?? DEFAULT_UNPACK_LIMITS.maxEntries;
  const maxBytes = opts.maxBytes ?? DEFAULT_UNPACK_LIMITS.maxBytes;
  let copied = 0;
  let copiedBytes = 0;
  let materialized = 0;
  let skipped = 0;
  const warn = (m: string) => opts.onWarning?.(m);
  const queue = [...links.keys()].sort();
  const absoluteTarget = (rel: string, target: string): string => posix.normalize(target.startsWith('/') ? target : `/${posix.dirname(rel)}/${target}`);

  async function resolve(path: string): Promise<string[] | null> {
    const stack: string[] = [];
    const queue = path.split('/');
    let hops = 0;
    while (queue.length > 0) {
      const c = queue.shift() as string;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        stack.pop();
        continue;
      }
      stack.push(c);
      const t = links.get(stack.join('/'));
      if (t !== undefined) {
        if (++hops > MAX_SYMLINK_HOPS) return null;
        stack.pop();
        if (t.startsWith('/')) stack.length = 0;
        queue.unshift(...t.split('/'));
        continue;
      }
      const st = await lstatOrNull(join(realRoot, ...stack));
      if (st === null || st.isSymbolicLink()) return null;
      if (!st.isDirectory() && queue.some((x) => x !== '' && x !== '.')) return null;
    }
    return stack;
  }

  const count = () => {
    if (++copied > maxEntries) throw new CocoonError('DECOMPRESSION_BOMB', `materializing symlinks would create more than ${maxEntries} entries`);
  };
  async function copyFileTo(src: string, dst: string, st: Stats): Promise<void> {
    count();
    copiedBytes += st.size;
    if (copiedBytes > maxBytes) throw new CocoonError('DECOMPRESSION_BOMB', `materializing symlinks would copy more than ${maxBytes} bytes`);
    const fh = await open(dst, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, st.mode & 0o777);
    try {
      await writeBatched(fh, createReadStream(src));
      await fh.chmod(st.mode & 0o7777);
    } finally {
      await fh.close();
    }
  }
  async function copyTree(srcRel: string, dstRel: string): Promise<void> {
    const src = join(realRoot, srcRel);
    const st = await lstat(src);
    count();
    await mkdir(join(realRoot, dstRel), { mode: 0o700 });
    for (const e of await readdir(src, { withFileTypes: true })) {
      const s = `${srcRel}/${e.name}`;
      const d = `${dstRel}/${e.name}`;
      if (e.isDirectory()) await copyTree(s, d);
      else if (e.isFile()) await copyFileTo(join(realRoot, s), join(realRoot, d), await lstat(join(realRoot, s)));
    }
    // pending links inside the source directory move along, with targets that mean the same thing
    for (const [k, t] of [...links]) {
      if (k.startsWith(`${srcRel}/`)) {
        const nk = `${dstRel}/${k.slice(srcRel.length + 1)}`;
        links.set(nk, absoluteTarget(k, t));
        queue.push(nk);
      }
    }
    await chmod(join(realRoot, dstRel), st.mode & 0o7777);
  }

  while (queue.length > 0) {
    const rel = queue.shift() as string;
    const target = links.get(rel);
    if (target === undefined) continue;
    const resolved = await resolve(absoluteTarget(rel, target).slice(1));
    const srcRel = resolved?.join('/');
    links.delete(rel);
    if (resolved === null || srcRel === undefined) {
      skipped++;
      warn(`symlink /${rel} → ${target} does not resolve inside the image: left out`);
      continue;
    }
    if (srcRel === '' || rel === srcRel || rel.startsWith(`${srcRel}/`)) {
      skipped++;
      warn(`symlink /${rel} → ${target} points at an ancestor of itself: left out`);
      continue;
    }
    const st = await lstat(join(realRoot, srcRel));
    if (await lstatOrNull(join(realRoot, rel))) {
      skipped++;
      warn(`symlink /${rel}: something else is already there: left out`);
      continue;
    }
    if (!st.isDirectory() && !st.isFile()) {
      skipped++;
      warn(`symlink /${rel} → ${target} is not a file or directory: left out`);
      continue;
    }
    try {
      if (st.isDirectory()) await copyTree(srcRel, rel);
      else await copyFileTo(join(realRoot, srcRel), join(realRoot, rel), st);
    } catch (err) {
      throw toUnpackError(err, rel); // a file-system failure (e.g. ENOSPC) as IO_ERROR, like unpacking
    }
    materialized++;
  }
  return { materialized, skipped };
}
