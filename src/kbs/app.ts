import { KeyObject } from 'node:crypto';
import { selfAttestationRoutes, selfAttestationStatus } from './self-attest.js';
import type { SelfAttestation } from './self-attest.js';
import Fastify from 'fastify';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import type { JWK } from 'jose';
import type { LoggerOptions } from 'pino';
import { appendAudit, withRetry } from './audit.js';
import { DeploymentCa, pruneCaRecords } from './ca.js';
import type { EvidenceVerifier, KbsContext } from './context.js';
import { EAR_TTL_S, INSECURE_NOTICE } from './ear.js';
import { loadOrCreateIdentity } from './identity.js';
import type { KbsIdentity } from './identity.js';
import { Journal } from './journal.js';
import { AttestedSessions } from './attested-sessions.js';
import { createMetrics } from './metrics.js';
import type { KbsMetrics } from './metrics.js';
import { registerOwners } from './owner-auth.js';
import { problemHandler } from './problem.js';
import { registerRateLimit } from './rate-limit.js';
import { healthRoutes } from './routes/health.js';
import { ownerRoutes } from './routes/owner.js';
import { rcarRoutes } from './routes/rcar.js';
import { FileSealer, loadDataKey } from './sealer.js';
import type { Sealer } from './sealer.js';
import { openSqliteStore } from './store/sqlite.js';
import type { Store } from './store/types.js';
import type { UiSessionStore } from './ui/session.js';
import { CocoonError } from '../errors.js';

export interface KbsOptions {
  /** Holds kbs-identity.jwk, seal.key and (by default) kbs.sqlite. */
  dataDir: string;
  verifier: EvidenceVerifier;
  /** Accept `sim` evidence (only where a policy rule also names sim). Default false. */
  allowSim?: boolean;
  /** Owner public JWKs registered at start (bootstrap; `serve --owner FILE`). */
  owners?: JWK[];
  /** Default: SQLite in dataDir (closed with the app). A given store is not closed. */
  store?: Store;
  /** Default: FileSealer in dataDir. */
  sealer?: Sealer;
  /** Default: loaded/generated from dataDir. */
  identity?: KbsIdentity;
  /** Pino options, or false for none (tests). Default: info level to stdout. */
  logger?: LoggerOptions | boolean;
  /** Use an existing logger instead (e.g. the CLI's pino). */
  loggerInstance?: FastifyBaseLogger;
  /** Max request body, bytes. Default 1 MiB. */
  bodyLimit?: number;
  /** Challenge lifetime. Default 300 s. */
  sessionTtlS?: number;
  /** EAR token lifetime. Default 300 s. */
  tokenTtlS?: number;
  /** Lifetime of issued workload certificates (docs/tls.md). Default 24 h; tests use seconds. */
  workloadCertValidMs?: number;
  /** Clock (tests). */
  now?: () => Date;
  /**
   * Split the data key m-of-n among the admin owners with P-256 keys or a recovery recipient
   * (docs/kbs.md "Sealing and recovery"); re-done whenever the threshold, the owner set or the
   * recipients change.
   */
  recoveryThreshold?: number;
  /**
   * Admin owner kid → public JWK (EC P-256/P-384 or OKP X25519) the owner's recovery share is
   * encrypted to instead of its own key (`serve --recovery-recipient KID=FILE`); how owners
   * with Ed25519 keys get a share. Needs recoveryThreshold.
   */
  recoveryRecipients?: Record<string, JWK>;
  /** Requests per second and burst per client address (token bucket). Default 200 / 400; 0 disables. */
  rateLimit?: { perSecond: number; burst: number };
  /** HTTPS: PEM certificate chain and key. */
  tls?: { cert: string; key: string };
  /** Serve the KBS's own evidence at GET /cocoon/v1/attestation (src/kbs/self-attest.ts). */
  selfAttestation?: SelfAttestation;
  /** Without selfAttestation: why not (shown on the dashboard overview), e.g. what `--tee auto` probed. */
  selfAttestationUnavailable?: string;
}

