import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { CocoonError } from '../errors.js';
import type { ErrorCode } from '../errors.js';

export interface BoundedReadOptions {
  /** Largest accepted size in bytes: a longer input is INPUT_TOO_LARGE. */
  max: number;
  /** What the file is, for errors ("policy", "owner key", …). */
  what: string;
  /** The code when the file cannot be opened or is a directory (default IO_ERROR; CLI arguments use BAD_USAGE). */
  unreadable?: ErrorCode;
  /** Key material: refused when group or others have any access to it. */
  ownerOnly?: boolean;
}

const CHUNK = 64 * 1024;

/**
 * Reads a file that comes from outside (a CLI argument, a key file, a mounted secret), at most
 * `max` bytes. It reads in chunks and stops one byte past the bound, so a huge file, /dev/zero
 * or an endless pipe is refused without being read whole; pipes (`/dev/stdin`, `<(…)`) work.
 */
export async function readFileBounded(path: string, o: BoundedReadOptions): Promise<Buffer> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new CocoonError(o.unreadable ?? 'IO_ERROR', `cannot read ${o.what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  try {
    const info = await fh.stat();
    if (info.isDirectory()) throw new CocoonError(o.unreadable ?? 'IO_ERROR', `${o.what} ${path} is a directory`);
    if (o.ownerOnly && (info.mode & 0o077) !== 0) throw new CocoonError('IO_ERROR', `${o.what} ${path} is accessible by other users; chmod 600 it`);
    const tooLarge = (): CocoonError => new CocoonError('INPUT_TOO_LARGE', `${o.what} ${path} is larger than ${o.max} bytes`);
    if (info.isFile() && info.size > o.max) throw tooLarge();
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      // Buffer.alloc, not allocUnsafe: key files must not land in Node's shared buffer pool.
      const buf = Buffer.alloc(Math.min(CHUNK, o.max + 1 - total));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      chunks.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > o.max) throw tooLarge();
    }
    return Buffer.concat(chunks, total);
  } finally {
    await fh.close();
  }
}
