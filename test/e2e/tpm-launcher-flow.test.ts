/**
 * A real software TPM end to end through the KBS: the launcher (in-process, as in
 * launcher-flow.test.ts) extends the workload measurement into PCR 23 of a swtpm, attests
 * with a real TPM quote plus the Cocoon event log, and the KBS — trusting the AK through
 * --trusted-ak (createBrokerVerifier({trustedAks})) — replays the log and accepts the workload
 * by its `measurement`, releases the launch plan, and the app runs. Refusals: untrusted AK,
 * measurement not in the policy. Needs root, dist/ and swtpm; skips visibly otherwise.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { wrapImage } from '../../src/image/wrap.js';
import { readWrappedImage, unpackWrappedImage } from '../../src/image/wrapped.js';
import { launch } from '../../src/launcher/launch.js';
import { launcherConfigFromEnv } from '../../src/launcher/config.js';
import { createLauncherLog } from '../../src/launcher/log.js';
import { isCocoonError } from '../../src/errors.js';
import { TpmClient } from '../../src/attester/tpm/client.js';
import { parseTcti } from '../../src/attester/tpm/tcti.js';
import { DEFAULT_AK_HANDLE, ensureAk } from '../../src/attester/tpm.js';
import { parseTpmtPublic } from '../../src/attestation/tpm/structs.js';
import { isRoot, launcherDir, testImage } from '../helpers/env.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../attester/swtpm-helper.js';

const image = swtpmMissing ? { skip: swtpmMissing } : isRoot && existsSync(launcherDir) ? testImage('redis') : { skip: 'needs root and dist/ (npm run build)' };
const skip = 'skip' in image ? image.skip : false;

let work: string;
let tpm: Swtpm;
let kbs: RunningKbs;
let untrustingKbs: RunningKbs;
let owner: OwnerClient;
let rootfs: string;
let measurement: string;
const kek = randomBytes(32);
const logLines: string[] = [];
const log = createLauncherLog({ write: (s: string) => logLines.push(s) } as unknown as NodeJS.WritableStream);

function policy(m: string): string {
  return `name: test/redis
secrets:
  pw: { kind: random, size: 32, encoding: hex, ownerReadable: true }
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept:
      - tee: [tpm]
        measurement: "${m}"
    secrets: [pw]
    env: { REDIS_PW: "{{ secret.pw }}" }
    args: ["redis-server", "--version"]
`;
}

function configFor(kbsUrl: string) {
  return launcherConfigFromEnv({
    COCOON_KBS_URL: kbsUrl,
    COCOON_TEE: 'tpm',
    COCOON_TPM_TCTI: tpm.tcti,
    COCOON_HOME: join(rootfs, 'cocoon'),
    COCOON_ROOT: join(rootfs, 'approot'),
    COCOON_KBS_RETRIES: '1',
  });
}

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-e2e-tpm-'));
  tpm = await startSwtpm();
  // provisioning: the deployment reads the AK once and registers it with the KBS (--trusted-ak)
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
  const owners = [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))];
  kbs = await startKbs({ dataDir: join(work, 'kbs'), port: 0, allowSim: false, owners, verifier: createBrokerVerifier({ simRoots: [], trustedAks: [akPem] }), logger: false });
  const other = createPublicKey(akPem).asymmetricKeyType === 'ec' ? (await import('node:crypto')).generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string : akPem;
  untrustingKbs = await startKbs({ dataDir: join(work, 'kbs2'), port: 0, allowSim: false, owners, verifier: createBrokerVerifier({ simRoots: [], trustedAks: [other] }), logger: false });
  owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });

  const layout = join(work, 'redis-cc');
  const result = await wrapImage({ source: { layoutDir: (image as { layout: string }).layout, ref: 'redis:7' }, dest: { layoutDir: layout }, launcherDir, policy: 'test/redis', workload: 'redis', kek });
  measurement = result.measurement;
  rootfs = join(work, 'rootfs');
  await mkdir(rootfs, { recursive: true });
  await unpackWrappedImage(await readWrappedImage(layout), rootfs);
});

after(async () => {
  if (skip) return;
  await kbs?.close();
  await untrustingKbs?.close();
  await tpm?.stop();
  await rm(work, { recursive: true, force: true });
});

test('swtpm: real quote + event log → the KBS accepts the workload by measurement and the app runs', { skip }, async () => {
  await owner.applyPolicy(policy(measurement));
  await owner.putSecret('test/redis', 'layer-key', kek);
  logLines.length = 0;
  const status = await launch(configFor(kbs.url), log);
  assert.equal(status, 0, logLines.join(''));
  assert.ok(logLines.some((l) => /extended the workload measurement into PCR 23/.test(l)), logLines.join(''));
  assert.ok(!logLines.some((l) => /INSECURE/.test(l)), 'no insecure mode involved');
  const events = await owner.listEvents();
  const attest = events.find((e) => e.kind === 'attest' && e.status === 'affirming');
  assert.ok(attest, JSON.stringify(events));
  assert.equal(attest.tee, 'tpm');
  assert.match(attest.detail, new RegExp(measurement));
  assert.ok(events.some((e) => e.kind === 'release' && e.status === 'affirming'));
});

test('swtpm: the second launch on the same TPM resets PCR 23 and attests again', { skip }, async () => {
  assert.equal(await launch(configFor(kbs.url), log), 0);
});

test('swtpm: a KBS that does not trust this AK refuses (AK_NOT_TRUSTED)', { skip }, async () => {
  await assert.rejects(launch(configFor(untrustingKbs.url), log), (e) => isCocoonError(e, 'AK_NOT_TRUSTED') || (isCocoonError(e) && /AK_NOT_TRUSTED/.test(e.message)));
});

test('swtpm: a measurement not in the policy is denied', { skip }, async () => {
  await owner.applyPolicy(policy('0'.repeat(96)));
  await assert.rejects(launch(configFor(kbs.url), log), (e) => isCocoonError(e, 'POLICY_DENIED'));
});
