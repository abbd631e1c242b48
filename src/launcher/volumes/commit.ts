import { CocoonError, isCocoonError } from '../../errors.js';
import type { LauncherLog } from '../log.js';
import type { SealOptions } from './format.js';
import { commitOpenVolume } from './index.js';
import type { CommitReason, CounterCommit, OpenVolume } from './index.js';

/**
 * "Commit now" signal of the launcher (docs/volumes.md, "Periodic commits"). Not one the
 * launcher forwards to the app (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH
 * are; apps use SIGUSR1/2 for their own purposes and Node reserves SIGUSR1 for its inspector);
 * SIGPWR ("power failure: save your state") is Linux's, unused by the launcher otherwise.
 */
export const COMMIT_SIGNAL: NodeJS.Signals = 'SIGPWR';

export interface CommitterOptions {
  commit: CounterCommit;
  log: LauncherLog;
  /** The application root: the mount paths are checked not to have become symlinks. */
  rootDir?: string;
  /** Milliseconds per second of `commitEvery` (tests shorten it; default 1000). */
  unitMs?: number;
  /** Test hook, passed to sealVolume. */
  onRead?: SealOptions['onRead'];
}

interface VolumeState {
  timer: NodeJS.Timeout | undefined;
  /** A commit requested and not started yet (requests coalesce into it). */
  queued: Promise<void> | undefined;
  /** Why commits of this volume stopped for good (the KBS counter moved under us). */
  stopped: string | undefined;
}

/**
 * Commits open volumes while the app runs: every `commitEvery` (per volume; the interval counts
 * from the end of the previous commit of that volume, whatever triggered it) and on
 * `commitNow()` (COMMIT_SIGNAL). Commits run one at a time; a request made while one is queued
 * joins it. A periodic commit of an unchanged volume writes nothing and does not call the KBS.
 * A failed commit is logged and retried at the next tick (the store stays at most one version
 * ahead of the counter); CONFLICT — another instance advanced the counter — stops this
 * volume's commits for good, also at shutdown, with an error. `close()` waits for a running
 * commit, stops the timers and seals every volume a last time.
 */
export class VolumeCommitter {
  private readonly volumes: OpenVolume[];
  private readonly options: CommitterOptions;
  private readonly state = new Map<OpenVolume, VolumeState>();
  private chain: Promise<void> = Promise.resolve();
  private closing = false;

  constructor(volumes: OpenVolume[], options: CommitterOptions) {
    this.volumes = volumes;
    this.options = options;
    for (const v of volumes) this.state.set(v, { timer: undefined, queued: undefined, stopped: undefined });
  }

  /** Arms the periodic commits of the volumes that declare `commitEvery`. */
  start(): void {
    for (const v of this.volumes) {
      if (v.grant.commitEvery !== undefined) this.options.log.info(`protected volume ${v.grant.name}: committing every ${v.grant.commitEvery} s while the application runs`);
      this.schedule(v);
    }
  }

  /** Commits every volume now (COMMIT_SIGNAL); resolves when done; never rejects (failures are logged). */
  commitNow(): Promise<void> {
    return Promise.all(this.volumes.map((v) => this.request(v, 'signal'))).then(() => undefined);
  }

  /** Whether commits of this volume stopped (CONFLICT), and why. */
  stoppedReason(name: string): string | undefined {
    const v = this.volumes.find((x) => x.grant.name === name);
    return v ? this.state.get(v)?.stopped : undefined;
  }

  /** Stops the timers without a final seal (the launch failed before or while starting the app). */
  abort(): void {
    this.closing = true;
    for (const st of this.state.values()) clearTimeout(st.timer);
  }

  /**
   * Clean shutdown: no more periodic commits, waits for a running one, then seals every volume
   * (except those stopped by CONFLICT) and advances the counters; throws the first failure, or
   * CONFLICT when a volume's commits had stopped.
   */
  async close(): Promise<void> {
    this.abort();
    await this.chain;
    let first: unknown;
    for (const v of this.volumes) {
      const st = this.state.get(v) as VolumeState;
      if (st.stopped) {
        first ??= new CocoonError('CONFLICT', `protected volume ${v.grant.name}: not sealed at shutdown: ${st.stopped}`);
        continue;
      }
      try {
        await commitOpenVolume(v, this.options.commit, this.options.log, this.sealOptions('shutdown'));
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  }

  private sealOptions(reason: CommitReason): Parameters<typeof commitOpenVolume>[3] {
    return { reason, ...(this.options.rootDir !== undefined ? { rootDir: this.options.rootDir } : {}), ...(this.options.onRead ? { onRead: this.options.onRead } : {}) };
  }

  private schedule(v: OpenVolume): void {
    const st = this.state.get(v) as VolumeState;
    clearTimeout(st.timer);
    st.timer = undefined;
    const every = v.grant.commitEvery;
    if (this.closing || st.stopped || every === undefined) return;
    st.timer = setTimeout(() => void this.request(v, 'periodic'), every * (this.options.unitMs ?? 1000));
    st.timer.unref();
  }

  private request(v: OpenVolume, reason: CommitReason): Promise<void> {
    const st = this.state.get(v) as VolumeState;
    if (this.closing || st.stopped) return Promise.resolve();
    if (st.queued) return st.queued;
    const run = this.chain.then(() => this.run(v, reason));
    st.queued = run;
    this.chain = run;
    return run;
  }

  private async run(v: OpenVolume, reason: CommitReason): Promise<void> {
    const st = this.state.get(v) as VolumeState;
    st.queued = undefined;
    if (this.closing || st.stopped) return;
    const { log } = this.options;
    try {
      const r = await commitOpenVolume(v, this.options.commit, log, this.sealOptions(reason));
      if (r.unchanged && reason === 'signal') log.info(`protected volume ${v.grant.name}: unchanged since version ${r.version}; nothing to commit`);
    } catch (err) {
      const e = err as Error;
      if (isCocoonError(err, 'CONFLICT')) {
        st.stopped = `the KBS refused to advance its counter from ${v.counter} (${e.message}); another instance committed this volume`;
        log.error(`protected volume ${v.grant.name}: ${st.stopped} — no further commits of this volume; its changes since version ${v.counter} will not be kept`);
      } else {
        const pending = v.manifest && v.manifest.version > v.counter ? ` (the store holds version ${v.manifest.version}, the KBS counter is ${v.counter}: retried first next time)` : '';
        log.warn(`protected volume ${v.grant.name}: ${reason} commit failed: ${isCocoonError(err) ? `[${err.code}] ` : ''}${e.message}${pending}`);
      }
    } finally {
      this.schedule(v);
    }
  }
}
