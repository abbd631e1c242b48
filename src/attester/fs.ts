/**
 * The file operations the kernel/LibOS attesters use, behind an interface so that tests can
 * run them against a fake tree that reproduces the kernel's side effects. Reads are bounded.
 */
import { mkdir, open, rmdir, stat } from 'node:fs/promises';
import { CocoonError } from '../errors.js';

export interface AttesterFs {
  exists(path: string): Promise<boolean>;
  mkdir(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
  /** One write(2) of the whole buffer at offset 0 (configfs/sysfs attributes need a single write). */
  write(path: string, data: Buffer): Promise<void>;
  /** Reads the whole file; more than `max` bytes is an error. */
  read(path: string, max: number): Promise<Buffer>;
}

function ioError(op: string, path: string, err: unknown): CocoonError {
  return new CocoonError('ATTESTER_IO_FAILED', `${op} ${path}: ${(err as Error).message}`, { cause: err, details: { path, errno: (err as NodeJS.ErrnoException).code } });
}

export const nodeAttesterFs: AttesterFs = {
  async exists(path) {
    try {
      await stat(path);
      return true;
    } catch {
      return false;
    }
  },
  async mkdir(path) {
    await mkdir(path, { mode: 0o700 }).catch((err: unknown) => {
      throw ioError('mkdir', path, err);
    });
  },
  async rmdir(path) {
    await rmdir(path).catch((err: unknown) => {
      throw ioError('rmdir', path, err);
    });
  },
  async write(path, data) {
    let fh;
    try {
      fh = await open(path, 'r+');
      const { bytesWritten } = await fh.write(data, 0, data.length, 0);
      if (bytesWritten !== data.length) throw new Error(`short write (${bytesWritten} of ${data.length} bytes)`);
    } catch (err) {
      throw ioError('write', path, err);
    } finally {
      await fh?.close().catch(() => undefined);
    }
  },
  async read(path, max) {
    let fh;
    try {
      fh = await open(path, 'r');
      const parts: Buffer[] = [];
      let total = 0;
      for (;;) {
        const buf = Buffer.alloc(Math.min(64 * 1024, max + 1));
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        total += bytesRead;
        if (total > max) throw new CocoonError('INPUT_TOO_LARGE', `${path}: more than ${max} bytes`);
        parts.push(buf.subarray(0, bytesRead));
      }
      return Buffer.concat(parts);
    } catch (err) {
      if (err instanceof CocoonError) throw err;
      throw ioError('read', path, err);
    } finally {
      await fh?.close().catch(() => undefined);
    }
  },
};
