/**
 * Mutating admission webhook: AdmissionReview v1 over HTTPS (fastify).
 *
 * `reviewAdmission()` is the pure decision (request JSON → AdmissionReview response);
 * `buildWebhookApp()` wraps it in a fastify app (POST /mutate, GET /healthz) with a body
 * limit and strict 400 answers for anything that is not a well-formed AdmissionReview.
 *
 * Opt-in: the MutatingWebhookConfiguration's namespaceSelector (namespace label
 * `cocoon.dev/inject=enabled`) decides which namespaces are sent here; inside them a pod is
 * transformed only when it carries the annotation `cocoon.dev/workload` (and, unless the
 * image mapping names it, `cocoon.dev/policy`). Idempotent: a pod that is already in the
 * desired shape gets no patch.
 */
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import type { Server as HttpsServer } from 'node:https';
import Fastify, { type FastifyInstance } from 'fastify';
import { CocoonError, asCocoonError } from '../errors.js';
import { WORKLOAD_NAME_RE, isPolicyName } from '../policy/names.js';
import { isRecord } from './manifest.js';
import { diffToPatch } from './jsonpatch.js';
import { ANNOTATION, transformPod } from './transform.js';
import type { ImageMapping, WebhookConfig } from './webhook-config.js';

export const TLS_MIN_VERSION = 'TLSv1.2';
const MAX_DEPTH = 64;
const MAX_WARNINGS = 20;
const MAX_WARNING_CHARS = 256;

export interface AdmissionResponse {
  uid: string;
  allowed: boolean;
  patchType?: 'JSONPatch';
  patch?: string;
  status?: { code: number; reason?: string; message: string };
  warnings?: string[];
}

export interface AdmissionReviewOut {
  apiVersion: 'admission.k8s.io/v1';
  kind: 'AdmissionReview';
  response: AdmissionResponse;
}

function depth(value: unknown, limit: number): number {
  let max = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length) {
    const [v, d] = stack.pop() as [unknown, number];
    if (d > max) max = d;
    if (max > limit) return max;
    if (Array.isArray(v)) for (const x of v) stack.push([x, d + 1]);
    else if (isRecord(v)) for (const x of Object.values(v)) stack.push([x, d + 1]);
  }
  return max;
}

interface ParsedRequest {
  uid: string;
  kind: { group: string; version: string; kind: string };
  operation: string;
  namespace: string | undefined;
  object: Record<string, unknown> | undefined;
  oldObject: Record<string, unknown> | undefined;
}

/** Strictly reads an AdmissionReview v1 request; INPUT_MALFORMED otherwise. */
export function parseAdmissionReview(body: unknown): ParsedRequest {
  const bad = (m: string) => new CocoonError('INPUT_MALFORMED', `AdmissionReview: ${m}`);
  if (!isRecord(body)) throw bad('expected a JSON object');
  if (body.apiVersion !== 'admission.k8s.io/v1') throw bad(`apiVersion must be admission.k8s.io/v1 (got ${JSON.stringify(body.apiVersion) ?? 'none'})`);
  if (body.kind !== 'AdmissionReview') throw bad('kind must be AdmissionReview');
  const req = body.request;
  if (!isRecord(req)) throw bad('request is missing');
  if (typeof req.uid !== 'string' || req.uid === '' || req.uid.length > 128) throw bad('request.uid must be a non-empty string of at most 128 characters');
  const k = req.kind;
  if (!isRecord(k) || typeof k.group !== 'string' || typeof k.version !== 'string' || typeof k.kind !== 'string') throw bad('request.kind must be {group, version, kind}');
  if (typeof req.operation !== 'string' || !['CREATE', 'UPDATE', 'DELETE', 'CONNECT'].includes(req.operation)) throw bad('request.operation must be CREATE, UPDATE, DELETE or CONNECT');
  if (req.namespace !== undefined && typeof req.namespace !== 'string') throw bad('request.namespace must be a string');
  if (req.object !== undefined && req.object !== null && !isRecord(req.object)) throw bad('request.object must be an object');
  if (req.oldObject !== undefined && req.oldObject !== null && !isRecord(req.oldObject)) throw bad('request.oldObject must be an object');
  if (depth(body, MAX_DEPTH) > MAX_DEPTH) throw bad(`nested deeper than ${MAX_DEPTH} levels`);
  return {
    uid: req.uid,
    kind: { group: k.group, version: k.version, kind: k.kind },
    operation: req.operation,
    namespace: req.namespace as string | undefined,
    object: isRecord(req.object) ? req.object : undefined,
    oldObject: isRecord(req.oldObject) ? req.oldObject : undefined,
  };
}

