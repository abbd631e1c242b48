import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/**
 * WAL checkpoints off the event loop. better-sqlite3 is synchronous, and SQLite runs an
 * automatic checkpoint inside whichever commit pushes the WAL past `wal_autocheckpoint`
 * pages: that commit then copies the WAL into the database and fsyncs it, blocking the KBS's
 * only thread for milliseconds — every few hundred commits under load, which is what its p99
 * latency was made of. Here a worker thread with its own connection runs PASSIVE checkpoints
 * (they never block writers or readers) every `intervalMs`, and the serving connection's
 * automatic checkpoint is pushed far out (`BACKSTOP_PAGES`), so it only fires if this worker
 * is gone; `onExit` reports that, and the caller then restores the default.
 */
export const BACKSTOP_PAGES = 16_384;
export const DEFAULT_AUTOCHECKPOINT_PAGES = 1000;
/** Checkpoints failing in a row before the thread gives up (and reports its exit). */
const MAX_CONSECUTIVE_FAILURES = 5;

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.module);
const db = new Database(workerData.file);
db.pragma('busy_timeout = 1000');
let failures = 0;
const timer = setInterval(() => {
  try { db.pragma('wal_checkpoint(PASSIVE)'); failures = 0; } catch (err) {
    parentPort.postMessage({ error: String(err && err.message || err) });
    // one report per failure, not four a second forever: after a few in a row the thread ends and checkpoints go back inside commits
    if (++failures >= workerData.maxFailures) { clearInterval(timer); try { db.close(); } catch {} parentPort.close(); }
  }
}, workerData.intervalMs);
parentPort.on('message', (m) => {
  if (m === 'stop') { clearInterval(timer); try { db.pragma('wal_checkpoint(PASSIVE)'); } catch {} db.close(); parentPort.close(); }
});
`;

export interface WalCheckpointer {
  stop(): Promise<void>;
}

export function startWalCheckpointer(file: string, options: { intervalMs?: number; onError?: (message: string) => void; onExit?: () => void } = {}): WalCheckpointer {
  const module = createRequire(import.meta.url).resolve('better-sqlite3');
  const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { file, module, intervalMs: options.intervalMs ?? 250, maxFailures: MAX_CONSECUTIVE_FAILURES } });
  worker.unref();
  let stopping = false;
  worker.on('message', (m: { error?: string }) => {
    if (m.error) options.onError?.(m.error);
  });
  worker.on('error', (err) => options.onError?.(err.message));
  const exited = new Promise<void>((resolve) => {
    worker.once('exit', () => {
      if (!stopping) options.onExit?.();
      resolve();
    });
  });
  return {
    async stop() {
      stopping = true;
      worker.postMessage('stop');
      const timeout = setTimeout(() => void worker.terminate(), 2000);
      await exited;
      clearTimeout(timeout);
    },
  };
}
