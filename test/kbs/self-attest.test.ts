/**
 * KBS self-attestation and `cocoon attest`: the KBS's evidence binds the nonce, its TLS key
 * and the deployment CA root; the CLI verifies it and pins the CA; owner calls over HTTPS are
 * then held to the pinned TLS key.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { SimAttester } from '../../src/attester/sim.js';
import { loadOrCreateSelfSignedTls } from '../../src/kbs/tls.js';
import { attestKbs } from '../../src/kbs/client/kbs-attest.js';
import { certSha256 } from '../../src/kbs/self-attest.js';
import { pinnedFetch, readPin, writePin } from '../../src/cli/kbs-pin.js';
import { isCocoonError } from '../../src/errors.js';

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');
const MEASUREMENT = 'ee'.repeat(48);

let work: string;
let cfg: string;
let kbs: RunningKbs;
let plain: RunningKbs;
let simRoot: string;
let otherRoot: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'cocoon-selfattest-'));
  cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  simRoot = sim.rootPem;
  otherRoot = (await createSimPlatform(join(work, 'other-sim'))).rootPem;
  await mkdir(join(work, 'kbs'), { recursive: true });
  const tls = await loadOrCreateSelfSignedTls(join(work, 'kbs'), ['127.0.0.1']);
  const common = { allowSim: true, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [sim.rootPem] }), logger: false as const, selfAttestation: { attester: new SimAttester(sim.platformDir), measurement: MEASUREMENT } };
  kbs = await startKbs({ ...common, dataDir: join(work, 'kbs'), port: 0, tls: { cert: tls.cert, key: tls.key } });
  plain = await startKbs({ ...common, dataDir: join(work, 'kbs-plain'), port: 0 });
});

after(async () => {
  await kbs?.close();
  await plain?.close();
  await rm(work, { recursive: true, force: true });
});

test('the KBS evidence binds the nonce, the TLS key and the CA root; refusals', async () => {
  assert.match(kbs.url, /^https:/);
  const r = await attestKbs({ kbsUrl: kbs.url, insecureSimRoots: [simRoot], expectMeasurement: MEASUREMENT });
  assert.equal(r.tee, 'sim');
  assert.equal(r.insecure, true);
  assert.equal(r.measurement, MEASUREMENT);
  assert.match(r.tlsSpkiSha256 ?? '', /^[0-9a-f]{64}$/);
  assert.equal(r.caRootSha256, certSha256(r.caRootPem));

  await assert.rejects(attestKbs({ kbsUrl: kbs.url }), (e: unknown) => isCocoonError(e, 'SIM_NOT_ALLOWED'));
  await assert.rejects(attestKbs({ kbsUrl: kbs.url, insecureSimRoots: [simRoot], expectMeasurement: 'ab'.repeat(48) }), (e: unknown) => isCocoonError(e, 'MEASUREMENT_MISMATCH'));
  await assert.rejects(attestKbs({ kbsUrl: kbs.url, insecureSimRoots: [otherRoot] }), (e: unknown) => isCocoonError(e, 'KBS_NOT_TRUSTED'));
  await assert.rejects(attestKbs({ kbsUrl: kbs.url, expectMeasurement: 'xyz' }), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
  // plain HTTP: no TLS key, the CA root is still bound
  const p = await attestKbs({ kbsUrl: plain.url, insecureSimRoots: [simRoot] });
  assert.equal(p.tlsSpkiSha256, null);
  // the nonce is checked by the endpoint
  const badNonce = await fetch(`${plain.url}/cocoon/v1/attestation?nonce=xyz`);
  assert.equal(badNonce.status, 400);
});

test('the pin holds later owner calls to the attested TLS key', async () => {
  const dir = join(work, 'pin');
  await mkdir(dir);
  const r = await attestKbs({ kbsUrl: kbs.url, insecureSimRoots: [simRoot] });
  await writePin(dir, r);
  const pin = await readPin(dir);
  assert.ok(pin);
  const client = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json'), fetchImpl: pinnedFetch(pin) });
  assert.ok((await client.identity()).id);
  const wrong = pinnedFetch({ ...pin, tlsSpkiSha256: '00'.repeat(32) });
  await assert.rejects(OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json'), fetchImpl: wrong }).then((c) => c.identity()), (e: unknown) => isCocoonError(e, 'KBS_NOT_TRUSTED') || /KBS_NOT_TRUSTED|TLS key differs/.test(String(e)));
});

test('cocoon attest --insecure-sim pins the CA in the config directory', async () => {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', MAIN, 'attest', '--kbs', kbs.url, '--insecure-sim', '--config-dir', cfg, '--json', '--expect-measurement', MEASUREMENT], { timeout: 60_000 });
  const out = JSON.parse(stdout) as { caRootSha256: string; caFile: string; tee: string; insecure: boolean };
  assert.equal(out.tee, 'sim');
  assert.equal(out.insecure, true);
  assert.ok(existsSync(join(cfg, 'kbs-pin.json')));
  assert.equal(certSha256(readFileSync(join(cfg, 'kbs-ca.pem'), 'utf8')), out.caRootSha256);
  // the pinned CA is the deployment root
  const ca = (await (await fetch(`${plain.url}/cocoon/v1/ca`)).json()) as { root: string };
  assert.ok(ca.root.length > 0);
  // without --insecure-sim the CLI refuses sim evidence (exit 1, stable code)
  const refused = await run(process.execPath, ['--import', 'tsx', MAIN, 'attest', '--kbs', kbs.url, '--config-dir', cfg], { timeout: 60_000 }).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code?: number; stderr?: string }) => ({ code: e.code ?? -1, stderr: e.stderr ?? '' }),
  );
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /SIM_NOT_ALLOWED/);
});
