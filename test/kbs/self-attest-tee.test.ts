/**
 * KBS self-attestation with a real TEE attester, through the built CLI (dist/cli.mjs):
 * `cocoon serve --tee tpm --tpm-tcti swtpm:…` extends its own measurement into PCR 23 of a
 * real software TPM and serves a quote + event log; `cocoon attest --trusted-ak` verifies it
 * (the event log replayed against the quoted PCR) and pins the CA. Refusals: another AK, no
 * AK, a wrong --expect-measurement. `--tee auto` with nothing present: no endpoint, and the
 * startup log says what was probed. Needs dist/ and swtpm; skips visibly otherwise.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { distCli } from '../helpers/env.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../attester/swtpm-helper.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { TpmClient } from '../../src/attester/tpm/client.js';
import { parseTcti } from '../../src/attester/tpm/tcti.js';
import { DEFAULT_AK_HANDLE, ensureAk } from '../../src/attester/tpm.js';
import { parseTpmtPublic } from '../../src/attestation/tpm/structs.js';
import { certSha256 } from '../../src/kbs/self-attest.js';
import { TpmAttester } from '../../src/attester/tpm.js';
import { startKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { attestKbs } from '../../src/kbs/client/kbs-attest.js';
import { isCocoonError } from '../../src/errors.js';
import { freePort } from '../../src/util/net.js';

const skip = !existsSync(distCli) ? 'dist/ not built (npm run build)' : swtpmMissing;
/** What the KBS reports as its measurement: SHA-384 of the running CLI entry script. */
const measurement = () => createHash('sha384').update(readFileSync(distCli)).digest('hex');
/** Nothing to find for `--tee auto` (the TDX/SNP guest devices are fixed paths: absent on this machine). */
const guestDevice = ['/dev/tdx_guest', '/dev/sev-guest'].find((d) => existsSync(d));
const skipNothing = skip || (guestDevice ? `${guestDevice} exists: this machine has a TEE to find` : false);
const NOTHING = { COCOON_TSM_REPORT_DIR: '/nonexistent/cocoon-tsm', COCOON_GRAMINE_ATTESTATION_DIR: '/nonexistent/cocoon-gramine', COCOON_TPM_TCTI: 'device:/dev/tpmrm99' };

interface Served {
  child: ChildProcess;
  url: string;
  stderr: () => string;
}

const children = new Set<ChildProcess>();

