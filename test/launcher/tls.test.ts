/**
 * Attested mutual TLS (docs/tls.md), in-process: a real KBS (sim verifier) issues workload
 * certificates for attested CSRs; the launcher's proxies carry an app's traffic only to and
 * from workloads the deployment CA vouches for.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import type { RunningKbs } from '../../src/kbs/app.js';
import type { OwnerClient } from '../../src/kbs/client/owner.js';
import { parseLaunchPlan, renderLaunchPlan } from '../../src/kbs/launch-plan.js';
import { createRootCa, generateKeyPairPem, issueLeaf } from '../../src/kbs/certs.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { isCocoonError } from '../../src/errors.js';
import { generateWorkloadKey, startPlanTls } from '../../src/launcher/tls/index.js';
import type { TlsMaterial } from '../../src/launcher/tls/index.js';
import { checkPeerIdentity, peerIdentity } from '../../src/launcher/tls/identity.js';
import { clientRefusalReason, startTlsProxies, verificationReason } from '../../src/launcher/tls/proxy.js';
import { parseTlsSpec } from '../../src/policy/tls.js';
import { M_CLIENT, M_SERVER, TlsDeployment, exchange, freePort, policy, startApp } from './tls-harness.js';

const M_OTHER = 'c3'.repeat(48);

const deployment = new TlsDeployment();
const { logLines, log } = deployment;
let work: string;
let kbs: RunningKbs;
let owner: OwnerClient;

/** What the launcher does: attest with a CSR, fetch the plan and (when it declares tls) the certificate. */
const attestWorkload = (pol: string, workload: string, measurement: string) => deployment.attest(kbs.url, pol, workload, measurement);

async function materialFor(pol: string, workload: string, measurement: string): Promise<TlsMaterial> {
  const { material } = await attestWorkload(pol, workload, measurement);
  assert.ok(material, `no workload certificate for ${pol}#${workload}`);
  return material;
}

/** A TLS client with an explicit key/cert (or none); resolves with the reply or the error. */
function tlsExchange(port: number, ca: string, cert?: { key: string; cert: string }): Promise<{ reply: string; error?: string }> {
  return new Promise((resolve) => {
    const s = tlsConnect({ port, host: '127.0.0.1', ca, checkServerIdentity: () => undefined, ...(cert ?? {}) });
    let reply = '';
    let error: string | undefined;
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(error ? { reply, error } : { reply });
    };
    const timer = setTimeout(done, 2000);
    s.on('secureConnect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      reply += d.toString();
      if (reply.includes('\n')) done();
    });
    s.on('error', (e) => {
      error = e.message;
      done();
    });
    s.on('close', done);
  });
}

/** A workload certificate (identity shop/redis#redis) from a CA that only looks like the deployment CA. */
async function rogueCertificate() {
  const kp = await generateKeyPairPem('P-256');
  const rogueCa = await generateKeyPairPem('P-384');
  const rogueRoot = await createRootCa(rogueCa.keys, { subject: 'CN=Cocoon deployment root CA, O=Cocoon', validMs: 86_400_000, now: new Date() });
  const rogueLeaf = await issueLeaf({ cert: rogueRoot, key: rogueCa.keys.privateKey }, kp.keys.publicKey, {
    subject: 'CN=redis.redis.shop',
    sans: [],
    usage: 'both',
    keyUsage: ['digitalSignature'],
    validMs: 86_400_000,
    now: new Date(),
    identity: { v: 1, policy: 'shop/redis', version: 1, workload: 'redis', tee: 'sim', insecure: true },
  });
  return { kp, rogueRoot, rogueLeaf };
}

before(async () => {
  await deployment.start('cocoon-tls-');
  ({ work, kbs, owner } = deployment);
});

after(() => deployment.close());

