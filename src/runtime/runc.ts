import { spawn, execFile } from 'node:child_process';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { CocoonError } from '../errors.js';
import { existsSync } from 'node:fs';
import { parseImageReference, requireOciLayout } from '../image/reference.js';
import { readWrappedImage, unpackWrappedLayers, type WrappedImage } from '../image/wrapped.js';
import { buildRuncSpec, type HostCharDevice } from './spec.js';
import { containerDir, listRecords, loadRecord, removeContainerDir, runcStateRoot, runtimeRoot, saveRecord, validateContainerName, type ContainerRecord } from './state.js';

const execFileAsync = promisify(execFile);

export interface RunOptions {
  /** OCI layout directory of a wrapped image, optionally `DIR:TAG`. */
  image: string;
  kbsUrl: string;
  tee: string;
  simPlatformDir?: string;
  name?: string;
  detach: boolean;
  memoryRootSize: string;
  hostNetwork: boolean;
  /** Extra launcher settings (COCOON_KBS_RETRIES, …). */
  launcherEnv?: Record<string, string>;
  /** Host character devices for the launcher, e.g. /dev/tpmrm0 for `--tee tpm`. */
  devices?: string[];
  /** Protected volumes' host stores (`--volume NAME=HOSTDIR`). */
  volumes?: { name: string; hostDir: string }[];
  runtimeDir?: string;
  runc?: string;
  onProgress?: (message: string) => void;
}

export interface RunResult {
  name: string;
  /** Exit status of the container (foreground runs only). */
  exitCode?: number;
  record: ContainerRecord;
}

