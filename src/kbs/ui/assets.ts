import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { brotliCompressSync, constants as zc, gzipSync } from 'node:zlib';
import { packageRoot } from '../../util/package-root.js';

export interface Asset {
  type: string;
  etag: string;
  identity: Buffer;
  br: Buffer;
  gzip: Buffer;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};
const MAX_ASSET = 4 * 1024 * 1024;
export const ASSET_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Where `node scripts/build.mjs` writes the dashboard (COCOON_WEB_DIR overrides). */
export function defaultWebDir(): string | undefined {
  const candidates = [process.env.COCOON_WEB_DIR, (() => { try { return join(packageRoot(), 'dist', 'web'); } catch { return undefined; } })()];
  return candidates.find((d): d is string => typeof d === 'string' && d.length > 0 && existsSync(join(d, 'index.html')));
}

/**
 * Loads the built dashboard into memory once: every file with its Brotli and gzip forms
 * (the `.br`/`.gz` files the build wrote, else compressed here). Only known types are served.
 */
export function loadAssets(dir: string | undefined): Map<string, Asset> {
  const out = new Map<string, Asset>();
  if (!dir) return out;
  for (const name of readdirSync(dir)) {
    const type = TYPES[extname(name)];
    if (!type || !ASSET_NAME_RE.test(name)) continue;
    const file = join(dir, name);
    if (!statSync(file).isFile() || statSync(file).size > MAX_ASSET) continue;
    const identity = readFileSync(file);
    const pre = (ext: string) => (existsSync(file + ext) ? readFileSync(file + ext) : undefined);
    out.set(name, {
      type,
      etag: `"${createHash('sha256').update(identity).digest('base64url').slice(0, 27)}"`,
      identity,
      br: pre('.br') ?? brotliCompressSync(identity, { params: { [zc.BROTLI_PARAM_QUALITY]: 11 } }),
      gzip: pre('.gz') ?? gzipSync(identity, { level: 9 }),
    });
  }
  return out;
}

/** Picks the encoding from Accept-Encoding: br, then gzip, else identity. */
export function pickEncoding(acceptEncoding: string | undefined): 'br' | 'gzip' | 'identity' {
  const accepted = new Map<string, number>();
  for (const part of (acceptEncoding ?? '').slice(0, 512).split(',')) {
    const [name, ...params] = part.trim().toLowerCase().split(';');
    if (!name) continue;
    const q = params.map((p) => /^\s*q=([01](?:\.\d{0,3})?)\s*$/.exec(p)?.[1]).find((v) => v !== undefined);
    accepted.set(name, q === undefined ? 1 : Number(q));
  }
  const ok = (n: string) => (accepted.get(n) ?? accepted.get('*') ?? 0) > 0;
  if (ok('br')) return 'br';
  if (ok('gzip')) return 'gzip';
  return 'identity';
}

/** Served when dist/web is missing (the CLI was run from source without a build). */
export const NOT_BUILT_HTML = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Cocoon dashboard</title></head><body><h1>Cocoon dashboard</h1><p>The dashboard is not built: run <code>node scripts/build.mjs</code> (it writes dist/web/).</p></body></html>\n`;
