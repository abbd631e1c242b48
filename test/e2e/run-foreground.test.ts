/**
 * `cocoon run` in the foreground under runc: the app's exit status comes back, and a refused
 * launch exits 1 with the launcher's reason while the app never starts.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { wrapImage } from '../../src/image/wrap.js';
import { distCli, hasCommand, isRoot, launcherDir, testImage } from '../helpers/env.js';

const execFileAsync = promisify(execFile);
const image = isRoot && hasCommand('runc') ? testImage('redis') : { skip: 'needs root and runc' };
const skip = 'skip' in image ? image.skip : false;

let work: string;
let kbs: RunningKbs;
let owner: OwnerClient;
let measurement: string;
const kek = randomBytes(32);

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-run-'));
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  kbs = await startKbs({ dataDir: join(work, 'kbs'), port: 0, allowSim: true, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [sim.rootPem] }), logger: false });
  owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
  ({ measurement } = await wrapImage({ source: { layoutDir: (image as { layout: string }).layout, ref: 'redis:7' }, dest: { layoutDir: join(work, 'cc') }, launcherDir, policy: 'test/fg', workload: 'redis', kek }));
});

after(async () => {
  if (skip) return;
  await kbs?.close();
  await rm(work, { recursive: true, force: true });
});

async function run(): Promise<{ code: number; stdout: string; stderr: string }> {
  return execFileAsync(process.execPath, [distCli, 'run', join(work, 'cc'), '--kbs', kbs.url, '--tee', 'sim', '--config-dir', join(work, 'cfg'), '--kbs-retries', '1'], { timeout: 120_000 }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

function policy(accepted: string): string {
  return `name: test/fg
secrets:
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept: [{ tee: [sim], measurement: "${accepted}" }]
    args: ["redis-server", "--version"]
`;
}

test('a refused launch exits 1 with the reason, and the app never runs', { skip }, async () => {
  await owner.applyPolicy(policy('0'.repeat(96)));
  await owner.putSecret('test/fg', 'layer-key', kek);
  const result = await run();
  assert.equal(result.code, 1);
  assert.match(result.stderr, /\[cocoon-launcher\] ERROR \[POLICY_DENIED\]/);
  assert.match(result.stderr, /the application was not started/);
  assert.doesNotMatch(result.stdout, /Redis server v=/);
});

test('an accepted launch runs the app in the foreground and returns its exit status', { skip }, async () => {
  await owner.applyPolicy(policy(measurement));
  const result = await run();
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /Redis server v=7\./);
  assert.match(result.stderr, /starting redis-server as uid 999/);
});