async function runcCommand(runc: string, root: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(runc, ['--root', runcStateRoot(root), ...args], { maxBuffer: 4 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new CocoonError('RUNTIME_FAILED', `${runc} not found: install runc (scripts/setup.sh does)`);
    throw new CocoonError('RUNTIME_FAILED', `runc ${args[0]} failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

/** Unpacks a wrapped image into a runc bundle and runs it (foreground or detached). */
export async function runWrapped(options: RunOptions): Promise<RunResult> {
  const root = options.runtimeDir ?? runtimeRoot();
  const runc = options.runc ?? 'runc';
  const name = validateContainerName(options.name ?? `cocoon-${randomBytes(4).toString('hex')}`);
  if (await loadRecord(root, name)) throw new CocoonError('CONFLICT', `a container named ${name} exists: cocoon stop ${name} first`);
  const layout = requireOciLayout(parseImageReference(options.image, { isLocalPath: existsSync }), 'cocoon run');
  const image = await readWrappedImage(layout.dir, layout.tag);

  const dir = containerDir(root, name);
  const bundle = join(dir, 'bundle');
  await mkdir(bundle, { recursive: true, mode: 0o700 });
  await mkdir(runcStateRoot(root), { recursive: true, mode: 0o700 });
  const record: ContainerRecord = {
    name,
    image: options.image,
    imageDigest: image.manifestDigest,
    measurement: image.measurement,
    kbsUrl: options.kbsUrl,
    tee: options.tee,
    createdAt: new Date().toISOString(),
    detached: options.detach,
    bundle,
    ...(options.detach ? { logFile: join(dir, 'container.log') } : {}),
  };
  await saveRecord(root, record);
  try {
    const rootfs = await cachedRootfs(root, image, options.onProgress);
    const env = [
      ...image.env,
      `COCOON_KBS_URL=${options.kbsUrl}`,
      `COCOON_TEE=${options.tee}`,
      ...Object.entries(options.launcherEnv ?? {}).map(([k, v]) => `${k}=${v}`),
    ];
    const spec = buildRuncSpec({
      args: image.entrypoint,
      env,
      hostname: name,
      memoryRootSize: options.memoryRootSize,
      hostNetwork: options.hostNetwork,
      rootfs,
      devices: await Promise.all((options.devices ?? []).map(hostCharDevice)),
      ...(options.simPlatformDir ? { simPlatformDir: options.simPlatformDir } : {}),
      ...(options.volumes && options.volumes.length > 0 ? { volumes: options.volumes } : {}),
    });
    await writeFile(join(bundle, 'config.json'), JSON.stringify(spec, null, 2));
  } catch (err) {
    await removeContainerDir(root, name);
    throw err;
  }

  if (options.detach) {
    const log = await open(record.logFile as string, 'a', 0o600);
    try {
      await new Promise<void>((resolve, reject) => {
        const child = spawn(runc, ['--root', runcStateRoot(root), 'run', '--detach', '--bundle', bundle, name], { stdio: ['ignore', log.fd, log.fd] });
        child.once('error', reject);
        child.once('exit', (code) => (code === 0 ? resolve() : reject(new CocoonError('RUNTIME_FAILED', `runc run exited with ${code}; see ${record.logFile}`))));
      });
    } catch (err) {
      const tail = (await readFile(record.logFile as string, 'utf8').catch(() => '')).trim().split('\n').slice(-10).join('\n');
      await runcCommand(runc, root, ['delete', '--force', name]).catch(() => undefined);
      await removeContainerDir(root, name);
      if (err instanceof CocoonError) throw new CocoonError(err.code, `${err.message.replace(/; see .*$/, '')}${tail ? `:\n${tail}` : ''}`);
      throw new CocoonError('RUNTIME_FAILED', `cannot start runc: ${(err as Error).message}`, { cause: err });
    } finally {
      await log.close();
    }
    return { name, record };
  }

  const exitCode = await new Promise<number>((resolve, reject) => {
    const child = spawn(runc, ['--root', runcStateRoot(root), 'run', '--bundle', bundle, name], { stdio: ['ignore', 'inherit', 'inherit'] });
    const forward = (signal: NodeJS.Signals) => () => child.kill(signal);
    const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => [s, forward(s)] as const);
    for (const [s, h] of handlers) process.on(s, h);
    const done = () => {
      for (const [s, h] of handlers) process.off(s, h);
    };
    child.once('error', (err) => {
      done();
      reject(new CocoonError('RUNTIME_FAILED', `cannot start runc: ${err.message}`, { cause: err }));
    });
    child.once('exit', (code, signal) => {
      done();
      resolve(code ?? (signal ? 128 : 1));
    });
  });
  await runcCommand(runc, root, ['delete', '--force', name]).catch(() => undefined);
  await removeContainerDir(root, name);
  return { name, exitCode, record };
}

/** Major/minor of a host character device (Linux dev_t encoding). */
export async function hostCharDevice(path: string): Promise<HostCharDevice> {
  const info = await stat(path).catch(() => undefined);
  if (!info?.isCharacterDevice()) throw new CocoonError('RUNTIME_FAILED', `${path} is not a character device on this host`);
  const rdev = BigInt(info.rdev);
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { path, major, minor };
}

/**
 * The container root (launcher + ciphertext) is read-only and identical for every container
 * of one image, so it is unpacked once per manifest digest and shared. A half-unpacked tree
 * never becomes visible: it is unpacked beside and renamed into place.
 */
async function cachedRootfs(root: string, image: WrappedImage, onProgress?: (m: string) => void): Promise<string> {
  const dir = join(root, 'rootfs', image.manifestDigest.replace(/^sha256:/, ''));
  if (await stat(join(dir, '.cocoon-complete')).then(() => true, () => false)) return join(dir, 'rootfs');
  onProgress?.(`unpacking ${image.manifestDigest.slice(0, 19)}… (once per image)`);
  const tmp = `${dir}.tmp-${randomBytes(4).toString('hex')}`;
  await mkdir(join(tmp, 'rootfs'), { recursive: true, mode: 0o700 });
  try {
    await unpackWrappedLayers(image, join(tmp, 'rootfs'));
    await writeFile(join(tmp, '.cocoon-complete'), image.manifestDigest);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return join(dir, 'rootfs');
}

export interface ContainerStatus extends ContainerRecord {
  status: string;
  pid?: number;
}

export async function listContainers(options: { runtimeDir?: string; runc?: string } = {}): Promise<ContainerStatus[]> {
  const root = options.runtimeDir ?? runtimeRoot();
  const records = await listRecords(root);
  if (records.length === 0) return [];
  const raw = await runcCommand(options.runc ?? 'runc', root, ['list', '--format', 'json']).catch(() => 'null');
  const states = (JSON.parse(raw || 'null') as Array<{ id: string; status: string; pid: number }> | null) ?? [];
  return records.map((r) => {
    const state = states.find((s) => s.id === r.name);
    return { ...r, status: state?.status ?? 'exited', ...(state && state.pid > 0 ? { pid: state.pid } : {}) };
  });
}

/** SIGTERM, wait up to `graceMs`, then SIGKILL; removes the container and its bundle. */
export async function stopContainer(name: string, options: { runtimeDir?: string; runc?: string; graceMs?: number } = {}): Promise<void> {
  const root = options.runtimeDir ?? runtimeRoot();
  const runc = options.runc ?? 'runc';
  validateContainerName(name);
  if (!(await loadRecord(root, name))) throw new CocoonError('NOT_FOUND', `no container named ${name}`);
  const running = async () => {
    const out = await runcCommand(runc, root, ['state', name]).catch(() => undefined);
    return out ? (JSON.parse(out) as { status: string }).status === 'running' : false;
  };
  if (await running()) {
    await runcCommand(runc, root, ['kill', name, 'TERM']).catch(() => undefined);
    const deadline = Date.now() + (options.graceMs ?? 10_000);
    while (Date.now() < deadline && (await running())) await new Promise((r) => setTimeout(r, 100));
    if (await running()) await runcCommand(runc, root, ['kill', name, 'KILL']).catch(() => undefined);
  }
  await runcCommand(runc, root, ['delete', '--force', name]).catch(() => undefined);
  await removeContainerDir(root, name);
}

/** Status of one container ("running", "stopped", … or "absent"). */
export async function containerStatus(name: string, options: { runtimeDir?: string; runc?: string } = {}): Promise<string> {
  const root = options.runtimeDir ?? runtimeRoot();
  const out = await runcCommand(options.runc ?? 'runc', root, ['state', validateContainerName(name)]).catch(() => undefined);
  return out ? (JSON.parse(out) as { status: string }).status : 'absent';
}
