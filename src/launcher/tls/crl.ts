/**
 * The deployment CA's CRL, as the launcher's TLS proxies consult it (docs/tls.md "Revocation").
 * Fetched from the KBS (`GET /cocoon/v1/ca` for the current intermediate, `GET /cocoon/v1/ca/crl`)
 * at start and every `refreshMs`; accepted only when it parses strictly (bounded size, one PEM
 * block, DER), is signed by an intermediate that chains to the pinned deployment root, and is
 * current (thisUpdate ≤ now < nextUpdate). On a failed refresh the last good CRL stays in force
 * until its nextUpdate; after that (or before the first good one) every peer is refused.
 */
import { CocoonError, asCocoonError } from '../../errors.js';
import { crlSignedBy, isCaCert, isSignedBy, parseCrl, pemCerts, validAt } from '../../attestation/pki.js';
import type { Cert } from '../../attestation/pki.js';
import { errorFromResponse, httpRequest, parseJsonBody, trimBase } from '../../kbs/client/http.js';
import type { LauncherLog } from '../log.js';
import { oneLine } from './proxy.js';

/** Largest CRL accepted (PEM text); a revocation list of ~50 000 entries. */
export const MAX_CRL_BYTES = 2 * 1024 * 1024;
const MAX_CA_BYTES = 64 * 1024;
/** Tolerated clock skew for thisUpdate. */
const SKEW_MS = 5 * 60_000;

const CRL_PEM_RE = /^\s*-----BEGIN X509 CRL-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END X509 CRL-----\s*$/;

/** Serial numbers compare as hex without leading zeros, lower case (Node prints them upper case, DER may pad a 00). */
export function normalizeSerial(hex: string): string {
  return hex.toLowerCase().replace(/[^0-9a-f]/g, '').replace(/^0+(?=.)/, '');
}

export interface VerifiedCrl {
  revoked: Set<string>;
  thisUpdate: Date;
  nextUpdate: Date;
  issuer: string;
}

const invalid = (message: string): never => {
  throw new CocoonError('CRL_INVALID', message);
};

/**
 * Strict check of a CRL text against the deployment root: `intermediatePem` must be a CA
 * certificate signed by `rootPem`, valid now, and the CRL must carry its valid signature.
 */
export function verifyCrl(crlPem: string, intermediatePem: string, rootPem: string, now: Date): VerifiedCrl {
  if (crlPem.length > MAX_CRL_BYTES) invalid(`CRL larger than ${MAX_CRL_BYTES} bytes`);
  const m = CRL_PEM_RE.exec(crlPem);
  if (!m) invalid('CRL is not exactly one PEM "X509 CRL" block');
  const der = Buffer.from((m as RegExpExecArray)[1] as string, 'base64');
  let root: Cert;
  let inter: Cert;
  try {
    const roots = pemCerts(rootPem, 'CRL_INVALID', 1);
    const inters = pemCerts(intermediatePem, 'CRL_INVALID', 1);
    if (roots.length !== 1 || inters.length !== 1) invalid('expected one root and one intermediate certificate');
    root = roots[0] as Cert;
    inter = inters[0] as Cert;
  } catch (err) {
    throw new CocoonError('CRL_INVALID', `CA certificates do not parse: ${asCocoonError(err).message}`, { cause: err });
  }
  if (!isSignedBy(root, root)) invalid('the trust anchor is not a self-signed root');
  if (!isCaCert(inter) || !isSignedBy(inter, root)) invalid('the CRL issuer certificate is not a CA signed by the deployment root');
  if (!validAt(inter, now)) invalid('the CRL issuer certificate is not valid now');
  let crl;
  try {
    crl = parseCrl(der, 'CRL_INVALID');
  } catch (err) {
    throw new CocoonError('CRL_INVALID', `CRL does not parse: ${asCocoonError(err).message}`, { cause: err });
  }
  if (!crlSignedBy(crl, inter)) invalid('CRL signature does not verify with the deployment CA intermediate (tampered, or signed by another CA)');
  if (!crl.nextUpdate) invalid('CRL has no nextUpdate');
  const nextUpdate = crl.nextUpdate as Date;
  if (crl.thisUpdate.getTime() > now.getTime() + SKEW_MS) invalid(`CRL thisUpdate ${crl.thisUpdate.toISOString()} is in the future`);
  if (nextUpdate.getTime() <= now.getTime()) throw new CocoonError('CRL_EXPIRED', `CRL expired at ${nextUpdate.toISOString()}`);
  return { revoked: new Set([...crl.revoked].map(normalizeSerial)), thisUpdate: crl.thisUpdate, nextUpdate, issuer: inter.subjectCN };
}

