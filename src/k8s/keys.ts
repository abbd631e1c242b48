/**
 * `cocoon k8s install-keys` (the KBS pod's init container): copies the replicas' shared key
 * files from the mounted Secret into the data directory as 0600 files of the KBS user. Secret
 * volume files are root-owned and group-readable (fsGroup), which the KBS rightly refuses for
 * key material.
 */
import { chmod, open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { readFileBounded } from '../util/read-bounded.js';

export const KEY_FILES = ['kbs-identity.jwk', 'seal.key'] as const;
const MAX_KEY_FILE = 64 * 1024;

async function readKeyFile(path: string): Promise<Buffer> {
  let data: Buffer;
  try {
    data = await readFileBounded(path, { max: MAX_KEY_FILE, what: 'key file' });
  } catch (err) {
    if ((err as { cause?: { code?: unknown } }).cause?.code === 'ENOENT') throw new CocoonError('IO_ERROR', `${path} is missing: the keys Secret needs the keys ${KEY_FILES.join(' and ')}`, { cause: err });
    throw err;
  }
  if (data.length === 0) throw new CocoonError('IO_ERROR', `${path} is empty`);
  return data;
}

/** Copies the key files; returns the paths written. */
export async function installKeys(fromDir: string, toDir: string): Promise<string[]> {
  const written: string[] = [];
  for (const name of KEY_FILES) {
    const data = await readKeyFile(join(fromDir, name));
    const target = join(toDir, name);
    const tmp = `${target}.tmp-${process.pid}`;
    try {
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(data);
      } finally {
        await fh.close();
      }
      await chmod(tmp, 0o600);
      await rename(tmp, target);
    } catch (err) {
      throw new CocoonError('IO_ERROR', `cannot write ${target}: ${(err as Error).message}`, { cause: err });
    }
    written.push(target);
  }
  return written;
}
