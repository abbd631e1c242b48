/**
 * Attested mTLS end to end, in-process launcher against a real KBS (no runc): the wrapped
 * Redis runs behind the launcher's TLS ingress (client certificate required); a second
 * attested workload reaches it only through its own egress proxy. Unattested clients are
 * refused; openssl s_client with the deployment root verifies the ingress; the proxies stop
 * with the app.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { startTlsProxies } from '../../src/launcher/tls/proxy.js';
import { E2eFixture, freePort, redis as strictRedis, redisServerArgs, resp, waitForRedis } from '../helpers/e2e.js';

const fx = new E2eFixture({ prefix: 'cocoon-tls-e2e-', needs: ['root', 'dist'], tee: 'sim' });
const { skip } = fx;
const M_WEB = 'b2'.repeat(48);

let rootfs: string;
let redisPort: number;
let tlsPort: number;
let egressPort: number;

/** One RESP command over plaintext to 127.0.0.1:port (the app's view of the egress proxy); '' when refused. */
const redis = (port: number, args: string[]) => strictRedis(port, args, { lenient: true });

fx.before(async () => {
  let measurement: string;
  ({ rootfs, measurement } = await fx.wrapAndUnpack({ policy: 'test/redis' }));
  [redisPort, tlsPort, egressPort] = [await freePort(), await freePort(), await freePort()];
  await fx.applyPolicy({
    name: 'test/redis',
    measurement,
    args: redisServerArgs(redisPort),
    extra: `    tls:
      ingress: [{ listen: ${tlsPort}, to: ${redisPort}, clientCert: required }]`,
  });
  await fx.applyPolicy(
    {
      name: 'test/web',
      workload: 'web',
      measurement: M_WEB,
      extra: `    tls:
      egress: [{ listen: ${egressPort}, to: "127.0.0.1:${tlsPort}", expect: { policy: test/redis, workload: redis } }]`,
    },
    randomBytes(32),
  );
});

test('wrapped Redis behind the launcher ingress; an attested client through its egress; others refused', { skip }, async () => {
  const running = fx.launch(rootfs, { COCOON_ROOT: join(fx.work, 'approot') });
  let failed: unknown;
  running.catch((e: unknown) => (failed = e));

  // the "web" workload: attested with a CSR like the launcher does, then only its egress proxy
  const { plan, material } = await fx.attestWithCsr({ policy: 'test/web', workload: 'web', measurement: M_WEB });
  assert.ok(plan.tls);
  const web = await startTlsProxies(plan.tls, material, fx.log);
  try {
    await waitForRedis(egressPort, { lenient: true, stop: () => failed });
    assert.equal(await redis(egressPort, ['PING']), '+PONG\r\n', fx.logLines.join(''));
    assert.ok(fx.logLines.some((l) => /tls ingress :\d+ → app :\d+ listening \(client certificate required\)/.test(l)));
    assert.ok(fx.logLines.some((l) => /tls egress .* connected to test\/redis#redis/.test(l)));
    assert.equal(await redis(egressPort, ['SET', 'k', 'over attested mTLS']), '+OK\r\n');

    // a TLS client without a client certificate gets nothing
    const noCert = await new Promise<string>((resolve) => {
      const s = tlsConnect({ port: tlsPort, host: '127.0.0.1', ca: material.rootPem, checkServerIdentity: () => undefined });
      let got = '';
      s.on('secureConnect', () => s.write(resp(['GET', 'k'])));
      s.on('data', (d) => (got += d.toString()));
      s.on('error', () => resolve(got));
      s.on('close', () => resolve(got));
      setTimeout(() => s.destroy(), 3000);
    });
    assert.doesNotMatch(noCert, /attested/);
    // plaintext straight to the ingress port gets nothing either
    assert.equal(await redis(tlsPort, ['GET', 'k']), '');

    // openssl s_client trusting only the deployment root, with an attested workload certificate
    if (existsSync('/usr/bin/openssl')) {
      await writeFile(join(fx.work, 'root.pem'), material.rootPem);
      // openssl sends only the first certificate of -cert; the intermediate goes with -cert_chain
      const [leaf, ...intermediates] = material.certChainPem.split(/(?<=-----END CERTIFICATE-----\n)/).filter((p) => p.includes('BEGIN'));
      await writeFile(join(fx.work, 'cert.pem'), leaf ?? '');
      await writeFile(join(fx.work, 'chain.pem'), intermediates.join(''));
      await writeFile(join(fx.work, 'key.pem'), material.keyPem);
      const out = await new Promise<string>((resolve) => {
        const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${tlsPort}`, '-CAfile', join(fx.work, 'root.pem'), '-cert', join(fx.work, 'cert.pem'), '-key', join(fx.work, 'key.pem'), '-cert_chain', join(fx.work, 'chain.pem'), '-verify_return_error', '-quiet'], { timeout: 10_000 }, (_err, stdout, stderr) => resolve(stdout + stderr));
        child.stdin?.write(resp(['GET', 'k']));
        setTimeout(() => child.kill('SIGTERM'), 2000);
      });
      assert.match(out, /over attested mTLS/, out);
    }

    // the app stops → the launcher returns and its proxies are gone
    await redis(egressPort, ['SHUTDOWN', 'NOSAVE']);
    assert.equal(await running, 0);
    const refused = await new Promise<boolean>((resolve) => {
      const s = connect(tlsPort, '127.0.0.1');
      s.on('connect', () => {
        s.destroy();
        resolve(false);
      });
      s.on('error', () => resolve(true));
    });
    assert.ok(refused, 'the ingress listener closed with the app');
  } finally {
    await web.close();
  }
});
