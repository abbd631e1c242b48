/**
 * The shared fixture of the end-to-end tests (test/e2e): what a file needs (root, runc, dist/,
 * swtpm, curl, openssl) and the test images (Redis by default, python-web), a work directory,
 * an owner key, a real KBS (trusting a sim platform or a swtpm's AK), an owner client, wrapping
 * an image, Redis policies, attesting with a CSR for a workload certificate, the in-process
 * launcher (its log and the app's output kept in buffers and printed only when a test fails),
 * the `cocoon` CLI from dist/, and a small Redis client.
 *
 * `new E2eFixture({...})` at the top of a test file registers its before/after/afterEach hooks.
 * A file's own set-up goes in `fx.before(fn)` and its clean-up in `fx.after(fn)`, not in other
 * top-level hooks: Node 20 runs a file's top-level `before` hooks concurrently, so only the
 * fixture's one hook orders them (and its clean-up must run before the KBS stops).
 */
import { after, afterEach, before } from 'node:test';
import { execFile, spawn, type ChildProcessByStdio } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { startKbs, type RunningKbs } from '../../src/kbs/app.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { TpmClient } from '../../src/attester/tpm/client.js';
import { parseTcti } from '../../src/attester/tpm/tcti.js';
import { DEFAULT_AK_HANDLE, ensureAk } from '../../src/attester/tpm.js';
import { parseTpmtPublic } from '../../src/attestation/tpm/structs.js';
import { wrapImage } from '../../src/image/wrap.js';
import { readWrappedImage, unpackWrappedImage } from '../../src/image/wrapped.js';
import { launch } from '../../src/launcher/launch.js';
import { launcherConfigFromEnv } from '../../src/launcher/config.js';
import { createLauncherLog, type LauncherLog } from '../../src/launcher/log.js';
import type { AppOutput } from '../../src/launcher/supervise.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../attester/swtpm-helper.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { parseLaunchPlan, type LaunchPlan } from '../../src/kbs/launch-plan.js';
import { SimAttester } from '../../src/attester/sim.js';
import { generateWorkloadKey, type TlsMaterial } from '../../src/launcher/tls/index.js';
import { parseWorkloadCert } from '../../src/launcher/tls/material.js';
import { distCli, hasCommand, isRoot, launcherDir, TEST_IMAGE_REFS, testImage, type TestImage } from './env.js';
export { freePort } from '../../src/util/net.js';

export type Need = 'root' | 'runc' | 'dist' | 'swtpm' | 'curl' | 'openssl';

