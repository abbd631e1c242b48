import { join } from 'node:path';
import { isCocoonError } from '../../errors.js';
import { commitVolumeCounter } from '../../kbs/client/volume.js';
import type { LaunchPlan } from '../../kbs/launch-plan.js';
import type { LauncherConfig } from '../config.js';
import type { LauncherLog } from '../log.js';
import { closeVolumes, openVolumes } from './index.js';
import type { CounterCommit } from './index.js';

export interface PlanVolumes {
  /** Seals the volumes back and advances the KBS counters (after the app exited). */
  close(): Promise<void>;
}

/**
 * The launcher's protected-volume step: opens the plan's volumes into the application root
 * before the app starts. Commits use the attestation token of this launch; when it expired
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
  return {
    async close() {
      // A second SIGTERM while sealing must not kill the launcher half-way through a commit.
      const hold = () => log.warn('signal received while sealing the protected volumes; finishing first');
      process.on('SIGTERM', hold);
      process.on('SIGINT', hold);
      try {
        await closeVolumes(volumes, commit, log, config.rootDir);
      } finally {
        process.off('SIGTERM', hold);
        process.off('SIGINT', hold);
      }
    },
  };
}
