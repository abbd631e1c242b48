/**
 * Revocation and renewal of the launcher's attested-TLS certificates (docs/tls.md "Revocation
 * and renewal"), in-process against real KBSes (sim verifier): the proxies refuse a revoked
 * peer after a CRL refresh, reject tampered and foreign-signed CRLs, keep the last good CRL
 * until its nextUpdate and then fail closed, and swap in a renewed certificate without
 * dropping open connections.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { x509 } from '../../src/crypto/x509.js';
import type { RunningKbs } from '../../src/kbs/app.js';
import type { OwnerClient } from '../../src/kbs/client/owner.js';
import type { LaunchPlan } from '../../src/kbs/launch-plan.js';
import { createRootCa, createSubCa, generateKeyPairPem, pem } from '../../src/kbs/certs.js';
import { isCocoonError } from '../../src/errors.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { diffPolicies } from '../../src/policy/diff.js';
import { workloadCertGranted } from '../../src/policy/types.js';
import { createLauncherLog } from '../../src/launcher/log.js';
import { DEFAULT_TLS_LIFECYCLE, launcherConfigFromEnv } from '../../src/launcher/config.js';
import { CertRenewer, CrlMonitor, renewViaAttestation, startPlanTls, verifyCrl } from '../../src/launcher/tls/index.js';
import type { TlsMaterial } from '../../src/launcher/tls/index.js';
import { leafSerial } from '../../src/launcher/tls/lifecycle.js';
import { startTlsProxies } from '../../src/launcher/tls/proxy.js';
import { M_CLIENT, M_SERVER, TlsDeployment, exchange, freePort, policy, startApp, until } from './tls-harness.js';

const deployment = new TlsDeployment();
const { logLines, log } = deployment;
let kbs: RunningKbs;
let shortKbs: RunningKbs;
let owner: OwnerClient;

/** `TlsDeployment.attest` against the KBS at `url`, for a workload that declares tls (its certificate comes with the plan). */
async function attestWorkload(url: string, pol: string, workload: string, measurement: string) {
  const attested = await deployment.attest(url, pol, workload, measurement);
  assert.ok(attested.material, `no workload certificate for ${pol}#${workload}`);
  return { ...attested, material: attested.material };
}

/** A persistent TLS client: `ask` sends PING and resolves with the reply ('' on error/close). */
async function tlsClient(port: number, ca: string, cert?: { key: string; cert: string }): Promise<{ socket: TLSSocket; serial: string; ask(): Promise<string>; error?: string }> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ port, host: '127.0.0.1', ca, checkServerIdentity: () => undefined, ...(cert ?? {}) });
    const ask = () =>
      new Promise<string>((res) => {
        if (socket.destroyed) return res('');
        const t = setTimeout(() => res(''), 2000);
        socket.once('data', (d) => {
          clearTimeout(t);
          res(d.toString());
        });
        socket.once('close', () => res(''));
        socket.write('PING\r\n');
      });
    socket.once('secureConnect', () => resolve({ socket, serial: socket.getPeerCertificate().serialNumber, ask }));
    socket.once('error', (e) => resolve({ socket, serial: '', ask: async () => '', error: e.message }));
  });
}

/** A single exchange; '' when the ingress refused. */
async function pingOnce(port: number, ca: string, cert?: { key: string; cert: string }): Promise<string> {
  const c = await tlsClient(port, ca, cert);
  try {
    return await c.ask();
  } finally {
    c.socket.destroy();
  }
}

function withIngressTo(plan: LaunchPlan, appPort: number, clientCert?: 'required' | 'none'): LaunchPlan {
  assert.ok(plan.tls);
  return { ...plan, tls: { ingress: plan.tls.ingress.map((i) => ({ ...i, to: appPort, ...(clientCert ? { clientCert } : {}) })), egress: [] } };
}

before(async () => {
  await deployment.start('cocoon-tls-life-');
  ({ kbs, owner } = deployment);
  // a second KBS whose workload certificates live 4 s (renewal)
  const short = await deployment.startKbs('kbs-short', { workloadCertValidMs: 4000 });
  shortKbs = short.kbs;
  for (const o of [owner, short.owner]) {
    await o.applyPolicy(policy('shop/redis', { redis: { m: M_SERVER, tls: `ingress: [{ listen: ${await freePort()}, to: 6379, clientCert: required }]` } }));
    await o.putSecret('shop/redis', 'layer-key', randomBytes(32));
    await o.applyPolicy(policy('shop/web', { app: { m: M_CLIENT, tls: `egress: [{ listen: ${await freePort()}, to: "127.0.0.1:1", expect: { policy: shop/redis, workload: redis } }]` } }));
    await o.putSecret('shop/web', 'layer-key', randomBytes(32));
  }
});