export const DEFAULT_BODY_LIMIT = 1024 * 1024;
/** Expired sessions, jtis and per-instance values are purged, and the CA's records pruned, this often. */
export const PURGE_INTERVAL_MS = 60_000;

/** Never logged: credentials and cookies. Bodies are not logged at all. */
const REDACT = ['req.headers.authorization', 'req.headers.cookie', 'res.headers["set-cookie"]', '*.value', '*.yaml', '*.token'];

/** What the one-time startup steps need (bootstrapKbs). */
export type KbsBootstrapOptions = Pick<KbsOptions, 'dataDir' | 'owners' | 'sealer' | 'identity' | 'now' | 'recoveryThreshold' | 'recoveryRecipients'>;

/** What the one-time startup produced: the state every app of this KBS runs on. */
export interface KbsBootstrap {
  identity: KbsIdentity;
  /** The unsealed data key (zeroed when the app that owns it closes). */
  dataKey: Buffer;
  /** Admin owners that get no recovery share (warned at start). */
  withoutShare: { kid: string; reason: string }[];
}

/**
 * The startup steps with side effects, done once per KBS (by the only process, or by the
 * primary of `serve --workers`): load or create the identity, create or unseal the data key
 * (a TPM unseal), register the owners and set up recovery, on a store that is already open
 * and migrated.
 */
export async function bootstrapKbs(store: Store, options: KbsBootstrapOptions): Promise<KbsBootstrap> {
  const identity = options.identity ?? (await loadOrCreateIdentity(options.dataDir));
  const auditKey = KeyObject.from(identity.privateKey);
  const sealer = options.sealer ?? (await FileSealer.open(options.dataDir));
  const dataKey = await loadDataKey(store, sealer);
  try {
    const now = options.now ?? (() => new Date());
    if (options.owners?.length) await registerOwners(store, options.owners, now().getTime());
    if (options.recoveryRecipients && Object.keys(options.recoveryRecipients).length > 0 && options.recoveryThreshold === undefined) throw new CocoonError('BAD_USAGE', 'recovery recipients need a recovery threshold');
    const withoutShare = options.recoveryThreshold !== undefined ? await ensureRecovery(store, dataKey, options.recoveryThreshold, options.recoveryRecipients ?? {}, now().getTime(), auditKey) : [];
    return { identity, dataKey, withoutShare };
  } catch (err) {
    dataKey.fill(0);
    throw err;
  }
}

export function warnWithoutShare(log: Pick<FastifyBaseLogger, 'warn'>, withoutShare: KbsBootstrap['withoutShare']): void {
  for (const o of withoutShare) log.warn({ owner: o.kid }, `recovery: admin owner ${o.kid} gets no recovery share: ${o.reason}`);
}

/** Options of an app on a bootstrapped store: no startup side effects left to do. */
export interface KbsAppOptions extends Omit<KbsOptions, 'dataDir' | 'owners' | 'store' | 'sealer' | 'identity' | 'recoveryThreshold' | 'recoveryRecipients'> {
  /** Close the store when the app closes. Default false. */
  closeStore?: boolean;
  /** Run the purge/prune interval in this app. Default true; `serve --workers` runs it once, in the primary. */
  housekeeping?: boolean;
  /** The app's metrics (default: a fresh registry); a cluster worker reports them to the primary. */
  metrics?: KbsMetrics;
  /** What GET /metrics serves instead of this app's registry: a cluster worker serves the whole service's. */
  metricsText?: () => Promise<string>;
  /** Dashboard sessions (default: the app's own); cluster workers share theirs. */
  uiSessions?: UiSessionStore;
}

