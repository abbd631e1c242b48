import { CocoonError, ERROR_CODES } from '../../errors.js';
import type { ErrorCode } from '../../errors.js';

export const DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024;

export interface HttpOptions {
  method: 'GET' | 'POST' | 'PUT';
  headers?: Record<string, string>;
  body?: unknown;
  timeoutMs: number;
  maxBytes?: number;
  fetchImpl?: typeof fetch;
}

export interface HttpResult {
  status: number;
  headers: Headers;
  bytes: Buffer;
}

/** A failure worth retrying (network, timeout, 5xx) as opposed to a definite answer (4xx). */
export class TransientError extends Error {}

/** One HTTP exchange with a bounded response size and a deadline. */
export async function httpRequest(url: string, options: HttpOptions): Promise<HttpResult> {
  const fetchImpl = options.fetchImpl ?? fetch;
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  const headers: Record<string, string> = { accept: 'application/json', ...options.headers };
  let body: string | undefined;
  if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['content-type'] = 'application/json';
  }
  const signal = AbortSignal.timeout(options.timeoutMs);
  let res: Response;
  try {
    res = await fetchImpl(url, { method: options.method, headers, ...(body !== undefined ? { body } : {}), signal, redirect: 'error' });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const reason = (err as Error).name === 'TimeoutError' ? `no answer within ${options.timeoutMs} ms` : (cause?.code ?? cause?.message ?? (err as Error).message);
    throw new TransientError(`${options.method} ${url}: ${reason}`);
  }
  const declared = Number(res.headers.get('content-length') ?? '0');
  if (declared > maxBytes) {
    await res.body?.cancel();
    throw new CocoonError('INPUT_TOO_LARGE', `${url}: response larger than ${maxBytes} bytes`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    if (res.body) {
      const reader = res.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        total += value.length;
        if (total > maxBytes) {
          await reader.cancel();
          throw new CocoonError('INPUT_TOO_LARGE', `${url}: response larger than ${maxBytes} bytes`);
        }
        chunks.push(Buffer.from(value));
      }
    }
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new TransientError(`${options.method} ${url}: connection lost while reading the response`);
  }
  const bytes = Buffer.concat(chunks);
  if (res.status >= 500) throw new TransientError(`${options.method} ${url}: HTTP ${res.status}${problemSuffix(bytes)}`);
  return { status: res.status, headers: res.headers, bytes };
}

export function parseJsonBody(result: HttpResult, what: string): unknown {
  try {
    return JSON.parse(result.bytes.toString('utf8'));
  } catch {
    throw new CocoonError('INPUT_MALFORMED', `${what}: response is not JSON`);
  }
}

/** Turns a 4xx problem document into the CocoonError it carries (by `code`). */
export function errorFromResponse(result: HttpResult, what: string): CocoonError {
  let code: ErrorCode = result.status === 401 ? 'AUTH_INVALID' : result.status === 403 ? 'FORBIDDEN' : result.status === 404 ? 'NOT_FOUND' : result.status === 409 ? 'CONFLICT' : result.status === 413 ? 'INPUT_TOO_LARGE' : 'INPUT_MALFORMED';
  let detail = `HTTP ${result.status}`;
  let details: Record<string, unknown> | undefined;
  try {
    const p = JSON.parse(result.bytes.toString('utf8')) as Record<string, unknown>;
    if (typeof p.code === 'string' && p.code in ERROR_CODES) code = p.code as ErrorCode;
    if (typeof p.detail === 'string') detail = p.detail.slice(0, 2000);
    if (typeof p.details === 'object' && p.details !== null) details = p.details as Record<string, unknown>;
  } catch {
    // keep the status-derived code
  }
  return new CocoonError(code, `${what}: ${detail}`, details ? { details: { ...details, status: result.status } } : { details: { status: result.status } });
}

function problemSuffix(bytes: Buffer): string {
  try {
    const p = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    return typeof p.detail === 'string' ? ` (${p.detail.slice(0, 200)})` : '';
  } catch {
    return '';
  }
}

export function trimBase(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CocoonError('BAD_USAGE', `invalid KBS URL ${url}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new CocoonError('BAD_USAGE', `KBS URL must be http(s): ${url}`);
  return url.replace(/\/+$/, '');
}
