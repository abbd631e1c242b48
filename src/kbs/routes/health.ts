import type { FastifyInstance } from 'fastify';
import type { KbsContext } from '../context.js';

/** `metricsText`: what /metrics serves instead of this app's registry (a `serve --workers` worker: the whole service's). */
export function healthRoutes(ctx: KbsContext, metricsText?: () => Promise<string>) {
  return async function plugin(app: FastifyInstance): Promise<void> {
    app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
    app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
      void reply.type(ctx.metrics.registry.contentType);
      return metricsText ? metricsText() : ctx.metrics.registry.metrics();
    });
    app.get('/readyz', { schema: { hide: true } }, async (request, reply) => {
      try {
        await ctx.store.ping();
        return { status: 'ready' };
      } catch (err) {
        request.log.error({ err }, 'store not reachable');
        return reply.code(503).send({ status: 'unavailable' });
      }
    });
  };
}
