import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { CocoonError, isCocoonError } from '../errors.js';

/**
 * A small HTTP(S) client for registries on node:http — custom CAs and client certificates,
 * per-request idle timeouts, bounded bodies, manual redirects (Authorization is dropped when
 * the host changes) and retries of idempotent requests on network errors and 5xx.
 */

export interface HttpClientOptions {
  /** Extra trusted CA certificates (PEM). */
  ca?: Buffer[];
  /** Client certificate and key (PEM) for mutual TLS. */
  cert?: Buffer;
  key?: Buffer;
  /** Socket idle timeout per request. */
  timeoutMs?: number;
  /** Attempts for idempotent requests (GET/HEAD, and others with a Buffer body when `idempotent`). */
  attempts?: number;
  /** Base delay of the exponential backoff between attempts. */
  backoffMs?: number;
  /** Allow plain http:// URLs. */
  allowHttp?: boolean;
  userAgent?: string;
}

export interface HttpRequest {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  url: URL;
  headers?: Record<string, string>;
  /** A Buffer is replayable (retries allowed); a stream is sent once. */
  body?: Buffer | Readable;
  /** Retry this request even though its method is not GET/HEAD (its body must be a Buffer). */
  idempotent?: boolean;
  maxRedirects?: number;
}

export interface HttpResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  url: URL;
  body: http.IncomingMessage;
}

const DEFAULT_TIMEOUT = 60_000;

export function header(res: Pick<HttpResponse, 'headers'>, name: string): string | undefined {
  const v = res.headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** Reads a whole body, refusing more than `max` bytes (INPUT_TOO_LARGE). */
export async function readBody(res: HttpResponse, max: number, what: string): Promise<Buffer> {
  const declared = header(res, 'content-length');
  if (declared !== undefined && /^\d+$/.test(declared) && Number(declared) > max) {
    res.body.destroy();
    throw new CocoonError('INPUT_TOO_LARGE', `${what}: response of ${declared} bytes exceeds ${max}`);
  }
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const c of res.body) {
      n += (c as Buffer).length;
      if (n > max) {
        res.body.destroy();
        throw new CocoonError('INPUT_TOO_LARGE', `${what}: response exceeds ${max} bytes`);
      }
      chunks.push(c as Buffer);
    }
  } catch (err) {
    if (isCocoonError(err)) throw err;
    throw new CocoonError('REGISTRY_UNREACHABLE', `${what}: ${(err as Error).message}`, { cause: err });
  }
  return Buffer.concat(chunks);
}

/** Drains and discards a body (small error bodies), bounded. */
export async function discard(res: HttpResponse): Promise<string> {
  try {
    return (await readBody(res, 64 * 1024, 'response')).toString('utf8').slice(0, 500);
  } catch {
    res.body.destroy();
    return '';
  }
}

function isRetryableNetworkError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && ['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET', 'ERR_TIMEOUT'].includes(code);
}

export class HttpClient {
  private readonly httpsAgent: https.Agent;
  private readonly httpAgent: http.Agent;

  constructor(private readonly opts: HttpClientOptions = {}) {
    this.httpsAgent = new https.Agent({
      keepAlive: true,
      maxSockets: 8,
      ...(opts.ca && opts.ca.length > 0 ? { ca: [...tls.rootCertificates, ...opts.ca.map((c) => c.toString('utf8'))] } : {}),
      ...(opts.cert && opts.key ? { cert: opts.cert, key: opts.key } : {}),
    });
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  }

  close(): void {
    this.httpsAgent.destroy();
    this.httpAgent.destroy();
  }

  /** Sends a request, following redirects; retries idempotent ones. The caller consumes `body`. */
  async request(req: HttpRequest): Promise<HttpResponse> {
    const replayable = req.body === undefined || Buffer.isBuffer(req.body);
    const idempotent = replayable && (req.method === 'GET' || req.method === 'HEAD' || req.idempotent === true);
    const attempts = idempotent ? Math.max(1, this.opts.attempts ?? 3) : 1;
    let lastErr: unknown;
    for (let i = 0; i < attempts; i++) {
      if (i > 0) await sleep((this.opts.backoffMs ?? 250) * 2 ** (i - 1));
      try {
        const res = await this.follow(req);
        if (res.status >= 500 && i + 1 < attempts) {
          await discard(res);
          lastErr = new CocoonError('REGISTRY_ERROR', `${req.method} ${res.url.host}${res.url.pathname}: HTTP ${res.status}`);
          continue;
        }
        return res;
      } catch (err) {
        lastErr = err;
        if (isCocoonError(err) && err.code !== 'REGISTRY_UNREACHABLE') throw err;
        if (!isRetryableNetworkError((err as { cause?: unknown }).cause ?? err) && !(isCocoonError(err) && err.details?.timeout === true)) break;
      }
    }
    if (isCocoonError(lastErr)) throw lastErr;
    throw new CocoonError('REGISTRY_UNREACHABLE', `${req.method} ${req.url.host}: ${(lastErr as Error | undefined)?.message ?? 'failed'}`, { cause: lastErr });
  }

