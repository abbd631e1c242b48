/**
 * Fake kernel / LibOS trees in a temp dir that reproduce the file protocols Cocoon's attesters
 * use: configfs-tsm report entries (attribute files appear on mkdir, every write bumps
 * `generation`, `outblob` is produced from `inblob`), the TDX RTMR sysfs attribute (a write
 * extends: R := SHA-384(R ‖ data)), and Gramine's /dev/attestation (`quote` carries the last
 * `user_report_data`). Hooks let a test play a concurrent writer or remove files.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { nodeAttesterFs, type AttesterFs } from '../../src/attester/fs.js';

export interface FakeHooks {
  /** Called before each read with the attribute name; may mutate the tree. */
  beforeRead?: (name: string, dir: string) => Promise<void> | void;
  /** Attribute files not created on mkdir (simulates an older/odd kernel). */
  omit?: string[];
}

async function bumpGeneration(dir: string): Promise<void> {
  const text = await readFile(join(dir, 'generation'), 'utf8').catch(() => undefined);
  if (text === undefined) return;
  const g = Number(text.trim());
  await writeFile(join(dir, 'generation'), `${g + 1}\n`);
}

export function fakeTsmFs(base: string, provider: 'tdx_guest' | 'sev_guest', outblobFor: (inblob: Buffer) => Buffer, auxblob: Buffer | undefined, hooks: FakeHooks = {}): AttesterFs {
  return {
    ...nodeAttesterFs,
    async mkdir(path) {
      await nodeAttesterFs.mkdir(path);
      if (dirname(path) !== base) return;
      const files: Record<string, string | Buffer> = { inblob: '', outblob: '', provider: `${provider}\n`, generation: '0\n', privlevel: '', privlevel_floor: '0\n' };
      if (auxblob) files.auxblob = auxblob;
      for (const [name, content] of Object.entries(files)) if (!hooks.omit?.includes(name)) await writeFile(join(path, name), content);
    },
    async rmdir(path) {
      for (const f of await readdir(path)) await rm(join(path, f));
      await rmdir(path);
    },
    async write(path, data) {
      await nodeAttesterFs.write(path, data);
      const dir = dirname(path);
      if (basename(path) === 'inblob') await writeFile(join(dir, 'outblob'), outblobFor(data));
      await bumpGeneration(dir);
    },
    async read(path, max) {
      await hooks.beforeRead?.(basename(path), dirname(path));
      return nodeAttesterFs.read(path, max);
    },
  };
}

export function fakeRtmrFs(path: string, inner: AttesterFs = nodeAttesterFs): AttesterFs {
  return {
    ...inner,
    async write(p, data) {
      if (p !== path) return inner.write(p, data);
      if (data.length !== 48) throw new Error('rtmr write must be 48 bytes');
      const old = await readFile(path);
      await writeFile(path, createHash('sha384').update(old).update(data).digest());
    },
  };
}

export async function makeGramineTree(dir: string, type = 'dcap'): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'attestation_type'), `${type}\n`);
  await writeFile(join(dir, 'user_report_data'), Buffer.alloc(64));
  await writeFile(join(dir, 'quote'), Buffer.alloc(0));
}

/** The LibOS side: reading `quote` yields a fake SGX quote carrying the current user_report_data. */
export function fakeGramineFs(dir: string, hooks: { tamper?: boolean } = {}): AttesterFs {
  return {
    ...nodeAttesterFs,
    async read(path, max) {
      if (path === join(dir, 'quote')) {
        const rd = await readFile(join(dir, 'user_report_data'));
        const quote = Buffer.alloc(48 + 384 + 4);
        quote.writeUInt16LE(3, 0);
        (hooks.tamper ? Buffer.alloc(64, 0xee) : rd).copy(quote, 48 + 320);
        await writeFile(path, quote);
      }
      return nodeAttesterFs.read(path, max);
    },
  };
}
