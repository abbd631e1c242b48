// End to end: `cocoon k8s webhook-cert` makes a CA + serving cert, `cocoon k8s webhook` runs as
// a real process on 127.0.0.1 with it (the CLI itself: src/cli/main.ts through tsx), and real
// AdmissionReview JSON goes over HTTPS trusting only the generated CA.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PatchOp } from '../../src/k8s/jsonpatch.js';
import { parseManifests } from '../../src/k8s/manifest.js';
import { cocoon } from '../kbs/cli-runner.js';
import { HERE, ROOT, applyPatch } from './helpers.js';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');

function post(url: string, body: string, ca: string | undefined): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}/mutate`, { method: 'POST', ca, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: 10_000 }, (res) => {
      let data = '';
      res.on('data', (d: Buffer) => (data += d.toString()));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, json: JSON.parse(data) as Record<string, unknown> });
        } catch (err) {
          reject(err as Error);
        }
      });
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

describe('webhook e2e: real process, HTTPS with a generated CA', () => {
  let dir: string;
  let child: ChildProcess | undefined;
  let url = '';
  let stderr = '';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cocoon-webhook-'));
  });
  after(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('webhook-cert writes a CA + serving cert and prints the Secret and the MutatingWebhookConfiguration with caBundle', async () => {
    const r = await cocoon(['k8s', 'webhook-cert', '--service', 'cocoon-webhook', '--namespace', 'cocoon', '--ip', '127.0.0.1', '--out-dir', dir]);
    assert.equal(r.code, 0, r.stderr);
    const objects = parseManifests(r.stdout);
    assert.deepEqual(objects.map((o) => o.kind), ['Secret', 'MutatingWebhookConfiguration']);
    const ca = await readFile(join(dir, 'ca.crt'), 'utf8');
    const hook = (objects[1]?.webhooks as Array<{ clientConfig: { caBundle: string } }>)[0];
    assert.equal(Buffer.from(hook?.clientConfig.caBundle ?? '', 'base64').toString(), ca);
    assert.match(r.stderr, /private key/);
  });

  it('serves AdmissionReview over HTTPS: patch for an opted-in pod, 400 for malformed input', async () => {
    child = spawn(process.execPath, ['--import', 'tsx', CLI, 'k8s', 'webhook', '--tls-cert', join(dir, 'tls.crt'), '--tls-key', join(dir, 'tls.key'), '--config', join(HERE, 'fixtures', 'webhook.yaml'), '--listen', '127.0.0.1:0', '--log-level', 'warn'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const proc = child;
    url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`webhook did not start: ${stderr}`)), 30_000);
      proc.stderr?.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = stderr.match(/listening on (https:\/\/127\.0\.0\.1:\d+)/);
        if (m?.[1]) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      proc.on('exit', (code) => reject(new Error(`webhook exited ${code}: ${stderr}`)));
    });
    const ca = await readFile(join(dir, 'ca.crt'), 'utf8');
    const reviewText = await readFile(join(HERE, 'fixtures', 'admission-redis.json'), 'utf8');
    const review = JSON.parse(reviewText) as { request: { uid: string; object: unknown } };

    const res = await post(url, reviewText, ca);
    assert.equal(res.status, 200);
    const response = res.json.response as { uid: string; allowed: boolean; patchType: string; patch: string };
    assert.equal(response.uid, review.request.uid);
    assert.equal(response.allowed, true);
    assert.equal(response.patchType, 'JSONPatch');
    const patch = JSON.parse(Buffer.from(response.patch, 'base64').toString()) as PatchOp[];
    const pod = applyPatch(review.request.object, patch) as { spec: { runtimeClassName: string; containers: Array<{ image: string }>; volumes: Array<{ name: string; emptyDir?: { medium: string } }> } };
    assert.equal(pod.spec.containers[0]?.image, `registry.example/shop/redis-cc@sha256:${'b'.repeat(64)}`);
    assert.equal(pod.spec.runtimeClassName, 'kata-qemu-snp');
    assert.deepEqual(pod.spec.volumes.find((v) => v.name === 'cocoon-root')?.emptyDir, { medium: 'Memory', sizeLimit: '1Gi' });

    const bad = await post(url, '{"kind":', ca);
    assert.equal(bad.status, 400);
    assert.equal((bad.json.error as { code: string }).code, 'INPUT_MALFORMED');

    // A client that does not trust the generated CA cannot talk to it.
    await assert.rejects(post(url, reviewText, undefined), /self[- ]signed|unable to verify|certificate/i);

    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    proc.kill('SIGTERM');
    assert.equal(await exited, 0);
  });
});
