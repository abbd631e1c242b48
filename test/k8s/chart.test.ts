// The Helm chart's templates, rendered by a small Go-template interpreter (gotemplate.ts —
// no helm binary on these machines), give the same objects as `cocoon k8s render kbs`
// for the same values. Objects are compared as parsed YAML (key order aside).
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { DEFAULT_KBS_VALUES, renderKbs } from '../../src/k8s/render-kbs.js';
import { deepMerge } from '../../src/k8s/values.js';
import { validateAll } from '../../src/k8s/validate.js';
import type { K8sObject } from '../../src/k8s/manifest.js';
import { GoTemplates } from './gotemplate.js';
import { CHART } from './helpers.js';

const JWK = JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'AAAA', y: 'BBBB' });
const SCENARIOS: Array<{ name: string; release: string; namespace: string; values: Record<string, unknown> }> = [
  { name: 'default', release: 'cocoon', namespace: 'cocoon', values: {} },
  { name: 'HA', release: 'cocoon', namespace: 'cocoon', values: { replicas: 3, store: { type: 'postgres', postgres: { existingSecret: 'kbs-db' } }, serviceMonitor: { enabled: true, labels: { release: 'prometheus' } } } },
  {
    name: 'everything set',
    release: 'shop',
    namespace: 'kbs',
    values: {
      fullnameOverride: 'broker',
      image: { repository: 'registry.example/cocoon', digest: `sha256:${'e'.repeat(64)}` },
      imagePullSecrets: ['regcred'],
      replicas: 2,
      store: { type: 'postgres', postgres: { existingSecret: 'db', secretKey: 'dsn', port: 6432 } },
      keys: { existingSecret: 'kbs-keys' },
      owners: { 'bob.jwk': JWK, 'alice.jwk': JWK },
      sim: { enabled: true, rootPem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' },
      logLevel: 'debug',
      service: { type: 'LoadBalancer', port: 443 },
      podDisruptionBudget: { maxUnavailable: 2 },
      networkPolicy: { ingressFrom: [{ namespaceSelector: { matchLabels: { 'cocoon.dev/inject': 'enabled' } } }], restrictEgress: false },
      podAnnotations: { 'example.com/team': 'shop' },
      nodeSelector: { 'kubernetes.io/os': 'linux' },
      tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'kbs', effect: 'NoSchedule' }],
      affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] }] } } },
    },
  },
  { name: 'sqlite with storage class, no PDB/NetworkPolicy', release: 'dev', namespace: 'dev', values: { store: { sqlite: { size: '5Gi', storageClass: 'managed-csi' } }, podDisruptionBudget: { enabled: false }, networkPolicy: { enabled: false }, image: { tag: '0.2.0' } } },
];

