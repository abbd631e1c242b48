/** HTTP GET through an injected fetch, with timeout, size cap and the collateral cache. */
import { CocoonError } from '../../errors.js';
import { fail } from '../bytes.js';
import type { CacheEntry, CollateralCache } from './cache.js';

export type FetchLike = (url: string, init: { signal: AbortSignal; headers?: Record<string, string> }) => Promise<Response>;

export interface HttpOptions {
  fetch?: FetchLike;
  timeoutMs?: number;
  cache?: CollateralCache;
  /** Clock for cache freshness (default: wall clock). */
  now?: () => Date;
  maxBytes?: number;
}

export interface Fetched {
  body: Buffer;
  headers: Record<string, string>;
  fromCache: boolean;
}

/** GET `url`; a fresh cache entry is returned without I/O; `expiresOf` dates a new entry. */
export async function cachedGet(url: string, keepHeaders: string[], expiresOf: (body: Buffer, headers: Record<string, string>) => Date, o: HttpOptions): Promise<Fetched> {
  const now = (o.now ?? (() => new Date()))();
  const cached = o.cache ? await o.cache.get(url) : undefined;
  if (cached && new Date(cached.expires).getTime() > now.getTime()) return { body: cached.body, headers: cached.headers, fromCache: true };
  try {
    const { body, headers } = await httpGet(url, keepHeaders, o);
    const expires = expiresOf(body, headers);
    if (o.cache) {
      const entry: CacheEntry = { url, fetchedAt: now.toISOString(), expires: expires.toISOString(), headers, body };
      await o.cache.set(entry).catch(() => undefined);
    }
    return { body, headers, fromCache: false };
  } catch (e) {
    if (cached) return { body: cached.body, headers: cached.headers, fromCache: true }; // stale: verification will judge its dates
    throw e;
  }
}

export async function httpGet(url: string, keepHeaders: string[], o: HttpOptions): Promise<{ body: Buffer; headers: Record<string, string> }> {
  const f = o.fetch ?? (globalThis.fetch as unknown as FetchLike);
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), o.timeoutMs ?? 10_000);
  try {
    const res = await f(url, { signal: ctl.signal });
    if (!res.ok) fail('COLLATERAL_UNAVAILABLE', `GET ${url}: HTTP ${res.status}`);
    const body = Buffer.from(await res.arrayBuffer());
    if (body.length > (o.maxBytes ?? 4 << 20)) fail('INPUT_TOO_LARGE', `GET ${url}: response too large`);
    const headers: Record<string, string> = {};
    for (const h of keepHeaders) {
      const v = res.headers.get(h);
      if (v !== null) headers[h.toLowerCase()] = v;
    }
    return { body, headers };
  } catch (e) {
    if (e instanceof CocoonError) throw e;
    const msg = ctl.signal.aborted ? `timed out after ${o.timeoutMs ?? 10_000} ms` : (e as Error).message;
    return fail('COLLATERAL_UNAVAILABLE', `GET ${url}: ${msg}`);
  } finally {
    clearTimeout(timer);
  }
}
