import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { CocoonError } from '../../errors.js';
import { MAX_POLICY_BYTES } from '../../policy/parse.js';
import type { KbsContext } from '../context.js';
import { INSECURE_NOTICE } from '../ear.js';
import { verifyOwnerToken } from '../owner-auth.js';
import { appendAudit, withRetry } from '../audit.js';
import type { AuditInput } from '../audit.js';
import { WORKLOAD_IDENTITY_OID } from '../certs.js';
import { revokeCertificates } from '../revoke.js';
import { REVOCATION_REASONS } from '../revocation-reasons.js';
import { applyPolicy, approvePending, currentPolicy, isAdmin, pendingView, readablePolicy, rejectPending, requirePolicyAccess } from '../policies.js';
import { diffPolicies } from '../../policy/diff.js';
import { parsePolicy } from '../../policy/parse.js';
import { problemHandler } from '../problem.js';
import { MAX_IMPORTED_SECRET, importSecret, readSecret } from '../secrets.js';
import { volumeSummary } from '../volumes.js';
import { PolicyParams, ResourceParams } from './common.js';

const HASH = '^sha256:[0-9a-f]{64}$';
const B64 = '^[A-Za-z0-9+/]*={0,2}$';
const security = [{ ownerToken: [] }];

const Problem = Type.Object({ type: Type.String(), title: Type.String(), status: Type.Integer(), detail: Type.String(), code: Type.String(), details: Type.Optional(Type.Unknown()) });
const errors = { 400: Problem, 401: Problem, 403: Problem, 404: Problem, 409: Problem, 413: Problem, 429: Problem };

const Identity = Type.Object({
  id: Type.String(),
  publicKey: Type.Object({}, { additionalProperties: true }),
  allowSim: Type.Boolean(),
  protocol: Type.String(),
  warning: Type.Optional(Type.String()),
});
const PolicyPut = Type.Object({ yaml: Type.String({ maxLength: MAX_POLICY_BYTES }), predecessor: Type.Optional(Type.String({ pattern: HASH })) }, { additionalProperties: false });
const PendingRef = Type.Object({ id: Type.String(), approvals: Type.Integer(), threshold: Type.Integer() });
const PolicyRef = Type.Object({ name: Type.String(), version: Type.Integer(), hash: Type.String(), pending: Type.Optional(PendingRef) });
const Decision = Type.Object({ name: Type.String(), version: Type.Integer(), hash: Type.String(), status: Type.String(), pending: Type.Optional(PendingRef) });
const PendingParams = Type.Object(
  { org: Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }), app: Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }), id: Type.String({ pattern: '^[0-9a-f-]{36}$' }) },
  { additionalProperties: false },
);
const PendingInfo = Type.Object({
  id: Type.String(),
  policy: Type.String(),
  baseHash: Type.Union([Type.String(), Type.Null()]),
  baseVersion: Type.Integer(),
  threshold: Type.Integer(),
  proposedBy: Type.String(),
  createdAt: Type.String(),
  status: Type.String(),
  approvals: Type.Array(Type.String()),
  rejections: Type.Array(Type.String()),
  yaml: Type.String(),
});
const DiffBody = Type.Object({ yaml: Type.String({ maxLength: MAX_POLICY_BYTES }) }, { additionalProperties: false });
const Change = Type.Object({ op: Type.String(), path: Type.String(), from: Type.Optional(Type.Unknown()), to: Type.Optional(Type.Unknown()) });
const DiffResult = Type.Object({ name: Type.String(), current: Type.Union([Type.Object({ version: Type.Integer(), hash: Type.String() }), Type.Null()]), changes: Type.Array(Change) });
const AuditEntry = Type.Object({
  seq: Type.Integer(),
  at: Type.Integer(),
  actor: Type.String(),
  action: Type.String(),
  policy: Type.Union([Type.String(), Type.Null()]),
  detail: Type.String(),
  prev: Type.String(),
  hash: Type.String(),
  sig: Type.String(),
});
const AuditQuery = Type.Object(
  {
    after: Type.Optional(Type.String({ pattern: '^(0|[1-9][0-9]{0,15})$' })),
    limit: Type.Optional(Type.String({ pattern: '^(1000|[1-9][0-9]{0,2})$' })),
    policy: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}$' })),
  },
  { additionalProperties: false },
);
const CaInfo = Type.Object({ root: Type.String(), intermediate: Type.String(), chain: Type.String(), workloadIdentityOid: Type.String() });
const RevokeBody = Type.Object(
  {
    serial: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F]{2,64}$' })),
    workload: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}#[a-z0-9][a-z0-9._-]{0,62}$' })),
    reason: Type.Optional(Type.Union(REVOCATION_REASONS.map((r) => Type.Literal(r)))),
    force: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