/** The first thing of `needs` this machine lacks (the reason to skip), or false. */
export function missing(...needs: Need[]): string | false {
  for (const need of needs) {
    if (need === 'root' && !isRoot) return 'needs root';
    if (need === 'runc' && !hasCommand('runc')) return 'needs runc (scripts/setup.sh)';
    if (need === 'dist' && !existsSync(launcherDir)) return 'needs dist/ (npm run build)';
    if (need === 'swtpm' && swtpmMissing) return swtpmMissing;
    if ((need === 'curl' || need === 'openssl') && !hasCommand(need)) return `needs ${need}`;
  }
  return false;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cocoon ARGS` from dist/; never rejects: a failure comes back as its exit code (-1 when killed). */
export function cocoon(args: string[], timeout = 120_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [distCli, ...args], { timeout, maxBuffer: 8 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (err as { code?: unknown }).code : 0;
      resolve({ code: typeof code === 'number' ? code : -1, stdout, stderr });
    });
  });
}

/** A RESP (Redis protocol) command. */
export const resp = (args: string[]) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;

/**
 * One Redis command over a fresh plaintext connection to 127.0.0.1:port; resolves with the raw
 * reply ('' when the server closed without one). A connection error or the 5 s timeout rejects,
 * or with `lenient` resolves with whatever arrived.
 */
export function redis(port: number, args: string[], { lenient = false } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let buf = '';
    sock.setTimeout(5000, () => sock.destroy(new Error('redis timeout')));
    sock.on('connect', () => sock.write(resp(args)));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.endsWith('\r\n')) {
        sock.end();
        resolve(buf);
      }
    });
    sock.on('error', (err) => (lenient ? resolve(buf) : reject(err)));
    sock.on('close', () => resolve(buf));
  });
}

/** Polls with PING until Redis answers +PONG; throws after `attempts`, or at once when `stop()` returns an error. */
export async function waitForRedis(port: number, { attempts = 200, intervalMs = 50, lenient = false, stop = (): unknown => undefined } = {}): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    const failed = stop();
    if (failed) throw failed;
    try {
      if ((await redis(port, ['PING'], { lenient })).startsWith('+PONG')) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error('redis did not come up');
}

/** `redis-server` listening on 127.0.0.1:port, unprotected, no AOF; `save` '' = no RDB snapshots. */
export function redisServerArgs(port: number, { dir, save = '' }: { dir?: string; save?: string } = {}): string[] {
  return ['redis-server', '--port', String(port), '--bind', '127.0.0.1', ...(dir ? ['--dir', dir] : []), '--save', save, '--appendonly', 'no', '--protected-mode', 'no'];
}

export interface PolicyOptions {
  name: string;
  tee: 'sim' | 'tpm';
  measurement: string;
  /** Default 'redis'. */
  workload?: string;
  /** A random 32-byte hex secret `pw`, owner-readable, given to the app as REDIS_PW. */
  password?: boolean;
  args?: string[];
  /** More YAML of the workload, at its indentation (4 spaces). */
  extra?: string;
}

/** A one-workload policy that releases the layer key to `measurement` on `tee`. */
export function policyYaml(o: PolicyOptions): string {
  const lines = [`name: ${o.name}`, 'secrets:'];
  if (o.password) lines.push('  pw: { kind: random, size: 32, encoding: hex, ownerReadable: true }');
  lines.push('  layer-key: { kind: layer-key }', 'workloads:', `  ${o.workload ?? 'redis'}:`, `    accept: [{ tee: [${o.tee}], measurement: "${o.measurement}" }]`);
  if (o.password) lines.push('    secrets: [pw]', '    env: { REDIS_PW: "{{ secret.pw }}" }');
  if (o.args) lines.push(`    args: ${JSON.stringify(o.args)}`);
  if (o.extra) lines.push(o.extra.replace(/\n$/, ''));
  return `${lines.join('\n')}\n`;
}

/** Collects what is written to it. */
class Buffered extends Writable {
  readonly chunks: Buffer[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.chunks.push(Buffer.from(chunk));
    done();
  }
  text(): string {
    return Buffer.concat(this.chunks).toString();
  }
}

/** A launcher running as a child process (`E2eFixture.spawnLauncher`). */
export interface SpawnedLauncher {
  child: ChildProcessByStdio<null, Readable, Readable>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Its log and the app's output so far. */
  output(): string;
}

export interface E2eOptions {
  /** Prefix of the work directory under the OS temp dir. */
  prefix: string;
  /** What the file needs; the test images are built (or reused) only when all are there. */
  needs: Need[];
  /** Test images (scripts/build-test-image.sh) the file uses; default the Redis one. */
  images?: TestImage[];
  /** `sim`: a KBS trusting a fresh sim platform. `tpm`: a swtpm, and a KBS trusting its AK. */
  tee: 'sim' | 'tpm';
}

export class E2eFixture {
  /** Why the file's tests skip, or false. */
  readonly skip: string | false;
  readonly tee: 'sim' | 'tpm';
  private readonly prefix: string;
  /** The layer key-encryption key that `wrap` uses. */
  readonly kek = randomBytes(32);
  /** The in-process launcher's log lines of the current test, since the last `logLines.length = 0`. */
  readonly logLines: string[] = [];
  readonly log: LauncherLog = createLauncherLog({ write: (s: string) => this.logLines.push(s) } as unknown as NodeJS.WritableStream);
  private readonly out = new Buffered();
  private readonly err = new Buffered();
  /** Where in-process launches send the app's stdout/stderr (printed only if a test fails). */
  readonly appOutput: AppOutput = { stdout: this.out, stderr: this.err };
  private readonly images = new Map<TestImage, string>();
  private readonly kbses: RunningKbs[] = [];
  private readonly owners: Awaited<ReturnType<typeof loadOwnerPublicJwk>>[] = [];
  private readonly trust: { simRoots: string[]; trustedAks?: string[] } = { simRoots: [] };
  private readonly steps: (() => Promise<void>)[] = [];
  private readonly cleanups: (() => Promise<void>)[] = [];
  work!: string;
  /** Holds owner.key.json, owner.pub.json and the sim platform (the `--config-dir` of the CLI). */
  cfg!: string;
  kbs!: RunningKbs;
  owner!: OwnerClient;
  /** `sim` only. */
  simPlatformDir!: string;
  /** `tpm` only: the swtpm, and its AK (PEM) that the KBS trusts. */
  tpm!: Swtpm;
  akPem!: string;

  constructor(opts: E2eOptions) {
    this.tee = opts.tee;
    this.prefix = opts.prefix;
    let reason = missing(...opts.needs);
    for (const name of opts.images ?? ['redis']) {
      if (reason) break;
      const image = testImage(name);
      if ('skip' in image) reason = image.skip;
      else this.images.set(name, image.layout);
    }
    this.skip = reason;
    before(() => this.setUp());
    afterEach((t) => this.report(t));
    after(() => this.tearDown());
  }

  /** The OCI layout of the (plain) Redis test image. */
  get imageLayout(): string {
    return this.layoutOf('redis');
  }

  /** The OCI layout of a test image named in `images`. */
  layoutOf(name: TestImage): string {
    const layout = this.images.get(name);
    if (!layout) throw new Error(`no ${name} test image: ${this.skip || 'not in the fixture\'s images'}`);
    return layout;
  }

  private async setUp(): Promise<void> {
    if (this.skip) return;
    this.work = await mkdtemp(join(tmpdir(), this.prefix));
    if (this.tee === 'tpm') {
      this.tpm = await startSwtpm();
      // provisioning: the deployment reads the AK once and registers it with the KBS (--trusted-ak)
      const c = await TpmClient.connect(parseTcti(this.tpm.tcti));
      try {
        this.akPem = parseTpmtPublic(await ensureAk(c, DEFAULT_AK_HANDLE)).export({ type: 'spki', format: 'pem' }) as string;
      } finally {
        await c.close();
      }
      this.trust.trustedAks = [this.akPem];
    }
    this.cfg = join(this.work, 'cfg');
    await mkdir(this.cfg);
    await createOwnerKey(join(this.cfg, 'owner.key.json'), join(this.cfg, 'owner.pub.json'));
    this.owners.push(await loadOwnerPublicJwk(join(this.cfg, 'owner.pub.json')));
    if (this.tee === 'sim') {
      const sim = await createSimPlatform(join(this.cfg, 'sim'));
      this.simPlatformDir = sim.platformDir;
      this.trust.simRoots = [sim.rootPem];
    }
    this.kbs = await this.startKbs('kbs');
    this.owner = await OwnerClient.create({ kbsUrl: this.kbs.url, ownerKeyFile: join(this.cfg, 'owner.key.json') });
    for (const step of this.steps) await step();
  }

  /** The file's own set-up: runs (unless the file skips) once the fixture's KBS and owner are up, in registration order. */
  before(step: () => Promise<void>): void {
    this.steps.push(step);
  }

  /** The file's own clean-up: runs (unless the file skips) before the fixture stops its KBSes and removes the work directory. */
  after(step: () => Promise<void>): void {
    this.cleanups.push(step);
  }

  /** After each test: prints the launcher log and the app's output if the test did not pass; then forgets them. */
  private report(t: unknown): void {
    const passed = (t as { passed?: boolean }).passed;
    const app = `${this.out.text()}${this.err.text()}`;
    if (passed === false && (this.logLines.length > 0 || app)) {
      process.stderr.write(`--- launcher log ---\n${this.logLines.join('')}--- app output ---\n${app}--- end ---\n`);
    }
    this.logLines.length = 0;
    this.out.chunks.length = 0;
    this.err.chunks.length = 0;
  }

  private async tearDown(): Promise<void> {
    if (this.skip) return;
    for (const step of this.cleanups) {
      try {
        await step();
      } catch (err) {
        process.stderr.write(`clean-up step failed: ${(err as Error).message}\n`);
      }
    }
    for (const kbs of this.kbses) await kbs.close();
    await this.tpm?.stop();
    if (this.work) await rm(this.work, { recursive: true, force: true });
  }

  /** Another KBS with the same owner (closed by the fixture); by default trusting what the first one trusts. */
  async startKbs(dataDirName: string, trust: { simRoots?: string[]; trustedAks?: string[] } = {}): Promise<RunningKbs> {
    const kbs = await startKbs({
      dataDir: join(this.work, dataDirName),
      port: 0,
      allowSim: this.tee === 'sim',
      owners: this.owners,
      verifier: createBrokerVerifier({ ...this.trust, ...trust }),
      logger: false,
    });
    this.kbses.push(kbs);
    return kbs;
  }

  /** Wraps the Redis test image (or `image`, or `source`) for `policy`#`workload` with `kek` into `<work>/<name>-cc`. */
  async wrap(o: { policy: string; workload?: string; name?: string; image?: TestImage; source?: { layoutDir: string; ref: string } }): Promise<{ layout: string; measurement: string }> {
    const layout = join(this.work, `${o.name ?? 'redis'}-cc`);
    const image = o.image ?? 'redis';
    const source = o.source ?? { layoutDir: this.layoutOf(image), ref: TEST_IMAGE_REFS[image] };
    const { measurement } = await wrapImage({ source, dest: { layoutDir: layout }, launcherDir, policy: o.policy, workload: o.workload ?? 'redis', kek: this.kek });
    return { layout, measurement };
  }

  /** `wrap`, then unpacks the wrapped image into `<work>/<name>-rootfs` (the root an in-process launcher sees). */
  async wrapAndUnpack(o: Parameters<E2eFixture['wrap']>[0]): Promise<{ layout: string; measurement: string; rootfs: string }> {
    const wrapped = await this.wrap(o);
    const rootfs = join(this.work, `${o.name ?? 'redis'}-rootfs`);
    await mkdir(rootfs, { recursive: true });
    await unpackWrappedImage(await readWrappedImage(wrapped.layout), rootfs);
    return { ...wrapped, rootfs };
  }

  /** Applies `policyYaml(o)` on the fixture's TEE and stores the layer key `kek` (or `layerKey`) under it. */
  async applyPolicy(o: Omit<PolicyOptions, 'tee'>, layerKey: Buffer = this.kek): Promise<void> {
    await this.owner.applyPolicy(policyYaml({ ...o, tee: this.tee }));
    await this.owner.putSecret(o.name, 'layer-key', layerKey);
  }

  /** The in-process launcher's environment for an unpacked `rootfs`, against the fixture's KBS. */
  launcherEnv(rootfs: string, extra: Record<string, string> = {}): Record<string, string> {
    const tee: Record<string, string> = this.tee === 'sim' ? { COCOON_TEE: 'sim', COCOON_SIM_DEVICE: this.simPlatformDir } : { COCOON_TEE: 'tpm', COCOON_TPM_TCTI: this.tpm.tcti };
    return { COCOON_KBS_URL: this.kbs.url, ...tee, COCOON_HOME: join(rootfs, 'cocoon'), COCOON_ROOT: join(rootfs, 'approot'), COCOON_KBS_RETRIES: '1', ...extra };
  }

  /** Runs the launcher in this process on `rootfs`; its log goes to `logLines`, the app's output to `appOutput`. */
  launch(rootfs: string, extra: Record<string, string> = {}): Promise<number> {
    return launch(launcherConfigFromEnv(this.launcherEnv(rootfs, extra)), this.log, this.appOutput);
  }

  /**
   * Runs the launcher of `rootfs` (dist's bundle, copied in by `wrapAndUnpack`) as a child
   * process with the same environment as `launch`, so that a test can signal or SIGKILL it like
   * a container's PID 1. Its log (stderr) and the app's output are kept in `output()`.
   */
  spawnLauncher(rootfs: string, extra: Record<string, string> = {}): SpawnedLauncher {
    const child = spawn(process.execPath, [join(rootfs, 'cocoon', 'launcher.mjs'), 'launch'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...this.launcherEnv(rootfs, extra) }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = new Buffered();
    child.stdout.pipe(out);
    child.stderr.pipe(out);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    this.cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    return { child, exited, output: () => out.text() };
  }

  /**
   * What a launcher does for a workload (sim only): a fresh key and CSR, attestation as
   * `policy`#`workload` with `measurement`, then the launch plan and the deployment-CA workload
   * certificate for that key (the workload must declare `tls` or `workloadCert: true`).
   */
  async attestWithCsr(o: { policy: string; workload: string; measurement: string }): Promise<{ plan: LaunchPlan; material: TlsMaterial }> {
    const key = await generateWorkloadKey();
    const [plan, cert] = [`${o.policy}/launch-plan`, `${o.policy}/workload-cert`];
    const fetched = await attestAndFetch({
      kbsUrl: this.kbs.url,
      tee: 'sim',
      evidenceProvider: (rd) => new SimAttester(this.simPlatformDir).getEvidence(rd, o.measurement),
      initData: { policy: o.policy, workload: o.workload },
      resources: [plan, cert],
      csr: key.csrPem,
      retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
    });
    return { plan: parseLaunchPlan(fetched.resources[plan]), material: parseWorkloadCert(fetched.resources[cert], key.keyPem) };
  }

  /** Whether the launcher logged that it started the app (since `logLines` was last cleared). */
  appStarted(): boolean {
    return this.logLines.some((l) => /starting /.test(l));
  }
}
