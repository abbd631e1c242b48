/**
 * Cold start: wrapped Redis under `cocoon run` (sim TEE, real KBS over loopback, real runc)
 * versus the same plain Redis image under runc, in the same run. Prints medians of N starts,
 * the wrapped/plain ratio, and the launcher's own breakdown (attest+fetch, decrypt). When
 * swtpm is installed, a second wrapped row attests with a real software TPM (`--tee tpm`:
 * PCR extend + quote over raw TPM 2.0 commands, event-log replay in the KBS).
 *
 *   npx tsx bench/cold-start.ts [--runs 5]        (root; scripts/setup.sh first)
 */
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startKbs } from '../src/kbs/app.js';
import { createBrokerVerifier } from '../src/kbs/verifier.js';
import { OwnerClient } from '../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPublicJwk } from '../src/kbs/owner-key.js';
import { createSimPlatform } from '../src/attester/sim-platform.js';
import { wrapImage } from '../src/image/wrap.js';
import { readLayout, openBlobStream } from '../src/image/layout.js';
import { layerFormat } from '../src/image/oci.js';
import { unpackLayer } from '../src/image/unpack.js';
import { runWrapped, stopContainer } from '../src/runtime/runc.js';
import { loadRecord, runtimeRoot } from '../src/runtime/state.js';
import { buildRuncSpec } from '../src/runtime/spec.js';
import { redisCommands, waitForPort } from '../src/cli/demo/redis-probe.js';
import { freePort } from '../src/util/net.js';
import { defaultLauncherDir, packageRoot } from '../src/util/package-root.js';
import { TpmClient } from '../src/attester/tpm/client.js';
import { parseTcti } from '../src/attester/tpm/tcti.js';
import { DEFAULT_AK_HANDLE, ensureAk } from '../src/attester/tpm.js';
import { parseTpmtPublic } from '../src/attestation/tpm/structs.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../test/attester/swtpm-helper.js';