test('policy tls: parsed strictly, carried in the launch plan, errors name the field', () => {
  const yaml = policy('shop/redis', {
    redis: { m: M_SERVER, tls: 'ingress:\n  - { listen: 6380, to: 6379, clientCert: required }\negress:\n  - { listen: 7000, to: "db.example:5432", expect: { policy: shop/db, workload: pg } }' },
  });
  const p = parsePolicy(yaml);
  const tls = p.workloads.redis?.tls;
  assert.deepEqual(tls?.ingress, [{ listen: 6380, to: 6379, clientCert: 'required' }]);
  assert.deepEqual(tls?.egress, [{ listen: 7000, to: 'db.example:5432', host: 'db.example', port: 5432, expect: { policy: 'shop/db', workload: 'pg' } }]);
  const wire = renderLaunchPlan(p, 'redis', true, () => new Uint8Array(32));
  const plan = parseLaunchPlan(Buffer.from(JSON.stringify(wire)));
  assert.deepEqual(plan.tls, tls);
  // clientCert defaults to required
  assert.equal(parsePolicy(policy('a/b', { w: { m: M_SERVER, tls: 'ingress: [{ listen: 443, to: 80 }]' } })).workloads.w?.tls?.ingress[0]?.clientCert, 'required');

  const bad: [string, RegExp][] = [
    ['ingress: [{ listen: 443, to: 80, clientCert: maybe }]', /clientCert/],
    ['ingress: [{ listen: 70000, to: 80 }]', /listen/],
    ['ingress: [{ listen: 443, to: 80 }]\negress: [{ listen: 443, to: "h:1", expect: { policy: a/b, workload: w } }]', /already used|egress/],
    ['egress: [{ listen: 7000, to: "no-port", expect: { policy: a/b, workload: w } }]', /to/],
    ['egress: [{ listen: 7000, to: "h:1", expect: { policy: nope, workload: w } }]', /policy/],
    ['egress: [{ listen: 7000, to: "h:1" }]', /expect/],
    ['ingress: [{ listen: 443, to: 80, extra: 1 }]', /extra|unknown/],
    ['{}', /ingress or egress/],
  ];
  for (const [t, re] of bad) {
    assert.throws(
      () => parsePolicy(policy('a/b', { w: { m: M_SERVER, tls: t } })),
      (e: unknown) => isCocoonError(e, 'POLICY_INVALID') && re.test(e.message) && /workloads\.w\.tls/.test(e.message),
      t,
    );
  }
  // the launcher refuses a malformed tls member in the plan
  assert.throws(() => parseLaunchPlan(Buffer.from(JSON.stringify({ ...wire, tls: { ingress: [{ listen: 0, to: 1 }] } }))), (e: unknown) => isCocoonError(e, 'INPUT_MALFORMED'));
});

let ingressPort: number;
let serverMaterial: TlsMaterial;
let clientMaterial: TlsMaterial;

