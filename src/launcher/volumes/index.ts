import { chown, lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError, isCocoonError } from '../../errors.js';
import type { VolumeGrant } from '../../kbs/volume-plan.js';
import type { LauncherLog } from '../log.js';
import { readStoreManifest, restoreVolume, sealVolume } from './format.js';
import type { SealOptions, VolumeManifest } from './format.js';

/** A volume decrypted into the application root, to be sealed back on clean shutdown. */
export interface OpenVolume {
  grant: VolumeGrant;
  storeDir: string;
  /** Directory inside the application root (the mount path). */
  dir: string;
  manifest: VolumeManifest | undefined;
  /** The KBS counter as we know it (after any catch-up commit). */
  counter: number;
}

/** Advances the KBS counter from → to; rejects with CONFLICT when someone else moved it. */
export type CounterCommit = (volume: string, from: number, to: number) => Promise<void>;

/**
 * Resolves `mountPath` under `rootDir`, creating missing directories; refuses symlinks along
 * the way (the image's layers must not redirect a volume outside the root).
 */
async function mountDir(rootDir: string, mountPath: string, owner: { uid: number; gid: number } | undefined): Promise<string> {
  let cur = rootDir;
  for (const seg of mountPath.split('/').filter((s) => s !== '')) {
    cur = join(cur, seg);
    try {
      const st = await lstat(cur);
      if (!st.isDirectory()) throw new CocoonError('PATH_TRAVERSAL', `volume mount path ${mountPath}: ${cur.slice(rootDir.length)} is not a directory in the image`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await mkdir(cur, { mode: 0o755 });
      if (owner) await chown(cur, owner.uid, owner.gid);
    }
  }
  return cur;
}

/**
 * Opens every granted volume before the app starts: authenticates the store's manifest,
 * enforces the KBS counter (VOLUME_ROLLBACK unless the policy allows rollback), finishes an
 * interrupted commit (store exactly one version ahead), and decrypts the files into the
 * mount path. A store never written leaves the image's content at the mount path in place.
 */
export async function openVolumes(grants: VolumeGrant[], options: { storeRoot: string; rootDir: string; chown: boolean; commit: CounterCommit; owner?: { uid: number; gid: number } }, log: LauncherLog): Promise<OpenVolume[]> {
  const out: OpenVolume[] = [];
  for (const grant of grants) {
    const storeDir = join(options.storeRoot, grant.name);
    try {
      if (!(await lstat(storeDir)).isDirectory()) throw new Error('not a directory');
    } catch {
      throw new CocoonError('BAD_USAGE', `protected volume ${grant.name}: no store at ${storeDir} (run with --volume ${grant.name}=HOSTDIR)`);
    }
    const manifest = await readStoreManifest(storeDir, grant.name, grant.key);
    const have = manifest?.version ?? 0;
    let counter = grant.version;
    if (have < counter) {
      if (!grant.allowRollback) {
        throw new CocoonError(
          'VOLUME_ROLLBACK',
          `protected volume ${grant.name}: the store holds version ${have}${manifest ? '' : ' (empty)'}, the KBS counter is ${counter} — an older snapshot was restored or the store was replaced; refusing to start (policy: allowRollback false)`,
        );
      }
      log.warn(`protected volume ${grant.name}: store version ${have} is older than the KBS counter ${counter}; accepted because the policy allows rollback`);
    } else if (have === counter + 1) {
      // The previous run wrote the store but stopped before advancing the counter: finish it.
      log.warn(`protected volume ${grant.name}: store is one version ahead of the KBS (${have} > ${counter}); completing the interrupted commit`);
      await options.commit(grant.name, counter, have);
      counter = have;
    } else if (have > counter + 1) {
      throw new CocoonError('VOLUME_TAMPERED', `protected volume ${grant.name}: store version ${have} is ahead of the KBS counter ${counter} by more than one commit; refusing to use it`);
    }
    const dir = await mountDir(options.rootDir, grant.mountPath, options.chown ? options.owner : undefined);
    if (manifest) {
      for (const name of await readdir(dir)) await rm(join(dir, name), { recursive: true, force: true });
      const r = await restoreVolume(storeDir, grant.key, manifest, dir, { chown: options.chown });
      log.info(`protected volume ${grant.name}: version ${manifest.version} decrypted into ${grant.mountPath} (${r.files} file(s), ${r.bytes} bytes)`);
    } else {
      log.info(`protected volume ${grant.name}: new (empty store), mounted at ${grant.mountPath}`);
    }
    out.push({ grant, storeDir, dir, manifest, counter });
  }
  return out;
}

export type CommitReason = 'periodic' | 'signal' | 'shutdown';

export interface CommitOutcome {
  /** The volume version the store holds and the KBS counter now agrees with. */
  version: number;
  /** Nothing changed since the last commit: no new version (periodic and signal commits only). */
  unchanged: boolean;
  /** Files that kept changing during the seal (their previous version was kept). */
  unstable: string[];
}

/**
 * One commit of one open volume: (1) a store left one version ahead of the counter by an
 * earlier commit whose counter advance failed is advanced first — the store is never written
 * more than one version ahead of the KBS counter (a later start would take that for tampering);
 * (2) the mount path is sealed into the store as `counter + 1` (atomic manifest rename);
 * (3) the KBS counter is advanced by compare-and-set. A failure at (3) leaves the store one
 * version ahead (`v.manifest` records it) and is retried at (1) by the next commit.
 * Periodic and signal commits of an unchanged, committed volume write nothing.
 */
export async function commitOpenVolume(v: OpenVolume, commit: CounterCommit, log: LauncherLog, options: { reason: CommitReason; rootDir?: string; onRead?: SealOptions['onRead'] }): Promise<CommitOutcome> {
  const name = v.grant.name;
  if (v.manifest && v.manifest.version > v.counter) {
    const ahead = v.manifest.version;
    try {
      await commit(name, v.counter, ahead);
    } catch (err) {
      // the earlier advance may have reached the KBS with its answer lost: the counter is already ours
      if (!(isCocoonError(err, 'CONFLICT') && (err as CocoonError).details?.version === ahead)) throw err;
      log.warn(`protected volume ${name}: the KBS counter is already ${ahead} (the earlier advance arrived; its answer was lost)`);
    }
    log.info(`protected volume ${name}: KBS counter advanced to ${ahead} (completing the previous commit)`);
    v.counter = ahead;
  }
  // The app may have replaced the mount path (or a parent) with a symlink: never follow it out of the root.
  if (options.rootDir !== undefined) await assertRealDir(options.rootDir, v.grant.mountPath);
  const to = v.counter + 1;
  const skipUnchanged = options.reason !== 'shutdown' && v.manifest !== undefined && v.manifest.version === v.counter;
  const r = await sealVolume(v.storeDir, v.grant.key, name, v.manifest, v.dir, to, { skipUnchanged, ...(options.onRead ? { onRead: options.onRead } : {}) });
  if (r.unstable.length > 0) {
    log.warn(`protected volume ${name}: ${r.unstable.length} file(s) kept changing while being sealed; their previous version went into this commit: ${r.unstable.slice(0, 8).join(', ')}${r.unstable.length > 8 ? ', …' : ''}`);
  }
  if (r.unchanged) return { version: v.counter, unchanged: true, unstable: r.unstable };
  v.manifest = r.manifest; // the store is at `to` now, whatever the KBS says
  await commit(name, v.counter, to);
  v.counter = to;
  const what = options.reason === 'shutdown' ? '' : ` (${options.reason} commit)`;
  log.info(`protected volume ${name}: committed version ${to}${what} (${r.written} file(s) written, ${r.reused} unchanged${r.skipped ? `, ${r.skipped} non-regular entries skipped` : ''})`);
  return { version: to, unchanged: false, unstable: r.unstable };
}

async function assertRealDir(rootDir: string, mountPath: string): Promise<void> {
  let cur = rootDir;
  for (const seg of mountPath.split('/').filter((s) => s !== '')) {
    cur = join(cur, seg);
    const st = await lstat(cur).catch(() => undefined);
    if (!st?.isDirectory()) throw new CocoonError('PATH_TRAVERSAL', `volume mount path ${mountPath} is no longer a directory (replaced by the app?); not sealing it`);
  }
}
