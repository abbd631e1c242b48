import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'yaml';
import { APP_VERSION, DEFAULT_KBS_VALUES, renderKbs, resolveKbsValues, parseImageRef } from '../../src/k8s/render-kbs.js';
import { parseManifests, toYaml, type K8sObject } from '../../src/k8s/manifest.js';
import { validateAll, validateObject } from '../../src/k8s/validate.js';
import { parseValuesYaml } from '../../src/k8s/values.js';
import { isCocoonError } from '../../src/errors.js';
import { assertGolden, CHART } from './helpers.js';

const HA_VALUES = { replicas: 3, store: { type: 'postgres', postgres: { existingSecret: 'kbs-db' } }, serviceMonitor: { enabled: true, labels: { release: 'prometheus' } } };

function find(objects: K8sObject[], kind: string): K8sObject & { spec: unknown } {
  const o = objects.find((x) => x.kind === kind);
  assert.ok(o, `no ${kind}`);
  return o as K8sObject & { spec: unknown };
}

describe('cocoon k8s render kbs', () => {
  it('default values: SQLite StatefulSet — golden file, schema-valid', async () => {
    const { objects, warnings } = renderKbs();
    assert.deepEqual(warnings, []);
    assert.deepEqual(objects.map((o) => o.kind), ['ServiceAccount', 'Service', 'StatefulSet', 'PodDisruptionBudget', 'NetworkPolicy']);
    const text = toYaml(objects);
    await assertGolden('kbs-default.yaml', text);
    // The golden text itself parses back and validates (what a user would kubectl apply).
    validateAll(parseManifests(text));
    const sts = find(objects, 'StatefulSet');
    const pod = (sts.spec as { template: { spec: { securityContext: { runAsNonRoot: boolean }; containers: Array<Record<string, { httpGet: { path: string } }>> } } }).template.spec;
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.containers[0]?.livenessProbe?.httpGet.path, '/healthz');
    assert.equal(pod.containers[0]?.readinessProbe?.httpGet.path, '/readyz');
  });

  it('HA values: Deployment of 3 on PostgreSQL, DB URL from a Secret, ServiceMonitor — golden file', async () => {
    const { objects, warnings } = renderKbs({ values: HA_VALUES, namespace: 'cocoon' });
    assert.deepEqual(objects.map((o) => o.kind), ['ServiceAccount', 'Service', 'Deployment', 'PodDisruptionBudget', 'NetworkPolicy', 'ServiceMonitor']);
    assert.match(warnings.join('\n'), /cocoon-kbs-keys/);
    const text = toYaml(objects);
    await assertGolden('kbs-ha.yaml', text);
    validateAll(parseManifests(text));
    const dep = find(objects, 'Deployment');
    const json = JSON.stringify(dep);
    assert.equal((dep.spec as { replicas: number }).replicas, 3);
    assert.ok(json.includes('"secretKeyRef":{"name":"kbs-db","key":"url"}'));
    assert.ok(!json.includes('postgres://'), 'no database URL in the manifest');
    assert.ok(json.includes('"secretName":"cocoon-kbs-keys"'));
    const np = find(objects, 'NetworkPolicy');
    assert.ok(JSON.stringify(np).includes('"port":5432'));
  });

  it('owners, sim, image digest and release name flow into args, ConfigMap and names', () => {
    const jwk = JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'x', y: 'y' });
    const { objects, warnings } = renderKbs({
      release: 'shop',
      namespace: 'kbs',
      values: { owners: { 'alice.jwk': jwk }, sim: { enabled: true, rootPem: '-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n' }, image: parseImageRef(`r.example/cocoon@sha256:${'c'.repeat(64)}`) },
    });
    assert.ok(warnings.some((w) => w.startsWith('INSECURE')));
    const cm = find(objects, 'ConfigMap') as unknown as { data: Record<string, string> };
    assert.deepEqual(Object.keys(cm.data), ['owner-alice.jwk', 'sim-root.pem']);
    const sts = JSON.stringify(find(objects, 'StatefulSet'));
    assert.ok(sts.includes('"--owner","/etc/cocoon/kbs/owner-alice.jwk","--allow-sim"'));
    assert.ok(sts.includes(`"image":"r.example/cocoon@sha256:${'c'.repeat(64)}"`));
    assert.ok(objects.every((o) => (o.metadata as { name: string; namespace: string }).name === 'shop-kbs' && (o.metadata as { namespace: string }).namespace === 'kbs'));
  });

  it('refuses inconsistent or unknown values with BAD_USAGE', () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ replicas: 3 }, /SQLite allows one replica/],
      [{ store: { type: 'postgres' } }, /existingSecret/],
      [{ replica: 2 }, /unknown key "replica"/],
      [{ image: { pullPolicy: 'Sometimes' } }, /pullPolicy/],
      [{ resources: { limits: { memory: 'lots' } } }, /not a quantity/],
      [{ owners: { 'a.jwk': JSON.stringify({ kty: 'EC', d: 'secret' }) } }, /PUBLIC key/],
      [{ sim: { enabled: true } }, /rootPem/],
      ['nope', /top level/],
    ];
    for (const [values, re] of cases) {
      assert.throws(() => renderKbs({ values }), (err: unknown) => isCocoonError(err, 'BAD_USAGE') && re.test((err as Error).message), String(re));
    }
  });

  it('values files are read strictly', () => {
    assert.deepEqual(parseValuesYaml('', 'v.yaml'), {});
    assert.deepEqual(parseValuesYaml('replicas: 2\n', 'v.yaml'), { replicas: 2 });
    for (const [text, re] of [['a: 1\na: 2\n', /v\.yaml/], ['- 1\n', /mapping of values/], ['a: &x 1\nb: *x\n', /Alias/]] as const) {
      assert.throws(() => parseValuesYaml(text, 'v.yaml'), (e: unknown) => isCocoonError(e, 'BAD_USAGE') && re.test((e as Error).message), String(re));
    }
    assert.throws(() => parseValuesYaml(`# ${'x'.repeat(1024 * 1024)}\n`, 'v.yaml'), (e: unknown) => isCocoonError(e, 'INPUT_TOO_LARGE') && /^v\.yaml: larger than/.test((e as Error).message));
  });

  it('values.yaml of the chart is exactly the renderer defaults, and Chart.yaml appVersion matches', async () => {
    const values: unknown = parse(await readFile(join(CHART, 'values.yaml'), 'utf8'));
    assert.deepEqual(values, DEFAULT_KBS_VALUES);
    assert.deepEqual(resolveKbsValues(values), DEFAULT_KBS_VALUES);
    const chart = parse(await readFile(join(CHART, 'Chart.yaml'), 'utf8')) as { appVersion: string; apiVersion: string; name: string };
    assert.equal(chart.appVersion, APP_VERSION);
    assert.equal(chart.apiVersion, 'v2');
    // Every value is documented: a comment right above the key, or above one of its parent keys.
    const lines = (await readFile(join(CHART, 'values.yaml'), 'utf8')).split('\n');
    const indent = (l: string) => l.match(/^\s*/)?.[0].length ?? 0;
    const isKey = (l: string) => /^\s*[A-Za-z][A-Za-z0-9]*:/.test(l);
    const documented = (i: number): boolean => {
      if (/^\s*#/.test(lines[i - 1] ?? '')) return true;
      const n = indent(lines[i] ?? '');
      for (let j = i - 1; j >= 0; j--) {
        const l = lines[j] ?? '';
        if (isKey(l) && indent(l) < n) return documented(j);
      }
      return false;
    };
    lines.forEach((line, i) => {
      if (isKey(line)) assert.ok(documented(i), `values.yaml line ${i + 1} (${line.trim()}) is not documented`);
    });
  });

  it('chart templates define exactly the kinds the renderer emits across all value combinations', async () => {
    const dir = join(CHART, 'templates');
    const kinds = new Set<string>();
    for (const f of (await readdir(dir)).filter((n) => n.endsWith('.yaml')).sort()) {
      const text = await readFile(join(dir, f), 'utf8');
      const found = [...text.matchAll(/^kind:\s*(\S+)\s*$/gm)].map((m) => m[1] as string);
      const apis = [...text.matchAll(/^apiVersion:\s*(\S+)\s*$/gm)].map((m) => m[1] as string);
      assert.equal(found.length, 1, `${f}: one object per template`);
      assert.match(text, /name: \{\{ include "cocoon\.fullname" \. \}\}/, `${f}: named by cocoon.fullname`);
      assert.match(text, /namespace: \{\{ \.Release\.Namespace \}\}/, `${f}: namespaced by the release`);
      kinds.add(`${apis[0]}/${found[0]}`);
    }
    const rendered = new Set<string>();
    const jwk = JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'x', y: 'y' });
    for (const values of [{}, HA_VALUES, { owners: { 'a.jwk': jwk } }]) {
      for (const o of renderKbs({ values }).objects) rendered.add(`${o.apiVersion}/${o.kind}`);
    }
    assert.deepEqual([...kinds].sort(), [...rendered].sort());
  });

  it('the validator catches schema violations (negative control)', () => {
    const { objects } = renderKbs();
    const sts = structuredClone(find(objects, 'StatefulSet')) as unknown as { spec: { replicas: unknown } } & K8sObject;
    sts.spec.replicas = 'three';
    assert.throws(() => validateObject(sts), (err: unknown) => isCocoonError(err, 'MANIFEST_INVALID') && /replicas/.test((err as Error).message));
    const bad = structuredClone(find(objects, 'Service'));
    (bad.metadata as { name: string }).name = 'Not_A_Name';
    assert.throws(() => validateObject(bad), (err: unknown) => isCocoonError(err, 'MANIFEST_INVALID'));
    assert.throws(() => validateObject({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }), (err: unknown) => isCocoonError(err, 'MANIFEST_INVALID'));
  });
});
