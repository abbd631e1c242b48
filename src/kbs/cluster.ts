/**
 * `cocoon serve --workers N` (docs/kbs.md, "Several worker processes"): one primary process
 * and N worker processes (node:cluster) sharing the listening socket.
 *
 * The primary does every startup step with side effects, once (serve.ts: store migrations,
 * identity, data key unseal, owners, recovery, TLS, self-attestation), then forks the workers
 * and hands each its configuration and the data key over the cluster IPC channel (never argv,
 * environment or files). It owns the one self-attester (workers ask it for evidence), merges
 * the workers' metrics for /metrics, runs the housekeeping interval on its own store handle
 * and restarts crashed workers. A worker opens its own store handle, builds the app without
 * bootstrap side effects and serves; it exits when the primary goes away.
 */
import cluster from 'node:cluster';
import type { Worker } from 'node:cluster';
import { availableParallelism, hostname } from 'node:os';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { AggregatorRegistry, Counter, Gauge, Registry } from 'prom-client';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import { CocoonError, ERROR_CODES, asCocoonError, type ErrorCode } from '../errors.js';
import type { TeeKind } from '../attestation/types.js';
import type { Attester } from '../attester/types.js';
import { bootstrapKbs, createKbsApp, listenKbs, startHousekeeping, warnWithoutShare } from './app.js';
import type { KbsBootstrapOptions } from './app.js';
import { readIdentity } from './identity.js';
import { createMetrics } from './metrics.js';
import { oneAtATime } from './self-attest.js';
import type { SelfAttestation } from './self-attest.js';
import { openSqliteStore } from './store/sqlite.js';
import type { Store } from './store/types.js';
import { MAX_UI_SESSIONS, UiSessionStore } from './ui/session.js';
import type { UiSession } from './ui/session.js';
import { createBrokerVerifier } from './verifier.js';

export const MAX_WORKERS = 64;

/** Set in the environment of the workers this primary forks: not a secret, only which processes are ours. */
const WORKER_ENV = 'COCOON_KBS_WORKER';

/**
 * Whether this process is a `serve --workers` worker: forked by runKbsPrimary, not merely some
 * node:cluster worker (a process manager's cluster mode runs `cocoon serve` as one of those).
 */
export function isKbsWorker(): boolean {
  return cluster.isWorker && process.env[WORKER_ENV] === '1';
}

/** `--workers`: 1–64 or `auto` (os.availableParallelism(), capped at 64); anything else BAD_USAGE. */
export function parseWorkers(text: string, cpus: () => number = availableParallelism, inClusterWorker = cluster.isWorker): number {
  const n = text === 'auto' ? Math.max(1, Math.min(MAX_WORKERS, cpus())) : /^[1-9]\d?$/.test(text) ? Number(text) : NaN;
  if (!(n >= 1 && n <= MAX_WORKERS)) throw new CocoonError('BAD_USAGE', `--workers must be a number from 1 to ${MAX_WORKERS} or auto, got "${text}"`);
  // node:cluster cannot fork from a worker: checked before any startup step runs
  if (n > 1 && inClusterWorker) throw new CocoonError('BAD_USAGE', "--workers above 1 cannot run inside another node:cluster worker (a process manager's cluster mode): use one or the other");
  return n;
}

/** What a worker needs besides the data key; sent once over IPC. */
export interface WorkerSettings {
  dataDir: string;
  /** PostgreSQL URL; undefined: SQLite in dataDir. */
  postgres?: string;
  host: string;
  port: number;
  allowSim: boolean;
  simRoots: string[];
  trustedAks: string[];
  logLevel: string;
  bodyLimit: number;
  rateLimit: { perSecond: number; burst: number };
  workloadCertValidMs: number;
  tls?: { cert: string; key: string };
  /** The primary's self-attester, described (the attester itself stays in the primary). */
  selfAttestation?: { tee: TeeKind; measurement: string; register?: string };
  selfAttestationUnavailable?: string;
}

