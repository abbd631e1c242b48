import { mkdir, readdir, readFile, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';

/** Where `cocoon run` keeps bundles and its runc state (separate from any other runc user). */
export function runtimeRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.COCOON_RUNTIME_DIR ?? '/run/cocoon';
}

export interface ContainerRecord {
  name: string;
  image: string;
  imageDigest: string;
  measurement: string;
  kbsUrl: string;
  tee: string;
  createdAt: string;
  detached: boolean;
  bundle: string;
  logFile?: string;
}

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

export function validateContainerName(name: string): string {
  if (!NAME.test(name)) throw new CocoonError('BAD_USAGE', `invalid container name "${name}" (letters, digits, _ . -; at most 63)`);
  return name;
}

export const containerDir = (root: string, name: string) => join(root, 'containers', validateContainerName(name));
export const runcStateRoot = (root: string) => join(root, 'runc');

export async function saveRecord(root: string, record: ContainerRecord): Promise<void> {
  await mkdir(containerDir(root, record.name), { recursive: true, mode: 0o700 });
  await writeFile(join(containerDir(root, record.name), 'cocoon.json'), JSON.stringify(record, null, 2) + '\n', { mode: 0o600 });
}

export async function loadRecord(root: string, name: string): Promise<ContainerRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(containerDir(root, name), 'cocoon.json'), 'utf8')) as ContainerRecord;
  } catch {
    return undefined;
  }
}

export async function listRecords(root: string): Promise<ContainerRecord[]> {
  const names = await readdir(join(root, 'containers')).catch(() => [] as string[]);
  const records = await Promise.all(names.filter((n) => NAME.test(n)).map((n) => loadRecord(root, n)));
  return records.filter((r): r is ContainerRecord => r !== undefined);
}

export async function removeContainerDir(root: string, name: string): Promise<void> {
  await rm(containerDir(root, name), { recursive: true, force: true });
}
