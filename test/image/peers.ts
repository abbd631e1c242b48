import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir, readFile, lstat, readlink, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { freePort } from '../../src/util/net.js';
export { freePort } from '../../src/util/net.js';

/** Real peers for image tests: docker-registry on loopback, skopeo, umoci, the CLI under tsx. */

export const run = promisify(execFile);

export async function has(cmd: string, args: string[] = ['--version']): Promise<boolean> {
  return run(cmd, args).then(
    () => true,
    () => false,
  );
}

export interface Registry {
  host: string;
  stop(): Promise<void>;
}

/**
 * Starts Debian's docker-registry (distribution v2) on a free loopback port with its config
 * and storage in `dir`; with `auth`, htpasswd basic authentication (bcrypt line from htpasswd -B).
 */
export async function startRegistry(dir: string, auth?: { user: string; password: string }, tls?: { cert: string; key: string }): Promise<Registry> {
  await mkdir(join(dir, 'data'), { recursive: true });
  const port = await freePort();
  let authYaml = '';
  if (auth) {
    const { stdout } = await run('htpasswd', ['-Bbn', auth.user, auth.password]);
    await writeFile(join(dir, 'htpasswd'), stdout.trim() + '\n');
    authYaml = `auth:\n  htpasswd:\n    realm: cocoon-test\n    path: ${join(dir, 'htpasswd')}\n`;
  }
  const tlsYaml = tls ? `  tls:\n    certificate: ${tls.cert}\n    key: ${tls.key}\n` : '';
  const config = `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n${tlsYaml}${authYaml}`;
  await writeFile(join(dir, 'config.yml'), config);
  const child: ChildProcess = spawn('docker-registry', ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const host = `127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = tls
      ? await run('openssl', ['s_client', '-connect', host, '-brief'], { timeout: 2000 }).then(
          () => true,
          (e: { stderr?: string }) => /CONNECTION ESTABLISHED|Verification/i.test(e.stderr ?? ''),
        )
      : await fetch(`http://${host}/v2/`).then(
          (r) => r.status === 200 || r.status === 401,
          () => false,
        );
    if (ok) break;
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not start: ${stderr.slice(0, 500)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    host,
    stop: async () => {
      if (child.exitCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

const CLI = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');
const TSX = join(import.meta.dirname, '..', '..', 'node_modules', 'tsx', 'dist', 'esm', 'index.mjs');

/** Runs the CLI from source; resolves with exit code, stdout, stderr (never rejects on exit ≠ 0). */
export async function cocoon(args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX, CLI, ...args], { env: { ...process.env, NO_COLOR: '1', ...(opts.env ?? {}) }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}

/** A shell script that runs `cocoon keyprovider` from source (for OCICRYPT_KEYPROVIDER_CONFIG). */
export async function keyproviderScript(dir: string): Promise<string> {
  const path = join(dir, 'cocoon-keyprovider.sh');
  await writeFile(path, `#!/bin/sh\nexec "${process.execPath}" --import "${TSX}" "${CLI}" keyprovider\n`, { mode: 0o755 });
  return path;
}

/** path → description (type, mode, content hash or link target) of every entry below dir. */
export async function treeOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(d: string): Promise<void> {
    for (const name of (await readdir(d)).sort()) {
      const p = join(d, name);
      const st = await lstat(p);
      const rel = relative(dir, p);
      if (st.isDirectory()) {
        out[rel] = `dir ${(st.mode & 0o7777).toString(8)}`;
        await walk(p);
      } else if (st.isSymbolicLink()) out[rel] = `link ${await readlink(p)}`;
      else if (st.isFile()) out[rel] = `file ${(st.mode & 0o7777).toString(8)} ${createHash('sha256').update(await readFile(p)).digest('hex')}`;
      else out[rel] = 'other';
    }
  }
  await walk(dir);
  return out;
}

/** A CA and a server certificate for 127.0.0.1 (openssl), for TLS registry tests. */
export async function makeTlsFiles(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  await mkdir(dir, { recursive: true });
  const ca = join(dir, 'ca.pem');
  const caKey = join(dir, 'ca.key');
  const key = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const cert = join(dir, 'server.pem');
  const ext = join(dir, 'ext.cnf');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', caKey, '-out', ca, '-days', '2', '-subj', '/CN=cocoon test CA']);
  await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', '/CN=127.0.0.1']);
  await writeFile(ext, 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext]);
  return { ca, cert, key };
}