const RevokeResult = Type.Object({
  serial: Type.Optional(Type.String()),
  workload: Type.Optional(Type.String()),
  reason: Type.String(),
  revoked: Type.Boolean(),
  certificates: Type.Array(Type.Object({ serial: Type.String(), alreadyRevoked: Type.Boolean(), policy: Type.Union([Type.String(), Type.Null()]), workload: Type.Union([Type.String(), Type.Null()]) })),
});
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
    const audit = (input: AuditInput) => {
      const at = ctx.now().getTime();
      return withRetry(() => ctx.store.transaction((tx) => appendAudit(tx, ctx.auditKey, input, at)));
    };
    const readable = (owner: string | undefined, name: string) => readablePolicy(ctx, owner ?? '', name);
    /** Global lists are for administrators; a policy's owners may list with ?policy=. */
    const requireListAccess = async (owner: string, policy: string | undefined) => {
      if (policy === undefined) {
        if (!(await isAdmin(ctx, owner))) throw new CocoonError('FORBIDDEN', 'only KBS administrators may list everything; pass policy=org/app');
        return;
      }
      const head = await currentPolicy(ctx, policy);
      await requirePolicyAccess(ctx, owner, policy, head?.policy);
    };

    r.get('/cocoon/v1/identity', { schema: { summary: 'KBS identity (unauthenticated)', response: { 200: Identity } } }, async () => ({
      id: ctx.identity.id,
      publicKey: ctx.identity.publicJwk,
      allowSim: ctx.allowSim,
      protocol: '0.4.0',
      ...(ctx.allowSim ? { warning: `${INSECURE_NOTICE} evidence is accepted by this KBS` } : {}),
    }));

    r.get('/cocoon/v1/openapi.json', { schema: { hide: true } }, async () => app.swagger());

    r.get('/cocoon/v1/ca', { schema: { summary: 'Deployment CA certificates (public: clients pin the root)', response: { 200: CaInfo } } }, async () => ({
      ...(await ctx.ca.chainPem()),
      workloadIdentityOid: WORKLOAD_IDENTITY_OID,
    }));

    r.get('/cocoon/v1/ca/crl', { schema: { summary: 'CRL of the current intermediate (PEM)' } }, async (_request, reply) => {
      void reply.type('application/x-pem-file').header('cache-control', 'max-age=60');
      return ctx.ca.crlPem();
    });

    await r.register(async (authed) => {
      const a = authed.withTypeProvider<TypeBoxTypeProvider>();
      a.addHook('onRequest', async (request) => {
        const owner = await verifyOwnerToken(ctx.store, request.headers.authorization, { audience: ctx.identity.id, now: ctx.now(), method: request.method, path: request.url });
        request.owner = owner;
      });
      // Every authenticated owner request is audited: mutations by their own entry (in the
      // transaction of the change), reads and refusals here.
      a.addHook('onResponse', async (request, reply) => {
        if (!request.owner || (request.method !== 'GET' && reply.statusCode < 400) || request.audited) return;
        await audit({ actor: request.owner, action: reply.statusCode < 400 ? 'owner.read' : 'owner.refused', detail: { method: request.method, path: request.url.slice(0, 300), status: reply.statusCode } }).catch((err: unknown) =>
          request.log.error({ err }, 'cannot append the audit entry of an owner request'),
        );
      });

      a.put('/cocoon/v1/policies/:org/:app', { schema: { summary: 'Apply a policy version', security, params: PolicyParams, body: PolicyPut, response: { 200: PolicyRef, ...errors } } }, async (request) => {
        const { org, app: appName } = request.params;
        return applyPolicy(ctx, { name: `${org}/${appName}`, yaml: request.body.yaml, ...(request.body.predecessor ? { predecessor: request.body.predecessor } : {}), owner: request.owner ?? '' });
      });

      a.get('/cocoon/v1/policies/:org/:app', { schema: { summary: 'Current policy version', security, params: PolicyParams, response: { 200: PolicyGet, ...errors } } }, async (request) => {
        const name = `${request.params.org}/${request.params.app}`;
        const head = await readable(request.owner, name);
        return { ...versionInfo(head.record), yaml: head.record.yaml };
      });

      a.post(
        '/cocoon/v1/policies/:org/:app/diff',
        { schema: { summary: 'What applying this YAML would change', security, params: PolicyParams, body: DiffBody, response: { 200: DiffResult, ...errors } } },
        async (request) => {
          const name = `${request.params.org}/${request.params.app}`;
          const head = await currentPolicy(ctx, name);
          await requirePolicyAccess(ctx, request.owner ?? '', name, head?.policy);
          const next = parsePolicy(request.body.yaml, { file: `${name}.yaml` });
          return { name, current: head ? { version: head.record.version, hash: head.record.hash } : null, changes: diffPolicies(head?.policy, next) };
        },
      );

      a.get(
        '/cocoon/v1/policies/:org/:app/workloads',
        {
          schema: {
            summary: 'Workloads of the current version with their activation counts',
            security,
            params: PolicyParams,
            response: { 200: Type.Object({ workloads: Type.Array(Type.Object({ name: Type.String(), activations: Type.Integer(), maxActivations: Type.Union([Type.Integer(), Type.Null()]), tees: Type.Array(Type.String()), secrets: Type.Array(Type.String()) })) }), ...errors },
          },
        },
        async (request) => {
          const name = `${request.params.org}/${request.params.app}`;
          const head = await readable(request.owner, name);
          const counts = await ctx.store.listActivations(name);
          return {
            workloads: Object.entries(head.policy.workloads).map(([w, spec]) => ({
              name: w,
              activations: counts[w] ?? 0,
              maxActivations: spec.maxActivations ?? null,
              tees: [...new Set(spec.accept.flatMap((r) => r.tee))],
              secrets: spec.secrets,
            })),
          };
        },
      );

      a.get(
        '/cocoon/v1/policies/:org/:app/volumes',
        {
          schema: {
            summary: 'Protected volumes of the policy with their version counters (never the keys)',
            security,
            params: PolicyParams,
            response: { 200: Type.Object({ volumes: Type.Array(Type.Object({ workload: Type.String(), volume: Type.String(), version: Type.Integer(), updatedAt: Type.Integer() })) }), ...errors },
          },
        },
        async (request) => {
          const name = `${request.params.org}/${request.params.app}`;
          await readable(request.owner, name);
          return { volumes: volumeSummary(await ctx.store.listVolumes(name)) };
        },
      );

      a.get(
        '/cocoon/v1/policies/:org/:app/pending',
        { schema: { summary: 'Updates waiting for approvals', security, params: PolicyParams, response: { 200: Type.Object({ pending: Type.Array(PendingInfo) }), ...errors } } },
        async (request) => {
          const name = `${request.params.org}/${request.params.app}`;
          await readable(request.owner, name);
          const list = await ctx.store.listPending(name, 'pending');
          return { pending: await Promise.all(list.map((p) => pendingView(ctx.store, p))) };
        },
      );

      a.post(
        '/cocoon/v1/policies/:org/:app/pending/:id/approve',
        { schema: { summary: 'Approve a pending update (applied when the threshold is reached)', security, params: PendingParams, response: { 200: Decision, ...errors } } },
        async (request) => approvePending(ctx, `${request.params.org}/${request.params.app}`, request.params.id, request.owner ?? ''),
      );

      a.post(
        '/cocoon/v1/policies/:org/:app/pending/:id/reject',
        { schema: { summary: 'Reject a pending update', security, params: PendingParams, response: { 200: Type.Object({ id: Type.String(), status: Type.String() }), ...errors } } },
        async (request) => rejectPending(ctx, `${request.params.org}/${request.params.app}`, request.params.id, request.owner ?? ''),
      );

      a.get('/cocoon/v1/audit', { schema: { summary: 'Audit log entries in chain order (verify with the KBS public key)', security, querystring: AuditQuery, response: { 200: Type.Object({ publicKey: Type.Object({}, { additionalProperties: true }), entries: Type.Array(AuditEntry) }), ...errors } } }, async (request) => {
        await requireListAccess(request.owner ?? '', request.query.policy);
        const entries = await ctx.store.listAudit({ limit: Number(request.query.limit ?? 1000), ...(request.query.after ? { afterSeq: Number(request.query.after) } : {}), ...(request.query.policy ? { policy: request.query.policy } : {}) });
        return { publicKey: ctx.identity.publicJwk as Record<string, unknown>, entries };
      });

      a.post(
        '/cocoon/v1/ca/revoke',
        { schema: { summary: 'Revoke a workload certificate by serial, or all current ones of a workload (listed in the CRL; idempotent)', security, body: RevokeBody, response: { 200: RevokeResult, ...errors } } },
        async (request) => {
          const result = await revokeCertificates(ctx, request.owner ?? '', request.body);
          request.audited = true;
          return result;
        },
      );

      a.get(
        '/cocoon/v1/policies/:org/:app/history',
        { schema: { summary: 'Policy versions, newest first', security, params: PolicyParams, querystring: HistoryQuery, response: { 200: History, ...errors } } },
        async (request) => {
          const name = `${request.params.org}/${request.params.app}`;
          await readable(request.owner, name);
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
          const spec = await declaredSecret(ctx, policyName, name, request.owner ?? '');
          const value = Buffer.from(request.body.value, 'base64');
          try {
            const { updatedAt } = await importSecret(ctx, policyName, name, spec, value, request.owner ?? '');
            request.audited = true;
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
          const spec = await declaredSecret(ctx, policyName, name, request.owner ?? '');
          if (!spec.ownerReadable) throw new CocoonError('FORBIDDEN', `secret ${policyName}/${name} is not ownerReadable`);
          if ('scope' in spec && spec.scope === 'instance') throw new CocoonError('FORBIDDEN', `secret ${policyName}/${name} is per-instance and never stored`);
          if (spec.kind === 'imported' && spec.from) throw new CocoonError('FORBIDDEN', `secret ${policyName}/${name} belongs to ${spec.from.policy}`);
          const rec = await ctx.store.getSecret(policyName, name);
          const value = await readSecret(ctx, policyName, name);
          if (!rec || !value) throw new CocoonError('SECRET_MISSING', `secret ${policyName}/${name} has no value yet`);
          await audit({ actor: request.owner ?? '', action: 'secret.read', policy: policyName, detail: { secret: name } });
          request.audited = true;
          request.log.info({ policy: policyName, secret: name, owner: request.owner }, 'secret read by owner');
          void reply.header('cache-control', 'no-store');
          return { policy: policyName, name, kind: spec.kind, updatedAt: new Date(rec.updatedAt).toISOString(), value: value.toString('base64') };
        },
      );

      a.get('/cocoon/v1/events', { schema: { summary: 'Attestation and release events, newest first', security, querystring: EventsQuery, response: { 200: Type.Object({ events: Type.Array(Event) }), ...errors } } }, async (request) => {
        await requireListAccess(request.owner ?? '', request.query.policy);
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

async function declaredSecret(ctx: KbsContext, policyName: string, name: string, owner: string) {
  const current = await readablePolicy(ctx, owner, policyName);
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
    /** Set when the handler appended its own audit entry. */
    audited?: boolean;
  }
}