after(() => deployment.close());

test('policy: workloadCert is a strict boolean grant; tls implies it; diff shows it', () => {
  const base = policy('a/b', { plain: { m: M_SERVER }, proxied: { m: M_SERVER, tls: 'ingress: [{ listen: 443, to: 80 }]' } });
  const granted = base.replace('  plain:\n    accept:', '  plain:\n    workloadCert: true\n    accept:');
  const p0 = parsePolicy(base);
  const p1 = parsePolicy(granted);
  assert.equal(workloadCertGranted(p0.workloads.plain!), false);
  assert.equal(workloadCertGranted(p0.workloads.proxied!), true);
  assert.equal(workloadCertGranted(p1.workloads.plain!), true);
  assert.equal(parsePolicy(granted.replace('workloadCert: true', 'workloadCert: false')).workloads.plain?.workloadCert, undefined);
  assert.deepEqual(diffPolicies(p0, p1), [{ op: 'added', path: 'workloads.plain.workloadCert', to: true }]);
  assert.throws(() => parsePolicy(granted.replace('workloadCert: true', 'workloadCert: "yes"')), (e: unknown) => isCocoonError(e, 'POLICY_INVALID') && /workloads\.plain\.workloadCert/.test(e.message));
});

test('launcher env: TLS lifecycle settings have defaults and bounds', () => {
  assert.deepEqual(launcherConfigFromEnv({ COCOON_KBS_URL: 'http://k' }).tls, DEFAULT_TLS_LIFECYCLE);
  const c = launcherConfigFromEnv({ COCOON_KBS_URL: 'http://k', COCOON_TLS_CRL_REFRESH_MS: '250', COCOON_TLS_RENEW_AT_PERCENT: '50', COCOON_TLS_RENEW_RETRY_MS: '20', COCOON_TLS_RENEW_RETRY_MAX_MS: '100' });
  assert.deepEqual(c.tls, { crlRefreshMs: 250, renewAtPercent: 50, renewRetryMs: 20, renewRetryMaxMs: 100 });
  for (const env of [{ COCOON_TLS_RENEW_AT_PERCENT: '100' }, { COCOON_TLS_RENEW_AT_PERCENT: '5' }, { COCOON_TLS_CRL_REFRESH_MS: '10' }, { COCOON_TLS_RENEW_RETRY_MS: 'x' }]) {
    assert.throws(() => launcherConfigFromEnv({ COCOON_KBS_URL: 'http://k', ...env }), (e: unknown) => isCocoonError(e, 'BAD_USAGE'), JSON.stringify(env));
  }
});

