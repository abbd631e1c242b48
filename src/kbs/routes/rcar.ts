import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { CocoonError } from '../../errors.js';
import type { KbsContext } from '../context.js';
import { INSECURE_NOTICE } from '../ear.js';
import { problemHandler } from '../problem.js';
import { SESSION_COOKIE, attest, authorizeResource, releaseResource, startSession } from '../rcar.js';
import { VOLUME_COMMIT_RESOURCE, commitVolume, parseVolumeCommit } from '../volumes.js';
import { PolicyParams, ResourceParams, readCookie } from './common.js';

const AuthBody = Type.Object(
  {
    version: Type.String({ maxLength: 32 }),
    tee: Type.String({ maxLength: 32 }),
    'extra-params': Type.Optional(Type.Unknown()),
  },
  { additionalProperties: false },
);

const AttestBody = Type.Object(
  {
    'init-data': Type.Optional(Type.Object({ format: Type.String({ maxLength: 16 }), body: Type.String({ maxLength: 65536 }) }, { additionalProperties: false })),
    'runtime-data': Type.Object(
      {
        nonce: Type.String({ maxLength: 256 }),
        'tee-pubkey': Type.Object({}, { additionalProperties: true, maxProperties: 16 }),
        // Cocoon extension: a PKCS#10 CSR (PEM or base64 DER) bound in report_data; see docs/kbs.md.
        csr: Type.Optional(Type.String({ minLength: 1, maxLength: 8192 })),
      },
      { additionalProperties: false },
    ),
    'tee-evidence': Type.Object(
      { primary_evidence: Type.Unknown(), additional_evidence: Type.Optional(Type.String({ maxLength: 262144 })) },
      { additionalProperties: false, required: ['primary_evidence'] },
    ),
  },
  { additionalProperties: false },
);

/** The credentials of a resource request: the session cookie and/or a bearer attestation token. */
function resourceAuth(headers: { authorization?: string; cookie?: string }): { cookie?: string; bearer?: string } {
  let bearer: string | undefined;
  if (headers.authorization !== undefined) {
    const m = /^Bearer ([A-Za-z0-9_.-]{1,16384})$/.exec(headers.authorization);
    if (!m) throw new CocoonError('AUTH_INVALID', 'Authorization must be "Bearer <attestation token>"');
    bearer = m[1];
  }
  const cookie = readCookie(headers.cookie, SESSION_COOKIE);
  return { ...(cookie ? { cookie } : {}), ...(bearer ? { bearer } : {}) };
}

/** CoCo KBS protocol 0.4.0 under /kbs/v0 (docs/internals.md §5). Errors are CoCo RFC 7807. */
export function rcarRoutes(ctx: KbsContext) {
  return async function plugin(app: FastifyInstance): Promise<void> {
    const r = app.withTypeProvider<TypeBoxTypeProvider>();
    r.setErrorHandler(problemHandler('coco'));

    r.post('/kbs/v0/auth', { schema: { body: AuthBody, hide: true } }, async (request, reply) => {
      const { cookie, nonce, maxAgeS } = startSession(ctx, request.body);
      void reply.header('set-cookie', `${SESSION_COOKIE}=${cookie}; Path=/kbs/v0; Max-Age=${maxAgeS}; HttpOnly; SameSite=Strict`);
      return { nonce, 'extra-params': '' };
    });

    r.post('/kbs/v0/attest', { schema: { body: AttestBody, hide: true } }, async (request, reply) => {
      const sessionId = readCookie(request.headers.cookie, SESSION_COOKIE);
      const { token, insecure } = await attest(ctx, sessionId, request.body);
      if (insecure) {
        void reply.header('x-cocoon-warning', INSECURE_NOTICE);
        return { token, warning: INSECURE_NOTICE };
      }
      return { token };
    });

    r.get('/kbs/v0/resource/:org/:app/:name', { schema: { params: ResourceParams, hide: true } }, async (request, reply) => {
      const grant = await authorizeResource(ctx, resourceAuth(request.headers));
      const jwe = await releaseResource(ctx, grant, request.params.org, request.params.app, request.params.name);
      if (grant.insecure) void reply.header('x-cocoon-warning', INSECURE_NOTICE);
      void reply.header('cache-control', 'no-store');
      return jwe;
    });

    // Cocoon extension (docs/volumes.md): advance a protected volume's version counter (forward only, CAS).
    r.post(`/kbs/v0/resource/:org/:app/${VOLUME_COMMIT_RESOURCE}`, { schema: { params: PolicyParams, hide: true }, bodyLimit: 4096 }, async (request, reply) => {
      const grant = await authorizeResource(ctx, resourceAuth(request.headers));
      const result = await commitVolume(ctx, grant, request.params.org, request.params.app, parseVolumeCommit(request.body));
      void reply.header('cache-control', 'no-store');
      return result;
    });
  };
}
