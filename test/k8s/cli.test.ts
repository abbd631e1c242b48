// `cocoon k8s render …` as a user runs it: a real CLI process (src/cli/main.ts through tsx).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { parseManifests, toYaml } from '../../src/k8s/manifest.js';
import { renderKbs } from '../../src/k8s/render-kbs.js';
import { validateAll } from '../../src/k8s/validate.js';
import { cocoon } from '../kbs/cli-runner.js';
import { HERE, WRAPPED } from './helpers.js';

describe('cocoon k8s render (CLI)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cocoon-k8s-cli-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('render kbs: flags over a values file give what the renderer gives', async () => {
    await writeFile(join(dir, 'values.yaml'), 'serviceMonitor:\n  enabled: true\n  labels: { release: prometheus }\n');
    const r = await cocoon(['k8s', 'render', 'kbs', '-f', join(dir, 'values.yaml'), '--replicas', '3', '--postgres-secret', 'kbs-db', '--namespace', 'cocoon']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /cocoon-kbs-keys/);
    const expected = renderKbs({ namespace: 'cocoon', values: { replicas: 3, store: { type: 'postgres', postgres: { existingSecret: 'kbs-db' } }, serviceMonitor: { enabled: true, labels: { release: 'prometheus' } } } });
    assert.equal(r.stdout, toYaml(expected.objects));
    assert.equal(r.stdout, await readFile(join(HERE, 'golden', 'kbs-ha.yaml'), 'utf8'));

    const bad = await cocoon(['k8s', 'render', 'kbs', '--sqlite', '--replicas', '2']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /\[BAD_USAGE\]/);
  });

  it('render workload: manifests to -o, policy snippet to --policy-out, warnings on stderr', async () => {
    const out = join(dir, 'app-cc.yaml');
    const snippet = join(dir, 'snippet.yaml');
    const r = await cocoon(['k8s', 'render', 'workload', '-f', join(HERE, 'fixtures', 'app.yaml'), '--image', WRAPPED, '--policy', 'shop/web', '--workload', 'web', '--kbs', 'http://cocoon-kbs.cocoon.svc:8080', '--target', 'aks-cvm', '--tpm-resource', 'example.com/tpm', '--root-size', '2Gi', '-o', out, '--policy-out', snippet]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /env DB_PASSWORD from Secret db key password → policy secret "db-password"/);
    const objects = parseManifests(await readFile(out, 'utf8'));
    validateAll(objects);
    assert.equal(await readFile(out, 'utf8'), await readFile(join(HERE, 'golden', 'workload-aks-cvm.yaml'), 'utf8'));
    const s = parse(await readFile(snippet, 'utf8')) as { secrets: Record<string, unknown> };
    assert.deepEqual(Object.keys(s.secrets), ['db-password', 'web-config-FEATURE_X', 'web-config-LOG_LEVEL']);

    const json = await cocoon(['k8s', 'render', 'workload', '-f', join(HERE, 'fixtures', 'app.yaml'), '--image', WRAPPED, '--policy', 'shop/web', '--workload', 'web', '--kbs', 'http://kbs:8080', '--target', 'sim', '--json']);
    assert.equal(json.code, 0, json.stderr);
    const doc = JSON.parse(json.stdout) as { warnings: string[]; conversions: unknown[] };
    assert.ok(doc.warnings.some((w) => w.startsWith('INSECURE')));
    assert.equal(doc.conversions.length, 3);

    const missing = await cocoon(['k8s', 'render', 'workload', '-f', join(dir, 'nope.yaml'), '--image', WRAPPED, '--policy', 'shop/web', '--workload', 'web', '--kbs', 'http://kbs:8080', '--target', 'sim']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /\[IO_ERROR\]/);
  });
});
