import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { openValue, sealValue } from './secret-box.js';
import type { Store } from './store/types.js';

/**
 * Seals the store's data key. The sealed blob lives in the store (shared by replicas);
 * what unseals it (a file for dev, a TPM later, owner recovery shares later) does not.
 */
export interface Sealer {
  readonly kind: string;
  seal(dataKey: Uint8Array): Promise<string>;
  unseal(sealed: string): Promise<Uint8Array>;
}

export const SEAL_KEY_FILE = 'seal.key';
export const DATA_KEY_META = 'data-key';
const AAD = 'cocoon-kbs:data-key';

/** Dev sealer: a 32-byte wrapping key in `<dataDir>/seal.key` (mode 0600). */
export class FileSealer implements Sealer {
  readonly kind = 'file';
  private constructor(private readonly key: Buffer) {}

  static async open(dataDir: string): Promise<FileSealer> {
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const path = join(dataDir, SEAL_KEY_FILE);
    return new FileSealer(await readOrCreateKeyFile(path, () => randomBytes(32).toString('base64') + '\n', (text) => {
      const key = Buffer.from(text.trim(), 'base64');
      if (key.length !== 32) throw new CocoonError('IO_ERROR', `${path} does not hold a 32-byte base64 key`);
      return key;
    }));
  }

  seal(dataKey: Uint8Array): Promise<string> {
    return Promise.resolve(sealValue(this.key, dataKey, AAD));
  }

  unseal(sealed: string): Promise<Uint8Array> {
    return Promise.resolve(openValue(this.key, sealed, AAD));
  }
}

/** Returns the store's data key, creating and sealing one on first use. */
export async function loadDataKey(store: Store, sealer: Sealer): Promise<Buffer> {
  let sealed = await store.getMeta(DATA_KEY_META);
  if (sealed === undefined) sealed = await store.putMetaIfAbsent(DATA_KEY_META, await sealer.seal(randomBytes(32)));
  const key = Buffer.from(await sealer.unseal(sealed));
  if (key.length !== 32) throw new CocoonError('IO_ERROR', 'unsealed data key has the wrong length');
  return key;
}

/**
 * Reads a private key file, or creates it exclusively with mode 0600. Refuses a file that
 * other users can read.
 */
export async function readOrCreateKeyFile<T>(path: string, create: () => string, parse: (text: string) => T): Promise<T> {
  try {
    const handle = await open(path, 'wx', 0o600);
    try {
      await handle.writeFile(create());
    } finally {
      await handle.close();
    }
    await chmod(path, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new CocoonError('IO_ERROR', `cannot create ${path}: ${(err as Error).message}`, { cause: err });
    }
  }
  const info = await stat(path);
  if ((info.mode & 0o077) !== 0) throw new CocoonError('IO_ERROR', `${path} is accessible by other users (mode ${(info.mode & 0o777).toString(8)}); chmod 600 it`);
  if (info.size > 64 * 1024) throw new CocoonError('IO_ERROR', `${path} is too large`);
  return parse(await readFile(path, 'utf8'));
}
