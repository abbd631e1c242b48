/**
 * Persistent collateral cache: one JSON file per URL under a directory (default
 * ~/.cache/cocoon/collateral). An entry is fresh until its `expires` time, which clients set
 * from the content (TCB info / QE identity / CRL nextUpdate, certificate notAfter).
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';

export interface CacheEntry {
  url: string;
  fetchedAt: string;
  /** RFC 3339; the entry is stale from then on. */
  expires: string;
  headers: Record<string, string>;
  body: Buffer;
}

export interface CollateralCache {
  get(url: string): Promise<CacheEntry | undefined>;
  set(entry: CacheEntry): Promise<void>;
}

export const defaultCacheDir = (): string => path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'cocoon', 'collateral');

export class DiskCache implements CollateralCache {
  constructor(readonly dir: string = defaultCacheDir()) {}

  private file(url: string): string {
    return path.join(this.dir, createHash('sha256').update(url).digest('hex') + '.json');
  }

  async get(url: string): Promise<CacheEntry | undefined> {
    try {
      const j = JSON.parse(await readFile(this.file(url), 'utf8')) as Omit<CacheEntry, 'body'> & { body: string };
      if (j.url !== url || typeof j.body !== 'string' || typeof j.expires !== 'string') return undefined;
      return { ...j, body: Buffer.from(j.body, 'base64') };
    } catch {
      return undefined;
    }
  }

  async set(entry: CacheEntry): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const f = this.file(entry.url);
    const tmp = `${f}.${process.pid}.${Date.now()}.tmp`;
    await writeFile(tmp, JSON.stringify({ ...entry, body: entry.body.toString('base64') }), { mode: 0o600 });
    await rename(tmp, f);
  }
}

export class MemoryCache implements CollateralCache {
  readonly entries = new Map<string, CacheEntry>();
  async get(url: string): Promise<CacheEntry | undefined> {
    return this.entries.get(url);
  }
  async set(entry: CacheEntry): Promise<void> {
    this.entries.set(entry.url, entry);
  }
}