test('CRL verification: genuine accepted; tampered, foreign-signed, expired, oversized and malformed CRLs rejected', async () => {
  const ca = (await (await fetch(`${kbs.url}/cocoon/v1/ca`)).json()) as { root: string; intermediate: string };
  const crlPem = await (await fetch(`${kbs.url}/cocoon/v1/ca/crl`)).text();
  const now = new Date();
  const good = verifyCrl(crlPem, ca.intermediate, ca.root, now);
  assert.ok(good.nextUpdate.getTime() > now.getTime());

  const der = Buffer.from(crlPem.replace(/-----[^-]+-----|\s+/g, ''), 'base64');
  const reencode = (b: Buffer) => pem('X509 CRL', b);
  // a flipped byte in the signed part (the thisUpdate time) or in the signature
  const tbsFlip = Buffer.from(der);
  const at = tbsFlip.indexOf(Buffer.from(String(now.getUTCFullYear()).slice(2)));
  tbsFlip[at + 3] = (tbsFlip[at + 3] as number) ^ 0x01;
  const sigFlip = Buffer.from(der);
  sigFlip[sigFlip.length - 5] = (sigFlip[sigFlip.length - 5] as number) ^ 0xff;
  assert.ok(at > 0);
  for (const bad of [tbsFlip, sigFlip]) assert.throws(() => verifyCrl(reencode(bad), ca.intermediate, ca.root, now), (e: unknown) => isCocoonError(e, 'CRL_INVALID') && /signature does not verify/.test(e.message));

  // a rogue CA with the same names: its CRL does not verify with the real intermediate, and its intermediate does not chain to the root
  const rogueRootKp = await generateKeyPairPem('P-384');
  const rogueRoot = await createRootCa(rogueRootKp.keys, { subject: new x509.X509Certificate(ca.root).subject, validMs: 86_400_000, now });
  const rogueInterKp = await generateKeyPairPem('P-384');
  const rogueInter = await createSubCa({ cert: rogueRoot, key: rogueRootKp.keys.privateKey }, rogueInterKp.keys.publicKey, { subject: new x509.X509Certificate(ca.intermediate).subject, validMs: 86_400_000, now });
  const rogueCrl = await x509.X509CrlGenerator.create({ issuer: rogueInter.subject, thisUpdate: now, nextUpdate: new Date(now.getTime() + 3_600_000), signingKey: rogueInterKp.keys.privateKey, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' }, entries: [] });
  const roguePem = pem('X509 CRL', new Uint8Array(rogueCrl.rawData));
  assert.throws(() => verifyCrl(roguePem, ca.intermediate, ca.root, now), (e: unknown) => isCocoonError(e, 'CRL_INVALID') && /signature/.test(e.message));
  assert.throws(() => verifyCrl(roguePem, rogueInter.toString('pem'), ca.root, now), (e: unknown) => isCocoonError(e, 'CRL_INVALID') && /not a CA signed by the deployment root/.test(e.message));
  // expired (past nextUpdate)
  assert.throws(() => verifyCrl(crlPem, ca.intermediate, ca.root, new Date(good.nextUpdate.getTime() + 1)), (e: unknown) => isCocoonError(e, 'CRL_EXPIRED'));
  // size and shape
  assert.throws(() => verifyCrl('x'.repeat(3 * 1024 * 1024), ca.intermediate, ca.root, now), (e: unknown) => isCocoonError(e, 'CRL_INVALID') && /larger/.test(e.message));
  assert.throws(() => verifyCrl(crlPem + crlPem, ca.intermediate, ca.root, now), (e: unknown) => isCocoonError(e, 'CRL_INVALID'));
  assert.throws(() => verifyCrl(reencode(Buffer.from('not der at all')), ca.intermediate, ca.root, now), (e: unknown) => isCocoonError(e, 'CRL_INVALID'));
  assert.throws(() => verifyCrl(reencode(Buffer.concat([der, Buffer.from([0])])), ca.intermediate, ca.root, now), (e: unknown) => isCocoonError(e, 'CRL_INVALID'));
});

test('CRL monitor: a failed or tampered refresh keeps the last good CRL until its nextUpdate, then every peer is refused', async () => {
  const ca = (await (await fetch(`${kbs.url}/cocoon/v1/ca`)).json()) as { root: string };
  let mode: 'ok' | 'down' | 'tamper' = 'ok';
  const fetchImpl: typeof fetch = async (input, init) => {
    if (mode === 'down') throw new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } });
    const res = await fetch(input, init);
    if (mode === 'tamper' && String(input).endsWith('/ca/crl')) {
      const text = await res.text();
      const der = Buffer.from(text.replace(/-----[^-]+-----|\s+/g, ''), 'base64');
      der[der.length - 3] = (der[der.length - 3] as number) ^ 0xff;
      return new Response(pem('X509 CRL', der), { status: 200 });
    }
    return res;
  };
  let clock = Date.now();
  const lines: string[] = [];
  const mlog = createLauncherLog({ write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream);
  const m = new CrlMonitor({ kbsUrl: kbs.url, rootPem: ca.root, refreshMs: 60_000, timeoutMs: 5000, log: mlog, now: () => new Date(clock), fetchImpl });
  assert.throws(() => m.check('01'), (e: unknown) => isCocoonError(e, 'TLS_PEER_REJECTED') && /no current CRL/.test(e.message), 'fail closed before the first CRL');
  assert.equal(await m.refresh(), true);
  m.check('01');
  const nextUpdate = m.crl!.nextUpdate.getTime();
  mode = 'down';
  assert.equal(await m.refresh(), false);
  assert.ok(lines.some((l) => /CRL refresh failed .*keeping the last good CRL until/.test(l)), lines.join(''));
  m.check('01');
  mode = 'tamper';
  assert.equal(await m.refresh(), false);
  assert.ok(lines.some((l) => /CRL_INVALID: CRL signature does not verify/.test(l)), lines.join(''));
  m.check('01');
  clock = nextUpdate + 1;
  mode = 'down';
  assert.equal(await m.refresh(), false);
  assert.throws(() => m.check('01'), (e: unknown) => isCocoonError(e, 'TLS_PEER_REJECTED') && /expired/.test(e.message));
  assert.ok(lines.some((l) => /ERROR.*CRL expired at .* failing closed/.test(l)), lines.join(''));
  m.stop();
});

