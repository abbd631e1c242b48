/**
 * Renewal of the workload certificate (docs/tls.md "Renewal"): at `renewAtPercent` of the
 * lifetime left when the certificate arrived, the launcher attests again with a fresh key and
 * CSR (generated in the TEE), and swaps the proxies' secure context. Connections already open
 * keep their TLS session; new ones use the new certificate. Failures retry with exponential
 * backoff (jitter) and are logged with the error code and message only.
 */
import { asCocoonError } from '../../errors.js';
import { pemCerts } from '../../attestation/pki.js';
import { backoffDelay } from '../../kbs/client/rcar.js';
import type { TlsLifecycleSettings } from '../config.js';
import type { LauncherLog } from '../log.js';
import type { TlsMaterial } from './material.js';
import { oneLine } from './proxy.js';
import type { TlsProxies } from './proxy.js';

/** Never schedule closer than this (a certificate that is almost expired on arrival). */
const MIN_DELAY_MS = 10;
const MAX_TIMER_MS = 2 ** 31 - 1;

export function leafSerial(m: TlsMaterial): string {
  try {
    return pemCerts(m.certChainPem, 'INPUT_MALFORMED', 8)[0]?.serial ?? '?';
  } catch {
    return '?';
  }
}

export class CertRenewer {
  private timer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private stopped = false;
  private running: Promise<boolean> | undefined;
  /** Successful renewals so far. */
  renewals = 0;

  constructor(
    private current: TlsMaterial,
    private readonly proxies: Pick<TlsProxies, 'update'>,
    private readonly renew: () => Promise<TlsMaterial>,
    private readonly settings: Pick<TlsLifecycleSettings, 'renewAtPercent' | 'renewRetryMs' | 'renewRetryMaxMs'>,
    private readonly log: LauncherLog,
    private readonly now: () => Date = () => new Date(),
  ) {}

  get material(): TlsMaterial {
    return this.current;
  }

  /** Delay until the renewal of a certificate received now. */
  delayFor(m: TlsMaterial): number {
    const left = m.notAfter.getTime() - this.now().getTime();
    return Math.max(MIN_DELAY_MS, Math.floor((left * this.settings.renewAtPercent) / 100));
  }

  start(): void {
    this.arm(this.delayFor(this.current));
  }

  private arm(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    // Node fires a timer of more than 2^31-1 ms (≈ 24.8 days) at once: wake up early and re-arm instead.
    const step = Math.min(delayMs, MAX_TIMER_MS);
    this.timer = setTimeout(() => (step < delayMs ? this.arm(delayMs - step) : void this.renewNow()), step);
    this.timer.unref();
  }

  /** One renewal attempt now (tests, or the timer); true when the proxies use a new certificate. */
  renewNow(): Promise<boolean> {
    this.running ??= this.attemptRenewal().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async attemptRenewal(): Promise<boolean> {
    try {
      const next = await this.renew();
      if (this.stopped) return false;
      this.proxies.update(next);
      this.current = next;
      this.renewals++;
      this.attempt = 0;
      this.log.info(`workload certificate renewed (serial ${leafSerial(next)}), valid until ${next.notAfter.toISOString()}; new connections use it`);
      this.arm(this.delayFor(next));
      return true;
    } catch (err) {
      if (this.stopped) return false;
      const e = asCocoonError(err);
      this.attempt++;
      const delay = backoffDelay(this.attempt, { attempts: Number.MAX_SAFE_INTEGER, baseDelayMs: this.settings.renewRetryMs, maxDelayMs: this.settings.renewRetryMaxMs });
      const expired = this.current.notAfter.getTime() <= this.now().getTime();
      const line = `workload certificate renewal failed (attempt ${this.attempt}, ${e.code}: ${oneLine(e.message)}); retrying in ${delay} ms; the current certificate ${expired ? 'EXPIRED' : 'is valid until'} ${this.current.notAfter.toISOString()}`;
      if (expired) this.log.error(line);
      else this.log.warn(line);
      this.arm(delay);
      return false;
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
