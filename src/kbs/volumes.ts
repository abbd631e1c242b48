import { randomBytes } from 'node:crypto';
import { CocoonError } from '../errors.js';
import type { Policy } from '../policy/types.js';
import { appendAudit, withRetry } from './audit.js';
import type { KbsContext } from './context.js';
import { reappraiseGrant } from './rcar.js';
import type { ResourceGrant } from './rcar.js';
import { openValue, sealValue } from './secret-box.js';
import type { VolumeRecord } from './store/types.js';
import type { VolumeGrantWire } from './volume-plan.js';

/** Resource name of the counter-advance endpoint: `POST /kbs/v0/resource/<org>/<app>/volume-commit`. */
export const VOLUME_COMMIT_RESOURCE = 'volume-commit';
export const MAX_VOLUME_VERSION = Number.MAX_SAFE_INTEGER;

const aad = (policy: string, workload: string, volume: string): string => `volume:${policy}/${workload}/${volume}`;

/**
 * The key and counter of each volume the workload declares. A volume's key is generated on
 * first release (the first writer wins across replicas) and sealed with the data key.
 */
export async function volumeGrantsFor(ctx: KbsContext, policyName: string, policy: Policy, workload: string): Promise<VolumeGrantWire[] | undefined> {
  const specs = policy.workloads[workload]?.volumes;
  if (!specs || specs.length === 0) return undefined;
  const out: VolumeGrantWire[] = [];
  for (const spec of specs) {
    let rec = await ctx.store.getVolume(policyName, workload, spec.name);
    if (!rec) {
      const key = randomBytes(32);
      const at = ctx.now().getTime();
      rec = await ctx.store.putVolumeIfAbsent({ policy: policyName, workload, volume: spec.name, version: 0, sealedKey: sealValue(ctx.dataKey, key, aad(policyName, workload, spec.name)), createdAt: at, updatedAt: at });
      key.fill(0);
    }
    const key = openValue(ctx.dataKey, rec.sealedKey, aad(policyName, workload, spec.name));
    out.push({ name: spec.name, mountPath: spec.mountPath, allowRollback: spec.allowRollback, key: key.toString('base64'), version: rec.version, ...(spec.commitEvery !== undefined ? { commitEvery: spec.commitEvery } : {}) });
    key.fill(0);
  }
  return out;
}

export interface VolumeCommitRequest {
  volume: string;
  from: number;
  to: number;
}

/** Strict parse of the commit body `{volume, from, to}`. */
export function parseVolumeCommit(body: unknown): VolumeCommitRequest {
  const bad = (m: string): CocoonError => new CocoonError('INPUT_MALFORMED', `volume commit: ${m}`);
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('body must be a JSON object');
  const o = body as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['volume', 'from', 'to'].includes(k)) throw bad(`unknown member ${k.slice(0, 32)}`);
  if (typeof o.volume !== 'string' || !/^[a-z0-9][a-z0-9_-]{0,62}$/.test(o.volume)) throw bad('volume name invalid');
  for (const k of ['from', 'to'] as const) {
    const n = o[k];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0 || n > MAX_VOLUME_VERSION) throw bad(`${k} must be a non-negative integer`);
  }
  const from = o.from as number;
  const to = o.to as number;
  if (to <= from) throw bad('to must be greater than from (the counter only moves forward)');
  return { volume: o.volume, from, to };
}

/**
 * Advances a volume's counter from `from` to `to` for an attested workload: compare-and-set,
 * forward only. CONFLICT when the counter is not `from` any more (another instance committed).
 */
export async function commitVolume(ctx: KbsContext, grant: ResourceGrant, org: string, app: string, req: VolumeCommitRequest): Promise<{ volume: string; version: number }> {
  const policyName = `${org}/${app}`;
  const { workload } = await reappraiseGrant(ctx, grant, policyName);
  if (!(workload.volumes ?? []).some((v) => v.name === req.volume)) throw new CocoonError('POLICY_DENIED', `workload ${grant.workload} declares no volume ${req.volume}`);
  const at = ctx.now().getTime();
  const moved = await withRetry(() =>
    ctx.store.transaction(async (tx) => {
      const rec = await tx.getVolume(policyName, grant.workload, req.volume);
      if (!rec) throw new CocoonError('NOT_FOUND', `volume ${req.volume} has no key yet (fetch the launch plan first)`);
      if (rec.version !== req.from) return { ok: false as const, version: rec.version };
      const ok = await tx.advanceVolume(policyName, grant.workload, req.volume, req.from, req.to, at);
      if (!ok) return { ok: false as const, version: rec.version };
      await appendAudit(tx, ctx.auditKey, { actor: `tee:${grant.tee}`, action: 'volume.commit', policy: policyName, detail: { workload: grant.workload, volume: req.volume, from: req.from, to: req.to, via: grant.via, insecure: grant.insecure } }, at);
      return { ok: true as const, version: req.to };
    }),
  );
  if (!moved.ok) throw new CocoonError('CONFLICT', `volume ${req.volume}: counter is ${moved.version}, not ${req.from} (another instance committed, or a stale volume)`, { details: { version: moved.version } });
  ctx.log.info({ policy: policyName, workload: grant.workload, volume: req.volume, version: req.to }, 'volume counter advanced');
  return { volume: req.volume, version: req.to };
}

/** Owner view: counters of a policy's volumes (never the keys). */
export function volumeSummary(recs: VolumeRecord[]): { workload: string; volume: string; version: number; updatedAt: number }[] {
  return recs.map((r) => ({ workload: r.workload, volume: r.volume, version: r.version, updatedAt: r.updatedAt }));
}
