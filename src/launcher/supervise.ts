import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { CocoonError } from '../errors.js';
import type { LauncherLog } from './log.js';

export interface AppProcessSpec {
  execHelper: string;
  root: string;
  uid: number;
  gid: number;
  groups: number[];
  cwd: string;
  argv: string[];
  env: string[];
  stopGraceMs: number;
  /** Where the app's stdout/stderr go; default: inherited from the launcher. */
  output?: AppOutput;
}

/** Streams that receive the application's output instead of the launcher's own stdout/stderr. */
export interface AppOutput {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH'];

/**
 * Starts the application through the static exec helper (chroot + drop privileges + exec,
 * subreaper for the app's orphans) and supervises it: termination signals are forwarded,
 * SIGTERM/SIGINT arm a grace timer after which the app is killed, and the promise resolves
 * with the app's exit status (128 + signal number when killed by a signal).
 */
export function superviseApp(spec: AppProcessSpec, log: LauncherLog): Promise<number> {
  const env: Record<string, string> = {};
  for (const entry of spec.env) {
    const eq = entry.indexOf('=');
    env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  const groups = spec.groups.length > 0 ? spec.groups.join(',') : '-';
  const child = spawn(spec.execHelper, [spec.root, String(spec.uid), String(spec.gid), groups, spec.cwd, '--', ...spec.argv], {
    env, // exactly the app's environment: nothing of the launcher's leaks through
    stdio: spec.output ? ['inherit', 'pipe', 'pipe'] : 'inherit',
  });
  if (spec.output) {
    child.stdout?.pipe(spec.output.stdout, { end: false });
    child.stderr?.pipe(spec.output.stderr, { end: false });
  }

  return new Promise<number>((resolve, reject) => {
    let killTimer: NodeJS.Timeout | undefined;
    const handlers = new Map<NodeJS.Signals, () => void>();
    for (const signal of FORWARDED) {
      const handler = () => {
        child.kill(signal);
        if ((signal === 'SIGTERM' || signal === 'SIGINT') && !killTimer) {
          log.info(`${signal} received: stopping the application (grace ${spec.stopGraceMs} ms)`);
          killTimer = setTimeout(() => {
            log.warn('grace period over: killing the application');
            child.kill('SIGKILL');
          }, spec.stopGraceMs);
          killTimer.unref();
        }
      };
      handlers.set(signal, handler);
      process.on(signal, handler);
    }
    const cleanup = () => {
      if (killTimer) clearTimeout(killTimer);
      for (const [signal, handler] of handlers) process.off(signal, handler);
    };
    child.once('error', (err) => {
      cleanup();
      reject(new CocoonError('APP_START_FAILED', `cannot start the exec helper: ${err.message}`, { cause: err }));
    });
    // with piped output, 'close' also waits for the last of it to be read
    child.once(spec.output ? 'close' : 'exit', (code: number | null, signal: NodeJS.Signals | null) => {
      cleanup();
      if (signal) {
        resolve(128 + (constants.signals[signal] ?? 15));
      } else resolve(code ?? 1);
    });
  });
}
