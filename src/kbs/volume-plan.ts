import { CocoonError } from '../errors.js';
import { MAX_COMMIT_EVERY_S, MIN_COMMIT_EVERY_S } from '../policy/volumes.js';

/*
 * The launch plan's `volumes` member, kept free of server code: the launcher bundles this file.
 */

/** Launch-plan member `volumes` (docs/internals.md §5, docs/volumes.md). */
export interface VolumeGrantWire {
  name: string;
  mountPath: string;
  allowRollback: boolean;
  /** base64 of the 32-byte volume key. */
  key: string;
  /** The KBS's version counter (0: never committed). */
  version: number;
  /** Periodic commit interval in seconds (policy `commitEvery`); only present when set. */
  commitEvery?: number;
}

export interface VolumeGrant {
  name: string;
  mountPath: string;
  allowRollback: boolean;
  key: Buffer;
  version: number;
  commitEvery?: number;
}

/** Strict parse of the launch plan's `volumes` member (launcher side). */
export function parseVolumeGrants(v: unknown): VolumeGrant[] {
  const bad = (m: string): CocoonError => new CocoonError('INPUT_MALFORMED', `launch plan: volumes: ${m}`);
  if (!Array.isArray(v) || v.length > 16) throw bad('must be a list of at most 16');
  const names = new Set<string>();
  return v.map((x, i) => {
    if (typeof x !== 'object' || x === null || Array.isArray(x)) throw bad(`[${i}] must be an object`);
    const o = x as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!['name', 'mountPath', 'allowRollback', 'key', 'version', 'commitEvery'].includes(k)) throw bad(`[${i}] unknown member ${k.slice(0, 32)}`);
    if (typeof o.name !== 'string' || !/^[a-z0-9][a-z0-9_-]{0,62}$/.test(o.name) || names.has(o.name)) throw bad(`[${i}].name invalid`);
    names.add(o.name);
    if (typeof o.mountPath !== 'string' || !/^(\/[^/\0]+)+$/.test(o.mountPath) || o.mountPath.length > 1024 || o.mountPath.split('/').some((s) => s === '.' || s === '..')) throw bad(`[${i}].mountPath invalid`);
    if (typeof o.allowRollback !== 'boolean') throw bad(`[${i}].allowRollback must be a boolean`);
    if (typeof o.key !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(o.key)) throw bad(`[${i}].key must be 32 bytes of base64`);
    if (typeof o.version !== 'number' || !Number.isSafeInteger(o.version) || o.version < 0) throw bad(`[${i}].version invalid`);
    if (o.commitEvery !== undefined && (typeof o.commitEvery !== 'number' || !Number.isSafeInteger(o.commitEvery) || o.commitEvery < MIN_COMMIT_EVERY_S || o.commitEvery > MAX_COMMIT_EVERY_S)) throw bad(`[${i}].commitEvery invalid`);
    return { name: o.name, mountPath: o.mountPath, allowRollback: o.allowRollback, key: Buffer.from(o.key, 'base64'), version: o.version, ...(o.commitEvery !== undefined ? { commitEvery: o.commitEvery } : {}) };
  });
}
