/**
 * `cocoon serve --workload-cert-validity` and `--recovery-recipient`, `cocoon recover keygen`
 * and `recover share --recipient-key`, through real CLI processes: a sim workload gets a
 * certificate of the configured lifetime, then the seal key is lost and a P-256 owner and an
 * Ed25519 owner (through its X25519 recovery recipient) recover the data key 2-of-2.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { SimAttester } from '../../src/attester/sim.js';
import { x509 } from '../../src/crypto/x509.js';
import { parseWorkloadCertValidity } from '../../src/cli/serve.js';
import { CocoonError } from '../../src/errors.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, ownerSigningKey } from '../../src/kbs/owner-key.js';
import { SEAL_KEY_FILE } from '../../src/kbs/sealer.js';
import { MEASUREMENT, POLICY_YAML } from './helpers.js';
import { cocoon } from './cli-runner.js';
import { freePort } from '../../src/util/net.js';

const SERVE = join(import.meta.dirname, 'fixtures', 'serve-main.ts');

/** `cocoon serve ARGS` until /readyz answers; collects its stdout (pino) and stderr. */
async function serve(args: string[]): Promise<{ url: string; child: ChildProcess; output: () => string; stop: () => Promise<void> }> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', SERVE, 'serve', '--listen', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  };
  const until = Date.now() + 30_000;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`serve exited ${child.exitCode}: ${out}`);
    try {
      if ((await fetch(`${url}/readyz`)).status === 200) return { url, child, output: () => out, stop };
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`serve not ready: ${out}`);
}

test('parseWorkloadCertValidity: one whole number and a unit, 5m–30d', () => {
  assert.equal(parseWorkloadCertValidity('24h'), 24 * 3_600_000);
  assert.equal(parseWorkloadCertValidity('5m'), 300_000);
  assert.equal(parseWorkloadCertValidity('300s'), 300_000);
  assert.equal(parseWorkloadCertValidity('30d'), 30 * 86_400_000);
  assert.equal(parseWorkloadCertValidity('720h'), 30 * 86_400_000);
  for (const bad of ['4m', '299s', '31d', '721h', '24', 'h', '1h30m', '1.5h', '-1h', '+1h', '24H', ' 24h', '24h ', '0h', '024h', '', '1e3s', '99999999d']) {
    assert.throws(() => parseWorkloadCertValidity(bad), (e: unknown) => e instanceof CocoonError && e.code === 'BAD_USAGE', bad);
  }
});

