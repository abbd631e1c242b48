import type { FastifyInstance } from 'fastify';
import type { KbsContext } from '../context.js';

export function healthRoutes(ctx: KbsContext) {
  return async function plugin(app: FastifyInstance): Promise<void> {
    app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
    app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
      void reply.type(ctx.metrics.registry.contentType);
      return ctx.metrics.registry.metrics();
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
