import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { buildWebhookApp, reviewAdmission, type AdmissionReviewOut } from '../../src/k8s/webhook.js';
import { parseWebhookConfig, type WebhookConfig } from '../../src/k8s/webhook-config.js';
import { diffToPatch, type PatchOp } from '../../src/k8s/jsonpatch.js';
import { validateObject } from '../../src/k8s/validate.js';
import { renderMutatingWebhookConfiguration, renderWebhook } from '../../src/k8s/render-webhook.js';
import { isCocoonError } from '../../src/errors.js';
import type { K8sObject } from '../../src/k8s/manifest.js';
import { applyPatch, assertGolden, fixture } from './helpers.js';
import { toYaml } from '../../src/k8s/manifest.js';

const REDIS_WRAPPED = `registry.example/shop/redis-cc@sha256:${'b'.repeat(64)}`;

type Review = { apiVersion: string; kind: string; request: { uid: string; object: Record<string, unknown> & { metadata: { annotations: Record<string, string> }; spec: { containers: Array<Record<string, unknown>> } }; kind: { kind: string; group: string; version: string }; operation: string } };

let config: WebhookConfig;
let configText: string;
let base: Review;
let app: FastifyInstance;

function review(mutate?: (r: Review) => void): Review {
  const r = structuredClone(base);
  mutate?.(r);
  return r;
}

function patchOf(out: AdmissionReviewOut): PatchOp[] {
  assert.equal(out.response.patchType, 'JSONPatch');
  return JSON.parse(Buffer.from(out.response.patch ?? '', 'base64').toString('utf8')) as PatchOp[];
}

async function post(body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  const res = await app.inject({ method: 'POST', url: '/mutate', headers, payload: body });
  return { status: res.statusCode, json: res.json() as Record<string, unknown> & { error?: { code: string; message: string } } };
}