test('cocoon serve --workload-cert-validity / --recovery-recipient, recover keygen + share --recipient-key: 2-of-2 with an Ed25519 owner', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-serve-cli-'));
  let running: Awaited<ReturnType<typeof serve>> | undefined;
  try {
    // help documents every new flag
    const help = (await cocoon(['serve', '--help'])).stdout;
    assert.match(help, /--workload-cert-validity <duration>\s+lifetime of the workload certificates[\s\S]*\(default: "24h"\)/);
    assert.match(help, /--recovery-recipient <kid=file>\s+encrypt this admin owner's recovery share/);
    assert.match((await cocoon(['recover', 'share', '--help'])).stdout, /--recipient-key <file>\s+instead of --owner-key/);
    assert.match((await cocoon(['recover', 'keygen', '--help'])).stdout, /--curve <crv>[\s\S]*X25519/);

    // owners: a (P-256), ed (Ed25519, with an X25519 recovery recipient), lone (Ed25519, none)
    const a = await createOwnerKey(join(dir, 'a.jwk'));
    const edKeys = await Promise.all([0, 1].map(async () => exportJWK((await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true })).privateKey)));
    const [ed, lone] = await Promise.all(edKeys.map((k) => ownerSigningKey(k)));
    writeFileSync(join(dir, 'ed.jwk'), JSON.stringify(edKeys[0]), { mode: 0o600 });
    writeFileSync(join(dir, 'ed.pub.jwk'), JSON.stringify(ed!.publicJwk));
    writeFileSync(join(dir, 'lone.pub.jwk'), JSON.stringify(lone!.publicJwk));
    const keygen = await cocoon(['recover', 'keygen', '--out', join(dir, 'ed-recovery.jwk'), '--json']);
    assert.equal(keygen.code, 0, keygen.stderr);
    const made = JSON.parse(keygen.stdout) as { publicKey: string; curve: string; thumbprint: string };
    assert.deepEqual([made.publicKey, made.curve], [join(dir, 'ed-recovery.pub.jwk'), 'X25519']);
    assert.equal((await cocoon(['recover', 'keygen', '--out', join(dir, 'ed-recovery.jwk')])).code, 1, 'never overwritten');
    const other = await cocoon(['recover', 'keygen', '--out', join(dir, 'other.jwk'), '--curve', 'P-384']);
    assert.equal(other.code, 0, other.stderr);

    const { rootPem, platformDir } = await createSimPlatform(join(dir, 'platform'));
    writeFileSync(join(dir, 'root.pem'), rootPem);
    const data = join(dir, 'data');
    const base = ['--data-dir', data, '--config-dir', join(dir, 'cfg'), '--owner', a.publicFile, '--owner', join(dir, 'ed.pub.jwk'), '--owner', join(dir, 'lone.pub.jwk'), '--allow-sim', '--sim-root', join(dir, 'root.pem')];
    const recipient = `${ed!.kid}=${join(dir, 'ed-recovery.pub.jwk')}`;

    // usage errors: exit 2 before anything starts
    for (const [args, re] of [
      [['--workload-cert-validity', '4m'], /--workload-cert-validity must be a duration from 5m to 30d/],
      [['--workload-cert-validity', '31d'], /--workload-cert-validity/],
      [['--workload-cert-validity', '1h30m'], /--workload-cert-validity/],
      [['--recovery-recipient', recipient], /--recovery-recipient needs --recovery-threshold/],
      [['--recovery-threshold', '2', '--recovery-recipient', join(dir, 'ed-recovery.pub.jwk')], /must be OWNER_KID=FILE/],
      [['--recovery-threshold', '2', '--recovery-recipient', `${ed!.kid}=${join(dir, 'missing.jwk')}`], /cannot read/],
      [['--recovery-threshold', '2', '--recovery-recipient', `${ed!.kid}=${join(dir, 'ed-recovery.jwk')}`], /is a private key/],
      [['--recovery-threshold', '2', '--recovery-recipient', `${ed!.kid}=${join(dir, 'ed.pub.jwk')}`], /Ed25519 is a signing key/],
      [['--recovery-threshold', '2', '--recovery-recipient', recipient, '--recovery-recipient', recipient], /twice/],
    ] as [string[], RegExp][]) {
      const r = await cocoon(['serve', ...base, ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /BAD_USAGE/);
      assert.match(r.stderr, re, args.join(' '));
    }

    running = await serve([...base, '--recovery-threshold', '2', '--recovery-recipient', recipient, '--workload-cert-validity', '2h', '--log-level', 'info']);
    assert.match(running.output(), new RegExp(`admin owner ${lone!.kid} gets no recovery share: OKP Ed25519 key and no recovery recipient`));
    const owner = await OwnerClient.create({ kbsUrl: running.url, ownerKeyFile: a.privateFile });
    await owner.applyPolicy(POLICY_YAML.replace('    secrets: [redis-password]\n', '    secrets: [redis-password]\n    workloadCert: true\n'));
    const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
    const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const csr = (await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=w', keys, signingAlgorithm: alg })).toString('pem');
    const attester = new SimAttester(platformDir);
    const fetched = await attestAndFetch({
      kbsUrl: running.url,
      tee: 'sim',
      evidenceProvider: (rd) => attester.getEvidence(rd, MEASUREMENT),
      initData: { policy: 'demo/redis', workload: 'redis' },
      resources: ['demo/redis/workload-cert'],
      csr,
      retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
    });
    const cert = new x509.X509Certificate((JSON.parse(fetched.resources['demo/redis/workload-cert']!.toString('utf8')) as { cert: string }).cert);
    const lifetime = cert.notAfter.getTime() - cert.notBefore.getTime();
    assert.ok(Math.abs(lifetime - 2 * 3_600_000) <= 5 * 60_000, `2 h certificate, got ${lifetime} ms`);
    await running.stop();
    running = undefined;

    // the sealer is lost: the P-256 owner and the Ed25519 owner's recipient recover 2-of-2
    unlinkSync(join(data, SEAL_KEY_FILE));
    const share = (flag: string, key: string, out: string) => cocoon(['recover', 'share', '--data-dir', data, flag, key, '--out', join(dir, out), '--json']);
    const wrongEd = await share('--owner-key', join(dir, 'ed.jwk'), 'x.share');
    assert.equal(wrongEd.code, 2, wrongEd.stderr);
    assert.match(wrongEd.stdout + wrongEd.stderr, /an Ed25519 owner key holds no share: use its recovery recipient key/);
    const wrongRecipient = await share('--recipient-key', join(dir, 'other.jwk'), 'x.share');
    assert.equal(wrongRecipient.code, 1, wrongRecipient.stderr);
    assert.match(wrongRecipient.stdout + wrongRecipient.stderr, /FORBIDDEN/);
    const neither = await cocoon(['recover', 'share', '--data-dir', data, '--out', join(dir, 'x.share')]);
    assert.equal(neither.code, 2);
    assert.match(neither.stderr, /exactly one of --owner-key or --recipient-key/);
    const sa = await share('--owner-key', a.privateFile, 'a.share');
    assert.equal(sa.code, 0, sa.stderr);
    const se = await share('--recipient-key', join(dir, 'ed-recovery.jwk'), 'ed.share');
    assert.equal(se.code, 0, se.stderr);
    assert.equal((JSON.parse(se.stdout) as { kid: string }).kid, ed!.kid);
    assert.equal((JSON.parse(readFileSync(join(dir, 'ed.share'), 'utf8')) as { kid: string }).kid, ed!.kid);
    const applied = await cocoon(['recover', 'apply', '--data-dir', data, '--share', join(dir, 'a.share'), '--share', join(dir, 'ed.share'), '--json']);
    assert.equal(applied.code, 0, applied.stderr);
    assert.deepEqual(JSON.parse(applied.stdout), { threshold: 2, used: 2, sealer: 'file' });

    // the KBS starts again on the recovered key and still knows the policy
    running = await serve([...base, '--recovery-threshold', '2', '--recovery-recipient', recipient]);
    const again = await OwnerClient.create({ kbsUrl: running.url, ownerKeyFile: a.privateFile });
    assert.equal((await again.getPolicy('demo/redis')).version, 1);
  } finally {
    await running?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
