import { lstat, mkdir, open } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join, posix } from 'node:path';
import { CocoonError } from '../errors.js';

export interface InjectedFile {
  path: string;
  mode: number;
  content: Buffer;
}

export const MAX_INJECTED_FILE = 16 * 1024 * 1024;

/**
 * Writes a released secret file into the in-memory root. The path is normalized inside the
 * root and no existing component may be a symlink, so an image cannot redirect a secret to a
 * place it chose. Files are created exclusively readable by `owner` (uid/gid).
 */
export async function writeInjectedFile(root: string, file: InjectedFile, owner: { uid: number; gid: number }): Promise<string> {
  if (!file.path.startsWith('/') || file.path.includes('\0')) throw new CocoonError('POLICY_INVALID', `injected file path must be absolute: ${file.path}`);
  const normalized = posix.normalize(file.path);
  if (normalized === '/' || file.path.split('/').includes('..')) throw new CocoonError('PATH_TRAVERSAL', `injected file path escapes the root: ${file.path}`);
  if (file.content.length > MAX_INJECTED_FILE) throw new CocoonError('INPUT_TOO_LARGE', `injected file ${normalized} is larger than 16 MiB`);
  const parts = normalized.split('/').filter(Boolean);
  let current = root;
  for (const part of parts.slice(0, -1)) {
    current = join(current, part);
    const info = await lstat(current).catch(() => undefined);
    if (!info) await mkdir(current, { mode: 0o755 });
    else if (info.isSymbolicLink() || !info.isDirectory()) {
      throw new CocoonError('PATH_TRAVERSAL', `cannot inject ${normalized}: ${current.slice(root.length)} is not a plain directory`);
    }
  }
  const target = join(root, ...parts);
  const handle = await open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, file.mode & 0o7777);
  try {
    await handle.writeFile(file.content);
    await handle.chmod(file.mode & 0o7777);
    if (process.getuid?.() === 0) await handle.chown(owner.uid, owner.gid);
  } finally {
    await handle.close();
  }
  return normalized;
}

/** Image env (KEY=VALUE list) overlaid with the released env; later entries win. */
export function buildAppEnv(imageEnv: readonly string[], released: Record<string, string>, home: string): string[] {
  const env = new Map<string, string>();
  for (const entry of imageEnv) {
    const eq = entry.indexOf('=');
    if (eq > 0) env.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  if (!env.has('PATH')) env.set('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  if (!env.has('HOME')) env.set('HOME', home);
  for (const [k, v] of Object.entries(released)) env.set(k, v);
  return [...env].map(([k, v]) => `${k}=${v}`);
}

/** The argv the app starts with: Entrypoint + (policy `args`, else the image Cmd), as Docker and Kubernetes do. */
export function buildAppArgv(entrypoint: readonly string[], cmd: readonly string[], args: readonly string[] | null | undefined): string[] {
  const argv = [...entrypoint, ...(args && args.length > 0 ? args : cmd)];
  if (argv.length === 0) throw new CocoonError('APP_START_FAILED', 'the image has neither Entrypoint nor Cmd, and the policy gives no args');
  return argv;
}