/** How long a worker waits for the primary's evidence (a TPM quote takes a second or two; several may queue). */
export const EVIDENCE_TIMEOUT_MS = 30_000;
/** How long collecting metrics (primary ← workers, worker ← primary) may take. */
export const METRICS_TIMEOUT_MS = 5_000;
/** How long a sign-in waits for the other workers to know the new dashboard session. */
const UI_SESSION_TIMEOUT_MS = 2_000;
/** Requests one side may have outstanding on one channel. */
const MAX_PENDING = 256;
/** A worker that exits this many times before it is ready within STARTUP_WINDOW_MS makes the primary give up. */
export const MAX_STARTUP_FAILURES = 5;
export const STARTUP_WINDOW_MS = 30_000;
const RESTART_BASE_MS = 100;
const RESTART_MAX_MS = 5_000;
/** Graceful shutdown of a worker, then SIGKILL. */
const SHUTDOWN_GRACE_MS = 10_000;
const CONFIG_TIMEOUT_MS = 30_000;

// ---- the IPC protocol (cluster channel, 'advanced' serialization: Uint8Array travels as bytes)

/** Worker → primary: evidence, metrics, ui-created, ui-ended; primary → worker: metrics-json, ui-adopt, ui-drop. */
type Op = 'evidence' | 'metrics' | 'metrics-json' | 'ui-created' | 'ui-ended' | 'ui-adopt' | 'ui-drop';
interface WireError {
  code: string;
  message: string;
}
type Message =
  | { cocoon: 'hello' }
  | { cocoon: 'config'; settings: WorkerSettings; dataKey: Uint8Array; uiSessions: [string, UiSession][] }
  | { cocoon: 'ready'; url: string }
  | { cocoon: 'failed'; error: WireError }
  | { cocoon: 'shutdown' }
  | { cocoon: 'request'; id: number; op: Op; args?: unknown }
  | { cocoon: 'reply'; id: number; ok: true; value: unknown }
  | { cocoon: 'reply'; id: number; ok: false; error: WireError };

function isWireError(e: unknown): e is WireError {
  return typeof e === 'object' && e !== null && typeof (e as WireError).code === 'string' && typeof (e as WireError).message === 'string';
}

/** The envelope of every IPC message, checked by kind before it is used (a worker is not trusted to send well-formed ones). */
function isMessage(m: unknown): m is Message {
  if (typeof m !== 'object' || m === null) return false;
  const x = m as Record<string, unknown>;
  switch (x.cocoon) {
    case 'hello':
    case 'shutdown':
    case 'config':
      return true;
    case 'ready':
      return typeof x.url === 'string' && x.url.length <= 512;
    case 'failed':
      return isWireError(x.error);
    case 'request':
      return Number.isSafeInteger(x.id) && typeof x.op === 'string';
    case 'reply':
      return Number.isSafeInteger(x.id) && (x.ok === true || (x.ok === false && isWireError(x.error)));
    default:
      return false;
  }
}

/** A dashboard session from a worker, rebuilt from its known members (bounded) so nothing else is stored or forwarded. */
function uiSessionOf(v: unknown): UiSession | undefined {
  const x = v as Partial<UiSession> | undefined;
  if (typeof x !== 'object' || x === null || typeof x.kid !== 'string' || x.kid.length > 128 || (x.role !== 'owner' && x.role !== 'auditor') || typeof x.csrf !== 'string' || x.csrf.length > 128) return undefined;
  if (!Number.isSafeInteger(x.createdAt) || !Number.isSafeInteger(x.expiresAt)) return undefined;
  return { kid: x.kid, role: x.role, csrf: x.csrf, createdAt: x.createdAt as number, expiresAt: x.expiresAt as number };
}

function toWire(err: unknown): WireError {
  const e = asCocoonError(err);
  return { code: e.code, message: e.message };
}

