/**
 * The KBS pin `cocoon attest` writes into the config directory, and a fetch that holds later
 * HTTPS calls to it: the TLS key must be the one the KBS's evidence bound.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { openTls, spkiSha256OfDer } from '../kbs/client/kbs-attest.js';
import type { KbsAttestResult } from '../kbs/client/kbs-attest.js';

export interface KbsPin {
  v: 1;
  kbsUrl: string;
  tee: string;
  insecure: boolean;
  /** The KBS measurement the evidence bound; null when the TEE has no runtime register (docs/kbs.md). */
  measurement: string | null;
  caRootSha256: string;
  tlsSpkiSha256: string | null;
  pinnedAt: string;
}

export const pinPaths = (dir: string) => ({ json: join(dir, 'kbs-pin.json'), ca: join(dir, 'kbs-ca.pem') });
const HEX64 = /^[0-9a-f]{64}$/;
const MAX_RESPONSE = 64 * 1024 * 1024;

async function atomicWrite(file: string, data: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, data, { mode: 0o644 });
  await rename(tmp, file);
}

export async function writePin(dir: string, r: KbsAttestResult, now = new Date()): Promise<KbsPin> {
  const pin: KbsPin = { v: 1, kbsUrl: r.kbsUrl, tee: r.tee, insecure: r.insecure, measurement: r.measurement, caRootSha256: r.caRootSha256, tlsSpkiSha256: r.tlsSpkiSha256, pinnedAt: now.toISOString() };
  await atomicWrite(pinPaths(dir).ca, r.caRootPem);
  await atomicWrite(pinPaths(dir).json, `${JSON.stringify(pin, null, 2)}\n`);
  return pin;
}

/** The pin, strictly parsed; undefined when there is none. */
export async function readPin(dir: string): Promise<KbsPin | undefined> {
  let text: string;
  try {
    text = await readFile(pinPaths(dir).json, 'utf8');
  } catch {
    return undefined;
  }
  let v: unknown;
  try {
    v = text.length <= 16 * 1024 ? JSON.parse(text) : undefined;
  } catch {
    v = undefined;
  }
  const o = v as Partial<KbsPin> | undefined;
  const ok = o && o.v === 1 && typeof o.kbsUrl === 'string' && typeof o.tee === 'string' && typeof o.insecure === 'boolean' && (o.measurement === null || (typeof o.measurement === 'string' && /^[0-9a-f]{96}$/.test(o.measurement))) && typeof o.caRootSha256 === 'string' && HEX64.test(o.caRootSha256) && (o.tlsSpkiSha256 === null || (typeof o.tlsSpkiSha256 === 'string' && HEX64.test(o.tlsSpkiSha256))) && typeof o.pinnedAt === 'string';
  if (!ok) throw new CocoonError('INPUT_MALFORMED', `${pinPaths(dir).json} is not a valid KBS pin (run cocoon attest again)`);
  return o as KbsPin;
}

function headersOf(init: RequestInit | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  new Headers(init?.headers).forEach((value, key) => {
    out[key] = value;
  });
  return out;
}

/**
 * A fetch for the pinned KBS over HTTPS: the request is written only after the TLS key of the
 * connection matched the pinned SPKI hash (the CA check is replaced by the pin).
 */
export function pinnedFetch(pin: KbsPin): typeof fetch {
  const impl = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    if (url.protocol !== 'https:' || url.origin !== pin.kbsUrl || pin.tlsSpkiSha256 === null) return fetch(input, init);
    const { socket, peerDer } = await openTls(url, 15_000);
    if (spkiSha256OfDer(peerDer) !== pin.tlsSpkiSha256) {
      socket.destroy();
      throw new CocoonError('KBS_NOT_TRUSTED', `${url.origin}: TLS key differs from the one pinned by cocoon attest on ${pin.pinnedAt} (run cocoon attest again if the KBS was legitimately re-keyed)`);
    }
    return new Promise<Response>((resolve, reject) => {
      const req = httpsRequest(url, { method: init?.method ?? 'GET', headers: headersOf(init), createConnection: () => socket, ...(init?.signal ? { signal: init.signal } : {}) }, (res) => {
        const chunks: Buffer[] = [];
        let total = 0;
        res.on('data', (c: Buffer) => {
          total += c.length;
          if (total > MAX_RESPONSE) req.destroy(new CocoonError('INPUT_TOO_LARGE', 'response larger than 64 MiB'));
          else chunks.push(c);
        });
        res.on('end', () => {
          const headers = new Headers();
          for (const [k, v] of Object.entries(res.headers)) {
            if (Array.isArray(v)) for (const x of v) headers.append(k, x);
            else if (v !== undefined) headers.set(k, v);
          }
          const status = res.statusCode ?? 502;
          resolve(new Response(status === 204 || status === 304 ? null : Buffer.concat(chunks), { status, headers }));
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      if (typeof init?.body === 'string') req.write(init.body);
      req.end();
    });
  };
  return impl as typeof fetch;
}

/** `{fetchImpl}` holding calls to `kbsUrl` to the pin in `dir`, when one exists for that URL. */
export async function pinnedFetchFor(kbsUrl: string, dir: string): Promise<{ fetchImpl?: typeof fetch }> {
  const pin = await readPin(dir);
  if (!pin || new URL(kbsUrl).origin !== pin.kbsUrl) return {};
  return { fetchImpl: pinnedFetch(pin) };
}