const runsArg = process.argv.indexOf('--runs');
const RUNS = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 5;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  const layout = execFileSync('bash', [join(packageRoot(), 'scripts/build-test-image.sh'), 'redis'], { encoding: 'utf8' }).trim().split('\n').pop() as string;
  const work = await mkdtemp(join(tmpdir(), 'cocoon-bench-'));
  const cfg = join(work, 'cfg');
  await mkdir(cfg);
  await createOwnerKey(join(cfg, 'owner.key.json'), join(cfg, 'owner.pub.json'));
  const sim = await createSimPlatform(join(cfg, 'sim'));
  let tpm: Swtpm | undefined;
  const trustedAks: string[] = [];
  if (!swtpmMissing) {
    tpm = await startSwtpm();
    const c = await TpmClient.connect(parseTcti(tpm.tcti));
    try {
      trustedAks.push(parseTpmtPublic(await ensureAk(c, DEFAULT_AK_HANDLE)).export({ type: 'spki', format: 'pem' }) as string);
    } finally {
      await c.close();
    }
  }
  const kbs = await startKbs({ dataDir: join(work, 'kbs'), port: 0, allowSim: true, owners: [await loadOwnerPublicJwk(join(cfg, 'owner.pub.json'))], verifier: createBrokerVerifier({ simRoots: [sim.rootPem], trustedAks }), logger: false });
  try {
    const kek = randomBytes(32);
    const wrapped = await wrapImage({ source: { layoutDir: layout, ref: 'redis:7' }, dest: { layoutDir: join(work, 'cc') }, launcherDir: defaultLauncherDir(), policy: 'bench/redis', workload: 'redis', kek });
    const port = await freePort();
    const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: join(cfg, 'owner.key.json') });
    await owner.applyPolicy(`name: bench/redis
secrets:
  pw: { kind: random, size: 32, encoding: hex, ownerReadable: true }
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept: [{ tee: [sim, tpm], measurement: "${wrapped.measurement}" }]
    secrets: [pw]
    files: [{ path: /run/cocoon/redis.conf, mode: "0400", content: "bind 127.0.0.1\\nport ${port}\\nsave \\"\\"\\nrequirepass {{ secret.pw }}\\n" }]
    args: ["redis-server", "/run/cocoon/redis.conf"]
`);
    await owner.putSecret('bench/redis', 'layer-key', kek);
    const password = (await owner.getSecret('bench/redis', 'pw')).toString();

    const wrappedRun = async (tee: 'sim' | 'tpm'): Promise<{ totals: number[]; attestMs: number[]; decryptMs: number[] }> => {
      const totals: number[] = [];
      const attestMs: number[] = [];
      const decryptMs: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const name = `cocoon-bench-${tee}-${i}-${randomBytes(2).toString('hex')}`;
        const t0 = performance.now();
        await runWrapped({
          image: join(work, 'cc'),
          kbsUrl: kbs.url,
          tee,
          ...(tee === 'sim' ? { simPlatformDir: sim.platformDir } : { launcherEnv: { COCOON_TPM_TCTI: tpm!.tcti } }),
          name,
          detach: true,
          memoryRootSize: '512m',
          hostNetwork: true,
        });
        if (!(await waitForPort(port, 60_000, async () => true))) throw new Error(`wrapped redis (${tee}) did not start`);
        const reply = await redisCommands(port, [['AUTH', password], ['PING']]);
        totals.push(performance.now() - t0);
        if (reply[1] !== '+PONG') throw new Error(`unexpected reply ${reply.join(' ')}`);
        const log = await readFile((await loadRecord(runtimeRoot(), name))?.logFile as string, 'utf8');
        if (i === 0 && process.argv.includes('--verbose')) console.log(log.split('\n').filter((l) => l.startsWith('[cocoon-launcher]')).join('\n'));
        const m = log.match(/attest (\d+) ms, decrypt (\d+) ms/);
        if (m) {
          attestMs.push(Number(m[1]));
          decryptMs.push(Number(m[2]));
        }
        await stopContainer(name, { graceMs: 5000 });
      }
      return { totals, attestMs, decryptMs };
    };
    const simRows = await wrappedRun('sim');
    const tpmRows = tpm ? await wrappedRun('tpm') : undefined;

    // plain: the same image unpacked once into a bundle, redis-server started directly by runc
    const bundle = join(work, 'plain');
    const img = await readLayout(layout, 'redis:7');
    for (const layer of img.manifest.layers) await unpackLayer(openBlobStream(layout, layer), layerFormat(layer.mediaType).compression, join(bundle, 'rootfs'));
    const plainPort = await freePort();
    const spec = buildRuncSpec({ args: ['/usr/bin/redis-server', '--port', String(plainPort), '--bind', '127.0.0.1', '--save', ''], env: ['PATH=/usr/bin:/bin'], hostname: 'plain', memoryRootSize: '64m', hostNetwork: true });
    await writeFile(join(bundle, 'config.json'), JSON.stringify(spec));
    const plainTotals: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const name = `cocoon-bench-plain-${i}-${randomBytes(2).toString('hex')}`;
      const t0 = performance.now();
      const child = spawn('runc', ['--root', join(work, 'runc'), 'run', '--detach', '--bundle', bundle, name], { stdio: 'ignore' });
      await new Promise((r) => child.once('exit', r));
      if (!(await waitForPort(plainPort, 30_000, async () => true))) throw new Error('plain redis did not start');
      const reply = await redisCommands(plainPort, [['PING']]);
      plainTotals.push(performance.now() - t0);
      if (reply[0] !== '+PONG') throw new Error('plain redis did not answer');
      execFileSync('runc', ['--root', join(work, 'runc'), 'delete', '--force', name]);
    }

    const w = median(simRows.totals);
    const p = median(plainTotals);
    console.log(`cold start to first authenticated PONG, median of ${RUNS} (same run, same machine):`);
    console.log(`  wrapped Redis (cocoon run, sim TEE, KBS on loopback): ${w.toFixed(0)} ms  [attest+fetch ${median(simRows.attestMs)} ms, decrypt ${median(simRows.decryptMs)} ms in the launcher]`);
    if (tpmRows) {
      console.log(`  wrapped Redis (cocoon run, swtpm vTPM, KBS on loopback): ${median(tpmRows.totals).toFixed(0)} ms  [attest+fetch ${median(tpmRows.attestMs)} ms, decrypt ${median(tpmRows.decryptMs)} ms in the launcher]`);
    } else console.log(`  wrapped Redis (swtpm vTPM): skipped — ${swtpmMissing}`);
    console.log(`  plain Redis (runc run):                               ${p.toFixed(0)} ms`);
    console.log(`  ratio wrapped/plain: sim ${(w / p).toFixed(2)}×   (overhead ${(w - p).toFixed(0)} ms)${tpmRows ? `; swtpm ${(median(tpmRows.totals) / p).toFixed(2)}×   (overhead ${(median(tpmRows.totals) - p).toFixed(0)} ms)` : ''}`);
  } finally {
    await kbs.close();
    await tpm?.stop();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