function allow(uid: string, warnings: string[] = []): AdmissionResponse {
  return { uid, allowed: true, ...(warnings.length ? { warnings: clip(warnings) } : {}) };
}

function deny(uid: string, message: string, warnings: string[] = []): AdmissionResponse {
  return { uid, allowed: false, status: { code: 403, reason: 'Forbidden', message: `cocoon: ${message}` }, ...(warnings.length ? { warnings: clip(warnings) } : {}) };
}

function clip(warnings: string[]): string[] {
  return warnings.slice(0, MAX_WARNINGS).map((w) => (w.length > MAX_WARNING_CHARS ? `${w.slice(0, MAX_WARNING_CHARS - 1)}…` : w));
}

function annotationsOf(pod: Record<string, unknown>): Record<string, unknown> {
  const meta = isRecord(pod.metadata) ? pod.metadata : {};
  return isRecord(meta.annotations) ? meta.annotations : {};
}

/** The admission decision for one parsed request. */
export function admit(req: ParsedRequest, config: WebhookConfig): AdmissionResponse {
  const { uid } = req;
  if (req.kind.group !== '' || req.kind.version !== 'v1' || req.kind.kind !== 'Pod') return allow(uid);
  if (req.operation === 'UPDATE') return admitUpdate(req, config);
  if (req.operation !== 'CREATE') return allow(uid);
  const pod = req.object;
  if (!pod) throw new CocoonError('INPUT_MALFORMED', 'AdmissionReview: request.object is missing for a Pod CREATE');
  const ann = annotationsOf(pod);
  const workloadAnn = ann[ANNOTATION.workload];
  const policyAnn = ann[ANNOTATION.policy];
  if (workloadAnn === undefined && policyAnn === undefined) return allow(uid);
  if (workloadAnn !== undefined && (typeof workloadAnn !== 'string' || !WORKLOAD_NAME_RE.test(workloadAnn))) return deny(uid, `annotation ${ANNOTATION.workload} must be a workload name (${WORKLOAD_NAME_RE.source})`);
  if (policyAnn !== undefined && (typeof policyAnn !== 'string' || !isPolicyName(policyAnn))) return deny(uid, `annotation ${ANNOTATION.policy} must be org/app`);

  const spec = isRecord(pod.spec) ? pod.spec : undefined;
  const containers = spec && Array.isArray(spec.containers) ? spec.containers.filter(isRecord) : [];
  if (containers.length === 0) return deny(uid, 'the pod has no containers');
  const byWrapped = new Map(config.images.map((m) => [m.wrapped, m]));
  const byOriginal = new Map(config.images.map((m) => [m.original, m]));
  const mappingOf = (image: unknown): ImageMapping | undefined => (typeof image === 'string' ? (byWrapped.get(image) ?? byOriginal.get(image)) : undefined);

  const containerAnn = ann[ANNOTATION.container];
  let container: Record<string, unknown> | undefined;
  if (typeof containerAnn === 'string') {
    container = containers.find((c) => c.name === containerAnn);
    if (!container) return deny(uid, `annotation ${ANNOTATION.container} names "${containerAnn}", which is not a container of the pod`);
  } else if (containers.length === 1) {
    container = containers[0];
  } else {
    const known = containers.filter((c) => mappingOf(c.image));
    if (known.length !== 1) return deny(uid, `the pod has several containers (${containers.map((c) => String(c.name)).join(', ')}); name the Cocoon one with annotation ${ANNOTATION.container}`);
    container = known[0];
  }
  const c = container as Record<string, unknown>;
  const imageAnn = ann[ANNOTATION.image];
  let mapping: ImageMapping | undefined;
  if (imageAnn !== undefined) {
    mapping = typeof imageAnn === 'string' ? byWrapped.get(imageAnn) : undefined;
    if (!mapping) return deny(uid, `annotation ${ANNOTATION.image} names ${String(imageAnn)}, which is not a wrapped image listed in the webhook configuration`);
    if (c.image !== mapping.wrapped && c.image !== mapping.original) return deny(uid, `container ${String(c.name)} runs image ${String(c.image)}, which is neither ${mapping.wrapped} nor its original ${mapping.original}`);
  } else {
    mapping = mappingOf(c.image);
    if (!mapping) {
      return deny(uid, `container ${String(c.name)} would run image ${String(c.image)} under a Cocoon policy, but it is not a wrapped image: wrap it with \`cocoon wrap\` and map it in the webhook configuration (images: original → wrapped@sha256)`);
    }
  }
  const policy = (policyAnn as string | undefined) ?? mapping.policy;
  const workload = (workloadAnn as string | undefined) ?? mapping.workload;
  if (!policy) return deny(uid, `annotation ${ANNOTATION.policy} is required (no policy is mapped to ${mapping.wrapped})`);
  if (!workload) return deny(uid, `annotation ${ANNOTATION.workload} is required (no workload is mapped to ${mapping.wrapped})`);
  if (mapping.policy && mapping.policy !== policy) return deny(uid, `image ${mapping.wrapped} was wrapped for policy ${mapping.policy}, not ${policy}`);
  if (mapping.workload && mapping.workload !== workload) return deny(uid, `image ${mapping.wrapped} was wrapped for workload ${mapping.workload}, not ${workload}`);

  const result = transformPod(pod, { ...config.target, image: mapping.wrapped, policy, workload, kbsUrl: config.kbsUrl, ...(config.rootSize ? { rootSize: config.rootSize } : {}) }, String(c.name));
  if (result.denials.length) return deny(uid, result.denials.join('; '), result.warnings);
  const patch = diffToPatch(pod, result.pod);
  if (patch.length === 0) return allow(uid, result.warnings);
  return { ...allow(uid, result.warnings), patchType: 'JSONPatch', patch: Buffer.from(JSON.stringify(patch)).toString('base64') };
}

