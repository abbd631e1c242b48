import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseManifests, toYaml, type K8sObject } from '../../src/k8s/manifest.js';
import { transformManifests, transformPod, type TransformOptions } from '../../src/k8s/transform.js';
import { validateAll } from '../../src/k8s/validate.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { isCocoonError } from '../../src/errors.js';
import { assertGolden, fixture, WRAPPED } from './helpers.js';

const BASE: TransformOptions = { image: WRAPPED, policy: 'shop/web', workload: 'web', kbsUrl: 'http://cocoon-kbs.cocoon.svc:8080', target: 'aks-cvm' };

type Pod = { metadata: { annotations: Record<string, string> }; spec: Record<string, unknown> & { containers: Array<Record<string, unknown>>; volumes: Array<Record<string, unknown>> } };

function podOf(obj: K8sObject): Pod {
  const spec = obj.spec as Record<string, unknown>;
  if (obj.kind === 'Pod') return obj as unknown as Pod;
  if (obj.kind === 'CronJob') return ((spec.jobTemplate as Record<string, unknown>).spec as Record<string, unknown>).template as Pod;
  return spec.template as Pod;
}

function env(pod: Pod, container = 0): Record<string, unknown> {
  return Object.fromEntries(((pod.spec.containers[container]?.env ?? []) as Array<{ name: string; value?: string }>).map((e) => [e.name, e.value]));
}

async function app(): Promise<K8sObject[]> {
  return parseManifests(await fixture('app.yaml'), 'app.yaml');
}

