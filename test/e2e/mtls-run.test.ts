/**
 * Two wrapped workloads under runc (`cocoon run --detach`, host network) that talk only
 * through launcher-provided attested mTLS (docs/tls.md, "Two workloads under runc"):
 *
 *   curl ──TLS (deployment root pinned)──▶ web ingress :webTls ─▶ python-web 127.0.0.1:webPort
 *   python-web ─plain─▶ 127.0.0.1:egress (web's egress) ══mTLS══▶ redis ingress :redisTls ─▶ redis 127.0.0.1:redisPort
 *
 * One policy (test/mtls), two workloads (`redis`, `web`), one Redis password secret rendered
 * into both. Asserts: the value round-trips through Redis via curl with the pinned root; curl
 * without it fails verification; openssl s_client with the root verifies the web ingress and
 * is refused by the Redis ingress without a client certificate or with one from another CA.
 *
 * The Redis ingress admits only `web` (`allow: [web]`, docs/tls.md): a third workload of the
 * same policy (`intruder`, granted a workload certificate with `workloadCert: true` and attested
 * in-process with a CSR) holds a genuine deployment-CA certificate and is still refused, with
 * the allow-list reason in Redis's log.
 *
 * Host networking: the containers share the host's network namespace, so "127.0.0.1 inside
 * the TEE" is the host's loopback. Redis's plaintext port (bound to 127.0.0.1) and web's egress
 * port are reachable from other processes on the host (not from other machines); the test
 * checks both sides of that rather than pretending the plaintext port is private.
 *
 * Needs root, runc, curl, openssl and dist/; skips visibly otherwise. Uses the shared fixture
 * (test/helpers/e2e.ts) with the Redis and python-web images (cached; scripts/setup.sh builds
 * them too).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import type { TlsMaterial } from '../../src/launcher/tls/index.js';
import { E2eFixture, cocoon, freePort } from '../helpers/e2e.js';

/**
 * Whether s_client output carries a Redis reply line (+PONG, -NOAUTH …, +OK). The printed
 * certificates are removed first: their base64 may contain "+OK" or "NOAUTH" by chance.
 */
const redisReplied = (out: string): boolean => /^[+-](PONG|NOAUTH|OK)\b/m.test(out.replace(/-----BEGIN [A-Z ]+-----[\s\S]*?-----END [A-Z ]+-----/g, ''));

const fx = new E2eFixture({ prefix: 'cocoon-mtls-run-', needs: ['root', 'runc', 'dist', 'curl', 'openssl'], tee: 'sim', images: ['redis', 'python-web'] });
const { skip } = fx;

const POLICY = 'test/mtls';
const WEB_HOST = 'web.mtls.test.cocoon'; // the SAN of web's workload certificate: <workload>.<app>.<org>.cocoon
const M_INTRUDER = 'c3'.repeat(48);
const suffix = randomBytes(3).toString('hex');
const names = { redis: `cocoon-mtls-redis-${suffix}`, web: `cocoon-mtls-web-${suffix}` };
const started: string[] = [];

const ports = { redis: 0, redisTls: 0, web: 0, webTls: 0, egress: 0 };

function run(cmd: string, args: string[], input = '', ms = 10_000): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: ms }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: stdout + stderr }));
    child.stdin?.on('error', () => undefined); // the command may exit without reading
    child.stdin?.end(input);
  });
}

/** `openssl s_client` that sends INPUT after the handshake and reads until the server closes. */
function sClient(port: number, extra: string[], input: string): Promise<{ code: number; out: string }> {
  // -ign_eof: keeps reading until the server closes
  return run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', join(fx.work, 'root.pem'), '-verify_return_error', '-ign_eof', ...extra], input);
}