/** Builds the app on a store that bootstrapKbs has prepared; the data key is zeroed when the app closes. */
export async function createKbsApp(store: Store, boot: KbsBootstrap, options: KbsAppOptions): Promise<FastifyInstance> {
  const { identity, dataKey } = boot;
  const auditKey = KeyObject.from(identity.privateKey);
  const now = options.now ?? (() => new Date());
  const loggerOptions = options.logger === false ? false : { level: 'info', ...(typeof options.logger === 'object' ? options.logger : {}), redact: { paths: REDACT, censor: '[redacted]' } };
  const app = Fastify({
    ...(options.tls ? { https: { cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2' as const } } : {}),
    ...(options.loggerInstance ? { loggerInstance: options.loggerInstance } : { logger: loggerOptions }),
    bodyLimit: options.bodyLimit ?? DEFAULT_BODY_LIMIT,
    trustProxy: false,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false } },
    routerOptions: { maxParamLength: 128 },
    // One line per request (below) instead of fastify's two ("incoming request", "request completed").
    disableRequestLogging: true,
  });
  if ((app.log as FastifyBaseLogger & { isLevelEnabled?: (level: string) => boolean }).isLevelEnabled?.('info') !== false) {
    app.addHook('onResponse', (request, reply, done) => {
      request.log.info({ req: request, res: reply, responseTime: reply.elapsedTime }, 'request completed');
      done();
    });
  }
  const ctx: KbsContext = {
    store,
    identity,
    dataKey,
    verifier: options.verifier,
    allowSim: options.allowSim ?? false,
    now,
    sessionTtlS: options.sessionTtlS ?? 300,
    tokenTtlS: options.tokenTtlS ?? EAR_TTL_S,
    ...(options.workloadCertValidMs !== undefined ? { workloadCertValidMs: options.workloadCertValidMs } : {}),
    log: app.log,
    metrics: options.metrics ?? createMetrics(),
    auditKey,
    journal: new Journal(store, auditKey),
    attested: new AttestedSessions(),
    ca: new DeploymentCa(store, dataKey, now),
  };
  let stopHousekeeping = (): void => {};
  const release = async (): Promise<void> => {
    stopHousekeeping();
    dataKey.fill(0);
    if (options.closeStore) await store.close();
  };
  app.addHook('onClose', release);
  try {
    warnWithoutShare(app.log, boot.withoutShare);
    if (ctx.allowSim) app.log.warn(`${INSECURE_NOTICE}: this KBS accepts simulated evidence (--allow-sim); never use it in production`);

    await app.register(swagger, {
      openapi: {
        openapi: '3.1.0',
        info: { title: 'Cocoon KBS owner API', version: '1.0.0', description: 'Policies, secrets and attestation events. Authenticate with a short-lived owner JWS (ES256/EdDSA).' },
        components: { securitySchemes: { ownerToken: { type: 'http', scheme: 'bearer', bearerFormat: 'JWS' } } },
      },
    });
    app.setErrorHandler(problemHandler('cocoon'));
    const rl = options.rateLimit ?? { perSecond: 200, burst: 400 };
    if (rl.perSecond > 0) registerRateLimit(app, rl, () => ctx.metrics.rateLimited.inc());
    app.setNotFoundHandler((request, reply) => {
      const err = new CocoonError('NOT_FOUND', `no route ${request.method} ${request.url.slice(0, 200)}`);
      problemHandler(request.url.startsWith('/kbs/') ? 'coco' : 'cocoon')(err, request, reply);
    });
    await app.register(healthRoutes(ctx, options.metricsText));
    await app.register(rcarRoutes(ctx));
    await app.register(ownerRoutes(ctx));
    if (options.selfAttestation) await app.register(selfAttestationRoutes(ctx, options.selfAttestation, options.tls?.cert));
    await app.register((await import('./routes/ui.js')).uiRoutes(ctx, { selfAttestation: selfAttestationStatus(options.selfAttestation, options.selfAttestationUnavailable), ...(options.uiSessions ? { sessions: options.uiSessions } : {}) }));
    if (options.housekeeping ?? true) stopHousekeeping = startHousekeeping(store, now, app.log);
    return app;
  } catch (err) {
    await release();
    throw err;
  }
}

export async function buildKbsApp(options: KbsOptions): Promise<FastifyInstance> {
  const ownsStore = options.store === undefined;
  const store = options.store ?? (await openSqliteStore(options.dataDir));
  let boot: KbsBootstrap;
  try {
    boot = await bootstrapKbs(store, options);
  } catch (err) {
    if (ownsStore) await store.close();
    throw err;
  }
  return createKbsApp(store, boot, { ...options, closeStore: ownsStore });
}

/**
 * Purges expired sessions, jtis and per-instance values and prunes the CA's records every
 * PURGE_INTERVAL_MS: once per KBS process, or once per `serve --workers` cluster (the primary).
 * Returns the function that stops it.
 */
export function startHousekeeping(store: Store, now: () => Date, log: Pick<FastifyBaseLogger, 'info' | 'error'>): () => void {
  const purge = setInterval(() => {
    const t = now().getTime();
    store.purgeExpired(t).catch((err: unknown) => log.error({ err }, 'purging expired sessions failed'));
    pruneCaRecords(store, t).then(
      (n) => {
        if (n.certs > 0 || n.revoked > 0) log.info({ certs: n.certs, revoked: n.revoked }, 'pruned expired certificate records and revocations');
      },
      (err: unknown) => log.error({ err }, 'pruning expired certificate records failed'),
    );
  }, PURGE_INTERVAL_MS);
  purge.unref();
  return () => clearInterval(purge);
}

/**
 * Creates (or re-creates, when the admin owners, their recovery recipients or the threshold
 * changed) the recovery shares. Returns the admin owners that get none (reported at start).
 */
async function ensureRecovery(store: Store, dataKey: Buffer, threshold: number, recipients: Record<string, JWK>, now: number, auditKey: KeyObject): Promise<{ kid: string; reason: string }[]> {
  const { RECOVERY_META, planRecovery, setupRecovery } = await import('./recovery.js');
  const admins = (await store.listOwners()).filter((o) => o.role !== 'policy').map((o) => JSON.parse(o.jwk) as JWK);
  const plan = await planRecovery(admins, recipients);
  const holders = plan.holders.map((h) => `${h.kid}:${h.recipient ?? ''}`).sort();
  const existing = await store.getMeta(RECOVERY_META);
  if (existing) {
    const r = JSON.parse(existing) as { threshold: number; shares: { kid: string; recipient?: string }[] };
    if (r.threshold === threshold && JSON.stringify(r.shares.map((x) => `${x.kid}:${x.recipient ?? ''}`).sort()) === JSON.stringify(holders)) return plan.skipped;
  }
  await setupRecovery(store, dataKey, admins, threshold, now, recipients);
  const kids = plan.holders.map((h) => h.kid).sort();
  const viaRecipient = Object.fromEntries(plan.holders.filter((h) => h.recipient).map((h) => [h.kid, h.recipient as string]));
  const detail = {
    threshold,
    owners: kids,
    ...(Object.keys(viaRecipient).length > 0 ? { recipients: viaRecipient } : {}),
    ...(plan.skipped.length > 0 ? { withoutShare: plan.skipped.map((o) => o.kid).sort() } : {}),
  };
  await withRetry(() => store.transaction((tx) => appendAudit(tx, auditKey, { actor: 'kbs', action: 'recovery.setup', detail }, now)));
  return plan.skipped;
}

export interface StartKbsOptions extends KbsOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
}

export interface RunningKbs {
  app: FastifyInstance;
  /** Base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  close(): Promise<void>;
}

export async function startKbs(options: StartKbsOptions): Promise<RunningKbs> {
  return listenKbs(await buildKbsApp(options), options);
}

/** Listens (closing the app when it cannot) and returns the running KBS. */
export async function listenKbs(app: FastifyInstance, options: { host?: string; port?: number; tls?: unknown }): Promise<RunningKbs> {
  try {
    await app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? 8080 });
  } catch (err) {
    await app.close();
    throw new CocoonError('IO_ERROR', `KBS cannot listen on ${options.host ?? '127.0.0.1'}:${options.port ?? 8080}: ${(err as Error).message}`, { cause: err });
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : (options.port ?? 8080);
  const host = options.host && options.host !== '0.0.0.0' && options.host !== '::' ? options.host : '127.0.0.1';
  const url = `${options.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  return { app, url, close: () => app.close() };
}
