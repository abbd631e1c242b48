import { readFile, readdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { CocoonError, isCocoonError } from '../errors.js';
import { HttpClient, discard, header, readBody, type HttpResponse } from './http.js';
import { LIMITS, MediaType, isDigest, type Descriptor } from './oci.js';
import { registryHost, type DockerReference } from './reference.js';
import { HashTap, VerifyTap, chain } from './streams.js';
import { ociDigest } from '../crypto/hash.js';

/**
 * A client of the distribution API v2 (docker-registry, Docker Hub, ghcr, …): anonymous,
 * basic and bearer-token authentication; manifests and blobs by digest or tag; chunked
 * uploads; cross-repository mounts and skipping blobs that are already there.
 */

export interface RegistryCredentials {
  username: string;
  password: string;
}

export interface RegistryOptions {
  credentials?: RegistryCredentials;
  /** Speak plain HTTP (loopback/test registries). */
  insecure?: boolean;
  /** Extra CA certificate files (PEM). */
  caFiles?: string[];
  /** A containers-style certs.d directory: *.crt are CAs, a *.cert/*.key pair is the client certificate. */
  certDir?: string;
  timeoutMs?: number;
  /** Attempts for idempotent requests (network errors, 5xx); default 3. */
  attempts?: number;
  /** Base delay of the exponential backoff between attempts; default 250 ms. */
  backoffMs?: number;
  /** Upload chunk size (PATCH); default 8 MiB. */
  chunkBytes?: number;
  /** Read credentials from this docker-style auth file (default $REGISTRY_AUTH_FILE, ~/.docker/config.json). */
  authFile?: string;
}

export const MANIFEST_ACCEPT = [MediaType.manifest, MediaType.index, MediaType.dockerManifest, MediaType.dockerManifestList].join(', ');
const MAX_TOKEN_RESPONSE = 64 * 1024;
const MAX_PEM = 1 << 20;
const DEFAULT_CHUNK = 8 << 20;

async function readSmallFile(path: string, max: number, what: string): Promise<Buffer> {
  let b: Buffer;
  try {
    b = await readFile(path);
  } catch (err) {
    throw new CocoonError((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `${what} ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (b.length > max) throw new CocoonError('INPUT_TOO_LARGE', `${what} ${path}: larger than ${max} bytes`);
  return b;
}

/** TLS material from --ca files and a --cert-dir directory. */
export async function loadTlsMaterial(opts: Pick<RegistryOptions, 'caFiles' | 'certDir'>): Promise<{ ca: Buffer[]; cert?: Buffer; key?: Buffer }> {
  const ca: Buffer[] = [];
  for (const f of opts.caFiles ?? []) ca.push(await readSmallFile(f, MAX_PEM, 'CA file'));
  let cert: Buffer | undefined;
  let key: Buffer | undefined;
  if (opts.certDir) {
    let names: string[];
    try {
      names = (await readdir(opts.certDir)).sort();
    } catch (err) {
      throw new CocoonError('NOT_FOUND', `--cert-dir ${opts.certDir}: ${(err as Error).message}`, { cause: err });
    }
    for (const n of names) {
      if (n.endsWith('.crt')) ca.push(await readSmallFile(join(opts.certDir, n), MAX_PEM, 'CA file'));
      else if (n.endsWith('.cert')) {
        cert = await readSmallFile(join(opts.certDir, n), MAX_PEM, 'client certificate');
        key = await readSmallFile(join(opts.certDir, `${n.slice(0, -'.cert'.length)}.key`), MAX_PEM, 'client key');
      }
    }
  }
  for (const pem of ca) if (!pem.toString('utf8').includes('-----BEGIN CERTIFICATE-----')) throw new CocoonError('INPUT_MALFORMED', 'a CA file holds no PEM certificate');
  return { ca, ...(cert && key ? { cert, key } : {}) };
}

/** `user:password` (as in --creds). */
export function parseCredentials(s: string): RegistryCredentials {
  const i = s.indexOf(':');
  if (i <= 0 || s.length > 4096) throw new CocoonError('BAD_USAGE', 'credentials must look like USER:PASSWORD');
  return { username: s.slice(0, i), password: s.slice(i + 1) };
}

/** Credentials for a host from a docker-style auth file (`{"auths":{"host":{"auth":"b64(user:pass)"}}}`), if any. */
export async function credentialsFromAuthFile(host: string, file?: string): Promise<RegistryCredentials | undefined> {
  const path = file ?? process.env.REGISTRY_AUTH_FILE ?? join(homedir(), '.docker', 'config.json');
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch {
    if (file) throw new CocoonError('NOT_FOUND', `auth file ${file} not found`);
    return undefined;
  }
  // an unusable default file (not named by the user) is ignored: anonymous access may still work
  if (bytes.length > MAX_PEM) {
    if (file) throw new CocoonError('INPUT_TOO_LARGE', `auth file ${path} too large`);
    return undefined;
  }
  let o: { auths?: Record<string, { auth?: unknown }> };
  try {
    o = JSON.parse(bytes.toString('utf8')) as typeof o;
  } catch {
    if (file) throw new CocoonError('INPUT_MALFORMED', `auth file ${path}: not JSON`);
    return undefined;
  }
  const auths = typeof o === 'object' && o !== null && typeof o.auths === 'object' && o.auths !== null ? o.auths : {};
  const candidates = [host, `https://${host}`, `http://${host}`, ...(host === 'registry-1.docker.io' ? ['docker.io', 'https://index.docker.io/v1/', 'index.docker.io'] : [])];
  for (const c of candidates) {
    const a = auths[c]?.auth;
    if (typeof a === 'string' && a.length < 8192) {
      const dec = Buffer.from(a, 'base64').toString('utf8');
      if (dec.includes(':')) return parseCredentials(dec);
    }
  }
  return undefined;
}

interface Challenge {
  scheme: 'basic' | 'bearer';
  params: Record<string, string>;
}

/** Parses `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` (or Basic). */
export function parseChallenge(value: string | undefined): Challenge | undefined {
  if (!value || value.length > 4096) return undefined;
  const m = /^\s*(Basic|Bearer)\b\s*(.*)$/i.exec(value);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/g;
  const rest = m[2] ?? '';
  let p: RegExpExecArray | null;
  while ((p = re.exec(rest)) !== null) {
    if (p[0] === '') break;
    params[(p[1] ?? '').toLowerCase()] = (p[2] ?? p[3] ?? '').replace(/\\(.)/g, '$1');
  }
  return { scheme: (m[1] ?? '').toLowerCase() as 'basic' | 'bearer', params };
}

export interface ManifestResponse {
  bytes: Buffer;
  mediaType: string;
  digest: string;
}

/** Counts bytes into a callback (progress). */
export class ProgressTap extends Transform {
  constructor(private readonly onBytes: (n: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.onBytes(chunk.length);
    cb(null, chunk);
  }
}

/** Pass-through that turns socket errors from upstream into REGISTRY_UNREACHABLE. */
class NetErrorMap extends Transform {
  constructor(private readonly what: string) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    cb(null, chunk);
  }
  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    cb(err && !isCocoonError(err) ? new CocoonError('REGISTRY_UNREACHABLE', `${this.what}: ${err.message}`, { cause: err }) : err);
  }
}

export class RegistryClient {
  readonly host: string;
  readonly base: string;
  /** Host of `base` as URL normalises it (default ports dropped). */
  private readonly baseHost: string;
  private readonly http: HttpClient;
  private readonly auth = new Map<string, string>();
  private credentials: RegistryCredentials | undefined;

  private constructor(
    readonly repo: string,
    host: string,
    private readonly opts: RegistryOptions,
    http: HttpClient,
  ) {
    this.host = host;
    this.base = `${opts.insecure ? 'http' : 'https'}://${host}`;
    this.baseHost = new URL(this.base).host;
    this.http = http;
    this.credentials = opts.credentials;
  }

  static async open(ref: DockerReference, opts: RegistryOptions = {}): Promise<RegistryClient> {
    const tlsMaterial = await loadTlsMaterial(opts);
    const http = new HttpClient({
      ca: tlsMaterial.ca,
      ...(tlsMaterial.cert && tlsMaterial.key ? { cert: tlsMaterial.cert, key: tlsMaterial.key } : {}),
      timeoutMs: opts.timeoutMs ?? 60_000,
      attempts: opts.attempts ?? 3,
      backoffMs: opts.backoffMs ?? 250,
      allowHttp: Boolean(opts.insecure),
    });
    const host = registryHost(ref);
    const c = new RegistryClient(ref.path, host, opts, http);
    c.credentials ??= await credentialsFromAuthFile(host, opts.authFile);
    return c;
  }

  close(): void {
    this.http.close();
  }

  private url(path: string): URL {
    return new URL(path, this.base);
  }

  private scopeKey(actions: string): string {
    return `repository:${this.repo}:${actions}`;
  }

  private async authenticate(res: HttpResponse, actions: string): Promise<void> {
    const ch = parseChallenge(header(res, 'www-authenticate'));
    await discard(res);
    if (!ch) throw new CocoonError('REGISTRY_AUTH_FAILED', `${this.host}: 401 without a usable WWW-Authenticate challenge`);
    if (ch.scheme === 'basic') {
      if (!this.credentials) throw new CocoonError('REGISTRY_AUTH_FAILED', `${this.host}: authentication required (give --creds USER:PASSWORD)`);
      this.auth.set(this.scopeKey(actions), `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`);
      return;
    }
    const realm = ch.params.realm;
    if (!realm) throw new CocoonError('REGISTRY_AUTH_FAILED', `${this.host}: bearer challenge without realm`);
    let tokenUrl: URL;
    try {
      tokenUrl = new URL(realm);
    } catch {
      throw new CocoonError('REGISTRY_AUTH_FAILED', `${this.host}: bad token realm`);
    }
    if (tokenUrl.protocol !== 'https:' && !(tokenUrl.protocol === 'http:' && this.opts.insecure)) throw new CocoonError('REGISTRY_AUTH_FAILED', `${this.host}: token realm must be https`);
    if (ch.params.service) tokenUrl.searchParams.set('service', ch.params.service);
    tokenUrl.searchParams.set('scope', this.scopeKey(actions));
    const headers: Record<string, string> = {};
    if (this.credentials) headers.authorization = `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
    const tr = await this.http.request({ method: 'GET', url: tokenUrl, headers });
    if (tr.status === 401 || tr.status === 403) {
      await discard(tr);
      throw new CocoonError('REGISTRY_AUTH_FAILED', `${this.host}: the token service refused ${this.credentials ? 'these credentials' : 'anonymous access'} (HTTP ${tr.status})`);
    }
    if (tr.status !== 200) {
      await discard(tr);
      throw new CocoonError('REGISTRY_ERROR', `${this.host}: token service answered HTTP ${tr.status}`);
    }
    const body = await readBody(tr, MAX_TOKEN_RESPONSE, 'token response');
    let tok: { token?: unknown; access_token?: unknown };
    try {
      tok = JSON.parse(body.toString('utf8')) as typeof tok;
    } catch {
      throw new CocoonError('REGISTRY_ERROR', `${this.host}: token response is not JSON`);
    }
    const t = typeof tok?.token === 'string' ? tok.token : typeof tok?.access_token === 'string' ? tok.access_token : undefined;
    if (!t || t.length > 32 * 1024 || !/^[\x21-\x7e]+$/.test(t)) throw new CocoonError('REGISTRY_ERROR', `${this.host}: token response without a usable token`);
    this.auth.set(this.scopeKey(actions), `Bearer ${t}`);
  }

  /** One API call with authentication (a 401 triggers the challenge flow once). */
  async call(
    method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE',
    pathOrUrl: string | URL,
    o: { actions?: 'pull' | 'pull,push'; headers?: Record<string, string>; body?: Buffer | Readable; idempotent?: boolean } = {},
  ): Promise<HttpResponse> {
    const actions = o.actions ?? 'pull';
    const url = typeof pathOrUrl === 'string' ? this.url(pathOrUrl) : pathOrUrl;
    for (let attempt = 0; ; attempt++) {
      const auth = this.auth.get(this.scopeKey(actions)) ?? (actions === 'pull' ? this.auth.get(this.scopeKey('pull,push')) : undefined);
      // credentials go to the registry itself only, not to another host an upload Location names
      const headers = { ...(o.headers ?? {}), ...(auth && url.host === this.baseHost ? { authorization: auth } : {}) };
      const res = await this.http.request({ method, url, headers, ...(o.body !== undefined ? { body: o.body } : {}), ...(o.idempotent ? { idempotent: true } : {}) });
      if (res.status === 401 && attempt === 0 && (o.body === undefined || Buffer.isBuffer(o.body))) {
        await this.authenticate(res, actions);
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        const text = await discard(res);
        throw new CocoonError('REGISTRY_AUTH_FAILED', `${this.host}/${this.repo}: ${method} refused (HTTP ${res.status})${text ? `: ${errorSummary(text)}` : ''}`);
      }
      return res;
    }
  }

  /** Makes sure credentials/tokens for `actions` are in place before a streamed request. */
  async ensureAuth(actions: 'pull' | 'pull,push'): Promise<void> {
    const res = await this.call('GET', '/v2/', { actions });
    await discard(res);
  }

  private async fail(res: HttpResponse, what: string): Promise<never> {
    const text = await discard(res);
    if (res.status === 404) throw new CocoonError('NOT_FOUND', `${this.host}/${this.repo}: ${what} not found${text ? ` (${errorSummary(text)})` : ''}`);
    throw new CocoonError('REGISTRY_ERROR', `${this.host}/${this.repo}: ${what}: HTTP ${res.status}${text ? ` ${errorSummary(text)}` : ''}`);
  }

  /** GET a manifest or index by tag or digest; a digest reference is verified. */
  async getManifest(reference: string, maxBytes: number = LIMITS.manifestBytes): Promise<ManifestResponse> {
    checkReferencePart(reference);
    const res = await this.call('GET', `/v2/${this.repo}/manifests/${reference}`, { headers: { accept: MANIFEST_ACCEPT } });
    if (res.status !== 200) return this.fail(res, `manifest ${reference}`);
    const bytes = await readBody(res, maxBytes, `manifest ${reference}`);
    const digest = ociDigest(bytes);
    if (isDigest(reference) && digest !== reference) throw new CocoonError('DIGEST_MISMATCH', `${this.host}/${this.repo}: manifest content does not match ${reference}`);
    const mediaType = (header(res, 'content-type') ?? '').split(';')[0]?.trim() ?? '';
    return { bytes, mediaType, digest };
  }

  /** A blob as a stream that errors (DIGEST_MISMATCH) unless size and digest match. */
  async openBlob(desc: Pick<Descriptor, 'digest' | 'size'>): Promise<Readable> {
    const res = await this.call('GET', `/v2/${this.repo}/blobs/${desc.digest}`);
    if (res.status !== 200) return this.fail(res, `blob ${desc.digest}`);
    const len = header(res, 'content-length');
    if (len !== undefined && /^\d+$/.test(len) && Number(len) !== desc.size) {
      res.body.destroy();
      throw new CocoonError('DIGEST_MISMATCH', `blob ${desc.digest}: registry sends ${len} bytes, descriptor says ${desc.size}`);
    }
    return chain(res.body, new NetErrorMap(`blob ${desc.digest}`), new VerifyTap(desc, `blob ${desc.digest}`));
  }

  async hasBlob(digest: string, actions: 'pull' | 'pull,push' = 'pull'): Promise<boolean> {
    const res = await this.call('HEAD', `/v2/${this.repo}/blobs/${digest}`, { actions });
    await discard(res);
    if (res.status === 200) return true;
    if (res.status === 404) return false;
    throw new CocoonError('REGISTRY_ERROR', `${this.host}/${this.repo}: HEAD blob ${digest}: HTTP ${res.status}`);
  }

  /** Cross-repository mount; true when the registry mounted it (201). */
  async mountBlob(digest: string, fromRepo: string): Promise<boolean> {
    const q = new URLSearchParams({ mount: digest, from: fromRepo });
    const res = await this.call('POST', `/v2/${this.repo}/blobs/uploads/?${q.toString()}`, { actions: 'pull,push', body: Buffer.alloc(0) });
    if (res.status === 201) {
      await discard(res);
      return true;
    }
    if (res.status === 202) {
      // not mounted: cancel the session the registry opened
      const loc = header(res, 'location');
      await discard(res);
      if (loc && URL.canParse(loc, this.base)) await this.call('DELETE', new URL(loc, this.base), { actions: 'pull,push' }).then(discard, () => undefined);
      return false;
    }
    await discard(res);
    return false;
  }

  /**
   * Uploads a stream in PATCH chunks (at most `chunkBytes` in memory), then PUT …?digest=.
   * The digest is computed while uploading; when `expected` is given it must match.
   */
  async uploadBlob(stream: Readable, expected?: Pick<Descriptor, 'digest' | 'size'>): Promise<{ digest: string; size: number }> {
    const chunkSize = this.opts.chunkBytes ?? DEFAULT_CHUNK;
    const start = await this.call('POST', `/v2/${this.repo}/blobs/uploads/`, { actions: 'pull,push', body: Buffer.alloc(0) });
    if (start.status !== 202) return this.fail(start, 'upload start');
    let location = uploadLocation(start, this.base);
    await discard(start);
    const tap = new HashTap();
    let offset = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (): Promise<void> => {
      if (pendingBytes === 0) return;
      const body = Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      const res = await this.call('PATCH', location, {
        actions: 'pull,push',
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${offset}-${offset + body.length - 1}` },
        body,
      });
      if (res.status !== 202) return this.fail(res, 'upload chunk');
      location = uploadLocation(res, this.base);
      await discard(res);
      offset += body.length;
    };
    try {
      for await (const c of stream.pipe(tap)) {
        const chunk = c as Buffer;
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= chunkSize) await flush();
      }
      await flush();
    } catch (err) {
      stream.destroy();
      await this.call('DELETE', location, { actions: 'pull,push' }).then(discard, () => undefined);
      throw err;
    }
    const digest = tap.digest;
    if (expected && (expected.digest !== digest || expected.size !== tap.bytes)) {
      await this.call('DELETE', location, { actions: 'pull,push' }).then(discard, () => undefined);
      throw new CocoonError('DIGEST_MISMATCH', `upload: content does not match ${expected.digest}`);
    }
    location.searchParams.set('digest', digest);
    const put = await this.call('PUT', location, { actions: 'pull,push', body: Buffer.alloc(0) });
    if (put.status !== 201 && put.status !== 204) return this.fail(put, `upload finish ${digest}`);
    await discard(put);
    return { digest, size: tap.bytes };
  }

  async putManifest(reference: string, bytes: Buffer, mediaType: string): Promise<string> {
    checkReferencePart(reference);
    const res = await this.call('PUT', `/v2/${this.repo}/manifests/${reference}`, { actions: 'pull,push', headers: { 'content-type': mediaType }, body: bytes, idempotent: true });
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) return this.fail(res, `manifest ${reference}`);
    await discard(res);
    const d = ociDigest(bytes);
    const said = header(res, 'docker-content-digest');
    if (said !== undefined && said !== d) throw new CocoonError('DIGEST_MISMATCH', `${this.host}: registry stored manifest as ${said}, expected ${d}`);
    return d;
  }
}

function uploadLocation(res: HttpResponse, base: string): URL {
  const loc = header(res, 'location');
  if (!loc || loc.length > 8192) throw new CocoonError('REGISTRY_ERROR', 'upload response without Location');
  let u: URL;
  try {
    u = new URL(loc, base);
  } catch {
    throw new CocoonError('REGISTRY_ERROR', 'upload response with an invalid Location');
  }
  const b = new URL(base);
  if (u.protocol !== b.protocol) throw new CocoonError('REGISTRY_ERROR', `upload Location changes protocol to ${u.protocol}`);
  return u;
}

function checkReferencePart(reference: string): void {
  if (!isDigest(reference) && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(reference)) throw new CocoonError('BAD_USAGE', `bad tag or digest ${JSON.stringify(String(reference).slice(0, 80))}`);
}

function errorSummary(text: string): string {
  try {
    const o = JSON.parse(text) as { errors?: Array<{ code?: unknown; message?: unknown }> };
    const e = o.errors?.[0];
    if (e) return `${String(e.code ?? '')} ${String(e.message ?? '')}`.trim().slice(0, 200);
  } catch {
    /* not JSON */
  }
  return text.replace(/\s+/g, ' ').slice(0, 200);
}