/**
 * Pod UPDATE (image is one of the few mutable fields): a Cocoon pod — by its new or its old
 * annotations, so removing them does not help — may only switch to another listed wrapped
 * image. Nothing is patched on UPDATE.
 */
function admitUpdate(req: ParsedRequest, config: WebhookConfig): AdmissionResponse {
  const { uid } = req;
  const pod = req.object;
  if (!pod) throw new CocoonError('INPUT_MALFORMED', 'AdmissionReview: request.object is missing for a Pod UPDATE');
  const ann = { ...(req.oldObject ? annotationsOf(req.oldObject) : {}), ...annotationsOf(pod) };
  if (ann[ANNOTATION.workload] === undefined && ann[ANNOTATION.policy] === undefined) return allow(uid);
  const wrapped = new Set(config.images.map((m) => m.wrapped));
  const spec = isRecord(pod.spec) ? pod.spec : {};
  const containers = Array.isArray(spec.containers) ? spec.containers.filter(isRecord) : [];
  const named = typeof ann[ANNOTATION.container] === 'string' ? containers.filter((c) => c.name === ann[ANNOTATION.container]) : containers;
  const cocoon = named.length === 1 ? named : containers.filter((c) => wrapped.has(String(c.image)));
  if (cocoon.length !== 1 || !wrapped.has(String(cocoon[0]?.image))) {
    return deny(uid, `this pod runs under a Cocoon policy; an update may only set a wrapped image listed in the webhook configuration (containers: ${containers.map((c) => `${String(c.name)}=${String(c.image)}`).join(', ')})`);
  }
  return allow(uid);
}

/** Body (already JSON-parsed) → AdmissionReview response; throws INPUT_MALFORMED for a bad request. */
export function reviewAdmission(body: unknown, config: WebhookConfig): AdmissionReviewOut {
  const req = parseAdmissionReview(body);
  let response: AdmissionResponse;
  try {
    response = admit(req, config);
  } catch (err) {
    const e = asCocoonError(err);
    if (e.code === 'INTERNAL') throw e;
    // A pod the transformation cannot handle is refused with the reason, never admitted unchanged.
    response = deny(req.uid, e.message);
  }
  return { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response };
}

export interface WebhookServerOptions {
  config: WebhookConfig;
  /** PEM; with both set the app serves HTTPS. */
  tls?: { cert: string; key: string };
  logger?: boolean | { level: string };
}

