/**
 * Lean RCAR load generator for bench/rcar.ts, in the manner of autocannon: one persistent
 * keep-alive TCP connection per concurrent loop, each HTTP/1.1 request written as one string,
 * and a minimal, strict response parser (status line, headers, Content-Length body; nothing
 * else). On two shared cores every millisecond the client spends is a millisecond the KBS under
 * test does not get: node:http plus Response/Headers objects cost about as much CPU per round
 * trip as the KBS itself, this costs a small fraction of it. The HTTP layer is all that is
 * hand-rolled — each round trip is still a complete, honest launcher exchange on the product's
 * own protocol code (src/kbs/client/rcar.ts body builders, rcarReportData, src/crypto/ecdh-es.ts):
 * fresh ephemeral key, auth, evidence bound to nonce and key, attest, resource fetched with the
 * session cookie, JWE decrypted and the plaintext checked.
 */
import net from 'node:net';
import { decryptEcdhEs, generateEcdhKeyPair } from '../../src/crypto/ecdh-es.js';
import { rcarAttestBody, rcarAuthBody, rcarTeePubkey, sessionCookieFrom } from '../../src/kbs/client/rcar.js';
import { rcarReportData, SESSION_COOKIE } from '../../src/kbs/rcar-protocol.js';

export interface RawResponse {
  status: number;
  /** Header fields in order, names lower-cased; repeated fields (set-cookie) stay separate. */
  headers: [string, string][];
  body: Buffer;
}

export interface RawHttpOptions {
  /** Largest response head (status line + headers). Default 16 KiB. */
  maxHeadBytes?: number;
  /** Largest response body. Default 1 MiB. */
  maxBodyBytes?: number;
  /** Per request, connecting included. Default 15 s. */
  timeoutMs?: number;
}

/** A response (or connection) that breaks the parser's rules; the connection is dropped. */
export class RawHttpError extends Error {}

const CRLFCRLF = Buffer.from('\r\n\r\n');
const STATUS_LINE = /^HTTP\/1\.1 (\d{3})(?: [\x20-\x7e\x80-\xff]*)?$/;
const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/;

interface Pending {
  resolve: (r: RawResponse) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * One keep-alive HTTP/1.1 connection, one request in flight at a time (no pipelining). Any
 * protocol violation, error, timeout or early close rejects the request and drops the socket;
 * the next request reconnects.
 */
export class RawHttpConnection {
  private socket: net.Socket | undefined;
  private pending: Pending | undefined;
  private buf: Buffer | undefined;
  /** Parsed head of the response being read; undefined while reading the head. */
  private head: { status: number; headers: [string, string][]; length: number; close: boolean } | undefined;
  private readonly hostHeader: string;
  private readonly maxHead: number;
  private readonly maxBody: number;
  private readonly timeoutMs: number;

  constructor(
    private readonly host: string,
    private readonly port: number,
    options: RawHttpOptions = {},
  ) {
    this.hostHeader = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    this.maxHead = options.maxHeadBytes ?? 16 * 1024;
    this.maxBody = options.maxBodyBytes ?? 1024 * 1024;
    this.timeoutMs = options.timeoutMs ?? 15_000;
  }

