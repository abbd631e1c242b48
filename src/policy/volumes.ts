/**
 * `volumes:` of a workload (docs/volumes.md): protected, rollback-protected directories that
 * the launcher decrypts into the application root and encrypts back on clean shutdown (and,
 * with `commitEvery`, periodically while the app runs).
 */
export interface VolumeSpec {
  /** `[a-z0-9][a-z0-9_-]{0,62}`; `cocoon run --volume NAME=HOSTDIR` supplies its store. */
  name: string;
  /** Absolute, normalized path inside the application root (not `/`). */
  mountPath: string;
  /** Accept a store older than the KBS counter (default false: VOLUME_ROLLBACK). */
  allowRollback: boolean;
  /**
   * Periodic commit while the app runs, in seconds (`commitEvery: 5m` in the policy);
   * absent: the volume is committed only on clean shutdown (and on SIGPWR to the launcher).
   */
  commitEvery?: number;
}

/** Bounds of `commitEvery` in seconds (docs/volumes.md, "Periodic commits"). */
export const MIN_COMMIT_EVERY_S = 10;
export const MAX_COMMIT_EVERY_S = 86_400;
const DURATION_RE = /^([1-9][0-9]{0,5})(s|m|h)$/;

/** `30s`, `5m`, `1h` → seconds; undefined when not such a duration. */
export function parseCommitEvery(v: string): number | undefined {
  const m = DURATION_RE.exec(v);
  if (!m) return undefined;
  return Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
}

export const MAX_VOLUMES = 16;
export const POLICY_VOLUME_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

export class VolumeSpecError extends Error {
  /** Suffix of the policy path (e.g. `[0].mountPath`). */
  readonly path: string;
  constructor(message: string, path: string) {
    super(message);
    this.path = path;
  }
}

function isMountPath(p: string): boolean {
  if (p.length < 2 || p.length > 1024 || !p.startsWith('/') || p.endsWith('/') || p.includes('\0')) return false;
  return p
    .slice(1)
    .split('/')
    .every((s) => s !== '' && s !== '.' && s !== '..');
}

/** Strict parse of the `volumes` list (plain JSON values from the YAML node). */
export function parseVolumesSpec(v: unknown): VolumeSpec[] {
  if (!Array.isArray(v)) throw new VolumeSpecError('volumes must be a list', '');
  if (v.length === 0 || v.length > MAX_VOLUMES) throw new VolumeSpecError(`volumes must list 1 to ${MAX_VOLUMES} volumes`, '');
  const names = new Set<string>();
  const paths: string[] = [];
  return v.map((item, i) => {
    const at = `[${i}]`;
    if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new VolumeSpecError('a volume must be a map {name, mountPath, allowRollback, commitEvery}', at);
    const o = item as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!['name', 'mountPath', 'allowRollback', 'commitEvery'].includes(k)) throw new VolumeSpecError(`unknown field "${k.slice(0, 64)}" (name, mountPath, allowRollback, commitEvery)`, `${at}.${k.slice(0, 64)}`);
    if (typeof o.name !== 'string' || !POLICY_VOLUME_NAME_RE.test(o.name)) throw new VolumeSpecError('name must match [a-z0-9][a-z0-9_-]{0,62}', `${at}.name`);
    if (names.has(o.name)) throw new VolumeSpecError(`duplicate volume name "${o.name}"`, `${at}.name`);
    names.add(o.name);
    if (typeof o.mountPath !== 'string' || !isMountPath(o.mountPath)) throw new VolumeSpecError('mountPath must be an absolute, normalized path other than / (max 1024 chars)', `${at}.mountPath`);
    const mp = o.mountPath;
    if (mp.startsWith('/cocoon/') || mp === '/cocoon' || mp === '/proc' || mp.startsWith('/proc/') || mp === '/dev' || mp.startsWith('/dev/') || mp === '/sys' || mp.startsWith('/sys/')) {
      throw new VolumeSpecError('mountPath must not be under /cocoon, /proc, /dev or /sys', `${at}.mountPath`);
    }
    for (const other of paths) {
      if (other === mp || other.startsWith(`${mp}/`) || mp.startsWith(`${other}/`)) throw new VolumeSpecError(`mountPath ${mp} overlaps ${other}`, `${at}.mountPath`);
    }
    paths.push(mp);
    if (o.allowRollback !== undefined && typeof o.allowRollback !== 'boolean') throw new VolumeSpecError('allowRollback must be true or false', `${at}.allowRollback`);
    let commitEvery: number | undefined;
    if (o.commitEvery !== undefined) {
      commitEvery = typeof o.commitEvery === 'string' ? parseCommitEvery(o.commitEvery) : undefined;
      if (commitEvery === undefined || commitEvery < MIN_COMMIT_EVERY_S || commitEvery > MAX_COMMIT_EVERY_S) {
        throw new VolumeSpecError(`commitEvery must be a duration such as 30s, 5m or 1h, from ${MIN_COMMIT_EVERY_S}s to 24h`, `${at}.commitEvery`);
      }
    }
    return { name: o.name, mountPath: mp, allowRollback: o.allowRollback === true, ...(commitEvery !== undefined ? { commitEvery } : {}) };
  });
}