test('a revoked client certificate is refused by the ingress after the next CRL refresh', async () => {
  const app = await startApp();
  const server = await attestWorkload(kbs.url, 'shop/redis', 'redis', M_SERVER);
  const client = await attestWorkload(kbs.url, 'shop/web', 'app', M_CLIENT);
  const other = await attestWorkload(kbs.url, 'shop/web', 'app', M_CLIENT);
  const proxies = await startPlanTls(withIngressTo(server.plan, app.port), server.fetched.resources, server.key, log, {
    ingressHost: '127.0.0.1',
    lifecycle: { kbsUrl: kbs.url, settings: { ...DEFAULT_TLS_LIFECYCLE, crlRefreshMs: 150 }, timeoutMs: 5000, renew: () => Promise.reject(new Error('not in this test')) },
  });
  assert.ok(proxies?.crl);
  const port = withIngressTo(server.plan, app.port).tls!.ingress[0]!.listen;
  const asClient = { key: client.material.keyPem, cert: client.material.certChainPem };
  try {
    assert.equal(await pingOnce(port, server.material.rootPem, asClient), '+PONG\r\n', logLines.join(''));
    const open = await tlsClient(port, server.material.rootPem, asClient);
    assert.equal(await open.ask(), '+PONG\r\n');
    const serial = leafSerial(client.material);
    const r = await owner.revoke({ serial, reason: 'keyCompromise' });
    assert.equal(r.revoked, true);
    await until(() => proxies.crl!.crl!.revoked.has(serial.replace(/^0+/, '')), 3000, 'the CRL refresh', logLines);
    logLines.length = 0;
    assert.equal(await pingOnce(port, server.material.rootPem, asClient), '', 'refused after the refresh');
    assert.ok(logLines.some((l) => /refused client .*is revoked \(deployment CA CRL\)/.test(l)), logLines.join(''));
    // another certificate of the same workload is still accepted
    assert.equal(await pingOnce(port, server.material.rootPem, { key: other.material.keyPem, cert: other.material.certChainPem }), '+PONG\r\n');
    open.socket.destroy();
  } finally {
    await proxies.close();
    await new Promise<void>((r) => app.server.close(() => r()));
  }
});

/** Plaintext exchange through an egress port; '' when the proxy refused the remote. */
const plainPing = (port: number) => exchange(port, 'PING\r\n');