/** Whatever a plaintext TCP peer gets back for DATA within 3 s (DATA '': just connect); null when the connection is refused. */
function tcp(host: string, port: number, data: string): Promise<string | null> {
  return new Promise((resolve) => {
    const s = connect(port, host);
    let buf = '';
    let connected = false;
    s.setTimeout(3000, () => s.destroy());
    s.on('connect', () => {
      connected = true;
      if (data === '') s.destroy();
      else s.write(data);
    });
    s.on('data', (d) => {
      buf += d.toString();
      if (buf.endsWith('\r\n')) s.end();
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve(connected ? buf : null));
  });
}

/** A TLS client presenting `m` (key, leaf + intermediate) that sends DATA; what came back before the server closed, or within 3 s. */
function tlsAs(m: TlsMaterial, port: number, data: string): Promise<string> {
  return new Promise((resolve) => {
    const s = tlsConnect({ port, host: '127.0.0.1', ca: m.rootPem, key: m.keyPem, cert: m.certChainPem, checkServerIdentity: () => undefined });
    let buf = '';
    s.setTimeout(3000, () => s.destroy());
    s.on('secureConnect', () => s.write(data));
    s.on('data', (d) => (buf += d.toString()));
    s.on('error', () => undefined);
    s.on('close', () => resolve(buf));
  });
}

const curlBase = () => ['-sS', '--max-time', '10', '--resolve', `${WEB_HOST}:${ports.webTls}:127.0.0.1`];

async function logsOf(only?: string): Promise<string> {
  let all = '';
  for (const n of started.filter((x) => only === undefined || x === only)) {
    const l = await cocoon(['logs', n]);
    all += `--- ${n}\n${l.stdout}${l.stderr}`;
  }
  return all;
}

fx.before(async () => {
  const cfg = fx.cfg;
  // one layer-key per policy: both images are wrapped with the fixture's KEK
  const wrapped = {
    redis: await fx.wrap({ policy: POLICY, workload: 'redis', name: 'redis' }),
    web: await fx.wrap({ policy: POLICY, workload: 'web', name: 'web', image: 'python-web' }),
  };
  for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
  // the policy of docs/tls.md "Two workloads under runc", with test ports, and a third workload
  // that gets a deployment-CA certificate but is not in the Redis ingress's allow list
  await fx.owner.applyPolicy(`name: ${POLICY}
secrets:
  layer-key: { kind: layer-key }
  redis-password: { kind: random, size: 24, encoding: hex }
workloads:
  redis:
    accept: [{ tee: [sim], measurement: "${wrapped.redis.measurement}" }]
    secrets: [redis-password]
    files:
      - { path: /run/cocoon/redis.conf, mode: "0400", content: "requirepass {{ secret.redis-password }}\\n" }
    args: ["redis-server", "/run/cocoon/redis.conf", "--port", "${ports.redis}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    tls:
      ingress: [{ listen: ${ports.redisTls}, to: ${ports.redis}, clientCert: required, allow: [web] }]
  web:
    accept: [{ tee: [sim], measurement: "${wrapped.web.measurement}" }]
    secrets: [redis-password]
    env:
      PORT: "${ports.web}"
      REDIS_ADDR: "127.0.0.1:${ports.egress}"
      REDIS_PASSWORD: "{{ secret.redis-password }}"
    tls:
      ingress: [{ listen: ${ports.webTls}, to: ${ports.web}, clientCert: none }]
      egress:
        - { listen: ${ports.egress}, to: "127.0.0.1:${ports.redisTls}", expect: { policy: ${POLICY}, workload: redis } }
  intruder:
    accept: [{ tee: [sim], measurement: "${M_INTRUDER}" }]
    workloadCert: true
`);
  await fx.owner.putSecret(POLICY, 'layer-key', fx.kek);
  await writeFile(join(fx.work, 'root.pem'), (await fx.owner.caCertificates()).root);
  // a client certificate from another CA (self-signed)
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=rogue', '-days', '1', '-keyout', join(fx.work, 'rogue.key'), '-out', join(fx.work, 'rogue.pem')]);

  for (const w of ['redis', 'web'] as const) {
    const r = await cocoon(['run', join(fx.work, `${w}-cc`), '--kbs', fx.kbs.url, '--tee', 'sim', '--config-dir', cfg, '--kbs-retries', '1', '--detach', '--name', names[w], '--json']);
    if (r.code === 0) started.push(names[w]);
    assert.equal(r.code, 0, `cocoon run ${w}: ${r.stderr}`);
  }
});

fx.after(async () => {
  for (const n of started) {
    const r = await cocoon(['stop', n, '-t', '5']);
    if (r.code !== 0) process.stderr.write(`cocoon stop ${n}: ${r.stderr}\n`);
  }
});

test('runc: python-web reaches Redis only through launcher mTLS; curl/openssl with the pinned root; others refused', { skip, timeout: 300_000 }, async () => {
  try {
    // 1. curl with the pinned deployment root → web ingress → python-web → egress mTLS → redis ingress → Redis
    const value = `round trip ${randomBytes(6).toString('hex')}`;
    const url = `https://${WEB_HOST}:${ports.webTls}/redis?key=k-${suffix}&value=${encodeURIComponent(value)}`;
    let res = { code: -1, out: '' };
    for (let i = 0; i < 150; i++) {
      res = await run('curl', [...curlBase(), '--cacert', join(fx.work, 'root.pem'), url]);
      if (res.code === 0 && res.out.includes('"value"')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(res.code, 0, res.out);
    const body = JSON.parse(res.out) as { ping: string; set: string; value: string; auth: boolean };
    assert.deepEqual(body, { ping: 'PONG', set: 'OK', key: `k-${suffix}`, value, auth: true });
    const logs = await logsOf();
    assert.match(logs, /tls egress 127\.0\.0\.1:\d+ → 127\.0\.0\.1:\d+: connected to test\/mtls#redis \(sim, INSECURE simulated TEE\)/);
    assert.match(logs, /tls ingress :\d+ → app :\d+: connection from [^,]+, test\/mtls#web \(sim, INSECURE simulated TEE\)/);
    assert.match(logs, /python-web listening on 127\.0\.0\.1:\d+ as uid 1000/, 'the app runs as the image user, not root');

    // 2. curl without the pinned root: verification fails (the deployment root is not a public CA)
    const noCa = await run('curl', [...curlBase(), url]);
    assert.notEqual(noCa.code, 0);
    assert.match(noCa.out, /certificate|SSL/i);
    assert.doesNotMatch(noCa.out, /round trip/);

    // 3. openssl s_client with the pinned root verifies the web ingress (no client certificate needed)
    const web = await sClient(ports.webTls, ['-servername', WEB_HOST, '-verify_hostname', WEB_HOST], `GET / HTTP/1.0\r\nHost: ${WEB_HOST}\r\n\r\n`);
    assert.match(web.out, /Verify return code: 0 \(ok\)/, web.out);
    assert.match(web.out, /"app": "python-web"/, web.out);

    // 4. Redis ingress, no client certificate (a non-attested client): the server certificate
    //    verifies, then the handshake is refused and no Redis reply comes back
    const noCert = await sClient(ports.redisTls, [], 'PING\r\n');
    assert.match(noCert.out, /Verify return code: 0 \(ok\)/, noCert.out);
    // the TLS 1.3 alert "certificate required", or a reset when the server closes with the
    // client's PING unread (the kernel then sends RST, which may overtake the alert)
    assert.match(noCert.out, /alert certificate required|alert number 116|errno=104/i, noCert.out);
    assert.equal(redisReplied(noCert.out), false, noCert.out);

    // 5. Redis ingress, a client certificate from another CA: refused
    const rogue = await sClient(ports.redisTls, ['-cert', join(fx.work, 'rogue.pem'), '-key', join(fx.work, 'rogue.key')], 'PING\r\n');
    // the ingress drops the connection without an alert: EOF, or a reset as above
    assert.match(rogue.out, /unexpected eof|errno=104|alert/i, rogue.out);
    assert.equal(redisReplied(rogue.out), false, rogue.out);

    // 6. plaintext to the TLS port: nothing
    assert.equal(await tcp('127.0.0.1', ports.redisTls, 'PING\r\n'), '');
    const refusals = await logsOf(names.redis);
    assert.match(refusals, /tls ingress :\d+ → app :\d+: refused a client from [^:]+: .*peer did not return a certificate/);
    assert.ok((refusals.match(/tls ingress :\d+ → app :\d+: refused a client from /g) ?? []).length >= 2, 'the refusals are logged');
    assert.doesNotMatch(refusals, /connection from [^,]+, (?!test\/mtls#web)/, 'the Redis ingress admitted only web');

    // 6b. a genuine deployment-CA certificate of another workload of the policy: the handshake
    //     verifies, then the allow list (`allow: [web]`) refuses it before a byte reaches Redis
    assert.match(refusals, /tls ingress :\d+ → app :\d+ listening \(client certificate required, allow test\/mtls#web\)/);
    const { material: intruder } = await fx.attestWithCsr({ policy: POLICY, workload: 'intruder', measurement: M_INTRUDER });
    assert.equal(await tlsAs(intruder, ports.redisTls, 'PING\r\n'), '');
    let denied = '';
    for (let i = 0; i < 50 && !/not in the allow list/.test(denied); i++) {
      await new Promise((r) => setTimeout(r, 100));
      denied = await logsOf(names.redis);
    }
    assert.match(denied, /tls ingress :\d+ → app :\d+: refused client [^,:]+: workload test\/mtls#intruder is not in the allow list of this ingress \(test\/mtls#web\)/);
    // and the foreign-CA client of step 5 is logged with the reason, not "socket hang up"
    assert.match(denied, /refused a client from 127\.0\.0\.1: certificate not issued by the deployment CA.*\(DEPTH_ZERO_SELF_SIGNED_CERT\)/);
    assert.doesNotMatch(denied, /socket hang up|BEGIN/);

    // 7. the plaintext Redis port. It is bound to 127.0.0.1, and with host networking that is
    //    the host's loopback: reachable from this host (Redis's password still applies), not
    //    from other machines — checked on a non-loopback address of the host when there is one.
    assert.match((await tcp('127.0.0.1', ports.redis, 'PING\r\n')) ?? 'refused', /NOAUTH/, 'host networking: the app port is on the host loopback');
    const external = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
    if (external) {
      assert.equal(await tcp(external, ports.redis, 'PING\r\n'), null, `redis plaintext port refused on ${external}`);
      assert.equal(await tcp(external, ports.egress, 'PING\r\n'), null, `egress port refused on ${external}`);
      assert.notEqual(await tcp(external, ports.redisTls, ''), null, `the TLS ingress listens on all interfaces (${external})`);
    }
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${await logsOf()}`, { cause: err });
  }
});