describe('Helm chart ≡ cocoon k8s render kbs', () => {
  const templates = new GoTemplates();
  let files: string[] = [];
  let chart: { appVersion: string; name: string; version: string };
  let defaults: Record<string, unknown>;

  before(async () => {
    const dir = join(CHART, 'templates');
    const names = (await readdir(dir)).sort();
    for (const n of names) if (n.endsWith('.tpl') || n.endsWith('.yaml')) templates.add(n, await readFile(join(dir, n), 'utf8'));
    files = names.filter((n) => n.endsWith('.yaml'));
    chart = parse(await readFile(join(CHART, 'Chart.yaml'), 'utf8')) as typeof chart;
    defaults = parse(await readFile(join(CHART, 'values.yaml'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(defaults, DEFAULT_KBS_VALUES);
  });

  function helmTemplate(release: string, namespace: string, values: Record<string, unknown>): K8sObject[] {
    const root = {
      Values: deepMerge(structuredClone(defaults), values),
      Release: { Name: release, Namespace: namespace, Service: 'Helm' },
      Chart: { Name: chart.name, Version: chart.version, AppVersion: chart.appVersion },
    };
    const out: K8sObject[] = [];
    for (const f of files) {
      const text = templates.render(f, root);
      for (const doc of parseAllDocuments(text)) {
        assert.equal(doc.errors.length, 0, `${f}: ${doc.errors[0]?.message}\n${text}`);
        const obj = doc.toJS() as K8sObject | null;
        if (obj) out.push(obj);
      }
    }
    return out;
  }

  const key = (o: K8sObject) => `${o.apiVersion}/${o.kind}`;

  for (const s of SCENARIOS) {
    it(`${s.name}: same objects`, () => {
      const fromChart = helmTemplate(s.release, s.namespace, s.values);
      validateAll(fromChart);
      const fromRenderer = renderKbs({ release: s.release, namespace: s.namespace, values: s.values }).objects;
      assert.deepEqual(fromChart.map(key).sort(), fromRenderer.map(key).sort());
      for (const obj of fromRenderer) {
        const twin = fromChart.find((o) => key(o) === key(obj));
        assert.deepEqual(twin, obj, `${key(obj)} differs between chart and renderer`);
      }
    });
  }

  it('negative control: a one-character template change is detected; unknown functions fail loudly', async () => {
    const altered = new GoTemplates();
    const dir = join(CHART, 'templates');
    let changed = false;
    for (const n of (await readdir(dir)).sort()) {
      if (!n.endsWith('.tpl') && !n.endsWith('.yaml')) continue;
      const text = await readFile(join(dir, n), 'utf8');
      const edited = n === '_helpers.tpl' ? text.replace('periodSeconds: 5', 'periodSeconds: 6') : text;
      changed ||= edited !== text;
      altered.add(n, edited);
    }
    assert.ok(changed, '_helpers.tpl no longer has "periodSeconds: 5": pick another one-character change');
    const root = { Values: structuredClone(defaults), Release: { Name: 'cocoon', Namespace: 'cocoon', Service: 'Helm' }, Chart: { Name: chart.name, Version: chart.version, AppVersion: chart.appVersion } };
    const expected = renderKbs().objects.find((o) => o.kind === 'StatefulSet');
    // the same root through the unaltered templates matches, so only the edit can make the difference
    assert.deepEqual(parse(templates.render('statefulset.yaml', root)), expected);
    const sts = parse(altered.render('statefulset.yaml', root)) as K8sObject;
    assert.notDeepEqual(sts, expected);
    const t = new GoTemplates();
    t.add('x.yaml', '{{ lookup "v1" "Secret" "a" "b" }}');
    assert.throws(() => t.render('x.yaml', root), /unsupported function lookup/);
  });

  it('values.schema.json (what helm checks values against) accepts every scenario and refuses what the renderer refuses', async () => {
    const { Compile } = await import('typebox/compile');
    const schema = JSON.parse(await readFile(join(CHART, 'values.schema.json'), 'utf8')) as unknown;
    const check = Compile(schema as never);
    for (const s of SCENARIOS) assert.ok(check.Check(deepMerge(structuredClone(defaults), s.values)), s.name);
    const bad: Array<Record<string, unknown>> = [
      { replica: 2 },
      { image: { pullPolicy: 'Sometimes' } },
      { store: { type: 'mysql' } },
      { resources: { limits: { memory: 'lots' } } },
      { replicas: 0 },
      { service: { port: '8080' } },
      { serviceMonitor: { interval: 'often' } },
    ];
    for (const values of bad) {
      assert.equal(check.Check(deepMerge(structuredClone(defaults), values)), false, JSON.stringify(values));
      assert.throws(() => renderKbs({ values }), /values:/, JSON.stringify(values));
    }
  });

  it('the chart refuses what the renderer refuses', () => {
    assert.throws(() => helmTemplate('cocoon', 'cocoon', { replicas: 3 }), /SQLite allows one replica/);
    assert.throws(() => helmTemplate('cocoon', 'cocoon', { store: { type: 'postgres' } }), /existingSecret/);
    assert.throws(() => helmTemplate('cocoon', 'cocoon', { sim: { enabled: true } }), /rootPem/);
  });
});
