import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { CocoonError } from '../../errors.js';
import { appendAudit, withRetry } from '../audit.js';
import type { KbsContext } from '../context.js';
import { verifyOwnerToken } from '../owner-auth.js';
import { approvePending, isAdmin, rejectPending } from '../policies.js';
import { problemHandler } from '../problem.js';
import type { EventRecord } from '../store/types.js';
import { ASSET_NAME_RE, NOT_BUILT_HTML, defaultWebDir, loadAssets, pickEncoding } from '../ui/assets.js';
import type { Asset } from '../ui/assets.js';
import { EventHub, SseClient, sseFrame, toUiEvent } from '../ui/live.js';
import { UI_LOGIN_PATH, loginClaims } from '../ui/login-token.js';
import { DEFAULT_UI_SESSION_TTL_S, UiSessionStore, clearedCookie, csrfMatches, readUiCookie, sessionCookie } from '../ui/session.js';
import type { UiSession } from '../ui/session.js';
import type { Overview, PolicySummary, SelfAttestationStatus, Session } from '../ui/wire.js';
import { readablePolicy } from '../policies.js';
import { AuditVerifier, EVENT_SCAN_LIMIT, activationCounts, PolicyIndex, caInfo, eventClaims, eventVisible, filterEvents, policyDetail, secretsView, visibleEvents, visiblePolicies, workloadsView } from '../ui/views.js';
import { NAME_SEGMENT, PolicyParams } from './common.js';
import { SELF_ATTESTATION_NOT_CONFIGURED } from '../self-attest.js';

export interface UiOptions {
  /** Built dashboard (dist/web); default: COCOON_WEB_DIR or the package's dist/web. */
  webDir?: string;
  sessionTtlS?: number;
  /** Event stream: store polling interval, heartbeat, per-client queue, clients per replica. */
  pollMs?: number;
  heartbeatMs?: number;
  sseQueue?: number;
  maxStreams?: number;
  /** The KBS's own attestation, for the overview (default: not configured). */
  selfAttestation?: SelfAttestationStatus;
  /** Dashboard sessions (default: this process's own); `serve --workers` shares them between workers. */
  sessions?: UiSessionStore;
}

/** Strict CSP: only this origin's files, no inline script or style, no framing. */
export const UI_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': UI_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=(), usb=()',
};

/** Event streams one dashboard session may hold open (tabs). */
const MAX_STREAMS_PER_SESSION = 8;

const LoginBody = Type.Object({ token: Type.String({ minLength: 20, maxLength: 4096, pattern: '^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$' }) }, { additionalProperties: false });
const PendingParams = Type.Object(
  { org: Type.String({ pattern: NAME_SEGMENT }), app: Type.String({ pattern: NAME_SEGMENT }), id: Type.String({ pattern: '^[0-9a-f-]{36}$' }), decision: Type.Union([Type.Literal('approve'), Type.Literal('reject')]) },
  { additionalProperties: false },
);
const POLICY_NAME = '^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}$';
const EventsQuery = Type.Object(
  {
    policy: Type.Optional(Type.String({ pattern: POLICY_NAME })),
    workload: Type.Optional(Type.String({ pattern: NAME_SEGMENT })),
    status: Type.Optional(Type.Union([Type.Literal('affirming'), Type.Literal('contraindicated'), Type.Literal('error')])),
    kind: Type.Optional(Type.Union([Type.Literal('attest'), Type.Literal('release')])),
    code: Type.Optional(Type.String({ pattern: '^(none|[A-Z][A-Z0-9_]{1,63})$' })),
    limit: Type.Optional(Type.String({ pattern: '^(500|[1-4][0-9]{0,2}|[5-9][0-9]?)$' })),
  },
  { additionalProperties: false },
);
const EventParams = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) }, { additionalProperties: false });
const AuditQuery = Type.Object(
  {
    before: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,15}$' })),
    limit: Type.Optional(Type.String({ pattern: '^(200|1[0-9]{0,2}|[2-9][0-9]?)$' })),
    policy: Type.Optional(Type.String({ pattern: POLICY_NAME })),
  },
  { additionalProperties: false },
);

