import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { CocoonError } from '../../errors.js';
import { MAX_POLICY_BYTES } from '../../policy/parse.js';
import type { KbsContext } from '../context.js';
import { INSECURE_NOTICE } from '../ear.js';
import { verifyOwnerToken } from '../owner-auth.js';
import { applyPolicy, currentPolicy } from '../policies.js';
import { problemHandler } from '../problem.js';
import { MAX_IMPORTED_SECRET, importSecret, readSecret } from '../secrets.js';
import { PolicyParams, ResourceParams } from './common.js';

const HASH = '^sha256:[0-9a-f]{64}$';
const B64 = '^[A-Za-z0-9+/]*={0,2}$';
const security = [{ ownerToken: [] }];

const Problem = Type.Object({ type: Type.String(), title: Type.String(), status: Type.Integer(), detail: Type.String(), code: Type.String(), details: Type.Optional(Type.Unknown()) });
const errors = { 400: Problem, 401: Problem, 403: Problem, 404: Problem, 409: Problem, 413: Problem };

const Identity = Type.Object({
  id: Type.String(),
  publicKey: Type.Object({}, { additionalProperties: true }),
  allowSim: Type.Boolean(),
  protocol: Type.String(),
  warning: Type.Optional(Type.String()),
});
const PolicyPut = Type.Object({ yaml: Type.String({ maxLength: MAX_POLICY_BYTES }), predecessor: Type.Optional(Type.String({ pattern: HASH })) }, { additionalProperties: false });
const PolicyRef = Type.Object({ name: Type.String(), version: Type.Integer(), hash: Type.String() });
const VersionInfo = Type.Object({
  name: Type.String(),
  version: Type.Integer(),
  hash: Type.String(),
  predecessor: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.String(),
  createdBy: Type.String(),
});
const PolicyGet = Type.Object({ ...VersionInfo.properties, yaml: Type.String() });
const History = Type.Object({ name: Type.String(), versions: Type.Array(VersionInfo) });
// Query values arrive as strings and body coercion is off, so numbers are patterns here.
const Limit = Type.String({ pattern: '^(1000|[1-9][0-9]{0,2})$' });
const HistoryQuery = Type.Object({ limit: Type.Optional(Limit) }, { additionalProperties: false });
const SecretPut = Type.Object({ value: Type.String({ maxLength: Math.ceil(MAX_IMPORTED_SECRET / 3) * 4, pattern: B64 }) }, { additionalProperties: false });
const SecretInfo = Type.Object({ policy: Type.String(), name: Type.String(), kind: Type.String(), updatedAt: Type.String() });
const SecretGet = Type.Object({ ...SecretInfo.properties, value: Type.String() });
const Event = Type.Object({
  id: Type.String(),
  at: Type.String(),
  kind: Type.String(),
  status: Type.String(),
  tee: Type.String(),
  policy: Type.Union([Type.String(), Type.Null()]),
  workload: Type.Union([Type.String(), Type.Null()]),
  resource: Type.Union([Type.String(), Type.Null()]),
  code: Type.Union([Type.String(), Type.Null()]),
  detail: Type.String(),
  insecure: Type.Boolean(),
});
const EventsQuery = Type.Object(
  {
    limit: Type.Optional(Limit),
    policy: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}$' })),
  },
  { additionalProperties: false },
);

