import type { FastifyInstance } from 'fastify';
import { CocoonError } from '../errors.js';

export interface RateLimitOptions {
  /** Sustained requests per second per client. */
  perSecond: number;
  /** Bucket size (burst). */
  burst: number;
  /** Clients tracked at most (least recently seen are dropped). Default 10 000. */
  maxClients?: number;
  now?: () => number;
}

/**
 * Per-client token bucket (client = socket address; the KBS does not trust proxy headers).
 * A few lines instead of @fastify/rate-limit: one process-local bucket per address is all the
 * KBS needs, and replicas behind a load balancer each limit their share.
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly max: number;
  private readonly now: () => number;

  constructor(private readonly o: RateLimitOptions) {
    this.max = o.maxClients ?? 10_000;
    this.now = o.now ?? (() => performance.now());
  }

  /** Takes one token; returns seconds to wait when none is left. */
  take(client: string): number {
    const t = this.now();
    let b = this.buckets.get(client);
    if (b) this.buckets.delete(client);
    else b = { tokens: this.o.burst, at: t };
    b.tokens = Math.min(this.o.burst, b.tokens + ((t - b.at) / 1000) * this.o.perSecond);
    b.at = t;
    this.buckets.set(client, b); // re-insert: Map order = recency
    if (this.buckets.size > this.max) this.buckets.delete(this.buckets.keys().next().value as string);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / this.o.perSecond;
  }
}

const EXEMPT = new Set(['/healthz', '/readyz', '/metrics']);

export function registerRateLimit(app: FastifyInstance, options: RateLimitOptions, onLimited: () => void): void {
  const buckets = new TokenBuckets(options);
  app.addHook('onRequest', async (request, reply) => {
    if (EXEMPT.has(request.url)) return;
    const wait = buckets.take(request.ip);
    if (wait > 0) {
      onLimited();
      void reply.header('retry-after', String(Math.max(1, Math.ceil(wait))));
      throw new CocoonError('RATE_LIMITED', 'too many requests from this client; retry later');
    }
  });
}