function fromWire(e: WireError): CocoonError {
  return new CocoonError(Object.hasOwn(ERROR_CODES, e.code) ? (e.code as ErrorCode) : 'INTERNAL', e.message);
}

/** Request/response over one IPC channel: ids, a timeout per request, a bound on outstanding requests. */
class Channel {
  private next = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  constructor(
    private readonly send: (m: Message) => void,
    private readonly peer: string,
  ) {}

  call(op: Op, timeoutMs: number, args?: unknown): Promise<unknown> {
    if (this.pending.size >= MAX_PENDING) return Promise.reject(new CocoonError('RATE_LIMITED', `too many requests waiting for the ${this.peer}; retry shortly`));
    const id = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CocoonError('IO_ERROR', `the ${this.peer} did not answer ${op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.send({ cocoon: 'request', id, op, ...(args ? { args } : {}) });
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new CocoonError('IO_ERROR', `cannot reach the ${this.peer}: ${(err as Error).message}`, { cause: err }));
      }
    });
  }

  settle(m: Extract<Message, { cocoon: 'reply' }>): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.ok) p.resolve(m.value);
    else p.reject(fromWire(m.error));
  }

  failAll(message: string): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new CocoonError('IO_ERROR', message));
    }
  }
}

/** Answers a request with what `fn` returns or throws. */
async function answer(send: (m: Message) => void, id: number, fn: () => Promise<unknown>): Promise<void> {
  let reply: Message;
  try {
    reply = { cocoon: 'reply', id, ok: true, value: await fn() };
  } catch (err) {
    reply = { cocoon: 'reply', id, ok: false, error: toWire(err) };
  }
  try {
    send(reply);
  } catch {
    // the peer is gone; its own timeout reports it
  }
}

// ---- primary

export interface PrimaryOptions {
  workers: number;
  settings: WorkerSettings;
  /** Sent to each worker; zeroed by the caller after close. */
  dataKey: Buffer;
  /** The primary's own store handle (bootstrap done): housekeeping runs on it. */
  store: Store;
  /** The one self-attester, owned here; workers ask for evidence over IPC. */
  selfAttestation?: SelfAttestation;
  log: Logger;
  now?: () => Date;
}

export interface RunningPrimary {
  /** Base URL, as the workers report it. */
  url: string;
  /** Rejects when the primary gives up (workers keep dying at startup); never resolves. */
  failed: Promise<never>;
  /** Graceful shutdown of every worker (SIGKILL after a grace period), housekeeping stopped. */
  close(): Promise<void>;
}

interface WorkerState {
  worker: Worker;
  channel: Channel;
  ready: boolean;
  /** Has its configuration: gets the dashboard sessions created from now on. */
  configured: boolean;
  exited: Promise<void>;
}

/** Forks the workers and supervises them; resolves once every worker listens. */
export async function runKbsPrimary(o: PrimaryOptions): Promise<RunningPrimary> {
  const log = o.log;
  const registry = new Registry();
  const workersGauge = new Gauge({ name: 'cocoon_kbs_workers', help: 'KBS worker processes ready to serve', registers: [registry] });
  const restarts = new Counter({ name: 'cocoon_kbs_worker_restarts_total', help: 'KBS worker processes restarted after they exited', registers: [registry] });
  const states = new Map<number, WorkerState>();
  const evidence = oneAtATime();
  /** Every worker's dashboard sessions, for workers started later. */
  const uiSessions = new UiSessionStore();
  const startupFailures: number[] = [];
  const exits: number[] = [];
  const restartTimers = new Set<NodeJS.Timeout>();
  let stopping = false;
  let url: string | undefined;
  let giveUp!: (err: CocoonError) => void;
  const failed = new Promise<never>((_resolve, reject) => (giveUp = reject));
  failed.catch(() => undefined);
  let initial: { left: number; resolve: () => void; reject: (err: CocoonError) => void } | undefined;
  const stopHousekeeping = startHousekeeping(o.store, o.now ?? (() => new Date()), log);

  const updateGauge = () => workersGauge.set([...states.values()].filter((s) => s.ready).length);

  const collectMetrics = async (): Promise<string> => {
    const ready = [...states.values()].filter((s) => s.ready);
    // A worker that exits or does not answer in time is left out of this scrape (cocoon_kbs_workers shows how many are up).
    const parts = (await Promise.allSettled(ready.map((s) => s.channel.call('metrics-json', METRICS_TIMEOUT_MS)))).flatMap((r) => (r.status === 'fulfilled' && Array.isArray(r.value) ? [r.value as MetricObjectWithValues<MetricValue<string>>[]] : []));
    return AggregatorRegistry.aggregate([...parts, await registry.getMetricsAsJSON()]).metrics();
  };

  const onRequest = (s: WorkerState, m: Extract<Message, { cocoon: 'request' }>): void => {
    const send = (r: Message) => s.worker.send(r);
    if (m.op === 'metrics') {
      void answer(send, m.id, collectMetrics);
    } else if (m.op === 'evidence') {
      void answer(send, m.id, async () => {
        const self = o.selfAttestation;
        if (!self) throw new CocoonError('NOT_FOUND', 'this KBS has no self-attestation');
        const args = m.args as { reportData?: unknown; measurement?: unknown } | undefined;
        const reportData = args?.reportData;
        if (!(reportData instanceof Uint8Array) || reportData.length !== 64 || args?.measurement !== self.measurement) throw new CocoonError('INPUT_MALFORMED', 'evidence request: 64 bytes of report data and the KBS measurement');
        return evidence(() => self.attester.getEvidence(reportData, self.measurement));
      });
    } else if (m.op === 'ui-created' || m.op === 'ui-ended') {
      void answer(send, m.id, async () => {
        const args = m.args as { key?: unknown; session?: unknown } | undefined;
        if (typeof args?.key !== 'string' || !/^[0-9a-f]{64}$/.test(args.key)) throw new CocoonError('INPUT_MALFORMED', 'dashboard session key');
        const key = args.key;
        let forward: { key: string; session?: UiSession } = { key };
        if (m.op === 'ui-created') {
          const session = uiSessionOf(args.session);
          if (!session) throw new CocoonError('INPUT_MALFORMED', 'dashboard session');
          uiSessions.adopt(key, session, Date.now());
          forward = { key, session };
        } else uiSessions.end(key);
        const others = [...states.values()].filter((x) => x !== s && x.configured);
        await Promise.allSettled(others.map((x) => x.channel.call(m.op === 'ui-created' ? 'ui-adopt' : 'ui-drop', UI_SESSION_TIMEOUT_MS, forward)));
      });
    } else {
      void answer(send, m.id, () => Promise.reject(new CocoonError('NOT_FOUND', `unknown request ${String(m.op)}`)));
    }
  };

  const fork = (): void => {
    const worker = cluster.fork({ [WORKER_ENV]: '1' });
    const channel = new Channel((m) => worker.send(m), `worker ${worker.id}`);
    const s: WorkerState = { worker, channel, ready: false, configured: false, exited: new Promise((resolve) => worker.once('exit', () => resolve())) };
    states.set(worker.id, s);
    const wlog = log.child({ worker: worker.id });
    worker.on('message', (m: unknown) => {
      if (!isMessage(m)) return;
      if (m.cocoon === 'hello') {
        // asked for by the worker once it listens for messages (earlier ones would be lost)
        worker.send({ cocoon: 'config', settings: o.settings, dataKey: o.dataKey, uiSessions: uiSessions.entries(Date.now()) } satisfies Message);
        s.configured = true;
      } else if (m.cocoon === 'ready') {
        if (s.ready) return;
        s.ready = true;
        url ??= m.url;
        updateGauge();
        wlog.info({ workerPid: worker.process.pid }, `worker ${worker.id} serving`);
        if (initial && --initial.left === 0) initial.resolve();
      } else if (m.cocoon === 'failed') {
        wlog.error({ code: m.error.code }, `worker ${worker.id} could not start: ${m.error.message}`);
        // before the service is up a startup error is final (a port in use does not go away)
        initial?.reject(fromWire(m.error));
      } else if (m.cocoon === 'request') {
        onRequest(s, m);
      } else if (m.cocoon === 'reply') {
        channel.settle(m);
      }
    });
    worker.on('error', (err) => wlog.error({ err }, `worker ${worker.id}: IPC error`));
    worker.on('exit', (code, signal) => {
      states.delete(worker.id);
      channel.failAll(`worker ${worker.id} exited`);
      updateGauge();
      if (stopping) return;
      const t = Date.now();
      exits.push(t);
      if (!s.ready) startupFailures.push(t);
      while (exits.length > 0 && (exits[0] as number) < t - STARTUP_WINDOW_MS) exits.shift();
      while (startupFailures.length > 0 && (startupFailures[0] as number) < t - STARTUP_WINDOW_MS) startupFailures.shift();
      const how = signal ? `signal ${signal}` : `exit code ${code}`;
      if (initial) {
        initial.reject(new CocoonError('IO_ERROR', `KBS worker ${worker.id} exited during startup (${how}); see its log above`));
        return;
      }
      if (startupFailures.length >= MAX_STARTUP_FAILURES) {
        const err = new CocoonError('IO_ERROR', `KBS workers keep dying: ${startupFailures.length} exited before they were ready within ${STARTUP_WINDOW_MS / 1000} s (last: worker ${worker.id}, ${how}); giving up`);
        log.fatal(err.message);
        giveUp(err);
        return;
      }
      const delay = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** Math.max(0, exits.length - 1));
      wlog.error({ workerPid: worker.process.pid, code, signal }, `worker ${worker.id} exited (${how}); restarting it in ${delay} ms`);
      const timer = setTimeout(() => {
        restartTimers.delete(timer);
        if (stopping) return;
        restarts.inc();
        fork();
      }, delay);
      restartTimers.add(timer);
    });
  };

  const close = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    for (const t of restartTimers) clearTimeout(t);
    restartTimers.clear();
    stopHousekeeping();
    await Promise.all(
      [...states.values()].map(async ({ worker: w, exited }) => {
        const kill = setTimeout(() => {
          log.warn({ worker: w.id }, `worker ${w.id} did not stop within ${SHUTDOWN_GRACE_MS / 1000} s; killing it`);
          w.process.kill('SIGKILL');
        }, SHUTDOWN_GRACE_MS);
        try {
          if (w.isConnected()) w.send({ cocoon: 'shutdown' } satisfies Message);
          else w.process.kill('SIGTERM');
        } catch {
          w.process.kill('SIGKILL');
        }
        await exited;
        clearTimeout(kill);
      }),
    );
  };

  cluster.setupPrimary({ serialization: 'advanced' });
  try {
    await new Promise<void>((resolve, reject) => {
      initial = { left: o.workers, resolve, reject };
      for (let i = 0; i < o.workers; i++) fork();
    });
  } catch (err) {
    initial = undefined;
    await close();
    throw err;
  }
  initial = undefined;
  return { url: url as string, failed, close };
}

export interface ClusterServeOptions {
  workers: number;
  /** The one-time startup steps the primary does (identity, data key, owners, recovery). */
  bootstrap: KbsBootstrapOptions;
  /** The primary's store handle (the CLI opens PostgreSQL); default SQLite in the data dir. Closed at the end. */
  store?: Store;
  /** The one self-attester (already created and measured, once). */
  selfAttestation?: SelfAttestation;
  settings: Omit<WorkerSettings, 'selfAttestation'>;
  /** Resolves on SIGTERM/SIGINT: graceful shutdown. */
  stop: Promise<void>;
  /** Called once every worker listens. */
  listening(url: string): void;
}

/**
 * `cocoon serve --workers N` in the primary: bootstrap once on the primary's store handle,
 * fork and supervise the workers until `stop` (then every worker closes gracefully) or until
 * workers keep dying (then this rejects).
 */
export async function serveKbsCluster(o: ClusterServeOptions): Promise<void> {
  const store = o.store ?? (await openSqliteStore(o.settings.dataDir));
  const log = pino({ level: o.settings.logLevel, base: { pid: process.pid, hostname: hostname(), role: 'primary' } });
  try {
    const boot = await bootstrapKbs(store, o.bootstrap);
    try {
      warnWithoutShare(log, boot.withoutShare);
      const self = o.selfAttestation;
      const primary = await runKbsPrimary({
        workers: o.workers,
        dataKey: boot.dataKey,
        store,
        log,
        ...(self ? { selfAttestation: self } : {}),
        settings: { ...o.settings, ...(self ? { selfAttestation: { tee: self.attester.tee, measurement: self.measurement, ...(self.register ? { register: self.register } : {}) } } : {}) },
      });
      o.listening(primary.url);
      try {
        await Promise.race([o.stop, primary.failed]);
      } finally {
        await primary.close();
      }
    } finally {
      boot.dataKey.fill(0);
    }
  } finally {
    await store.close();
  }
}

// ---- worker

/**
 * The body of a worker process: waits for its settings and the data key from the primary,
 * serves until the primary says shutdown (or goes away: node:cluster then exits the worker).
 */
export async function runKbsWorker(): Promise<void> {
  const me = cluster.worker;
  if (!me) throw new CocoonError('INTERNAL', 'runKbsWorker outside a cluster worker');
  // Always with a callback: node calls it exactly once, after the write or with the error of a
  // closed channel (without one, that error would be an 'error' event on process, uncaught).
  const send = (m: Message, done: () => void = () => undefined): void => {
    if (process.send) process.send(m, undefined, {}, () => done());
    else done();
  };
  const primary = new Channel(send, 'KBS primary');
  // dashboard sessions: this worker's copy of every worker's (a browser's connections land on any worker)
  const uiSessions = new UiSessionStore(MAX_UI_SESSIONS, {
    created: (key, session) => primary.call('ui-created', UI_SESSION_TIMEOUT_MS * 2, { key, session }).then(
      () => undefined,
      () => undefined, // the session still works on this worker
    ),
    ended: (key) => primary.call('ui-ended', UI_SESSION_TIMEOUT_MS * 2, { key }).then(
      () => undefined,
      () => undefined, // ended on this worker; the others drop it at expiry at the latest
    ),
  });
  const adoptOrDrop = (op: Op, args: { key: string; session: UiSession }): void => {
    if (op === 'ui-adopt') uiSessions.adopt(args.key, args.session, Date.now());
    else uiSessions.end(args.key);
  };
  let onConfig: ((m: Extract<Message, { cocoon: 'config' }>) => void) | undefined;
  let metricsJson: (() => Promise<unknown>) | undefined;
  /** Set once the app listens; before that a stop request just ends the process. */
  let shutdown: (() => void) | undefined;
  const stop = (): void => {
    if (shutdown) shutdown();
    else process.exit(0);
  };
  process.on('message', (m: unknown) => {
    if (!isMessage(m)) return;
    if (m.cocoon === 'config') onConfig?.(m);
    else if (m.cocoon === 'reply') primary.settle(m);
    else if (m.cocoon === 'request' && m.op === 'metrics-json') void answer(send, m.id, () => (metricsJson ? metricsJson() : Promise.resolve([])));
    else if (m.cocoon === 'request' && (m.op === 'ui-adopt' || m.op === 'ui-drop')) void answer(send, m.id, async () => adoptOrDrop(m.op, m.args as { key: string; session: UiSession }));
    else if (m.cocoon === 'shutdown') stop();
  });
  // The primary coordinates shutdown: a terminal's Ctrl-C reaches the whole process group, and
  // the primary then tells every worker. SIGTERM to one worker alone stops it (the primary restarts it).
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', stop);

  let dataKey: Buffer | undefined;
  try {
    const { settings, dataKey: keyBytes } = await new Promise<Extract<Message, { cocoon: 'config' }>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new CocoonError('IO_ERROR', `no configuration from the KBS primary within ${CONFIG_TIMEOUT_MS / 1000} s`)), CONFIG_TIMEOUT_MS);
      onConfig = (m) => {
        onConfig = undefined;
        clearTimeout(timer);
        // now, not after the await: a ui-drop the primary sent right after the config must not be undone
        for (const [key, session] of m.uiSessions) uiSessions.adopt(key, session, Date.now());
        resolve(m);
      };
      send({ cocoon: 'hello' });
    });
    dataKey = Buffer.from(keyBytes);
    keyBytes.fill(0);
    // the identity first: from the moment the store is open, createKbsApp (closeStore) owns it
    const identity = await readIdentity(settings.dataDir);
    const store = settings.postgres ? await (await import('./store/postgres.js')).openPostgresStore(settings.postgres) : await openSqliteStore(settings.dataDir, { walCheckpoints: 'external' });
    const metrics = createMetrics();
    metricsJson = () => metrics.registry.getMetricsAsJSON();
    const sa = settings.selfAttestation;
    const selfAttestation: SelfAttestation | undefined = sa && {
      attester: { tee: sa.tee, getEvidence: (reportData, measurement) => primary.call('evidence', EVIDENCE_TIMEOUT_MS, { reportData: new Uint8Array(reportData), measurement }) } satisfies Attester,
      measurement: sa.measurement,
      ...(sa.register ? { register: sa.register } : {}),
    };
    const app = await createKbsApp(
      store,
      { identity, dataKey, withoutShare: [] },
      {
        verifier: createBrokerVerifier({ simRoots: settings.simRoots, trustedAks: settings.trustedAks }),
        allowSim: settings.allowSim,
        logger: { level: settings.logLevel, base: { pid: process.pid, hostname: hostname(), worker: me.id } },
        bodyLimit: settings.bodyLimit,
        rateLimit: settings.rateLimit,
        workloadCertValidMs: settings.workloadCertValidMs,
        ...(settings.tls ? { tls: settings.tls } : {}),
        ...(selfAttestation ? { selfAttestation } : {}),
        ...(settings.selfAttestationUnavailable ? { selfAttestationUnavailable: settings.selfAttestationUnavailable } : {}),
        closeStore: true,
        housekeeping: false,
        metrics,
        uiSessions,
        metricsText: () => primary.call('metrics', METRICS_TIMEOUT_MS * 2) as Promise<string>,
      },
    );
    const running = await listenKbs(app, settings);
    await new Promise<void>((resolve) => {
      shutdown = () => {
        shutdown = () => undefined;
        running.close().then(resolve, (err: unknown) => {
          app.log.error({ err }, 'closing the worker failed');
          resolve();
        });
      };
      send({ cocoon: 'ready', url: running.url });
    });
    primary.failAll('the worker is stopping');
    // leave once the logs are out: the IPC channel is the last handle; exit anyway after a moment
    process.exitCode = 0;
    setTimeout(() => process.exit(0), 2000).unref();
    me.disconnect();
  } catch (err) {
    dataKey?.fill(0);
    // the primary logs it; then leave once the message is out
    setTimeout(() => process.exit(1), 1000).unref();
    send({ cocoon: 'failed', error: toWire(err) }, () => process.exit(1));
  }
}
