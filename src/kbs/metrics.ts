import { Counter, Histogram, Registry } from 'prom-client';

/** Per-app registry (not prom-client's global one) so several KBS apps can live in one process. */
export interface KbsMetrics {
  registry: Registry;
  attestations: Counter<'tee' | 'status'>;
  releases: Counter<'status'>;
  attestSeconds: Histogram<'tee'>;
  rateLimited: Counter<string>;
}

export function createMetrics(): KbsMetrics {
  const registry = new Registry();
  return {
    registry,
    attestations: new Counter({ name: 'cocoon_kbs_attestations_total', help: 'RCAR attestations by TEE and outcome', labelNames: ['tee', 'status'], registers: [registry] }),
    releases: new Counter({ name: 'cocoon_kbs_releases_total', help: 'Resource releases by outcome', labelNames: ['status'], registers: [registry] }),
    attestSeconds: new Histogram({
      name: 'cocoon_kbs_attest_duration_seconds',
      help: 'Time to appraise evidence and issue a token',
      labelNames: ['tee'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    rateLimited: new Counter({ name: 'cocoon_kbs_rate_limited_total', help: 'Requests refused by the per-client rate limit', registers: [registry] }),
  };
}