describe('admission webhook (AdmissionReview v1 fixtures)', () => {
  before(async () => {
    configText = await fixture('webhook.yaml');
    config = parseWebhookConfig(configText, 'webhook.yaml');
    base = JSON.parse(await fixture('admission-redis.json')) as Review;
    app = buildWebhookApp({ config: { ...config, maxBodyBytes: 64 * 1024 } });
    await app.ready();
  });
  after(async () => {
    await app.close();
  });

  it('transforms an opted-in pod: JSONPatch that yields the confidential pod; a second pass is a no-op', async () => {
    const req = review();
    const out = reviewAdmission(req, config);
    assert.equal(out.apiVersion, 'admission.k8s.io/v1');
    assert.equal(out.kind, 'AdmissionReview');
    assert.equal(out.response.uid, req.request.uid);
    assert.equal(out.response.allowed, true);
    const patch = patchOf(out);
    await assertGolden('admission-redis-patch.json', JSON.stringify(patch, null, 2) + '\n');
    const pod = applyPatch(req.request.object, patch) as Review['request']['object'] & { spec: Record<string, unknown> };
    validateObject(pod as unknown as K8sObject);
    const c = pod.spec.containers[0] as Record<string, unknown>;
    assert.equal(c.image, REDIS_WRAPPED);
    assert.equal(pod.spec.runtimeClassName, 'kata-qemu-snp');
    assert.deepEqual(c.env, [
      { name: 'COCOON_KBS_URL', value: 'http://cocoon-kbs.cocoon.svc:8080' },
      { name: 'COCOON_TEE', value: 'snp' },
      { name: 'COCOON_INIT_DATA', valueFrom: { fieldRef: { fieldPath: "metadata.annotations['io.katacontainers.config.hypervisor.cc_init_data']" } } },
    ]);
    assert.equal(pod.metadata.annotations['cocoon.dev/policy'], 'shop/redis');
    // Idempotent: the patched pod comes back unchanged.
    const again = reviewAdmission(review((r) => (r.request.object = pod)), config);
    assert.equal(again.response.allowed, true);
    assert.equal(again.response.patch, undefined);
    assert.equal(again.response.patchType, undefined);
  });

  it('patches only what is missing', () => {
    const req = review();
    const full = applyPatch(req.request.object, patchOf(reviewAdmission(req, config))) as Review['request']['object'];
    const partial = structuredClone(full);
    delete partial.metadata.annotations['cocoon.dev/target'];
    (partial.spec.containers[0] as { env: unknown[] }).env.pop();
    const out = reviewAdmission(review((r) => (r.request.object = partial)), config);
    assert.deepEqual(patchOf(out), [
      { op: 'add', path: '/metadata/annotations/cocoon.dev~1target', value: 'kata-cc' },
      { op: 'add', path: '/spec/containers/0/env/-', value: { name: 'COCOON_INIT_DATA', valueFrom: { fieldRef: { fieldPath: "metadata.annotations['io.katacontainers.config.hypervisor.cc_init_data']" } } } },
    ]);
  });

  it('leaves pods without cocoon annotations alone, and non-Pod / non-CREATE requests', () => {
    for (const mutate of [
      (r: Review) => (r.request.object.metadata.annotations = {}),
      (r: Review) => (r.request.kind = { group: 'apps', version: 'v1', kind: 'Deployment' }),
      (r: Review) => (r.request.operation = 'DELETE'),
    ]) {
      const out = reviewAdmission(review(mutate), config);
      assert.deepEqual(out.response, { uid: base.request.uid, allowed: true });
    }
  });

  it('UPDATE: a Cocoon pod may only switch to a listed wrapped image, even with its annotations removed', () => {
    const created = applyPatch(base.request.object, patchOf(reviewAdmission(review(), config))) as Review['request']['object'];
    const update = (mutate: (pod: Review['request']['object']) => void) =>
      reviewAdmission(
        review((r) => {
          r.request.operation = 'UPDATE';
          (r.request as Record<string, unknown>).oldObject = structuredClone(created);
          const next = structuredClone(created);
          mutate(next);
          r.request.object = next;
        }),
        config,
      ).response;
    assert.deepEqual(update(() => undefined), { uid: base.request.uid, allowed: true });
    assert.equal(update((p) => ((p.spec.containers[0] as Record<string, unknown>).image = `registry.example/shop/web-cc@sha256:${'c'.repeat(64)}`)).allowed, true);
    const swapped = update((p) => ((p.spec.containers[0] as Record<string, unknown>).image = 'docker.io/library/redis:7'));
    assert.equal(swapped.allowed, false);
    assert.match(swapped.status?.message ?? '', /may only set a wrapped image/);
    const sneaky = update((p) => {
      p.metadata.annotations = {};
      (p.spec.containers[0] as Record<string, unknown>).image = 'evil/redis:latest';
    });
    assert.equal(sneaky.allowed, false);
    // An ordinary pod's update is none of the webhook's business.
    const plain = reviewAdmission(review((r) => ((r.request.operation = 'UPDATE'), (r.request.object.metadata.annotations = {}))), config);
    assert.equal(plain.response.allowed, true);
  });

  it('refuses an unwrapped image under a Cocoon policy, with a clear message', () => {
    const out = reviewAdmission(
      review((r) => {
        r.request.object.metadata.annotations['cocoon.dev/policy'] = 'shop/redis';
        (r.request.object.spec.containers[0] as Record<string, unknown>).image = 'docker.io/library/redis:7.2';
      }),
      config,
    );
    assert.equal(out.response.allowed, false);
    assert.equal(out.response.status?.code, 403);
    assert.match(out.response.status?.message ?? '', /would run image docker\.io\/library\/redis:7\.2 under a Cocoon policy, but it is not a wrapped image/);
    assert.equal(out.response.patch, undefined);
  });

  it('refuses policy/workload mismatches, unknown cocoon.dev/image, Secret env and command', () => {
    const cases: Array<[(r: Review) => void, RegExp]> = [
      [(r) => (r.request.object.metadata.annotations['cocoon.dev/policy'] = 'shop/other'), /wrapped for policy shop\/redis, not shop\/other/],
      [(r) => (r.request.object.metadata.annotations['cocoon.dev/workload'] = 'cache'), /wrapped for workload redis, not cache/],
      [(r) => (r.request.object.metadata.annotations['cocoon.dev/image'] = 'registry.example/x@sha256:' + 'd'.repeat(64)), /not a wrapped image listed/],
      [(r) => (r.request.object.metadata.annotations['cocoon.dev/workload'] = 'Bad Name'), /must be a workload name/],
      [(r) => ((r.request.object.spec.containers[0] as Record<string, unknown>).env = [{ name: 'PW', valueFrom: { secretKeyRef: { name: 'redis', key: 'pw' } } }]), /env PW reads Secret redis key pw/],
      [(r) => ((r.request.object.spec.containers[0] as Record<string, unknown>).command = ['redis-server']), /sets `command`/],
      [(r) => r.request.object.spec.containers.push({ name: 'side', image: 'busybox', volumeMounts: [{ name: 'cocoon-root', mountPath: '/x' }] }), /side mounts cocoon-root/],
      [(r) => ((r.request.object.spec.containers[0] as Record<string, unknown>).image = 'docker.io/library/nginx:1.25'), /annotation cocoon.dev\/policy is required/],
    ];
    for (const [mutate, re] of cases) {
      const out = reviewAdmission(review(mutate), config);
      assert.equal(out.response.allowed, false, String(re));
      assert.match(out.response.status?.message ?? '', re);
    }
  });

  it('HTTP: 200 with AdmissionReview; malformed, wrong-shape and oversized requests → 400 with a clear error', async () => {
    const ok = await post(JSON.stringify(review()));
    assert.equal(ok.status, 200);
    assert.equal((ok.json.response as { allowed: boolean }).allowed, true);

    const bad: Array<[string, string, RegExp]> = [
      ['{"apiVersion":', 'INPUT_MALFORMED', /not a JSON AdmissionReview/],
      ['[]', 'INPUT_MALFORMED', /expected a JSON object/],
      [JSON.stringify({ ...review(), apiVersion: 'admission.k8s.io/v1beta1' }), 'INPUT_MALFORMED', /apiVersion must be admission\.k8s\.io\/v1/],
      [JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' }), 'INPUT_MALFORMED', /request is missing/],
      [JSON.stringify(review((r) => (r.request.uid = ''))), 'INPUT_MALFORMED', /uid/],
      [JSON.stringify(review((r) => (r.request.operation = 'PATCH'))), 'INPUT_MALFORMED', /operation/],
      [JSON.stringify(review((r) => (r.request.object = 'pod' as never))), 'INPUT_MALFORMED', /request\.object must be an object/],
      ['{"__proto__":{"x":1}}', 'INPUT_MALFORMED', /./],
    ];
    for (const [body, code, re] of bad) {
      const res = await post(body);
      assert.equal(res.status, 400, body.slice(0, 60));
      assert.equal(res.json.error?.code, code);
      assert.match(res.json.error?.message ?? '', re);
    }
    let deep: unknown = 1;
    for (let i = 0; i < 100; i++) deep = { a: deep };
    const deepRes = await post(JSON.stringify(review((r) => ((r.request.object.metadata as Record<string, unknown>).deep = deep))));
    assert.equal(deepRes.status, 400);
    assert.match(deepRes.json.error?.message ?? '', /nested deeper/);

    const huge = JSON.stringify(review((r) => (r.request.object.metadata.annotations.padding = 'x'.repeat(70 * 1024))));
    const big = await post(huge);
    assert.equal(big.status, 400);
    assert.equal(big.json.error?.code, 'INPUT_TOO_LARGE');
    assert.match(big.json.error?.message ?? '', /larger than 65536 bytes/);

    const text = await post('hello', { 'content-type': 'text/plain' });
    assert.equal(text.status, 400);
    const empty = await post('');
    assert.equal(empty.status, 400);
    const health = await app.inject({ method: 'GET', url: '/healthz' });
    assert.equal(health.statusCode, 200);
    const nf = await app.inject({ method: 'GET', url: '/mutate' });
    assert.equal(nf.statusCode, 404);
  });

  it('webhook config is read strictly', () => {
    const cases: Array<[string, RegExp]> = [
      [configText.replace('kbsUrl:', 'kbsURL:'), /unknown key kbsURL|kbsUrl is required/],
      [configText.replace(`@sha256:${'b'.repeat(64)}`, ':7-cc'), /pinned by digest/],
      [configText.replace('name: kata-cc', 'name: tdx'), /target\.name must be one of/],
      [configText.replace('  runtimeClass: kata-qemu-snp\n', ''), /runtime-class/],
      [configText + 'maxBodyBytes: 10\n', /maxBodyBytes/],
      [configText.replace('docker.io/library/nginx:1.25', 'docker.io/library/redis:7'), /mapped twice/],
      [configText.replace('rootSize: 1Gi', 'rootSize: &r 1Gi\nalias: *r'), /Alias/],
      ['- not a mapping\n', /expected a mapping/],
    ];
    for (const [text, re] of cases) {
      assert.throws(() => parseWebhookConfig(text), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && re.test((e as Error).message), String(re));
    }
    assert.throws(() => parseWebhookConfig(`# ${'x'.repeat(1024 * 1024)}\n`), (e: unknown) => isCocoonError(e, 'INPUT_TOO_LARGE') && /larger than 1048576 bytes/.test((e as Error).message));
  });

  it('renders the webhook deployment with cert-manager (Issuer, Certificate, inject-ca-from) and without (caBundle)', async () => {
    const objects = renderWebhook({ namespace: 'cocoon', image: 'cocoon/cli:0.1.0', configYaml: configText, certManager: true });
    assert.deepEqual(objects.map((o) => o.kind), ['ServiceAccount', 'ConfigMap', 'Service', 'Deployment', 'PodDisruptionBudget', 'NetworkPolicy', 'Issuer', 'Certificate', 'MutatingWebhookConfiguration']);
    const mwc = objects.at(-1) as K8sObject & { metadata: { annotations: Record<string, string> } };
    assert.equal(mwc.metadata.annotations['cert-manager.io/inject-ca-from'], 'cocoon/cocoon-webhook');
    await assertGolden('webhook-cert-manager.yaml', toYaml(objects));
    const plain = renderMutatingWebhookConfiguration({ service: 'cocoon-webhook', namespace: 'cocoon', caBundlePem: '-----BEGIN CERTIFICATE-----\n' });
    const hook = (plain.webhooks as Array<{ clientConfig: { caBundle: string }; failurePolicy: string; namespaceSelector: unknown }>)[0];
    assert.equal(Buffer.from(hook?.clientConfig.caBundle ?? '', 'base64').toString(), '-----BEGIN CERTIFICATE-----\n');
    assert.equal(hook?.failurePolicy, 'Fail');
    assert.deepEqual(hook?.namespaceSelector, { matchLabels: { 'cocoon.dev/inject': 'enabled' } });
  });

  it('JSON patch: applying diff(a, b) to a gives b', () => {
    const pairs: Array<[unknown, unknown]> = [
      [{ a: 1, b: [1, 2, 3], c: { d: 'x' } }, { a: 2, b: [1, 5], c: { e: 'y' }, 'f/g~h': null }],
      [{ list: [] }, { list: [{ x: 1 }, { y: 2 }] }],
      [{ x: { y: [1, { z: 1 }] } }, { x: { y: [1, { z: 2 }, 3] } }],
    ];
    for (const [a, b] of pairs) assert.deepEqual(applyPatch(a, diffToPatch(a, b)), b);
  });
});