test('attested workloads get certificates; the identity check accepts exactly the expected workload', async () => {
  ingressPort = await freePort();
  const egressPort = await freePort();
  await owner.applyPolicy(policy('shop/redis', { redis: { m: M_SERVER, tls: `ingress: [{ listen: ${ingressPort}, to: 6379, clientCert: required }]` } }));
  await owner.putSecret('shop/redis', 'layer-key', randomBytes(32));
  await owner.applyPolicy(policy('shop/web', { app: { m: M_CLIENT, tls: `egress: [{ listen: ${egressPort}, to: "127.0.0.1:${ingressPort}", expect: { policy: shop/redis, workload: redis } }]` }, plain: { m: M_OTHER } }));
  await owner.putSecret('shop/web', 'layer-key', randomBytes(32));

  const server = await attestWorkload('shop/redis', 'redis', M_SERVER);
  assert.ok(server.plan.tls, 'the plan declares tls');
  assert.ok(server.fetched.resources['shop/redis/workload-cert'], 'the certificate was fetched in the same session');
  assert.ok(server.material);
  serverMaterial = server.material;
  clientMaterial = await materialFor('shop/web', 'app', M_CLIENT);
  // a workload without tls does not fetch a certificate
  const plain = await attestWorkload('shop/web', 'plain', M_OTHER);
  assert.equal(plain.fetched.resources['shop/web/workload-cert'], undefined);

  const der = (pem: string) => Buffer.from(pem.split('-----END CERTIFICATE-----')[0]!.replace(/-----BEGIN CERTIFICATE-----|\s+/g, ''), 'base64');
  const sid = checkPeerIdentity(der(serverMaterial.certChainPem), { policy: 'shop/redis', workload: 'redis' });
  assert.deepEqual(sid, { policy: 'shop/redis', workload: 'redis', tee: 'sim', insecure: true });
  assert.throws(() => checkPeerIdentity(der(clientMaterial.certChainPem), { policy: 'shop/redis', workload: 'redis' }), (e: unknown) => isCocoonError(e, 'TLS_PEER_REJECTED') && /shop\/web#app, expected shop\/redis#redis/.test(e.message));
  assert.throws(() => checkPeerIdentity(der(serverMaterial.certChainPem), { policy: 'shop/redis', workload: 'other' }), (e: unknown) => isCocoonError(e, 'TLS_PEER_REJECTED'));
  assert.throws(() => peerIdentity(der(serverMaterial.rootPem)), (e: unknown) => isCocoonError(e, 'TLS_PEER_REJECTED') && /no Cocoon workload-identity/.test(e.message));
  assert.throws(() => peerIdentity(Buffer.from('junk')), (e: unknown) => isCocoonError(e, 'TLS_PEER_REJECTED'));
  assert.equal(serverMaterial.rootPem.trim(), (await (await fetch(`${kbs.url}/cocoon/v1/ca`)).json() as { root: string }).root.trim(), 'the trust anchor is the deployment root');
});

test('two workloads talk only through launcher-provided mTLS; unattested clients are refused', async () => {
  const app = await startApp();
  const redisPlan = (await attestWorkload('shop/redis', 'redis', M_SERVER)).plan;
  const webPlan = (await attestWorkload('shop/web', 'app', M_CLIENT)).plan;
  assert.ok(redisPlan.tls && webPlan.tls);
  const serverTls = await startTlsProxies({ ingress: [{ ...redisPlan.tls.ingress[0]!, to: app.port }], egress: [] }, serverMaterial, log, { ingressHost: '127.0.0.1' });
  const clientTls = await startTlsProxies(webPlan.tls, clientMaterial, log);
  const egressPort = webPlan.tls.egress[0]!.listen;
  try {
    // the app of "web" speaks plaintext to 127.0.0.1:egress; it arrives at "redis" over mTLS
    assert.equal(await exchange(egressPort, 'PING\r\n'), '+PONG\r\n', logLines.join(''));
    assert.ok(logLines.some((l) => /tls egress .* connected to shop\/redis#redis \(sim, INSECURE/.test(l)));
    assert.ok(logLines.some((l) => /tls ingress .* connection from .* shop\/web#app/.test(l)));

    // no client certificate
    const none = await tlsExchange(ingressPort, serverMaterial.rootPem);
    assert.equal(none.reply, '', 'no data without a client certificate');
    // a certificate from another CA
    const { kp, rogueRoot, rogueLeaf } = await rogueCertificate();
    const rogue = await tlsExchange(ingressPort, serverMaterial.rootPem, { key: kp.key, cert: rogueLeaf.toString('pem') });
    assert.equal(rogue.reply, '', 'no data with a certificate from another CA');
    assert.ok(logLines.some((l) => /refused a client/.test(l)));
    // a deployment-CA workload certificate is accepted at ingress
    const good = await tlsExchange(ingressPort, serverMaterial.rootPem, { key: clientMaterial.keyPem, cert: clientMaterial.certChainPem });
    assert.equal(good.reply, '+PONG\r\n', JSON.stringify(good));

    // egress refuses a server that is not the expected workload (a genuine certificate naming another workload)
    const wrongPort = await freePort();
    const wrongIngress = await freePort();
    const impostor = await startTlsProxies({ ingress: [{ listen: wrongIngress, to: app.port, clientCert: 'none' }], egress: [] }, clientMaterial, log, { ingressHost: '127.0.0.1' });
    const wrongEgress = await startTlsProxies({ ingress: [], egress: [{ listen: wrongPort, to: `127.0.0.1:${wrongIngress}`, host: '127.0.0.1', port: wrongIngress, expect: { policy: 'shop/redis', workload: 'redis' } }] }, clientMaterial, log);
    try {
      logLines.length = 0;
      assert.equal(await exchange(wrongPort, 'PING\r\n'), '');
      assert.ok(logLines.some((l) => /refused the peer \(expected shop\/redis#redis\).*peer is shop\/web#app/.test(l)), logLines.join(''));
    } finally {
      await wrongEgress.close();
      await impostor.close();
    }
    // egress refuses a server whose certificate comes from another CA
    const rogueServerPort = await freePort();
    const rogueEgressPort = await freePort();
    const rogueServer = await startTlsProxies({ ingress: [{ listen: rogueServerPort, to: app.port, clientCert: 'none' }], egress: [] }, { keyPem: kp.key, certChainPem: rogueLeaf.toString('pem'), rootPem: rogueRoot.toString('pem'), notAfter: rogueLeaf.notAfter }, log, { ingressHost: '127.0.0.1' });
    const rogueEgress = await startTlsProxies({ ingress: [], egress: [{ listen: rogueEgressPort, to: `127.0.0.1:${rogueServerPort}`, host: '127.0.0.1', port: rogueServerPort, expect: { policy: 'shop/redis', workload: 'redis' } }] }, clientMaterial, log);
    try {
      logLines.length = 0;
      assert.equal(await exchange(rogueEgressPort, 'PING\r\n'), '');
      assert.ok(logLines.some((l) => /refused the peer/.test(l)), logLines.join(''));
    } finally {
      await rogueEgress.close();
      await rogueServer.close();
    }

    // openssl s_client with the deployment root and a workload certificate verifies the ingress
    if (existsSync('/usr/bin/openssl')) {
      const dir = join(work, 'ossl');
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'root.pem'), serverMaterial.rootPem);
      const [leaf, ...intermediates] = clientMaterial.certChainPem.split(/(?<=-----END CERTIFICATE-----\n)/).filter((p) => p.includes('BEGIN'));
      await writeFile(join(dir, 'cert.pem'), leaf ?? '');
      await writeFile(join(dir, 'chain.pem'), intermediates.join(''));
      await writeFile(join(dir, 'key.pem'), clientMaterial.keyPem);
      const out = await new Promise<{ stdout: string }>((resolve) => {
        const args = ['s_client', '-connect', `127.0.0.1:${ingressPort}`, '-CAfile', join(dir, 'root.pem'), '-cert', join(dir, 'cert.pem'), '-cert_chain', join(dir, 'chain.pem'), '-key', join(dir, 'key.pem'), '-verify_return_error', '-ign_eof'];
        const child = execFile('openssl', args, { timeout: 10_000 }, (_err, stdout, stderr) => resolve({ stdout: stdout + stderr }));
        child.stdin?.write('PING\r\n');
        setTimeout(() => child.kill('SIGTERM'), 2000);
      });
      assert.match(out.stdout, /\+PONG/, out.stdout);
      assert.match(out.stdout, /Verify return code: 0 \(ok\)/, out.stdout);
    }
  } finally {
    await clientTls.close();
    await serverTls.close();
    await new Promise<void>((r) => app.server.close(() => r()));
  }
});

test('ingress allow list: only the named workloads get through; every refusal says why', async () => {
  const [M_DB, M_WEB, M_BATCH] = ['d4'.repeat(48), 'e5'.repeat(48), 'f6'.repeat(48)];
  const dbPort = await freePort();
  const egress = (port: number) => `egress: [{ listen: ${port}, to: "127.0.0.1:${dbPort}", expect: { policy: shop/mall, workload: db } }]`;
  await owner.applyPolicy(
    policy('shop/mall', {
      db: { m: M_DB, tls: `ingress: [{ listen: ${dbPort}, to: 5432, clientCert: required, allow: [web] }]` },
      web: { m: M_WEB, tls: egress(await freePort()) },
      batch: { m: M_BATCH, tls: egress(await freePort()) },
    }),
  );
  await owner.putSecret('shop/mall', 'layer-key', randomBytes(32));
  const db = await attestWorkload('shop/mall', 'db', M_DB);
  // `allow: [web]` reaches the launcher as this policy's workload
  assert.deepEqual(db.plan.tls?.ingress[0]?.allow, [{ policy: 'shop/mall', workload: 'web' }]);
  assert.ok(db.material);
  const dbMaterial = db.material;
  const web = await materialFor('shop/mall', 'web', M_WEB);
  const batch = await materialFor('shop/mall', 'batch', M_BATCH);
  const app = await startApp();
  const only = await startTlsProxies({ ingress: [{ ...db.plan.tls!.ingress[0]!, to: app.port }], egress: [] }, dbMaterial, log, { ingressHost: '127.0.0.1' });
  // the same ingress naming another policy's workload as well (as the launch plan writes it)
  const twoPort = await freePort();
  const two = await startTlsProxies(parseTlsSpec({ ingress: [{ listen: twoPort, to: app.port, allow: ['shop/mall#web', 'shop/web#app'] }] }), dbMaterial, log, { ingressHost: '127.0.0.1' });
  const as = (m: TlsMaterial) => ({ key: m.keyPem, cert: m.certChainPem });
  const refusedWith = (re: RegExp) => assert.ok(logLines.some((l) => re.test(l)), `${re}\n${logLines.join('')}`);
  try {
    refusedWith(new RegExp(`tls ingress :${dbPort} → app :\\d+ listening \\(client certificate required, allow shop/mall#web\\)`));
    logLines.length = 0;
    // the allowed workload of the same policy
    assert.equal((await tlsExchange(dbPort, dbMaterial.rootPem, as(web))).reply, '+PONG\r\n');
    refusedWith(/tls ingress :\d+ → app :\d+: connection from 127\.0\.0\.1, shop\/mall#web \(sim, INSECURE simulated TEE\)/);
    // another workload of the same policy and CA
    assert.equal((await tlsExchange(dbPort, dbMaterial.rootPem, as(batch))).reply, '');
    refusedWith(/refused client 127\.0\.0\.1: workload shop\/mall#batch is not in the allow list of this ingress \(shop\/mall#web\)/);
    // another policy's workload, refused unless named
    assert.equal((await tlsExchange(dbPort, dbMaterial.rootPem, as(clientMaterial))).reply, '');
    refusedWith(/refused client 127\.0\.0\.1: workload shop\/web#app is not in the allow list of this ingress \(shop\/mall#web\)/);
    assert.equal((await tlsExchange(twoPort, dbMaterial.rootPem, as(clientMaterial))).reply, '+PONG\r\n');
    refusedWith(new RegExp(`tls ingress :${twoPort} → app :\\d+: connection from 127\\.0\\.0\\.1, shop/web#app`));
    assert.equal((await tlsExchange(twoPort, dbMaterial.rootPem, as(web))).reply, '+PONG\r\n');
    assert.equal((await tlsExchange(twoPort, dbMaterial.rootPem, as(batch))).reply, '');
    refusedWith(/workload shop\/mall#batch is not in the allow list of this ingress \(shop\/mall#web, shop\/web#app\)/);

    // refusals during the handshake name the reason and the client's address
    logLines.length = 0;
    assert.equal((await tlsExchange(dbPort, dbMaterial.rootPem)).reply, '');
    const { kp, rogueLeaf } = await rogueCertificate();
    assert.equal((await tlsExchange(dbPort, dbMaterial.rootPem, { key: kp.key, cert: rogueLeaf.toString('pem') })).reply, '');
    // a genuine leaf sent without its intermediate does not chain to the root either
    assert.equal((await tlsExchange(dbPort, dbMaterial.rootPem, { key: web.keyPem, cert: web.certChainPem.split(/(?<=-----END CERTIFICATE-----\n)/)[0]! })).reply, '');
    assert.equal(await exchange(dbPort, 'PING\r\n'), '');
    // (the server logs a refusal when it has closed the connection, maybe just after the client saw it)
    for (let i = 0; i < 200 && logLines.filter((l) => /refused a client from 127\.0\.0\.1: /.test(l)).length < 4; i++) await new Promise((r) => setTimeout(r, 25));
    refusedWith(/refused a client from 127\.0\.0\.1: no client certificate \(peer did not return a certificate\)/);
    refusedWith(/refused a client from 127\.0\.0\.1: certificate not issued by the deployment CA, or sent without its intermediate \((UNABLE_TO_GET_ISSUER_CERT_LOCALLY|UNABLE_TO_VERIFY_LEAF_SIGNATURE)\)/);
    assert.equal(logLines.filter((l) => /certificate not issued by the deployment CA/.test(l)).length, 2, logLines.join(''));
    refusedWith(/refused a client from 127\.0\.0\.1: not a TLS client \(wrong version number\)/);
    assert.doesNotMatch(logLines.join(''), /socket hang up|BEGIN|PRIVATE/);
  } finally {
    await only.close();
    await two.close();
    await new Promise<void>((r) => app.server.close(() => r()));
  }
  // the reasons, one by one
  assert.match(verificationReason('DEPTH_ZERO_SELF_SIGNED_CERT'), /^certificate not issued by the deployment CA/);
  assert.match(verificationReason('CERT_HAS_EXPIRED'), /expired/);
  assert.match(clientRefusalReason(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' })), /closed the connection during the TLS handshake/);
  assert.match(clientRefusalReason(Object.assign(new Error('x:error:0A00009C:SSL routines:ssl3_get_record:http request:../ssl3_record.c:341:'), { code: 'ERR_SSL_HTTP_REQUEST' })), /^not a TLS client \(http request\)$/);
  assert.match(clientRefusalReason(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }), 'SELF_SIGNED_CERT_IN_CHAIN'), /not issued by the deployment CA/);
});

test('startPlanTls: no tls → nothing; a port in use → TLS_PROXY_FAILED and nothing left listening', async () => {
  const key = await generateWorkloadKey();
  const plan = { policy: 'shop/web', workload: 'plain', insecure: true, layerKey: Buffer.alloc(32), env: {}, files: [], args: null };
  assert.equal(await startPlanTls(plan, {}, key, log), undefined);
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  const busy = (blocker.address() as AddressInfo).port;
  const first = await freePort();
  await assert.rejects(
    startTlsProxies({ ingress: [], egress: [{ listen: first, to: 'h:1', host: 'h', port: 1, expect: { policy: 'a/b', workload: 'w' } }, { listen: busy, to: 'h:1', host: 'h', port: 1, expect: { policy: 'a/b', workload: 'w' } }] }, serverMaterial, log),
    (e: unknown) => isCocoonError(e, 'TLS_PROXY_FAILED'),
  );
  // the first listener was closed again
  const probe = createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject);
    probe.listen(first, '127.0.0.1', resolve);
  });
  await new Promise<void>((r) => probe.close(() => r()));
  await new Promise<void>((r) => blocker.close(() => r()));
});
