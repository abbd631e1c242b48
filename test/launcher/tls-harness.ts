/**
 * The shared set-up of the in-process attested-TLS tests (tls.test.ts, tls-lifecycle.test.ts):
 * a work directory, an owner key, a sim platform, real KBSes (sim verifier) with an owner
 * client each, the launcher's log kept in `logLines`, attesting a workload with a CSR the way
 * the launcher does, policies with `tls`, a line "app", a plaintext client and waiting.
 */
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { createServer, connect as netConnect } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs, type RunningKbs, type StartKbsOptions } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { parseLaunchPlan } from '../../src/kbs/launch-plan.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { SimAttester } from '../../src/attester/sim.js';
import { createLauncherLog, type LauncherLog } from '../../src/launcher/log.js';
import { generateWorkloadKey, workloadCertIfTls } from '../../src/launcher/tls/index.js';
import type { TlsMaterial } from '../../src/launcher/tls/index.js';
import { parseWorkloadCert } from '../../src/launcher/tls/material.js';

export { freePort } from '../helpers/e2e.js';

export const M_SERVER = 'a1'.repeat(48);
export const M_CLIENT = 'b2'.repeat(48);

/** A policy whose workloads are accepted on sim with measurement `m`; `tls` is YAML at the level of `tls:`. */
export function policy(name: string, workloads: Record<string, { m: string; tls?: string }>): string {
  let y = `name: ${name}\nsecrets:\n  layer-key: { kind: layer-key }\nworkloads:\n`;
  for (const [w, v] of Object.entries(workloads)) {
    y += `  ${w}:\n    accept:\n      - tee: [sim]\n        measurement: "${v.m}"\n`;
    if (v.tls) y += `    tls:\n${v.tls.replace(/^/gm, '      ')}\n`;
  }
  return y;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 25 ms; fails the test after `ms` naming `what` (and showing `logLines`). */
export async function until(cond: () => boolean, ms: number, what: string, logLines: readonly string[] = []): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}\n${logLines.join('')}`);
    await sleep(25);
  }
}

/** A work directory, an owner key, a sim platform and KBSes trusting it (with an owner client each). */
export class TlsDeployment {
  /** The launcher log's lines (tests clear it with `logLines.length = 0`). */
  readonly logLines: string[] = [];
  readonly log: LauncherLog = createLauncherLog({ write: (s: string) => this.logLines.push(s) } as unknown as NodeJS.WritableStream);
  work!: string;
  sim!: SimAttester;
  /** The first KBS and its owner client. */
  kbs!: RunningKbs;
  owner!: OwnerClient;
  private cfg!: string;
  private common!: Omit<StartKbsOptions, 'dataDir'>;
  private readonly kbses: RunningKbs[] = [];

  /** Creates the work directory `<tmp>/<prefix>…`, the owner key, the sim platform, and starts the first KBS. */
  async start(prefix: string): Promise<void> {
    this.work = await mkdtemp(join(tmpdir(), prefix));
    this.cfg = join(this.work, 'cfg');
    await mkdir(this.cfg);
    await createOwnerKey(join(this.cfg, 'owner.key.json'), join(this.cfg, 'owner.pub.json'));
    const platform = await createSimPlatform(join(this.cfg, 'sim'));
    this.sim = new SimAttester(platform.platformDir);
    this.common = { port: 0, allowSim: true, owners: [await loadOwnerPublicJwk(join(this.cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [platform.rootPem] }), logger: false };
    ({ kbs: this.kbs, owner: this.owner } = await this.startKbs('kbs'));
  }

  /** Another KBS (data in `<work>/<dataDirName>`) with the same owner and trust, closed by `close()`. */
  async startKbs(dataDirName: string, extra: Partial<StartKbsOptions> = {}): Promise<{ kbs: RunningKbs; owner: OwnerClient }> {
    const kbs = await startKbs({ ...this.common, ...extra, dataDir: join(this.work, dataDirName) });
    this.kbses.push(kbs);
    return { kbs, owner: await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(this.cfg, 'owner.key.json') }) };
  }

  async close(): Promise<void> {
    for (const kbs of this.kbses) await kbs.close();
    if (this.work) await rm(this.work, { recursive: true, force: true });
  }

  /**
   * What the launcher does: attest with a CSR, fetch the plan and (when it declares tls) the
   * certificate; `material` is the parsed certificate, undefined when none was fetched.
   */
  async attest(kbsUrl: string, pol: string, workload: string, measurement: string) {
    const key = await generateWorkloadKey();
    const planName = `${pol}/launch-plan`;
    const fetched = await attestAndFetch({
      kbsUrl,
      tee: 'sim',
      evidenceProvider: (rd) => this.sim.getEvidence(rd, measurement),
      initData: { policy: pol, workload },
      resources: [planName],
      csr: key.csrPem,
      moreResources: workloadCertIfTls(planName),
      retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
    });
    const cert = fetched.resources[`${pol}/workload-cert`];
    const material: TlsMaterial | undefined = cert ? parseWorkloadCert(cert, key.keyPem) : undefined;
    return { key, fetched, plan: parseLaunchPlan(fetched.resources[planName]), material };
  }
}

/** The "app": a line server answering PONG to PING and echoing anything else. */
export async function startApp(): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => {
    s.on('error', () => s.destroy());
    s.on('data', (d) => s.write(d.toString() === 'PING\r\n' ? '+PONG\r\n' : d));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

/** Sends `data` through a plaintext connection; resolves with what came back before close or 2 s ('' when the proxy refused). */
export function exchange(port: number, data: string): Promise<string> {
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