  private async follow(req: HttpRequest): Promise<HttpResponse> {
    let url = req.url;
    let headers = { ...(req.headers ?? {}) };
    let method = req.method;
    let body = req.body;
    for (let hop = 0; hop <= (req.maxRedirects ?? 5); hop++) {
      const res = await this.once(method, url, headers, body);
      if (![301, 302, 303, 307, 308].includes(res.status)) return res;
      const loc = header(res, 'location');
      await discard(res);
      if (!loc) throw new CocoonError('REGISTRY_ERROR', `${url.host}: redirect without Location`);
      let next: URL;
      try {
        next = new URL(loc, url);
      } catch {
        throw new CocoonError('REGISTRY_ERROR', `${url.host}: redirect to an invalid Location`);
      }
      if (next.protocol !== 'https:' && !(next.protocol === 'http:' && this.opts.allowHttp)) {
        throw new CocoonError('REGISTRY_ERROR', `${url.host}: refusing redirect to ${next.protocol}`);
      }
      if (next.host !== url.host) {
        // credentials are for the registry, not for a storage backend it redirects to
        headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k.toLowerCase() !== 'authorization'));
      }
      if (res.status === 303 || ((res.status === 301 || res.status === 302) && method === 'POST')) {
        method = 'GET';
        body = undefined;
      } else if (body !== undefined && !Buffer.isBuffer(body)) {
        throw new CocoonError('REGISTRY_ERROR', `${url.host}: cannot replay a streamed body on redirect`);
      }
      url = next;
    }
    throw new CocoonError('REGISTRY_ERROR', `${req.url.host}: too many redirects`);
  }

  private once(method: string, url: URL, headers: Record<string, string>, body: Buffer | Readable | undefined): Promise<HttpResponse> {
    const isHttps = url.protocol === 'https:';
    if (!isHttps && !(url.protocol === 'http:' && this.opts.allowHttp)) {
      return Promise.reject(new CocoonError('BAD_USAGE', `${url.host}: plain HTTP needs --insecure`));
    }
    const timeout = this.opts.timeoutMs ?? DEFAULT_TIMEOUT;
    const h: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'cocoon/0.1', ...headers };
    if (Buffer.isBuffer(body)) h['content-length'] = String(body.length);
    return new Promise<HttpResponse>((resolve, reject) => {
      const mod = isHttps ? https : http;
      const r = mod.request(url, { method, headers: h, agent: isHttps ? this.httpsAgent : this.httpAgent }, (res) => {
        res.setTimeout(timeout, () => res.destroy(new CocoonError('REGISTRY_UNREACHABLE', `${url.host}: no data for ${timeout} ms`, { details: { timeout: true } })));
        resolve({ status: res.statusCode ?? 0, headers: res.headers, url, body: res });
      });
      r.setTimeout(timeout, () => r.destroy(new CocoonError('REGISTRY_UNREACHABLE', `${method} ${url.host}: no response within ${timeout} ms`, { details: { timeout: true } })));
      r.on('error', (err) => {
        if (isCocoonError(err)) reject(err);
        else {
          const code = (err as NodeJS.ErrnoException).code ?? '';
          const tls = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO/i.test(code);
          reject(
            new CocoonError(tls ? 'REGISTRY_TLS_FAILED' : 'REGISTRY_UNREACHABLE', `${method} ${url.host}: ${err.message}${tls ? ' (trust its CA with --ca FILE or --cert-dir DIR)' : ''}`, {
              cause: err,
            }),
          );
        }
      });
      if (body === undefined) r.end();
      else if (Buffer.isBuffer(body)) r.end(body);
      else {
        body.on('error', (err) => r.destroy(err));
        body.pipe(r);
      }
    });
  }
}