/** `cocoon serve …`; resolves once it listens (its startup line), rejects when it exits first. */
async function serve(args: string[], env: Record<string, string> = {}): Promise<Served> {
  const child = spawn(process.execPath, [distCli, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env, NO_COLOR: '1' } });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start within 30 s: ${err}`)), 30_000);
    child.stderr!.on('data', () => {
      const m = /cocoon KBS listening on (\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`serve exited ${code}: ${err}`), { exitCode: code, stderr: err }));
    });
  });
  return { child, url, stderr: () => err };
}

async function stop(s: Served | undefined): Promise<void> {
  if (!s || s.child.exitCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  const t = setTimeout(() => s.child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
  children.delete(s.child);
}

function cocoon(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [distCli, ...args], { timeout: 60_000, env: { ...process.env, ...env, NO_COLOR: '1' } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0, stdout, stderr });
    });
  });
}

/** GET over HTTPS without a CA check (the KBS certificate is self-signed; the evidence authenticates it). */
function getInsecure(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { rejectUnauthorized: false, timeout: 30_000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

let work: string;
let tpm: Swtpm | undefined;
let kbs: Served | undefined;
let akFile: string;
let otherAkFile: string;

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-selfattest-tee-'));
  tpm = await startSwtpm();
  // provisioning, as for workloads: read the AK at its persistent handle once (created when absent)
  const c = await TpmClient.connect(parseTcti(tpm.tcti));
  try {
    akFile = join(work, 'ak.pem');
    await writeFile(akFile, parseTpmtPublic(await ensureAk(c, DEFAULT_AK_HANDLE)).export({ type: 'spki', format: 'pem' }) as string);
  } finally {
    await c.close();
  }
  otherAkFile = join(work, 'other-ak.pem');
  await writeFile(otherAkFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string);
  await mkdir(join(work, 'kbs'), { recursive: true });
  await mkdir(join(work, 'cfg'), { recursive: true });
  // a sim platform where serve looks by default: --tee auto must still never fall back to it
  await createSimPlatform(join(work, 'cfg', 'sim'));
  kbs = await serve(['--tee', 'tpm', '--tpm-tcti', tpm.tcti, '--listen', `127.0.0.1:${await freePort()}`, '--data-dir', join(work, 'kbs'), '--config-dir', join(work, 'cfg'), '--tls', '--log-level', 'warn']);
});

after(async () => {
  await stop(kbs);
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await tpm?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

test('serve --tee tpm: the endpoint returns a real TPM quote with the KBS event log (PCR 23)', { skip }, async () => {
  assert.match(kbs!.url, /^https:/);
  assert.match(kbs!.stderr(), /KBS self-attestation: tpm \(.*TPM at swtpm:host=127\.0\.0\.1,port=\d+: present\), measurement [0-9a-f]{96} \(AK SPKI sha256:[0-9a-f]{64}/);
  assert.match(kbs!.stderr(), /extended the KBS measurement into PCR 23 \(sha256\)/);
  assert.match(kbs!.stderr(), /self-attestation tpm\)/);
  const res = await getInsecure(`${kbs!.url}/cocoon/v1/attestation?nonce=${'5a'.repeat(32)}`);
  assert.equal(res.status, 200, res.body);
  const body = JSON.parse(res.body) as { tee: string; measurement: string; evidence: { ak_public: string; tpm_quote: { message: string; signature: string; pcrs: string[] }; cocoon_event_log: { register: string; alg: string; events: Array<{ event: Record<string, string> }> } } };
  assert.equal(body.tee, 'tpm');
  assert.equal(body.measurement, measurement());
  assert.equal(body.evidence.tpm_quote.pcrs.length, 24);
  assert.ok(body.evidence.tpm_quote.message.length > 0 && body.evidence.tpm_quote.signature.length > 0);
  const log = body.evidence.cocoon_event_log;
  assert.deepEqual([log.register, log.alg, log.events.length], ['pcr23', 'sha256', 1]);
  assert.deepEqual(log.events[0]!.event, { type: 'cocoon.workload', measurement: measurement(), policy: 'cocoon/kbs', workload: 'kbs' });
});

test('cocoon attest --trusted-ak verifies the TPM evidence (event log replayed) and pins the CA', { skip }, async () => {
  const cfg = join(work, 'client');
  const r = await cocoon(['attest', '--kbs', kbs!.url, '--trusted-ak', akFile, '--expect-measurement', measurement(), '--config-dir', cfg, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { tee: string; insecure: boolean; measurement: string; caRootSha256: string; tlsSpkiSha256: string; claims: Record<string, unknown> };
  assert.deepEqual([out.tee, out.insecure, out.measurement], ['tpm', false, measurement()]);
  assert.equal(out.claims.workload_register, 'pcr23:sha256');
  assert.match(out.tlsSpkiSha256, /^[0-9a-f]{64}$/);
  assert.equal(certSha256(readFileSync(join(cfg, 'kbs-ca.pem'), 'utf8')), out.caRootSha256);
  const pin = JSON.parse(readFileSync(join(cfg, 'kbs-pin.json'), 'utf8')) as Record<string, unknown>;
  assert.deepEqual([pin.tee, pin.insecure, pin.measurement, pin.caRootSha256], ['tpm', false, measurement(), out.caRootSha256]);
  // the pinned root is the deployment root the KBS serves
  const ca = JSON.parse((await getInsecure(`${kbs!.url}/cocoon/v1/ca`)).body) as { root: string };
  assert.equal(certSha256(ca.root), out.caRootSha256);
  // human output
  const human = await cocoon(['attest', '--kbs', kbs!.url, '--trusted-ak', akFile, '--config-dir', cfg]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /attested \(tpm\)/);
  assert.match(human.stderr, /no --expect-measurement/);
});

test('cocoon attest refuses another AK and no AK (AK_NOT_TRUSTED), and a wrong --expect-measurement (MEASUREMENT_MISMATCH)', { skip }, async () => {
  const cfg = join(work, 'refused');
  const wrongAk = await cocoon(['attest', '--kbs', kbs!.url, '--trusted-ak', otherAkFile, '--config-dir', cfg]);
  assert.equal(wrongAk.code, 1);
  assert.match(wrongAk.stderr, /\[AK_NOT_TRUSTED\].*SPKI sha256:[0-9a-f]{64}.*1 --trusted-ak/);
  const noAk = await cocoon(['attest', '--kbs', kbs!.url, '--config-dir', cfg]);
  assert.equal(noAk.code, 1);
  assert.match(noAk.stderr, /\[AK_NOT_TRUSTED\]/);
  const wrongM = await cocoon(['attest', '--kbs', kbs!.url, '--trusted-ak', akFile, '--expect-measurement', 'ab'.repeat(48), '--config-dir', cfg]);
  assert.equal(wrongM.code, 1);
  assert.match(wrongM.stderr, /\[MEASUREMENT_MISMATCH\]/);
  assert.ok(!existsSync(join(cfg, 'kbs-pin.json')), 'nothing pinned after a refusal');
  // an unreadable AK file is a usage error
  const missingFile = await cocoon(['attest', '--kbs', kbs!.url, '--trusted-ak', join(work, 'nope.pem'), '--config-dir', cfg]);
  assert.equal(missingFile.code, 2);
  assert.match(missingFile.stderr, /\[BAD_USAGE\].*--trusted-ak/);
});

test('serve --tee auto with no TEE present: no endpoint (404), and the startup log lists the probes', { skip: skipNothing }, async () => {
  const dataDir = join(work, 'kbs-auto');
  await mkdir(dataDir);
  const s = await serve(['--tee', 'auto', '--listen', `127.0.0.1:${await freePort()}`, '--data-dir', dataDir, '--config-dir', join(work, 'cfg'), '--log-level', 'warn', '--allow-sim'], NOTHING);
  try {
    const res = await fetch(`${s.url}/cocoon/v1/attestation?nonce=${'5a'.repeat(32)}`);
    assert.equal(res.status, 404, 'never silently sim, even with --allow-sim');
    const log = s.stderr();
    assert.match(log, /KBS self-attestation not available \(GET \/cocoon\/v1\/attestation answers 404\): --tee auto: no supported TEE found; probed: /);
    for (const probe of ['configfs-tsm (TDX/SNP) at /nonexistent/cocoon-tsm: absent', 'TDX guest device at /dev/tdx_guest: absent', 'SEV-SNP guest device at /dev/sev-guest: absent', 'Gramine /dev/attestation (SGX) at /nonexistent/cocoon-gramine/attestation_type: absent', 'TPM at /dev/tpmrm99: absent']) {
      assert.ok(log.includes(probe), `probe listed: ${probe}\n${log}`);
    }
    assert.match(log, /self-attestation none\)/);
    const attest = await cocoon(['attest', '--kbs', s.url, '--config-dir', join(work, 'auto-client')]);
    assert.equal(attest.code, 1);
    assert.match(attest.stderr, /\[NOT_FOUND\].*--tee/);
  } finally {
    await stop(s);
  }
});

test('serve --tee: usage errors and a requested TEE that is absent refuse to start', { skip: skipNothing }, async () => {
  const port = String(await freePort());
  const base = ['--listen', `127.0.0.1:${port}`, '--data-dir', join(work, 'kbs-bad'), '--config-dir', join(work, 'cfg')];
  await mkdir(join(work, 'kbs-bad'), { recursive: true });
  const cases: Array<[string[], Record<string, string>, number, RegExp]> = [
    [['--tee', 'sim'], {}, 2, /\[BAD_USAGE\].*--tee sim needs --allow-sim/],
    [['--tpm-tcti', 'swtpm:host=127.0.0.1,port=1'], {}, 2, /\[BAD_USAGE\].*--tpm-tcti needs --tee/],
    [['--tee', 'bogus'], {}, 2, /bogus/],
    [['--tee', 'tdx'], NOTHING, 1, /\[TEE_NOT_FOUND\].*--tee tdx: no tdx TEE found; probed: .*configfs-tsm/],
  ];
  for (const [args, env, code, re] of cases) {
    const r = await cocoon(['serve', ...base, ...args], env);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
  }
});

test('in-process: an event log that records a workload (not the KBS), or a measurement the log does not carry, is refused', { skip }, async () => {
  // PCR 16 (resettable, not used by the served KBS above, which keeps PCR 23)
  const attester = new TpmAttester({ tcti: tpm!.tcti, pcr: 16 });
  const m = 'cd'.repeat(48);
  const register = await attester.measure({ measurement: m, policy: 'org/app', workload: 'w' });
  const ak = readFileSync(akFile, 'utf8');
  const start = (att: TpmAttester, measurement: string, reg: string, dataDir: string) => startKbs({ dataDir: join(work, dataDir), port: 0, verifier: createBrokerVerifier({ simRoots: [] }), logger: false, selfAttestation: { attester: att, measurement, register: reg } });
  const a = await start(attester, m, register, 'kbs-workload-event');
  try {
    await assert.rejects(attestKbs({ kbsUrl: a.url, trustedAks: [ak] }), (e: unknown) => isCocoonError(e, 'KBS_NOT_TRUSTED') && /records workload org\/app#w, not the KBS/.test((e as Error).message));
  } finally {
    await a.close();
  }
  // the KBS event, but the KBS reports another measurement than the one extended
  const second = new TpmAttester({ tcti: tpm!.tcti, pcr: 16 });
  const reg2 = await second.measure({ measurement: m, policy: 'cocoon/kbs', workload: 'kbs' });
  const b = await start(second, 'ef'.repeat(48), reg2, 'kbs-lying');
  try {
    await assert.rejects(attestKbs({ kbsUrl: b.url, trustedAks: [ak] }), (e: unknown) => isCocoonError(e, 'KBS_NOT_TRUSTED') && /measurement differs/.test((e as Error).message));
  } finally {
    await b.close();
  }
  // and the honest one verifies, bound to the PCR 16 log
  const c = await start(second, m, reg2, 'kbs-honest');
  try {
    const r = await attestKbs({ kbsUrl: c.url, trustedAks: [ak], expectMeasurement: m });
    assert.deepEqual([r.tee, r.measurement, r.claims.workload_register], ['tpm', m, 'pcr16:sha256']);
  } finally {
    await c.close();
  }
});