  /**
   * Sends `METHOD path` with the given extra header lines (each `Name: value`, no CR/LF) and an
   * optional JSON body, and resolves with the complete response.
   */
  request(method: 'GET' | 'POST', path: string, headerLines: readonly string[], jsonBody?: string): Promise<RawResponse> {
    if (this.pending) return Promise.reject(new RawHttpError('a request is already in flight on this connection'));
    if (!path.startsWith('/') || /[^!-~]/.test(path)) return Promise.reject(new RawHttpError('invalid request path'));
    if (headerLines.some((h) => /[\r\n\0]/.test(h))) return Promise.reject(new RawHttpError('header line contains CR/LF/NUL'));
    let req = `${method} ${path} HTTP/1.1\r\nHost: ${this.hostHeader}\r\nAccept: application/json\r\n`;
    for (const h of headerLines) req += `${h}\r\n`;
    req += jsonBody === undefined ? '\r\n' : `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(jsonBody)}\r\n\r\n${jsonBody}`;
    const result = new Promise<RawResponse>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new RawHttpError(`no complete answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending = { resolve, reject, timer };
    });
    // A socket still connecting buffers the write; a failed connect fails the request.
    (this.socket ?? this.open()).write(req);
    return result;
  }

  close(): void {
    this.fail(new RawHttpError('connection closed by the client'));
  }

  private open(): net.Socket {
    const socket = net.connect({ host: this.host, port: this.port, noDelay: true });
    this.socket = socket;
    this.buf = undefined;
    this.head = undefined;
    socket.on('data', (chunk: Buffer) => this.onData(socket, chunk));
    socket.on('error', (err) => this.socket === socket && this.fail(new RawHttpError(`connection error: ${err.message}`)));
    socket.on('close', () => this.socket === socket && this.fail(new RawHttpError('connection closed by the server')));
    return socket;
  }

  /** Rejects the request in flight (if any) and drops the connection. */
  private fail(err: Error): void {
    const socket = this.socket;
    this.socket = undefined;
    this.buf = undefined;
    this.head = undefined;
    socket?.destroy();
    const p = this.pending;
    this.pending = undefined;
    if (p) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  private onData(socket: net.Socket, chunk: Buffer): void {
    if (socket !== this.socket) return;
    if (!this.pending) return this.fail(new RawHttpError('data received with no request in flight'));
    this.buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
    try {
      if (!this.head) {
        const end = this.buf.indexOf(CRLFCRLF);
        if (end < 0) {
          if (this.buf.length > this.maxHead) throw new RawHttpError(`response head larger than ${this.maxHead} bytes`);
          return;
        }
        if (end > this.maxHead) throw new RawHttpError(`response head larger than ${this.maxHead} bytes`);
        this.head = this.parseHead(this.buf.toString('latin1', 0, end));
        this.buf = this.buf.subarray(end + 4);
      }
      const { length } = this.head;
      if (this.buf.length < length) return;
      if (this.buf.length > length) throw new RawHttpError('more bytes than Content-Length (pipelined or malformed response)');
      const { status, headers, close } = this.head;
      const body = this.buf;
      const p = this.pending;
      this.pending = undefined;
      this.buf = undefined;
      this.head = undefined;
      clearTimeout(p.timer);
      if (close) {
        this.socket = undefined;
        socket.destroy();
      }
      p.resolve({ status, headers, body });
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private parseHead(text: string): { status: number; headers: [string, string][]; length: number; close: boolean } {
    const lines = text.split('\r\n');
    const m = STATUS_LINE.exec(lines[0] ?? '');
    if (!m) throw new RawHttpError(`not an HTTP/1.1 status line: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`);
    const status = Number(m[1]);
    if (status < 200) throw new RawHttpError(`unexpected interim response ${status}`);
    const headers: [string, string][] = [];
    let length: number | undefined;
    let close = false;
    for (let i = 1; i < lines.length; i++) {
      const h = HEADER_LINE.exec(lines[i] as string);
      if (!h) throw new RawHttpError(`malformed header line ${JSON.stringify((lines[i] as string).slice(0, 80))}`);
      const name = (h[1] as string).toLowerCase();
      const value = h[2] as string;
      if (name === 'transfer-encoding') throw new RawHttpError(`Transfer-Encoding (${value.slice(0, 40)}) is not supported by this client: the server must send Content-Length`);
      if (name === 'content-length') {
        if (!/^\d{1,10}$/.test(value) || (length !== undefined && length !== Number(value))) throw new RawHttpError(`invalid Content-Length ${JSON.stringify(value.slice(0, 20))}`);
        length = Number(value);
        if (length > this.maxBody) throw new RawHttpError(`response body larger than ${this.maxBody} bytes`);
      }
      if (name === 'connection' && /(^|,)\s*close\s*(,|$)/i.test(value)) close = true;
      headers.push([name, value]);
    }
    if (length === undefined) {
      if (status === 204 || status === 304) length = 0;
      else throw new RawHttpError(`HTTP ${status} without Content-Length`);
    }
    return { status, headers, length, close };
  }
}

/** The RCAR session cookie from a raw response, read as the launcher reads it. */
function sessionCookieOf(res: RawResponse): string | undefined {
  return sessionCookieFrom(res.headers.filter(([h]) => h === 'set-cookie').map(([, v]) => v));
}

function json(res: RawResponse, what: string, status = 200): Record<string, unknown> {
  if (res.status !== status) throw new RawHttpError(`${what}: HTTP ${res.status} ${res.body.toString('utf8', 0, Math.min(res.body.length, 300))}`);
  let v: unknown;
  try {
    v = JSON.parse(res.body.toString('utf8'));
  } catch {
    throw new RawHttpError(`${what}: response is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new RawHttpError(`${what}: response is not a JSON object`);
  return v as Record<string, unknown>;
}

export interface RcarRoundTripOptions {
  tee: string;
  initData: { policy: string; workload: string; toml?: string };
  /** `org/app/name`. */
  resource: string;
  /** Evidence whose report_data is the given 64 bytes. */
  evidence: (reportData: Uint8Array) => Promise<unknown>;
  /** Checks the decrypted resource; throws when wrong. */
  check: (plaintext: Buffer) => void;
}

/**
 * One complete RCAR exchange, as a launcher makes it (src/kbs/client/rcar.ts attestAndFetch):
 * fresh P-256 key, auth, evidence over rcarReportData(nonce, tee-pubkey), attest, resource
 * GET with the session cookie, JWE decrypted with the ephemeral key.
 */
export async function rcarRoundTrip(conn: RawHttpConnection, o: RcarRoundTripOptions): Promise<void> {
  const key = generateEcdhKeyPair('P-256');
  const teePubkey = rcarTeePubkey(key);
  const auth = await conn.request('POST', '/kbs/v0/auth', [], JSON.stringify(rcarAuthBody(o.tee)));
  const { nonce } = json(auth, 'auth');
  if (typeof nonce !== 'string' || nonce.length > 256) throw new RawHttpError('auth: challenge has no nonce');
  const session = sessionCookieOf(auth);
  if (session === undefined) throw new RawHttpError(`auth: no ${SESSION_COOKIE} cookie`);
  const cookie = [`Cookie: ${SESSION_COOKIE}=${session}`];
  const evidence = await o.evidence(rcarReportData(nonce, teePubkey));
  const attest = await conn.request('POST', '/kbs/v0/attest', cookie, JSON.stringify(rcarAttestBody(o.initData, nonce, teePubkey, evidence)));
  if (typeof json(attest, 'attest').token !== 'string') throw new RawHttpError('attest: no token');
  const res = await conn.request('GET', `/kbs/v0/resource/${o.resource}`, cookie);
  o.check(decryptEcdhEs(json(res, `resource ${o.resource}`), key));
}

/** The baseline's three requests (same methods, paths, headers and cookie handling), no crypto. */
export async function baselineRoundTrip(conn: RawHttpConnection): Promise<void> {
  const auth = await conn.request('POST', '/kbs/v0/auth', [], JSON.stringify(rcarAuthBody('sim')));
  json(auth, 'auth');
  const session = sessionCookieOf(auth);
  if (session === undefined) throw new RawHttpError(`auth: no ${SESSION_COOKIE} cookie`);
  const cookie = [`Cookie: ${SESSION_COOKIE}=${session}`];
  json(await conn.request('POST', '/kbs/v0/attest', cookie, '{}'), 'attest');
  json(await conn.request('GET', '/kbs/v0/resource/demo/app/x', cookie), 'resource');
}
