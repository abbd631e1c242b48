import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import type { Sealer } from './sealer.js';

const PREFIX = 'tpm2:v1';
const TIMEOUT_MS = 30_000;

/** Runs one tpm2-tools command; stdin from `input`; bounded output; CocoonError IO_ERROR on failure. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, input?: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    let size = 0;
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
    child.stdout.on('data', (d: Buffer) => {
      size += d.length;
      if (size <= 1024 * 1024) out.push(d);
    });
    child.stderr.on('data', (d: Buffer) => {
      if (err.length < 4096) err += d.toString('utf8');
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new CocoonError('IO_ERROR', e.code === 'ENOENT' ? `${cmd} not found: install tpm2-tools` : `${cmd}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new CocoonError('SEAL_FAILED', `${cmd} failed (${code ?? 'killed'}): ${err.trim().split('\n').slice(-2).join(' ').slice(0, 300)}`));
    });
    child.stdin.end(input ? Buffer.from(input) : undefined);
  });
}

export interface TpmSealerOptions {
  /** TCTI string, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`. */
  tcti: string;
  /** tpm2-tools directory (default: on PATH). */
  toolsDir?: string;
}

/**
 * Seals the data key to a TPM 2.0 (a real one or swtpm) with tpm2-tools: a sealed-data object
 * under an ECC P-256 primary key of the owner hierarchy. The primary is re-created from the
 * TPM's seed on every use (same template → same key), so only the sealed object's public and
 * private blobs are stored (`tpm2:v1.<pub>.<priv>`); they are useless on any other TPM.
 */
export class TpmSealer implements Sealer {
  readonly kind = 'tpm2';
  private readonly env: NodeJS.ProcessEnv;

  constructor(private readonly options: TpmSealerOptions) {
    if (!/^(swtpm|mssim):host=[A-Za-z0-9.:-]{1,64},port=\d{1,5}$|^device:\/dev\/tpm(rm)?\d{1,2}$/.test(options.tcti)) {
      throw new CocoonError('BAD_USAGE', `unsupported TCTI ${options.tcti.slice(0, 80)} (swtpm:host=H,port=P or device:/dev/tpmrm0)`);
    }
    this.env = { PATH: process.env.PATH ?? '/usr/bin:/bin', TPM2TOOLS_TCTI: options.tcti };
  }

  private tool(name: string): string {
    return this.options.toolsDir ? join(this.options.toolsDir, name) : name;
  }

  private async withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(tmpdir(), 'cocoon-tpm-'));
    try {
      return await fn(dir);
    } finally {
      await run(this.tool('tpm2_flushcontext'), ['-t'], this.env).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** tpm2-tools leave transient objects loaded; the TPM has only a few slots (3 in swtpm). */
  private flush(): Promise<Buffer> {
    return run(this.tool('tpm2_flushcontext'), ['-t'], this.env);
  }

  private async primary(dir: string): Promise<void> {
    await run(this.tool('tpm2_createprimary'), ['-Q', '-C', 'o', '-g', 'sha256', '-G', 'ecc256', '-c', join(dir, 'primary.ctx')], this.env);
    await this.flush();
  }

  async seal(dataKey: Uint8Array): Promise<string> {
    if (dataKey.length === 0 || dataKey.length > 128) throw new CocoonError('BAD_USAGE', 'a TPM sealed object holds 1–128 bytes');
    return this.withDir(async (dir) => {
      await this.primary(dir);
      await run(this.tool('tpm2_create'), ['-Q', '-C', join(dir, 'primary.ctx'), '-i-', '-u', join(dir, 'seal.pub'), '-r', join(dir, 'seal.priv')], this.env, dataKey);
      const [pub, priv] = [await readFile(join(dir, 'seal.pub')), await readFile(join(dir, 'seal.priv'))];
      return `${PREFIX}.${pub.toString('base64')}.${priv.toString('base64')}`;
    });
  }

  async unseal(sealed: string): Promise<Uint8Array> {
    const m = /^tpm2:v1\.([A-Za-z0-9+/=]{1,4096})\.([A-Za-z0-9+/=]{1,4096})$/.exec(sealed);
    if (!m) throw new CocoonError('SEAL_FAILED', 'the sealed data key is not a TPM blob (was it sealed by another sealer?)');
    return this.withDir(async (dir) => {
      await writeFile(join(dir, 'seal.pub'), Buffer.from(m[1] as string, 'base64'));
      await writeFile(join(dir, 'seal.priv'), Buffer.from(m[2] as string, 'base64'));
      await this.primary(dir);
      await run(this.tool('tpm2_load'), ['-Q', '-C', join(dir, 'primary.ctx'), '-u', join(dir, 'seal.pub'), '-r', join(dir, 'seal.priv'), '-c', join(dir, 'seal.ctx')], this.env);
      await this.flush();
      await run(this.tool('tpm2_unseal'), ['-c', join(dir, 'seal.ctx'), '-o', join(dir, 'out.bin')], this.env);
      const value = await readFile(join(dir, 'out.bin'));
      return new Uint8Array(value);
    });
  }
}
