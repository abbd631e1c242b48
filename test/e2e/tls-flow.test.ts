/**
 * Attested mTLS end to end, in-process launcher against a real KBS (no runc): the wrapped
 * Redis runs behind the launcher's TLS ingress (client certificate required); a second
 * attested workload reaches it only through its own egress proxy. Unattested clients are
 * refused; openssl s_client with the deployment root verifies the ingress; the proxies stop
 * with the app.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { parseLaunchPlan } from '../../src/kbs/launch-plan.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { SimAttester } from '../../src/attester/sim.js';
import { wrapImage } from '../../src/image/wrap.js';
import { readWrappedImage, unpackWrappedImage } from '../../src/image/wrapped.js';
import { launch } from '../../src/launcher/launch.js';
import { launcherConfigFromEnv } from '../../src/launcher/config.js';
import { createLauncherLog } from '../../src/launcher/log.js';
import { generateWorkloadKey, workloadCertIfTls } from '../../src/launcher/tls/index.js';
import { parseWorkloadCert } from '../../src/launcher/tls/material.js';
import { startTlsProxies } from '../../src/launcher/tls/proxy.js';
import { isRoot, launcherDir, testImage } from '../helpers/env.js';

const image = isRoot && existsSync(launcherDir) ? testImage('redis') : { skip: 'needs root and dist/ (npm run build)' };
const skip = 'skip' in image ? image.skip : false;
const M_WEB = 'b2'.repeat(48);

let work: string;
let kbs: RunningKbs;
let simPlatformDir: string;
let rootfs: string;
let redisPort: number;
let tlsPort: number;
let egressPort: number;
const kek = randomBytes(32);
const logLines: string[] = [];
const log = createLauncherLog({ write: (s: string) => logLines.push(s) } as unknown as NodeJS.WritableStream);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

const resp = (args: string[]) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;

/** One RESP command over plaintext to 127.0.0.1:port (the app's view of the egress proxy). */
function redis(port: number, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    let buf = '';
    sock.setTimeout(5000, () => sock.destroy());
    sock.on('connect', () => sock.write(resp(args)));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.endsWith('\r\n')) sock.end();
    });
    sock.on('error', () => resolve(buf));
    sock.on('close', () => resolve(buf));
  });
}

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'cocoon-tls-e2e-'));
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  simPlatformDir = sim.platformDir;
  kbs = await startKbs({ dataDir: join(work, 'kbs'), port: 0, allowSim: true, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [sim.rootPem] }), logger: false });
  const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
  const layout = join(work, 'redis-cc');
  const result = await wrapImage({ source: { layoutDir: (image as { layout: string }).layout, ref: 'redis:7' }, dest: { layoutDir: layout }, launcherDir, policy: 'test/redis', workload: 'redis', kek });
  rootfs = join(work, 'rootfs');
  await mkdir(rootfs);
  await unpackWrappedImage(await readWrappedImage(layout), rootfs);
  [redisPort, tlsPort, egressPort] = [await freePort(), await freePort(), await freePort()];
  await owner.applyPolicy(`name: test/redis
secrets:
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept:
      - tee: [sim]
        measurement: "${result.measurement}"
    args: ["redis-server", "--port", "${redisPort}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    tls:
      ingress: [{ listen: ${tlsPort}, to: ${redisPort}, clientCert: required }]
`);
  await owner.putSecret('test/redis', 'layer-key', kek);
  await owner.applyPolicy(`name: test/web
secrets:
  layer-key: { kind: layer-key }
workloads:
  web:
    accept:
      - tee: [sim]
        measurement: "${M_WEB}"
    tls:
      egress: [{ listen: ${egressPort}, to: "127.0.0.1:${tlsPort}", expect: { policy: test/redis, workload: redis } }]
`);
  await owner.putSecret('test/web', 'layer-key', randomBytes(32));
});

after(async () => {
  if (skip) return;
  await kbs?.close();
  await rm(work, { recursive: true, force: true });
});

test('wrapped Redis behind the launcher ingress; an attested client through its egress; others refused', { skip }, async () => {
  const running = launch(
    launcherConfigFromEnv({ COCOON_KBS_URL: kbs.url, COCOON_TEE: 'sim', COCOON_HOME: join(rootfs, 'cocoon'), COCOON_ROOT: join(work, 'approot'), COCOON_SIM_DEVICE: simPlatformDir, COCOON_KBS_RETRIES: '1' }),
    log,
  );
  let failed: unknown;
  running.catch((e: unknown) => (failed = e));

  // the "web" workload: attested with a CSR like the launcher does, then only its egress proxy
  const key = await generateWorkloadKey();
  const fetched = await attestAndFetch({
    kbsUrl: kbs.url,
    tee: 'sim',
    evidenceProvider: (rd) => new SimAttester(simPlatformDir).getEvidence(rd, M_WEB),
    initData: { policy: 'test/web', workload: 'web' },
    resources: ['test/web/launch-plan'],
    csr: key.csrPem,
    moreResources: workloadCertIfTls('test/web/launch-plan'),
    retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
  });
  const plan = parseLaunchPlan(fetched.resources['test/web/launch-plan']);
  const material = parseWorkloadCert(fetched.resources['test/web/workload-cert'], key.keyPem);
  assert.ok(plan.tls);
  const web = await startTlsProxies(plan.tls, material, log);
  try {
    let reply = '';
    for (let i = 0; i < 200 && !reply.startsWith('+PONG'); i++) {
      if (failed) throw failed;
      reply = await redis(egressPort, ['PING']);
      if (!reply.startsWith('+PONG')) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(reply, '+PONG\r\n', logLines.join(''));
    assert.ok(logLines.some((l) => /tls ingress :\d+ → app :\d+ listening \(client certificate required\)/.test(l)));
    assert.ok(logLines.some((l) => /tls egress .* connected to test\/redis#redis/.test(l)));
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
      await writeFile(join(work, 'root.pem'), material.rootPem);
      // openssl sends only the first certificate of -cert; the intermediate goes with -cert_chain
      const [leaf, ...intermediates] = material.certChainPem.split(/(?<=-----END CERTIFICATE-----\n)/).filter((p) => p.includes('BEGIN'));
      await writeFile(join(work, 'cert.pem'), leaf ?? '');
      await writeFile(join(work, 'chain.pem'), intermediates.join(''));
      await writeFile(join(work, 'key.pem'), material.keyPem);
      const out = await new Promise<string>((resolve) => {
        const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${tlsPort}`, '-CAfile', join(work, 'root.pem'), '-cert', join(work, 'cert.pem'), '-key', join(work, 'key.pem'), '-cert_chain', join(work, 'chain.pem'), '-verify_return_error', '-quiet'], { timeout: 10_000 }, (_err, stdout, stderr) => resolve(stdout + stderr));
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
