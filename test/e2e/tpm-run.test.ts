/**
 * `cocoon run --tee tpm --tpm-tcti swtpm:…` under runc with the wrapped Redis image: the
 * launcher inside the container speaks raw TPM 2.0 commands to a swtpm on loopback (host
 * network), extends PCR 23, attests with a real quote + event log; the KBS (trusting the AK)
 * accepts by measurement. Needs root, runc, swtpm and dist/; skips visibly otherwise.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { wrapImage } from '../../src/image/wrap.js';
import { TpmClient } from '../../src/attester/tpm/client.js';
import { parseTcti } from '../../src/attester/tpm/tcti.js';
import { DEFAULT_AK_HANDLE, ensureAk } from '../../src/attester/tpm.js';
import { parseTpmtPublic } from '../../src/attestation/tpm/structs.js';
import { distCli, hasCommand, isRoot, launcherDir, testImage } from '../helpers/env.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../attester/swtpm-helper.js';

const reason = swtpmMissing || (!isRoot ? 'needs root' : !hasCommand('runc') ? 'needs runc' : !existsSync(launcherDir) ? 'needs dist/ (npm run build)' : false);
const image = reason ? { skip: reason } : testImage('redis');
const skip = 'skip' in image ? image.skip : false;

let work: string;
let tpm: Swtpm;
let kbs: RunningKbs;
let layout: string;

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-e2e-tpm-run-'));
  tpm = await startSwtpm();
  const c = await TpmClient.connect(parseTcti(tpm.tcti));
  let akPem: string;
  try {
    akPem = parseTpmtPublic(await ensureAk(c, DEFAULT_AK_HANDLE)).export({ type: 'spki', format: 'pem' }) as string;
  } finally {
    await c.close();
  }
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  kbs = await startKbs({ dataDir: join(work, 'kbs'), host: '127.0.0.1', port: 0, allowSim: false, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [], trustedAks: [akPem] }), logger: false });
  const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
  const kek = randomBytes(32);
  layout = join(work, 'redis-cc');
  const { measurement } = await wrapImage({ source: { layoutDir: (image as { layout: string }).layout, ref: 'redis:7' }, dest: { layoutDir: layout }, launcherDir, policy: 'test/redis', workload: 'redis', kek });
  await owner.applyPolicy(`name: test/redis
secrets:
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept:
      - tee: [tpm]
        measurement: "${measurement}"
    args: ["redis-server", "--version"]
`);
  await owner.putSecret('test/redis', 'layer-key', kek);
});

after(async () => {
  if (skip) return;
  await kbs?.close();
  await tpm?.stop();
  await rm(work, { recursive: true, force: true });
});

test('cocoon run --tee tpm --tpm-tcti swtpm:… attests with a real TPM quote under runc', { skip, timeout: 300_000 }, async () => {
  const name = `cocoon-tpm-${randomBytes(3).toString('hex')}`;
  const res = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [distCli, 'run', layout, '--kbs', kbs.url, '--tee', 'tpm', '--tpm-tcti', tpm.tcti, '--name', name, '--kbs-retries', '1'], { timeout: 240_000, maxBuffer: 8 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0, stdout, stderr });
    });
  });
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stderr, /extended the workload measurement into PCR 23/);
  assert.match(res.stdout + res.stderr, /Redis server v=/);
  // bad TCTI is refused before anything runs
  const bad = await new Promise<number>((resolve) => {
    execFile(process.execPath, [distCli, 'run', layout, '--kbs', kbs.url, '--tee', 'tpm', '--tpm-tcti', 'mssim:port=1'], { timeout: 60_000 }, (err) => resolve(err ? Number((err as { code?: number }).code) : 0));
  });
  assert.equal(bad, 2);
});
