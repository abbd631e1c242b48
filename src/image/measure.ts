import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { canonicalJson } from '../crypto/canonical-json.js';
import { sha256Hex, sha384Hex } from '../crypto/hash.js';

/**
 * The launcher digest and the workload measurement (docs/internals.md §2). Wrap and the
 * launcher both call these; there is no second implementation.
 */

/** Where the launcher files live inside the container. */
export const LAUNCHER_ROOT = '/cocoon';
/**
 * Top-level entries of /cocoon/ that are not launcher code (volumes/: protected volumes' encrypted
 * stores, docs/volumes.md; gramine/: the Gramine manifest, which itself lists the launcher's hashes).
 */
export const LAUNCHER_EXCLUDED = ['payload', 'root', 'volumes', 'gramine'] as const;

export interface LaunchConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
}

export interface LauncherFile {
  path: string;
  mode: number;
  size?: number;
  sha256?: string;
  link?: string;
}

export function isLauncherExcluded(relPath: string): boolean {
  const top = relPath.split('/')[0];
  return (LAUNCHER_EXCLUDED as readonly string[]).includes(top ?? '');
}

async function fileSha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

const byCodeUnits = (a: LauncherFile, b: LauncherFile): number => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

/**
 * The list the launcher digest is computed over: regular files and symlinks below `dir`
 * (which stands for /cocoon/), not following symlinks, without payload/, root/, volumes/ and gramine/.
 */
export async function launcherFiles(dir: string): Promise<LauncherFile[]> {
  const st = await lstat(dir).catch((err: unknown) => {
    throw new CocoonError('NOT_FOUND', `launcher directory ${dir}: ${(err as Error).message}`, { cause: err });
  });
  if (!st.isDirectory()) throw new CocoonError('BAD_USAGE', `launcher directory ${dir} is not a directory`);
  const out: LauncherFile[] = [];
  async function walk(rel: string): Promise<void> {
    for (const name of await readdir(rel ? join(dir, rel) : dir)) {
      const childRel = rel ? `${rel}/${name}` : name;
      if (!rel && isLauncherExcluded(childRel)) continue;
      const p = join(dir, childRel);
      const s = await lstat(p);
      const path = `${LAUNCHER_ROOT}/${childRel}`;
      if (s.isDirectory()) await walk(childRel);
      else if (s.isFile()) out.push({ path, mode: s.mode & 0o7777, size: s.size, sha256: await fileSha256(p) });
      else if (s.isSymbolicLink()) out.push({ path, mode: s.mode & 0o7777, link: await readlink(p) });
    }
  }
  try {
    await walk('');
  } catch (err) {
    throw new CocoonError('IO_ERROR', `reading launcher files under ${dir}: ${(err as Error).message}`, { cause: err });
  }
  return out.sort(byCodeUnits);
}

/** `sha256:<hex>` of the canonical JSON list of launcher files. */
export async function launcherDigest(dir: string): Promise<string> {
  return `sha256:${sha256Hex(canonicalJson(await launcherFiles(dir)))}`;
}

export interface MeasurementInputs {
  launcherDigest: string;
  /** diffIDs of the application layers, in order. */
  layers: string[];
  config: LaunchConfig;
  policy: string;
  workload: string;
}

/** The measurement document M (exposed for diagnostics; hash it with workloadMeasurement). */
export function measurementDocument(i: MeasurementInputs): Record<string, unknown> {
  return {
    v: 1,
    launcher: i.launcherDigest,
    layers: [...i.layers],
    config: { entrypoint: i.config.entrypoint, cmd: i.config.cmd, env: i.config.env, workingDir: i.config.workingDir, user: i.config.user },
    policy: i.policy,
    workload: i.workload,
  };
}

/** Lowercase hex SHA-384 of canonicalJson(M). */
export function workloadMeasurement(i: MeasurementInputs): string {
  return sha384Hex(canonicalJson(measurementDocument(i)));
}
