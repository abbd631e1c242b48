/** Starts a real software TPM (swtpm) on free loopback ports; every wait is bounded. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const swtpmMissing: string | false = spawnSync('sh', ['-c', 'command -v swtpm']).status !== 0 ? 'swtpm not installed — real TPM tests skipped' : false;

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

export async function freePortPair(): Promise<number> {
  for (let i = 0; i < 40; i++) {
    const p = await new Promise<number>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const port = (s.address() as { port: number }).port;
        s.close(() => resolve(port));
      });
    });
    if (p < 65000 && (await portFree(p + 1))) return p;
  }
  throw new Error('no free port pair');
}

export interface Swtpm {
  port: number;
  tcti: string;
  dir: string;
  stop(): Promise<void>;
}

export async function startSwtpm(): Promise<Swtpm> {
  const dir = await mkdtemp(path.join(tmpdir(), 'cocoon-swtpm-'));
  const port = await freePortPair();
  const child: ChildProcess = spawn('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${dir}`, '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`, '--flags', 'not-need-init,startup-clear'], { stdio: 'ignore' });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const s = new Socket();
      s.once('error', () => resolve(false));
      s.connect(port + 1, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
    });
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
      throw new Error('swtpm did not start within 10 s');
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    dir,
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => {
          const t = setTimeout(() => {
            child.kill('SIGKILL');
            r(undefined);
          }, 3000);
          child.once('exit', () => {
            clearTimeout(t);
            r(undefined);
          });
        });
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