export interface CrlMonitorOptions {
  kbsUrl: string;
  /** The deployment root (the proxies' only trust anchor). */
  rootPem: string;
  refreshMs: number;
  timeoutMs: number;
  log: LauncherLog;
  now?: () => Date;
  fetchImpl?: typeof fetch;
}

/** Keeps the last good CRL and answers "may this peer serial be accepted?". */
export class CrlMonitor {
  private current: VerifiedCrl | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastError = 'not fetched yet';
  private stopped = false;
  private expiredLogged = false;

  constructor(private readonly opts: CrlMonitorOptions) {}

  private now(): Date {
    return this.opts.now ? this.opts.now() : new Date();
  }

  get crl(): VerifiedCrl | undefined {
    return this.current;
  }

  /** One fetch + verification; keeps the previous CRL when it fails (or when the new one is older). */
  async refresh(): Promise<boolean> {
    const base = trimBase(this.opts.kbsUrl);
    const common = { timeoutMs: this.opts.timeoutMs, ...(this.opts.fetchImpl ? { fetchImpl: this.opts.fetchImpl } : {}) };
    try {
      const caRes = await httpRequest(`${base}/cocoon/v1/ca`, { ...common, method: 'GET', maxBytes: MAX_CA_BYTES });
      if (caRes.status !== 200) throw errorFromResponse(caRes, 'deployment CA');
      const ca = parseJsonBody(caRes, 'deployment CA') as { intermediate?: unknown };
      if (typeof ca.intermediate !== 'string') throw new CocoonError('CRL_INVALID', 'deployment CA response has no intermediate');
      const crlRes = await httpRequest(`${base}/cocoon/v1/ca/crl`, { ...common, method: 'GET', maxBytes: MAX_CRL_BYTES, headers: { accept: 'application/x-pem-file' } });
      if (crlRes.status !== 200) throw errorFromResponse(crlRes, 'deployment CA CRL');
      const next = verifyCrl(crlRes.bytes.toString('latin1'), ca.intermediate, this.opts.rootPem, this.now());
      if (this.current && next.thisUpdate.getTime() < this.current.thisUpdate.getTime() && this.current.nextUpdate.getTime() > this.now().getTime()) {
        throw new CocoonError('CRL_INVALID', 'CRL is older than the one in force (rollback refused)');
      }
      const changed = !this.current || this.current.revoked.size !== next.revoked.size;
      this.current = next;
      this.lastError = '';
      this.expiredLogged = false;
      if (changed) this.opts.log.info(`deployment CA CRL: ${next.revoked.size} revoked serial(s), next update ${next.nextUpdate.toISOString()}`);
      return true;
    } catch (err) {
      const e = asCocoonError(err, 'CRL_INVALID');
      this.lastError = `${e.code}: ${oneLine(e.message)}`;
      const until = this.current && this.current.nextUpdate.getTime() > this.now().getTime() ? `keeping the last good CRL until ${this.current.nextUpdate.toISOString()}` : 'no valid CRL: refusing every peer until one is fetched';
      this.opts.log.warn(`deployment CA CRL refresh failed (${this.lastError}); ${until}`);
      return false;
    }
  }

  /** Fetches once and then every refreshMs (timers do not keep the process alive). */
  async start(): Promise<void> {
    await this.refresh();
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.refresh().finally(() => this.schedule());
    }, this.opts.refreshMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  /** Throws TLS_PEER_REJECTED when `serialHex` is revoked, or when no CRL is in force (fail closed). */
  check(serialHex: string): void {
    const crl = this.current;
    if (!crl || crl.nextUpdate.getTime() <= this.now().getTime()) {
      if (crl && !this.expiredLogged) {
        this.expiredLogged = true;
        this.opts.log.error(`deployment CA CRL expired at ${crl.nextUpdate.toISOString()} and could not be refreshed (${this.lastError || 'no refresh yet'}): failing closed, every peer is refused`);
      }
      throw new CocoonError('TLS_PEER_REJECTED', `no current CRL of the deployment CA (${crl ? `expired ${crl.nextUpdate.toISOString()}` : this.lastError}): revocation cannot be checked`);
    }
    if (crl.revoked.has(normalizeSerial(serialHex))) throw new CocoonError('TLS_PEER_REJECTED', `peer certificate ${normalizeSerial(serialHex)} is revoked (deployment CA CRL)`);
  }
}