/** Owner API /cocoon/v1 (JSON, OpenAPI). Everything but identity and the OpenAPI document needs an owner token. */
export function ownerRoutes(ctx: KbsContext) {
  return async function plugin(app: FastifyInstance): Promise<void> {
    const r = app.withTypeProvider<TypeBoxTypeProvider>();
    r.setErrorHandler(problemHandler('cocoon'));

    r.get('/cocoon/v1/identity', { schema: { summary: 'KBS identity (unauthenticated)', response: { 200: Identity } } }, async () => ({
      id: ctx.identity.id,
      publicKey: ctx.identity.publicJwk,
      allowSim: ctx.allowSim,
      protocol: '0.4.0',
      ...(ctx.allowSim ? { warning: `${INSECURE_NOTICE} evidence is accepted by this KBS` } : {}),
    }));

    r.get('/cocoon/v1/openapi.json', { schema: { hide: true } }, async () => app.swagger());

    await r.register(async (authed) => {
      const a = authed.withTypeProvider<TypeBoxTypeProvider>();
      a.addHook('onRequest', async (request) => {
        const owner = await verifyOwnerToken(ctx.store, request.headers.authorization, { audience: ctx.identity.id, now: ctx.now(), method: request.method, path: request.url });
        request.owner = owner;
      });

      a.put('/cocoon/v1/policies/:org/:app', { schema: { summary: 'Apply a policy version', security, params: PolicyParams, body: PolicyPut, response: { 200: PolicyRef, ...errors } } }, async (request) => {
        const { org, app: appName } = request.params;
        return applyPolicy(ctx, { name: `${org}/${appName}`, yaml: request.body.yaml, ...(request.body.predecessor ? { predecessor: request.body.predecessor } : {}), owner: request.owner ?? '' });
      });

      a.get('/cocoon/v1/policies/:org/:app', { schema: { summary: 'Current policy version', security, params: PolicyParams, response: { 200: PolicyGet, ...errors } } }, async (request) => {
        const name = `${request.params.org}/${request.params.app}`;
        const head = await ctx.store.getPolicyHead(name);
        if (!head) throw new CocoonError('NOT_FOUND', `no policy ${name}`);
        return { ...versionInfo(head), yaml: head.yaml };
      });

      a.get(
        '/cocoon/v1/policies/:org/:app/history',
        { schema: { summary: 'Policy versions, newest first', security, params: PolicyParams, querystring: HistoryQuery, response: { 200: History, ...errors } } },
        async (request) => {
          const name = `${request.params.org}/${request.params.app}`;
          const versions = await ctx.store.listPolicyVersions(name, Number(request.query.limit ?? 100));
          if (versions.length === 0) throw new CocoonError('NOT_FOUND', `no policy ${name}`);
          return { name, versions: versions.map(versionInfo) };
        },
      );

      a.put(
        '/cocoon/v1/secrets/:org/:app/:name',
        { schema: { summary: 'Import a secret value (imported / layer-key kinds)', security, params: ResourceParams, body: SecretPut, response: { 200: SecretInfo, ...errors } } },
        async (request) => {
          const { org, app: appName, name } = request.params;
          const policyName = `${org}/${appName}`;
          const spec = await declaredSecret(ctx, policyName, name);
          const value = Buffer.from(request.body.value, 'base64');
          try {
            const { updatedAt } = await importSecret(ctx, policyName, name, spec, value);
            request.log.info({ policy: policyName, secret: name, owner: request.owner }, 'secret imported');
            return { policy: policyName, name, kind: spec.kind, updatedAt: new Date(updatedAt).toISOString() };
          } finally {
            value.fill(0);
          }
        },
      );

      a.get(
        '/cocoon/v1/secrets/:org/:app/:name',
        { schema: { summary: 'Read an ownerReadable secret', security, params: ResourceParams, response: { 200: SecretGet, ...errors } } },
        async (request, reply) => {
          const { org, app: appName, name } = request.params;
          const policyName = `${org}/${appName}`;
          const spec = await declaredSecret(ctx, policyName, name);
          if (!spec.ownerReadable) throw new CocoonError('FORBIDDEN', `secret ${policyName}/${name} is not ownerReadable`);
          const rec = await ctx.store.getSecret(policyName, name);
          const value = await readSecret(ctx, policyName, name);
          if (!rec || !value) throw new CocoonError('SECRET_MISSING', `secret ${policyName}/${name} has no value yet`);
          request.log.info({ policy: policyName, secret: name, owner: request.owner }, 'secret read by owner');
          void reply.header('cache-control', 'no-store');
          return { policy: policyName, name, kind: spec.kind, updatedAt: new Date(rec.updatedAt).toISOString(), value: value.toString('base64') };
        },
      );

      a.get('/cocoon/v1/events', { schema: { summary: 'Attestation and release events, newest first', security, querystring: EventsQuery, response: { 200: Type.Object({ events: Type.Array(Event) }), ...errors } } }, async (request) => {
        const events = await ctx.store.listEvents({ limit: Number(request.query.limit ?? 100), ...(request.query.policy ? { policy: request.query.policy } : {}) });
        return {
          events: events.map((e) => ({
            id: e.id,
            at: new Date(e.at).toISOString(),
            kind: e.kind,
            status: e.status,
            tee: e.tee,
            policy: e.policy,
            workload: e.workload,
            resource: e.resource,
            code: e.code,
            detail: e.detail,
            insecure: e.insecure,
          })),
        };
      });
    });
  };
}

async function declaredSecret(ctx: KbsContext, policyName: string, name: string) {
  const current = await currentPolicy(ctx, policyName);
  if (!current) throw new CocoonError('NOT_FOUND', `no policy ${policyName}`);
  const spec = current.policy.secrets[name];
  if (!spec) throw new CocoonError('NOT_FOUND', `policy ${policyName} declares no secret ${name}`);
  return spec;
}

function versionInfo(v: { name: string; version: number; hash: string; predecessor: string | null; createdAt: number; createdBy: string }) {
  return { name: v.name, version: v.version, hash: v.hash, predecessor: v.predecessor, createdAt: new Date(v.createdAt).toISOString(), createdBy: v.createdBy };
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Owner key id (thumbprint) of an authenticated owner API request. */
    owner?: string;
  }
}