function errorBody(code: string, message: string) {
  return { error: { code, message } };
}

export function buildWebhookApp(options: WebhookServerOptions): FastifyInstance {
  const { config } = options;
  const loggerOpt = options.logger === undefined ? false : options.logger;
  // requestTimeout bounds slow clients; the API server itself gives up after the webhook's timeoutSeconds (10 s).
  const common = { bodyLimit: config.maxBodyBytes, logger: loggerOpt, return503OnClosing: true, requestTimeout: 15_000, connectionTimeout: 30_000 };
  const app = (options.tls
    ? Fastify({ ...common, https: { cert: options.tls.cert, key: options.tls.key, minVersion: TLS_MIN_VERSION } })
    : Fastify(common)) as unknown as FastifyInstance;

  app.setErrorHandler((err: { code?: string; statusCode?: number; message?: string }, _request, reply) => {
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return reply.code(400).send(errorBody('INPUT_TOO_LARGE', `AdmissionReview larger than ${config.maxBodyBytes} bytes`));
    }
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return reply.code(400).send(errorBody('INPUT_MALFORMED', 'Content-Type must be application/json'));
    if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return reply.code(400).send(errorBody('INPUT_MALFORMED', 'empty body: expected an AdmissionReview'));
    if (err instanceof CocoonError) return reply.code(err.code === 'INTERNAL' ? 500 : 400).send(errorBody(err.code, err.message));
    if ((err.statusCode ?? 500) < 500) return reply.code(400).send(errorBody('INPUT_MALFORMED', `not a JSON AdmissionReview: ${err.message ?? 'bad request'}`));
    app.log.error({ err }, 'webhook internal error');
    return reply.code(500).send(errorBody('INTERNAL', 'internal error'));
  });
  app.setNotFoundHandler((_request, reply) => reply.code(404).send(errorBody('NOT_FOUND', 'unknown path; the webhook serves POST /mutate')));

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.post('/mutate', async (request, reply) => {
    const review = reviewAdmission(request.body, config);
    const r = review.response;
    request.log.info({ uid: r.uid, allowed: r.allowed, patched: Boolean(r.patch), reason: r.status?.message }, 'admission review');
    return reply.code(200).send(review);
  });
  return app;
}

export interface RunningWebhook {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

function digest(...parts: string[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex');
}

/**
 * Starts the HTTPS webhook. The certificate files are re-read every `reloadMs` (default 60 s)
 * and swapped in without a restart, so a Secret renewed by cert-manager takes effect.
 */
export async function startWebhook(options: { config: WebhookConfig; certFile: string; keyFile: string; host: string; port: number; logger?: boolean | { level: string }; reloadMs?: number }): Promise<RunningWebhook> {
  const readTls = async () => {
    try {
      return { cert: await readFile(options.certFile, 'utf8'), key: await readFile(options.keyFile, 'utf8') };
    } catch (err) {
      throw new CocoonError('IO_ERROR', `cannot read the TLS certificate or key: ${(err as Error).message}`, { cause: err });
    }
  };
  const tls = await readTls();
  const app = buildWebhookApp({ config: options.config, tls, ...(options.logger !== undefined ? { logger: options.logger } : {}) });
  try {
    await app.listen({ host: options.host, port: options.port });
  } catch (err) {
    throw new CocoonError('IO_ERROR', `cannot listen on ${options.host}:${options.port}: ${(err as Error).message}`, { cause: err });
  }
  let current = digest(tls.cert, tls.key);
  const timer = setInterval(() => {
    readTls().then(
      (next) => {
        const d = digest(next.cert, next.key);
        if (d === current) return;
        try {
          (app.server as unknown as HttpsServer).setSecureContext({ cert: next.cert, key: next.key, minVersion: TLS_MIN_VERSION });
          current = d;
          app.log.info('TLS certificate reloaded');
        } catch (err) {
          app.log.error({ err }, 'TLS certificate reload failed; keeping the previous one');
        }
      },
      (err: unknown) => app.log.error({ err }, 'TLS certificate reload failed; keeping the previous one'),
    );
  }, options.reloadMs ?? 60_000);
  timer.unref();
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    app,
    url: `https://${host}:${port}`,
    close: async () => {
      clearInterval(timer);
      await app.close();
    },
  };
}