describe('workload transformation', () => {
  it('aks-cvm (SNP vTPM): wrapped image, launcher env, memory root, node pool selection — golden', async () => {
    const result = transformManifests(await app(), { ...BASE, tpmResource: 'example.com/tpm', rootSize: '2Gi' });
    validateAll(result.objects);
    const text = toYaml(result.objects);
    await assertGolden('workload-aks-cvm.yaml', text);
    const dep = result.objects.find((o) => o.kind === 'Deployment') as K8sObject;
    const pod = podOf(dep);
    const c = pod.spec.containers[0] as Record<string, unknown>;
    assert.equal(c.image, WRAPPED);
    assert.deepEqual(env(pod), { COCOON_KBS_URL: BASE.kbsUrl, COCOON_TEE: 'az-snp-vtpm' });
    assert.equal(c.args, undefined);
    assert.equal(c.envFrom, undefined);
    assert.deepEqual(pod.spec.volumes.find((v) => v.name === 'cocoon-root'), { name: 'cocoon-root', emptyDir: { medium: 'Memory', sizeLimit: '2Gi' } });
    assert.deepEqual(pod.spec.nodeSelector, { 'cocoon.dev/tee': 'az-snp-vtpm' });
    assert.equal((c.resources as { limits: Record<string, string> }).limits['example.com/tpm'], '1');
    assert.equal((c.securityContext as { privileged?: boolean }).privileged, undefined);
    assert.equal(pod.metadata.annotations['cocoon.dev/workload'], 'web');
    // The plaintext Secret is gone; the ConfigMap and Service stay.
    assert.deepEqual(result.objects.map((o) => o.kind), ['ConfigMap', 'Deployment', 'Service']);
    assert.ok(!text.includes('not-a-real-password'));
  });

  it('Secret/ConfigMap env becomes policy secrets, with a warning each and a policy snippet that parses', async () => {
    const result = transformManifests(await app(), BASE);
    assert.deepEqual(
      result.conversions.map((c) => `${c.env}<-${c.from.kind}/${c.from.name}/${c.from.key}=${c.policySecret}`),
      ['DB_PASSWORD<-Secret/db/password=db-password', 'FEATURE_X<-ConfigMap/web-config/FEATURE_X=web-config-FEATURE_X', 'LOG_LEVEL<-ConfigMap/web-config/LOG_LEVEL=web-config-LOG_LEVEL'],
    );
    for (const c of result.conversions) assert.ok(result.warnings.some((w) => w.includes(`env ${c.env} from ${c.from.kind} ${c.from.name}`)), c.env);
    assert.ok(result.warnings.some((w) => w.includes('POD_IP') && w.includes('downward API')));
    const snippet = result.policySnippet;
    assert.ok(snippet);
    assert.deepEqual(snippet.workloads.web?.env, {
      DB_PASSWORD: '{{ secret.db-password }}',
      FEATURE_X: '{{ secret.web-config-FEATURE_X }}',
      LOG_LEVEL: '{{ secret.web-config-LOG_LEVEL }}',
      MODE: 'production',
    });
    assert.deepEqual(snippet.workloads.web?.args, ['nginx', '-g', 'daemon off;']);
    await assertGolden('policy-snippet.yaml', toYaml([snippet]));
    // Completed with an accept rule, the snippet is a valid policy.
    const policy = { name: 'shop/web', ...snippet, workloads: { web: { accept: [{ tee: ['az-snp-vtpm'], measurement: 'a'.repeat(96) }], ...snippet.workloads.web } } };
    const parsed = parsePolicy(toYaml([policy]), { file: 'snippet.yaml' });
    assert.equal(parsed.name, 'shop/web');
  });

  it('kata-cc: runtimeClassName and the TEE from the runtime class; required flag', async () => {
    const snp = transformManifests(await app(), { ...BASE, target: 'kata-cc', runtimeClass: 'kata-qemu-snp' });
    const pod = podOf(snp.objects.find((o) => o.kind === 'Deployment') as K8sObject);
    assert.equal(pod.spec.runtimeClassName, 'kata-qemu-snp');
    assert.equal(env(pod).COCOON_TEE, 'snp');
    assert.equal(pod.spec.nodeSelector, undefined);
    const tdx = transformManifests(await app(), { ...BASE, target: 'kata-cc', runtimeClass: 'kata-qemu-tdx' });
    assert.equal(env(podOf(tdx.objects.find((o) => o.kind === 'Deployment') as K8sObject)).COCOON_TEE, 'tdx');
    const other = transformManifests(await app(), { ...BASE, target: 'kata-cc', runtimeClass: 'my-kata' });
    const otherEnv = env(podOf(other.objects.find((o) => o.kind === 'Deployment') as K8sObject));
    assert.equal(otherEnv.COCOON_TEE, undefined, 'unknown runtime class: detect, never sim');
    // A COCOON_TEE=sim left in the input does not survive a non-sim target.
    const simmed = await app();
    const dep = simmed.find((o) => o.kind === 'Deployment') as K8sObject;
    (podOf(dep).spec.containers[0]?.env as Array<Record<string, unknown>>).push({ name: 'COCOON_TEE', value: 'sim' });
    for (const opts of [{ runtimeClass: 'my-kata' }, { runtimeClass: 'kata-qemu-snp' }]) {
      const r = transformManifests(simmed, { ...BASE, target: 'kata-cc', ...opts });
      assert.notEqual(env(podOf(r.objects.find((o) => o.kind === 'Deployment') as K8sObject)).COCOON_TEE, 'sim');
    }
    assert.throws(() => transformManifests([], { ...BASE, target: 'kata-cc' }), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && /runtime-class/.test((e as Error).message));
    await assertGolden('workload-kata-cc.yaml', toYaml(snp.objects));
  });

  it('aks-cvm TDX without a TPM device plugin: hostPath /dev/tpmrm0, privileged, loud warning', async () => {
    const r = transformManifests(await app(), { ...BASE, vtpm: 'tdx' });
    const pod = podOf(r.objects.find((o) => o.kind === 'Deployment') as K8sObject);
    assert.equal(env(pod).COCOON_TEE, 'az-tdx-vtpm');
    assert.ok(pod.spec.volumes.some((v) => JSON.stringify(v) === JSON.stringify({ name: 'cocoon-vtpm', hostPath: { path: '/dev/tpmrm0', type: 'CharDevice' } })));
    assert.equal((pod.spec.containers[0]?.securityContext as { privileged: boolean }).privileged, true);
    assert.ok(r.warnings.some((w) => w.includes('privileged')));
  });

  it('sgx: EPC resources (Intel or AKS plugin) and the AESM socket', async () => {
    const intel = transformManifests(await app(), { ...BASE, target: 'sgx' });
    const ip = podOf(intel.objects.find((o) => o.kind === 'Deployment') as K8sObject);
    const limits = (ip.spec.containers[0]?.resources as { limits: Record<string, string>; requests: Record<string, string> });
    assert.equal(limits.limits['sgx.intel.com/epc'], '64Mi');
    assert.equal(limits.requests['sgx.intel.com/epc'], '64Mi');
    assert.equal(env(ip).COCOON_TEE, 'sgx');
    assert.ok(ip.spec.volumes.some((v) => (v.hostPath as { path?: string } | undefined)?.path === '/var/run/aesmd'));
    validateAll(intel.objects);
    const aks = transformManifests(await app(), { ...BASE, target: 'sgx', sgxPlugin: 'aks', sgxEpc: '128' });
    const ap = podOf(aks.objects.find((o) => o.kind === 'Deployment') as K8sObject);
    assert.equal((ap.spec.containers[0]?.resources as { limits: Record<string, string> }).limits['kubernetes.azure.com/sgx_epc_mem_in_MiB'], '128');
    assert.throws(() => transformManifests(aks.objects, { ...BASE, target: 'sgx', sgxPlugin: 'aks', sgxEpc: '64Mi' }), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
    await assertGolden('workload-sgx.yaml', toYaml(intel.objects));
  });

  it('sim only when asked: INSECURE warning and annotation; no other target ever sets COCOON_TEE=sim', async () => {
    const sim = transformManifests(await app(), { ...BASE, target: 'sim' });
    const pod = podOf(sim.objects.find((o) => o.kind === 'Deployment') as K8sObject);
    assert.equal(env(pod).COCOON_TEE, 'sim');
    assert.ok(sim.warnings.some((w) => w.startsWith('INSECURE')));
    assert.equal(pod.metadata.annotations['cocoon.dev/insecure'], 'INSECURE: simulated TEE');
    for (const opts of [{ target: 'aks-cvm' as const }, { target: 'kata-cc' as const, runtimeClass: 'x-kata' }, { target: 'sgx' as const }]) {
      const r = transformManifests(await app(), { ...BASE, ...opts });
      assert.ok(!toYaml(r.objects).includes('sim'), `${opts.target} mentions sim`);
    }
  });

  it('every workload kind; all outputs schema-valid; idempotent', async () => {
    const input = parseManifests(await fixture('kinds.yaml'));
    for (const obj of input) {
      const select = `${obj.kind}/${(obj.metadata as { name: string }).name}`;
      const once = transformManifests(input, { ...BASE, select, target: 'kata-cc', runtimeClass: 'kata-qemu-tdx' });
      validateAll(once.objects);
      const t = once.objects.find((o) => `${o.kind}/${(o.metadata as { name: string }).name}` === select) as K8sObject;
      const pod = podOf(t);
      assert.equal(pod.spec.containers[0]?.image, WRAPPED, select);
      assert.equal(pod.spec.runtimeClassName, 'kata-qemu-tdx');
      const twice = transformManifests(once.objects, { ...BASE, select, target: 'kata-cc', runtimeClass: 'kata-qemu-tdx' });
      assert.deepEqual(twice.objects, once.objects, `${select}: transform is idempotent`);
    }
    const app2 = transformManifests(await app(), BASE);
    assert.deepEqual(transformManifests(app2.objects, BASE).objects, app2.objects);
  });

  it('refuses what it cannot transform safely', async () => {
    const input = await app();
    const dep = structuredClone(input[2] as K8sObject);
    const c = podOf(dep).spec.containers[0] as Record<string, unknown>;
    c.command = ['/bin/sh', '-c', 'run'];
    assert.throws(() => transformManifests([dep], BASE), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && /command/.test((e as Error).message));

    assert.throws(() => transformManifests([input[2] as K8sObject], BASE), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && /web-config is not in the input/.test((e as Error).message));
    const kinds = parseManifests(await fixture('kinds.yaml'));
    assert.throws(() => transformManifests(kinds, BASE), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && /--select/.test((e as Error).message));
    assert.throws(() => transformManifests(input, { ...BASE, policy: 'Shop' }), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
    assert.throws(() => transformManifests(input, { ...BASE, target: 'tdx' as never }), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && /--target/.test((e as Error).message));

    const twoContainers = structuredClone(kinds[4] as K8sObject);
    const spec = twoContainers.spec as { containers: Array<Record<string, unknown>> };
    spec.containers.push({ name: 'sidecar', image: 'busybox', volumeMounts: [{ name: 'cocoon-root', mountPath: '/peek' }] });
    assert.throws(() => transformManifests([twoContainers], BASE), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && /--container/.test((e as Error).message));
    assert.throws(() => transformManifests([twoContainers], { ...BASE, container: 'app' }), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && /sidecar mounts cocoon-root/.test((e as Error).message));
  });

  it('webhook mode refuses Secret-backed env instead of converting it', () => {
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' }, spec: { containers: [{ name: 'a', image: 'x', env: [{ name: 'K', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }] }] } };
    const r = transformPod(pod, BASE);
    assert.equal(r.denials.length, 1);
    assert.match(r.denials[0] ?? '', /env K reads Secret s key k/);
  });

  it('parses multi-document YAML strictly', () => {
    assert.equal(parseManifests('---\n---\napiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n').length, 1);
    assert.throws(() => parseManifests('apiVersion: v1\nkind: Pod\nkind: Pod\n'), (e: unknown) => isCocoonError(e, 'INPUT_MALFORMED') && /document 1/.test((e as Error).message));
    assert.throws(() => parseManifests('- 1\n'), (e: unknown) => isCocoonError(e, 'INPUT_MALFORMED'));
    assert.throws(() => parseManifests('kind: Pod\n'), (e: unknown) => isCocoonError(e, 'INPUT_MALFORMED') && /apiVersion/.test((e as Error).message));
    assert.throws(() => parseManifests('x'.repeat(100), 'big', { maxBytes: 10 }), (e: unknown) => isCocoonError(e, 'INPUT_TOO_LARGE'));
    const bomb = `apiVersion: v1\nkind: X\na: &a [1, 2]\nb: [${Array.from({ length: 60 }, () => '*a').join(', ')}]\n`;
    assert.throws(() => parseManifests(bomb), (e: unknown) => isCocoonError(e, 'INPUT_MALFORMED'));
  });
});

describe('validation of passed-through objects', () => {
  it('any built-in kind is validated on demand; CRDs are reported as unchecked', async () => {
    const { validateAnyKind } = await import('../../src/k8s/validate.js');
    const ingress = { apiVersion: 'networking.k8s.io/v1', kind: 'Ingress', metadata: { name: 'web' }, spec: { rules: [{ host: 'shop.example', http: { paths: [{ path: '/', pathType: 'Prefix', backend: { service: { name: 'web', port: { number: 80 } } } }] } }] } };
    const hpa = { apiVersion: 'autoscaling/v2', kind: 'HorizontalPodAutoscaler', metadata: { name: 'web' }, spec: { scaleTargetRef: { apiVersion: 'apps/v1', kind: 'Deployment', name: 'web' }, maxReplicas: 5 } };
    const crd = { apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' }, spec: {} };
    assert.deepEqual((await validateAnyKind([ingress, hpa, crd])).unchecked, ['example.com/v1/Widget Widget/w']);
    const bad = { ...hpa, spec: { ...hpa.spec, maxReplicas: 'five' } };
    await assert.rejects(validateAnyKind([bad]), (e: unknown) => isCocoonError(e, 'MANIFEST_INVALID') && /maxReplicas/.test((e as Error).message));
    // Odd apiVersions never become module paths: they are reported, not imported.
    assert.equal((await validateAnyKind([{ apiVersion: '../../x', kind: 'Pod', metadata: { name: 'p' } }])).unchecked.length, 1);
  });
});