test('egress refuses a remote whose certificate was revoked, after the next CRL refresh', async () => {
  const app = await startApp();
  const server = await attestWorkload(kbs.url, 'shop/redis', 'redis', M_SERVER);
  const client = await attestWorkload(kbs.url, 'shop/web', 'app', M_CLIENT);
  const ingressPort = await freePort();
  const ingress = await startTlsProxies({ ingress: [{ listen: ingressPort, to: app.port, clientCert: 'none' }], egress: [] }, server.material, log, { ingressHost: '127.0.0.1' });
  assert.ok(client.plan.tls);
  const egressPort = await freePort();
  const egressPlan: LaunchPlan = { ...client.plan, tls: { ingress: [], egress: [{ ...client.plan.tls.egress[0]!, listen: egressPort, to: `127.0.0.1:${ingressPort}`, host: '127.0.0.1', port: ingressPort }] } };
  const egress = await startPlanTls(egressPlan, client.fetched.resources, client.key, log, {
    lifecycle: { kbsUrl: kbs.url, settings: { ...DEFAULT_TLS_LIFECYCLE, crlRefreshMs: 150 }, timeoutMs: 5000, renew: () => Promise.reject(new Error('not in this test')) },
  });
  try {
    assert.equal(await plainPing(egressPort), '+PONG\r\n', logLines.join(''));
    const serial = leafSerial(server.material);
    await owner.revoke({ serial });
    await until(() => egress!.crl!.crl!.revoked.has(serial.replace(/^0+/, '')), 3000, 'the CRL refresh', logLines);
    logLines.length = 0;
    assert.equal(await plainPing(egressPort), '');
    assert.ok(logLines.some((l) => /refused the peer \(expected shop\/redis#redis\).*is revoked/.test(l)), logLines.join(''));
  } finally {
    await egress?.close();
    await ingress.close();
    await new Promise<void>((r) => app.server.close(() => r()));
  }
});

test('renewal: a new certificate before expiry; connections opened before keep working, new ones get the new certificate', async () => {
  const app = await startApp();
  const server = await attestWorkload(shortKbs.url, 'shop/redis', 'redis', M_SERVER);
  const plan = withIngressTo(server.plan, app.port, 'none');
  const renew = renewViaAttestation({ kbsUrl: shortKbs.url, tee: 'sim', evidenceProvider: (rd) => deployment.sim.getEvidence(rd, M_SERVER), initData: { policy: 'shop/redis', workload: 'redis' }, retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 } });
  logLines.length = 0;
  const proxies = await startPlanTls(plan, server.fetched.resources, server.key, log, {
    ingressHost: '127.0.0.1',
    lifecycle: { kbsUrl: shortKbs.url, settings: { crlRefreshMs: 60_000, renewAtPercent: 40, renewRetryMs: 50, renewRetryMaxMs: 200 }, timeoutMs: 5000, renew },
  });
  assert.ok(proxies?.renewer);
  const port = plan.tls!.ingress[0]!.listen;
  const before = leafSerial(server.material);
  try {
    const open = await tlsClient(port, server.material.rootPem);
    assert.equal(open.serial.toLowerCase().replace(/^0+/, ''), before.replace(/^0+/, ''));
    assert.equal(await open.ask(), '+PONG\r\n');
    await until(() => proxies.renewer!.renewals >= 1, 5000, 'the renewal', logLines);
    const renewed = proxies.renewer.material;
    assert.notEqual(leafSerial(renewed), before);
    assert.ok(renewed.notAfter.getTime() > server.material.notAfter.getTime());
    assert.ok(!renewed.keyPem.includes(server.material.keyPem.slice(40, 80)), 'a fresh key');
    assert.ok(logLines.some((l) => /workload certificate renewed \(serial /.test(l)), logLines.join(''));
    // the connection from before the swap still works
    assert.equal(await open.ask(), '+PONG\r\n');
    const after = await tlsClient(port, server.material.rootPem);
    assert.equal(after.serial.toLowerCase().replace(/^0+/, ''), leafSerial(renewed).replace(/^0+/, ''), 'a new connection sees the new certificate');
    assert.equal(await after.ask(), '+PONG\r\n');
    assert.equal(await open.ask(), '+PONG\r\n');
    open.socket.destroy();
    after.socket.destroy();
  } finally {
    await proxies.close();
    await new Promise<void>((r) => app.server.close(() => r()));
  }
});

test('renewal failures retry with backoff, logged without secrets; stop() ends the timers', async () => {
  const lines: string[] = [];
  const rlog = createLauncherLog({ write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream);
  const { material } = await attestWorkload(kbs.url, 'shop/redis', 'redis', M_SERVER);
  const fresh = (await attestWorkload(kbs.url, 'shop/redis', 'redis', M_SERVER)).material;
  let calls = 0;
  const updates: TlsMaterial[] = [];
  const renewer = new CertRenewer(
    { ...material, notAfter: new Date(Date.now() + 100) },
    { update: (m) => updates.push(m) },
    async () => {
      calls++;
      if (calls < 3) throw new Error(`KBS down (attempt ${calls})`);
      return fresh;
    },
    { renewAtPercent: 50, renewRetryMs: 20, renewRetryMaxMs: 40 },
    rlog,
  );
  renewer.start();
  await until(() => renewer.renewals === 1, 3000, 'a renewal after two failures', logLines);
  renewer.stop();
  assert.equal(calls, 3);
  assert.deepEqual(updates, [fresh]);
  assert.equal(lines.filter((l) => /renewal failed \(attempt \d, INTERNAL: KBS down/.test(l)).length, 2, lines.join(''));
  assert.ok(!lines.join('').includes('PRIVATE KEY'), 'no key material in the log');
});
