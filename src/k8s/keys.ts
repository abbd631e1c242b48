/**
 * `cocoon k8s install-keys` (the KBS pod's init container): copies the replicas' shared key
 * files from the mounted Secret into the data directory as 0600 files of the KBS user. Secret
 * volume files are root-owned and group-readable (fsGroup), which the KBS rightly refuses for
 * key material.
 */
import { chmod, open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';

export const KEY_FILES = ['kbs-identity.jwk', 'seal.key'] as const;
const MAX_KEY_FILE = 64 * 1024;

async function readBounded(path: string): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CocoonError('IO_ERROR', code === 'ENOENT' ? `${path} is missing: the keys Secret needs the keys ${KEY_FILES.join(' and ')}` : `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const info = await fh.stat();
    if (!info.isFile()) throw new CocoonError('IO_ERROR', `${path} is not a regular file`);
    if (info.size > MAX_KEY_FILE) throw new CocoonError('INPUT_TOO_LARGE', `${path} is larger than ${MAX_KEY_FILE} bytes`);
    const buf = Buffer.alloc(info.size);
    const { bytesRead } = await fh.read(buf, 0, info.size, 0);
    if (bytesRead === 0) throw new CocoonError('IO_ERROR', `${path} is empty`);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Copies the key files; returns the paths written. */
export async function installKeys(fromDir: string, toDir: string): Promise<string[]> {
  const written: string[] = [];
  for (const name of KEY_FILES) {
    const data = await readBounded(join(fromDir, name));
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
