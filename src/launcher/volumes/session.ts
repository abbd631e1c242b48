import { join } from 'node:path';
import { isCocoonError } from '../../errors.js';
import { commitVolumeCounter } from '../../kbs/client/volume.js';
import type { LaunchPlan } from '../../kbs/launch-plan.js';
import type { LauncherConfig } from '../config.js';
import type { LauncherLog } from '../log.js';
import { COMMIT_SIGNAL, VolumeCommitter } from './commit.js';
import { openVolumes } from './index.js';
import type { CounterCommit } from './index.js';

export interface PlanVolumes {
  /** Seals the volumes back and advances the KBS counters (after the app exited). */
  close(): Promise<void>;
  /** Stops periodic commits and the commit signal without sealing (the app could not be started). */
  abort(): void;
  /** The running commit loop (periodic and signal commits). */
  committer: VolumeCommitter;
}

/**
 * The launcher's protected-volume step: opens the plan's volumes into the application root
 * before the app starts, commits them while it runs (policy `commitEvery`, and COMMIT_SIGNAL),
 * and seals them after it exited (`close`). Commits use the attestation token of this launch; when it expired
 * (long-running apps), `reattest` obtains a fresh one.
 */
export async function openPlanVolumes(
  config: LauncherConfig,
  plan: LaunchPlan,
  auth: { token: string; reattest: () => Promise<string>; owner: { uid: number; gid: number } },
  log: LauncherLog,
): Promise<PlanVolumes | undefined> {
  if (!plan.volumes || plan.volumes.length === 0) return undefined;
  let token = auth.token;
  const commit: CounterCommit = async (volume, from, to) => {
    const once = (t: string) => commitVolumeCounter({ kbsUrl: config.kbsUrl, policy: plan.policy, token: t, volume, from, to, timeoutMs: config.requestTimeoutMs });
    try {
      await once(token);
    } catch (err) {
      if (!isCocoonError(err, 'AUTH_INVALID') && !isCocoonError(err, 'AUTH_REQUIRED')) throw err;
      log.info('attestation token expired: attesting again to commit the volume counter');
      token = await auth.reattest();
      await once(token);
    }
  };
  const storeRoot = config.volumesDir ?? join(config.launcherDir, 'volumes');
  const volumes = await openVolumes(plan.volumes, { storeRoot, rootDir: config.rootDir, chown: process.getuid?.() === 0, commit, owner: auth.owner }, log);
  // While the app runs: periodic commits (policy `commitEvery`) and COMMIT_SIGNAL = commit now.
  const committer = new VolumeCommitter(volumes, { commit, log, rootDir: config.rootDir });
  const onSignal = () => {
    log.info(`${COMMIT_SIGNAL} received: committing the protected volumes`);
    void committer.commitNow();
  };
  process.on(COMMIT_SIGNAL, onSignal);
  committer.start();
  let ended = false;
  const end = () => {
    if (ended) return false;
    ended = true;
    committer.abort();
    process.off(COMMIT_SIGNAL, onSignal);
    return true;
  };
  return {
    committer,
    abort() {
      end();
    },
    async close() {
      if (!end()) return;
      // A second SIGTERM (or the commit signal) while sealing must not kill the launcher half-way through a commit.
      const hold = () => log.warn('signal received while sealing the protected volumes; finishing first');
      process.on('SIGTERM', hold);
      process.on('SIGINT', hold);
      process.on(COMMIT_SIGNAL, hold);
      try {
        await committer.close();
      } finally {
        process.off('SIGTERM', hold);
        process.off('SIGINT', hold);
        process.off(COMMIT_SIGNAL, hold);
      }
    },
  };
}