interface LiveSession extends UiSession {
  key: string;
}

/**
 * The dashboard: static files under /ui/ and a session-authenticated JSON API under /ui/api/
 * that reads the store server-side (the browser never holds an owner key or a secret value).
 */
export function uiRoutes(ctx: KbsContext, options: UiOptions = {}) {
  return async function plugin(app: FastifyInstance): Promise<void> {
    const webDir = options.webDir ?? defaultWebDir();
    const assets: Map<string, Asset> = loadAssets(webDir);
    if (!assets.has('index.html')) ctx.log.warn('dashboard files not found (run node scripts/build.mjs); /ui/ shows a notice');
    const sessions = options.sessions ?? new UiSessionStore();
    const ttlS = options.sessionTtlS ?? DEFAULT_UI_SESSION_TTL_S;
    const index = new PolicyIndex(ctx);
    const auditVerifier = new AuditVerifier(ctx);
    const hub = new EventHub(ctx.store, options.pollMs ?? 1000, (err) => ctx.log.error({ err }, 'dashboard: polling events failed'));
    /** Open event streams and the session key of each (one session must not take every slot). */
    const streams = new Map<SseClient, string>();
    const closers = new Set<() => void>();
    const nowMs = () => ctx.now().getTime();
    const audit = (actor: string, action: string, detail: Record<string, unknown>) =>
      withRetry(() => ctx.store.transaction((tx) => appendAudit(tx, ctx.auditKey, { actor, action, detail }, nowMs()))).catch((err: unknown) => ctx.log.error({ err }, `dashboard: cannot append the ${action} audit entry`));

    app.addHook('preClose', async () => {
      for (const close of [...closers]) close();
      hub.stop();
      sessions.clear();
    });

    const r = app.withTypeProvider<TypeBoxTypeProvider>();
    r.setErrorHandler(problemHandler('cocoon'));
    r.addHook('onSend', async (request, reply, payload) => {
      for (const [k, v] of Object.entries(SECURITY_HEADERS)) void reply.header(k, v);
      if (request.url.startsWith('/ui/api/')) void reply.header('cache-control', 'no-store');
      return payload;
    });

    const sendAsset = (request: FastifyRequest, reply: FastifyReply, name: string) => {
      const asset = assets.get(name);
      if (!asset) {
        if (name === 'index.html') return reply.type('text/html; charset=utf-8').header('cache-control', 'no-cache').send(NOT_BUILT_HTML);
        throw new CocoonError('NOT_FOUND', `no dashboard file ${name}`);
      }
      void reply.header('etag', asset.etag).header('vary', 'accept-encoding').header('cache-control', 'no-cache').type(asset.type);
      if (request.headers['if-none-match'] === asset.etag) return reply.code(304).send();
      const enc = pickEncoding(request.headers['accept-encoding']);
      if (enc !== 'identity') void reply.header('content-encoding', enc);
      return reply.send(enc === 'br' ? asset.br : enc === 'gzip' ? asset.gzip : asset.identity);
    };

    r.get('/ui', { schema: { hide: true } }, async (_request, reply) => reply.redirect('/ui/', 302));
    r.get('/ui/', { schema: { hide: true } }, async (request, reply) => sendAsset(request, reply, 'index.html'));
    r.get('/ui/assets/:file', { schema: { hide: true, params: Type.Object({ file: Type.String({ pattern: ASSET_NAME_RE.source }) }, { additionalProperties: false }) } }, async (request, reply) => {
      if (request.params.file === 'index.html') throw new CocoonError('NOT_FOUND', 'no dashboard file index.html');
      return sendAsset(request, reply, request.params.file);
    });

    /** Origin host (scheme ignored: behind a TLS-terminating proxy the KBS itself sees http). */
    const originHost = (request: FastifyRequest): string | null | undefined => {
      const origin = request.headers.origin;
      if (origin === undefined) return undefined;
      try {
        return origin.length <= 512 ? new URL(origin).host : null;
      } catch {
        return null;
      }
    };
    /** Secure cookies when the KBS serves TLS or the browser's page is https (TLS terminated in front of the KBS). */
    const secure = (request: FastifyRequest) => request.protocol === 'https' || /^https:\/\//.test(request.headers.origin ?? '');
    /** Same-origin check for anything that changes state (SameSite=Strict is the first line). */
    const requireSameOrigin = (request: FastifyRequest) => {
      const host = originHost(request);
      if (host !== undefined && host !== (request.headers.host ?? '')) throw new CocoonError('FORBIDDEN', 'cross-origin request refused');
      if (request.headers['sec-fetch-site'] === 'cross-site') throw new CocoonError('FORBIDDEN', 'cross-site request refused');
    };
    const sessionOf = (request: FastifyRequest): LiveSession => {
      const s = sessions.get(readUiCookie(request.headers.cookie), nowMs());
      if (!s) throw new CocoonError('AUTH_REQUIRED', 'sign in to the dashboard (cocoon ui login)');
      return s;
    };

    const sessionView = async (s: UiSession): Promise<Session> => ({ kid: s.kid, role: s.role, expiresAt: new Date(s.expiresAt).toISOString(), csrf: s.csrf, admin: await isAdmin(ctx, s.kid) });

    r.post('/ui/api/session', { schema: { hide: true, body: LoginBody } }, async (request, reply) => {
      requireSameOrigin(request);
      if (request.headers['x-cocoon-ui'] !== '1') throw new CocoonError('FORBIDDEN', 'dashboard requests need the x-cocoon-ui header');
      const token = request.body.token;
      const kid = await verifyOwnerToken(ctx.store, `Bearer ${token}`, { audience: ctx.identity.id, now: ctx.now(), method: 'POST', path: UI_LOGIN_PATH });
      const { role } = loginClaims(token);
      const { id, session } = await sessions.signIn(kid, role, nowMs(), ttlS);
      await audit(kid, 'ui.login', { role, expiresAt: session.expiresAt });
      request.log.info({ owner: kid, role }, 'dashboard sign-in');
      void reply.header('set-cookie', sessionCookie(id, ttlS, secure(request)));
      return sessionView(session);
    });

    await r.register(async (authed) => {
      const a = authed.withTypeProvider<TypeBoxTypeProvider>();
      a.addHook('onRequest', async (request) => {
        const s = sessionOf(request);
        if (request.method !== 'GET' && request.method !== 'HEAD') {
          requireSameOrigin(request);
          if (!csrfMatches(s.csrf, request.headers['x-csrf-token'])) throw new CocoonError('FORBIDDEN', 'missing or wrong x-csrf-token (reload the dashboard)');
        }
        request.uiSession = s;
      });
      const viewer = (request: FastifyRequest): LiveSession => request.uiSession as LiveSession;

      a.get('/ui/api/session', { schema: { hide: true } }, async (request) => {
        return sessionView(viewer(request));
      });

      a.delete('/ui/api/session', { schema: { hide: true } }, async (request, reply) => {
        const s = viewer(request);
        await sessions.signOut(s.key);
        await audit(s.kid, 'ui.logout', {});
        void reply.header('set-cookie', clearedCookie(secure(request)));
        return { signedOut: true };
      });

      a.get('/ui/api/overview', { schema: { hide: true } }, async (request): Promise<Overview> => {
        const s = viewer(request);
        const policies = await visiblePolicies(ctx, index, s.kid);
        const events = await visibleEvents(ctx, s.kid, policies);
        const dayAgo = nowMs() - 86_400_000;
        const recent = events.filter((e) => e.at >= dayAgo && e.kind === 'attest');
        let pending = 0;
        for (const p of policies) pending += (await ctx.store.listPending(p.record.name, 'pending')).length;
        const lastAudit = await ctx.store.auditHead();
        return {
          kbs: {
            id: ctx.identity.id,
            protocol: '0.4.0',
            allowSim: ctx.allowSim,
            warning: ctx.allowSim ? 'INSECURE: simulated TEE evidence is accepted by this KBS (--allow-sim)' : null,
            selfAttestation: options.selfAttestation ?? { available: false, reason: SELF_ATTESTATION_NOT_CONFIGURED },
          },
          counts: {
            policies: policies.length,
            workloads: policies.reduce((n, p) => n + Object.keys(p.policy.workloads).length, 0),
            secrets: policies.reduce((n, p) => n + Object.keys(p.policy.secrets).length, 0),
            pendingUpdates: pending,
            attestations24h: recent.length,
            accepted24h: recent.filter((e) => e.status === 'affirming').length,
            refused24h: recent.filter((e) => e.status !== 'affirming').length,
            auditEntries: lastAudit?.seq ?? 0,
          },
          ca: await caInfo(ctx),
          session: { role: s.role, kid: s.kid },
        };
      });

      a.get('/ui/api/policies', { schema: { hide: true } }, async (request) => {
        const policies = await visiblePolicies(ctx, index, viewer(request).kid);
        const out: PolicySummary[] = [];
        for (const p of policies) {
          out.push({
            name: p.record.name,
            version: p.record.version,
            hash: p.record.hash,
            createdAt: new Date(p.record.createdAt).toISOString(),
            workloads: Object.keys(p.policy.workloads).length,
            secrets: Object.keys(p.policy.secrets).length,
            pending: (await ctx.store.listPending(p.record.name, 'pending')).length,
            threshold: p.policy.approvals.threshold,
          });
        }
        return { policies: out };
      });

      a.get('/ui/api/policies/:org/:app', { schema: { hide: true, params: PolicyParams } }, async (request) => {
        const head = await readablePolicy(ctx, viewer(request).kid, `${request.params.org}/${request.params.app}`);
        return policyDetail(ctx, head, 20);
      });

      a.post('/ui/api/policies/:org/:app/pending/:id/:decision', { schema: { hide: true, params: PendingParams } }, async (request) => {
        const s = viewer(request);
        if (s.role !== 'owner') throw new CocoonError('FORBIDDEN', 'the auditor role is read-only');
        const name = `${request.params.org}/${request.params.app}`;
        request.log.info({ owner: s.kid, policy: name, pending: request.params.id, decision: request.params.decision }, 'dashboard decision');
        if (request.params.decision === 'approve') return approvePending(ctx, name, request.params.id, s.kid);
        return rejectPending(ctx, name, request.params.id, s.kid);
      });

      a.get('/ui/api/workloads', { schema: { hide: true } }, async (request) => {
        const s = viewer(request);
        const policies = await visiblePolicies(ctx, index, s.kid);
        return { workloads: workloadsView(policies, await visibleEvents(ctx, s.kid, policies), await activationCounts(ctx, policies)) };
      });

      a.get('/ui/api/events', { schema: { hide: true, querystring: EventsQuery } }, async (request) => {
        const s = viewer(request);
        const q = request.query;
        const policies = await visiblePolicies(ctx, index, s.kid);
        const events = await visibleEvents(ctx, s.kid, policies, q.policy !== undefined ? { policy: q.policy } : {});
        const list = filterEvents(events, q).slice(0, Number(q.limit ?? 200));
        const codes = [...new Set(events.map((e) => e.code).filter((c): c is string => c !== null))].sort();
        const workloads = [...new Set(events.map((e) => e.workload).filter((w): w is string => w !== null))].sort();
        return { events: list, scanned: events.length, scanLimit: EVENT_SCAN_LIMIT, codes, workloads };
      });

      a.get('/ui/api/events/stream', { schema: { hide: true } }, async (request, reply) => {
        const s = viewer(request);
        const admin = await isAdmin(ctx, s.kid);
        // The policies this owner may read, and every policy name known at that look (events of a
        // known but unreadable policy are dropped without looking again; a new name triggers a look).
        const look = async () => ({ known: new Set(await index.list()), names: new Set((await visiblePolicies(ctx, index, s.kid)).map((p) => p.record.name)) });
        let seen = await look();
        // Checked after the awaits, right before the stream is counted: concurrent opens cannot overshoot the cap.
        if (streams.size >= (options.maxStreams ?? 100)) throw new CocoonError('RATE_LIMITED', 'too many open dashboard event streams on this KBS');
        if ([...streams.values()].filter((key) => key === s.key).length >= MAX_STREAMS_PER_SESSION) throw new CocoonError('RATE_LIMITED', `at most ${MAX_STREAMS_PER_SESSION} dashboard event streams per session (close other tabs)`);
        reply.hijack();
        const res = reply.raw;
        res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', connection: 'keep-alive' });
        res.write('retry: 3000\n\n');
        const client = new SseClient(res, options.sseQueue ?? 256);
        streams.set(client, s.key);
        const send = (events: EventRecord[]) => {
          for (const e of events) if (eventVisible(e, admin, seen.names)) client.push(sseFrame('attestation', toUiEvent(e)));
        };
        const unsubscribe = hub.subscribe({
          events: (events) => {
            if (!admin && events.some((e) => e.policy !== null && !seen.known.has(e.policy))) {
              // A policy may have been created since the stream opened: look again before filtering.
              void look()
                .then((now) => {
                  seen = now;
                  send(events);
                })
                .catch((err: unknown) => ctx.log.error({ err }, 'dashboard: policy visibility'));
              return;
            }
            send(events);
          },
          resync: () => client.push(sseFrame('resync', { reason: 'more events than the stream carries; refetch the list' })),
        });
        const heartbeat = setInterval(() => client.direct(`: heartbeat ${new Date(nowMs()).toISOString()}\n\n`), options.heartbeatMs ?? 15_000);
        const expiry = setTimeout(() => finish('expired', { reason: 'session expired; sign in again' }), Math.max(0, s.expiresAt - nowMs()));
        const offEnd = sessions.onEnd((key) => {
          if (key === s.key) finish('expired', { reason: 'signed out' });
        });
        const finish = (event?: string, data?: unknown) => {
          clearInterval(heartbeat);
          clearTimeout(expiry);
          offEnd();
          unsubscribe();
          streams.delete(client);
          closers.delete(stop);
          client.close(event ? sseFrame(event, data) : undefined);
        };
        const stop = () => finish('closing', { reason: 'the KBS is shutting down' });
        closers.add(stop);
        res.on('close', () => finish());
        client.push(sseFrame('hello', { expiresAt: new Date(s.expiresAt).toISOString() }));
      });

      a.get('/ui/api/events/:id', { schema: { hide: true, params: EventParams } }, async (request) => {
        const s = viewer(request);
        const policies = await visiblePolicies(ctx, index, s.kid);
        const e = (await visibleEvents(ctx, s.kid, policies)).find((x) => x.id === request.params.id);
        if (!e) throw new CocoonError('NOT_FOUND', `no recent event ${request.params.id}`);
        return { event: toUiEvent(e), attestation: await eventClaims(ctx, e.sessionId) };
      });

      a.get('/ui/api/audit', { schema: { hide: true, querystring: AuditQuery } }, async (request) => {
        const s = viewer(request);
        const q = request.query;
        const limit = Number(q.limit ?? 100);
        const admin = await isAdmin(ctx, s.kid);
        if (!admin && q.policy === undefined) {
          return { available: true, scope: 'policy', entries: [], verdict: await auditVerifier.verdict(), note: 'only KBS administrators see the whole log; choose a policy' };
        }
        if (q.policy !== undefined) await readablePolicy(ctx, s.kid, q.policy);
        // Newest first. Paging back (`before`) is by seq window over the whole chain; with a policy filter, the newest entries only.
        let entries;
        if (q.before !== undefined && q.policy === undefined) {
          const before = Number(q.before);
          entries = (await ctx.store.listAudit({ afterSeq: Math.max(0, before - 1 - limit), limit })).filter((e) => e.seq < before).reverse();
        } else {
          entries = await ctx.store.listAudit({ limit, desc: true, ...(q.policy !== undefined ? { policy: q.policy } : {}) });
        }
        return { available: true, scope: admin && q.policy === undefined ? 'all' : 'policy', entries, verdict: await auditVerifier.verdict(), publicKey: ctx.identity.publicJwk };
      });

      a.get('/ui/api/secrets', { schema: { hide: true } }, async (request) => {
        const policies = await visiblePolicies(ctx, index, viewer(request).kid);
        return { secrets: await secretsView(ctx, policies), note: 'values are never sent to the dashboard' };
      });
    });
  };
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The dashboard session of a /ui/api request. */
    uiSession?: UiSession & { key: string };
  }
}
