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
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer, connect as netConnect } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { parseLaunchPlan, renderLaunchPlan } from '../../src/kbs/launch-plan.js';
import { createRootCa, generateKeyPairPem, issueLeaf } from '../../src/kbs/certs.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { SimAttester } from '../../src/attester/sim.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { isCocoonError } from '../../src/errors.js';
import { createLauncherLog } from '../../src/launcher/log.js';
import { generateWorkloadKey, startPlanTls, workloadCertIfTls } from '../../src/launcher/tls/index.js';
import type { TlsMaterial } from '../../src/launcher/tls/index.js';
import { parseWorkloadCert } from '../../src/launcher/tls/material.js';
import { checkPeerIdentity, peerIdentity } from '../../src/launcher/tls/identity.js';
import { startTlsProxies } from '../../src/launcher/tls/proxy.js';

const M_SERVER = 'a1'.repeat(48);
const M_CLIENT = 'b2'.repeat(48);
const M_OTHER = 'c3'.repeat(48);

let work: string;
let kbs: RunningKbs;
let owner: OwnerClient;
let sim: SimAttester;
const logLines: string[] = [];
const log = createLauncherLog({ write: (s: string) => logLines.push(s) } as unknown as NodeJS.WritableStream);

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function policy(name: string, workloads: Record<string, { m: string; tls?: string }>): string {
  let y = `name: ${name}\nsecrets:\n  layer-key: { kind: layer-key }\nworkloads:\n`;
  for (const [w, v] of Object.entries(workloads)) {
    y += `  ${w}:\n    accept:\n      - tee: [sim]\n        measurement: "${v.m}"\n`;
    if (v.tls) y += `    tls:\n${v.tls.replace(/^/gm, '      ')}\n`;
  }
  return y;
}

/** What the launcher does: attest with a CSR, fetch the plan and (when it declares tls) the certificate. */
async function attestWorkload(pol: string, workload: string, measurement: string) {
  const key = await generateWorkloadKey();
  const planName = `${pol}/launch-plan`;
  const fetched = await attestAndFetch({
    kbsUrl: kbs.url,
    tee: 'sim',
    evidenceProvider: (rd) => sim.getEvidence(rd, measurement),
    initData: { policy: pol, workload },
    resources: [planName],
    csr: key.csrPem,
    moreResources: workloadCertIfTls(planName),
    retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
  });
  return { key, fetched, plan: parseLaunchPlan(fetched.resources[planName]) };
}

async function materialFor(pol: string, workload: string, measurement: string): Promise<TlsMaterial> {
  const { key, fetched } = await attestWorkload(pol, workload, measurement);
  return parseWorkloadCert(fetched.resources[`${pol}/workload-cert`], key.keyPem);
}

/** The "app": a line server answering PONG to PING and echoing anything else. */
async function startApp(): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => {
    s.on('error', () => s.destroy());
    s.on('data', (d) => s.write(d.toString() === 'PING\r\n' ? '+PONG\r\n' : d));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

/** Sends `data` through a plaintext connection; resolves with what came back before close or 2 s. */
function exchange(port: number, data: string): Promise<string> {
  return new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1');
    let got = '';
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, 2000);
    s.on('connect', () => s.write(data));
    s.on('data', (d) => {
      got += d.toString();
      if (got.includes('\n')) done();
    });
    s.on('error', done);
    s.on('close', done);
  });
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

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'cocoon-tls-'));
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const platform = await createSimPlatform(join(cfg, 'sim'));
  sim = new SimAttester(platform.platformDir);
  kbs = await startKbs({
    dataDir: join(work, 'kbs'),
    port: 0,
    allowSim: true,
    owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))],
    verifier: createBrokerVerifier({ simRoots: [platform.rootPem] }),
    logger: false,
  });
  owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
});

after(async () => {
  await kbs?.close();
  await rm(work, { recursive: true, force: true });
});

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
  serverMaterial = parseWorkloadCert(server.fetched.resources['shop/redis/workload-cert'], server.key.keyPem);
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
