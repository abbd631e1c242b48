import type { Command } from 'commander';
import { mkdir, readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import Table from 'cli-table3';
import { action, createOutput } from './output.js';
import { configDir, configPaths, resolveKbsUrl } from './config.js';
import { CocoonError } from '../errors.js';
import { isTeeKind } from '../attestation/types.js';
import { POLICY_VOLUME_NAME_RE } from '../policy/volumes.js';

const SIZE = /^\d{1,6}[kmg]$/i;

export function registerRuntime(program: Command): void {
  program
    .command('run')
    .description('run a wrapped image locally with runc (the launcher attests to the KBS first)')
    .argument('<image>', 'wrapped image: OCI layout directory or oci:DIR[:TAG] (copy registry images or archives into a layout first: cocoon image copy)')
    .option('--kbs <url>', 'Key Broker Service URL (default: $COCOON_KBS_URL or the config file)')
    .option('--tee <kind>', 'TEE the launcher attests with: sim (INSECURE, development) or a hardware kind; default: detect')
    .option('--tpm-tcti <tcti>', 'TPM the launcher uses with --tee tpm (or an Azure vTPM kind): swtpm:host=127.0.0.1,port=N (host network) or device:/dev/tpmrm0 (default)')
    .option('--name <name>', 'container name (default: cocoon-<random>)')
    .option('-d, --detach', 'run in the background; see `cocoon ps`, `cocoon logs`, `cocoon stop`')
    .option('--memory-root-size <size>', 'size limit of the in-memory application root', '1g')
    .option('--no-host-network', 'give the container its own network namespace (default: host network)')
    .option('--kbs-retries <n>', 'launcher attempts to reach the KBS', '6')
    .option('--config-dir <dir>', 'config directory (sim platform key, default KBS)')
    .option('--volume <name=hostdir>', 'encrypted store of the policy\'s protected volume NAME in host directory HOSTDIR (repeatable; docs/volumes.md)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExit status: the application\'s (foreground), 1 when the launcher refuses to start it.\nNeeds root and runc (installed by scripts/setup.sh). See docs/run.md.')
    .action(
      action(async (image: string, opts: { kbs?: string; tee?: string; tpmTcti?: string; name?: string; detach?: boolean; memoryRootSize: string; hostNetwork: boolean; kbsRetries: string; configDir?: string; volume: string[]; json?: boolean }) => {
        const out = createOutput(opts);
        const dir = configDir(opts.configDir);
        const kbsUrl = await resolveKbsUrl(opts.kbs, dir);
        if (opts.tee !== undefined && !isTeeKind(opts.tee)) throw new CocoonError('BAD_USAGE', `--tee: unknown TEE kind "${opts.tee}"`);
        if (!SIZE.test(opts.memoryRootSize)) throw new CocoonError('BAD_USAGE', '--memory-root-size must look like 512m or 2g');
        if (!/^\d{1,3}$/.test(opts.kbsRetries) || Number(opts.kbsRetries) < 1) throw new CocoonError('BAD_USAGE', '--kbs-retries must be 1–999');
        if (opts.tpmTcti !== undefined) {
          const { parseTcti, tctiToString } = await import('../attester/tpm/tcti.js');
          opts.tpmTcti = tctiToString(parseTcti(opts.tpmTcti));
        }
        const usesTpm = opts.tee === 'tpm' || opts.tee === 'az-snp-vtpm' || opts.tee === 'az-tdx-vtpm';
        const tpmDevice = usesTpm && (opts.tpmTcti === undefined || opts.tpmTcti.startsWith('device:')) ? (opts.tpmTcti ?? 'device:/dev/tpmrm0').slice('device:'.length) : undefined;
        const volumes = await parseVolumeFlags(opts.volume);
        if (opts.tee === 'sim') out.warn('INSECURE: simulated TEE — the workload has no hardware protection (development only)');
        const { runWrapped } = await import('../runtime/runc.js');
        const result = await runWrapped({
          image,
          kbsUrl,
          tee: opts.tee ?? '',
          ...(opts.tee === 'sim' ? { simPlatformDir: configPaths(dir).simPlatform } : {}),
          ...(opts.name ? { name: opts.name } : {}),
          detach: Boolean(opts.detach),
          memoryRootSize: opts.memoryRootSize,
          hostNetwork: opts.hostNetwork,
          ...(tpmDevice ? { devices: [tpmDevice] } : {}),
          ...(volumes.length > 0 ? { volumes } : {}),
          launcherEnv: { COCOON_KBS_RETRIES: opts.kbsRetries, ...(opts.tpmTcti ? { COCOON_TPM_TCTI: opts.tpmTcti } : {}) },
          onProgress: (m) => out.step(m),
        });
        if (opts.detach) out.result(result.name, { name: result.name, measurement: result.record.measurement, logFile: result.record.logFile });
        else if (opts.json) out.result('', { name: result.name, exitCode: result.exitCode });
        return result.exitCode;
      }),
    );

  program
    .command('ps')
    .description('list containers started by `cocoon run`')
    .option('--json', 'print JSON')
    .action(
      action(async (opts: { json?: boolean }) => {
        const out = createOutput(opts);
        const { listContainers } = await import('../runtime/runc.js');
        const containers = await listContainers();
        out.result(() => {
          const table = new Table({ head: ['NAME', 'STATUS', 'PID', 'TEE', 'MEASUREMENT', 'IMAGE', 'CREATED'], style: { head: [], border: [] } });
          for (const c of containers) table.push([c.name, c.status, c.pid ?? '', c.tee || 'detect', c.measurement.slice(0, 16) + '…', c.image, c.createdAt]);
          process.stdout.write(table.toString() + '\n');
        }, containers);
      }),
    );

  program
    .command('stop')
    .description('stop a container (SIGTERM, then SIGKILL after the grace period) and remove it')
    .argument('<name>', 'container name')
    .option('-t, --time <seconds>', 'grace period before SIGKILL', '10')
    .option('--json', 'print JSON')
    .action(
      action(async (name: string, opts: { time: string; json?: boolean }) => {
        if (!/^\d{1,5}$/.test(opts.time)) throw new CocoonError('BAD_USAGE', '--time must be whole seconds');
        const { stopContainer } = await import('../runtime/runc.js');
        await stopContainer(name, { graceMs: Number(opts.time) * 1000 });
        createOutput(opts).result(`stopped ${name}`, { name, stopped: true });
      }),
    );

  program
    .command('logs')
    .description('print the output of a detached container (launcher lines are prefixed [cocoon-launcher])')
    .argument('<name>', 'container name')
    .action(
      action(async (name: string) => {
        const { loadRecord, runtimeRoot } = await import('../runtime/state.js');
        const record = await loadRecord(runtimeRoot(), name);
        if (!record?.logFile) throw new CocoonError('NOT_FOUND', `no detached container named ${name}`);
        process.stdout.write(await readFile(record.logFile));
      }),
    );
}

/** `--volume NAME=HOSTDIR` values: names unique, host directories absolute (created 0700 if missing). */
async function parseVolumeFlags(values: string[]): Promise<{ name: string; hostDir: string }[]> {
  if (values.length > 16) throw new CocoonError('BAD_USAGE', 'at most 16 --volume flags');
  const out: { name: string; hostDir: string }[] = [];
  for (const v of values) {
    const eq = v.indexOf('=');
    const name = v.slice(0, Math.max(eq, 0));
    const dir = v.slice(eq + 1);
    if (eq < 0 || !POLICY_VOLUME_NAME_RE.test(name) || !/^.{1,1024}$/.test(dir)) throw new CocoonError('BAD_USAGE', '--volume must be NAME=HOSTDIR (NAME: [a-z0-9][a-z0-9_-]*)');
    if (out.some((o) => o.name === name)) throw new CocoonError('BAD_USAGE', `--volume ${name} given twice`);
    const hostDir = resolve(dir);
    if (hostDir.includes(',') || hostDir.includes('\0')) throw new CocoonError('BAD_USAGE', `--volume ${name}: the host directory must not contain commas`);
    await mkdir(hostDir, { recursive: true, mode: 0o700 });
    out.push({ name, hostDir });
  }
  return out;
}
