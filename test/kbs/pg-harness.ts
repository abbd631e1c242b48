import { execFile } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestContext } from 'node:test';
import pg from 'pg';
import { freePort } from '../../src/util/net.js';

const run = promisify(execFile);
const PG_BIN = '/usr/lib/postgresql/15/bin';

export interface TempPostgres {
  url: string;
  stop(): Promise<void>;
}

/** Creates database `name` in the cluster; returns its connection URL. */
export async function createDatabase(cluster: TempPostgres, name: string): Promise<string> {
  if (!/^[a-z][a-z0-9_]{0,62}$/.test(name)) throw new Error(`bad database name ${name}`);
  const admin = new pg.Client({ connectionString: cluster.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return cluster.url.replace(/\/postgres$/, `/${name}`);
}

/**
 * A throwaway PostgreSQL cluster (Debian's postgresql-15, trust auth on loopback).
 * Returns a reason string instead when this machine cannot run one.
 */
export async function startTempPostgres(): Promise<TempPostgres | string> {
  if (!existsSync(join(PG_BIN, 'initdb'))) return `PostgreSQL binaries not found in ${PG_BIN}`;
  const asRoot = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-pg-'));
  const wrap = (cmd: string, args: string[]): [string, string[]] => (asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]);
  try {
    if (asRoot) {
      const { stdout } = await run('id', ['-u', 'postgres']);
      const { stdout: gid } = await run('id', ['-g', 'postgres']);
      chownSync(dir, Number(stdout.trim()), Number(gid.trim()));
    }
    const port = await freePort();
    const data = join(dir, 'data');
    await run(...wrap(join(PG_BIN, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'cocoon', '--no-sync']), { cwd: dir });
    await run(...wrap(join(PG_BIN, 'pg_ctl'), ['-D', data, '-o', `-k ${dir} -p ${port} -h 127.0.0.1 -c fsync=off`, '-l', join(dir, 'log'), '-w', 'start']), { cwd: dir });
    return {
      url: `postgres://cocoon@127.0.0.1:${port}/postgres`,
      async stop() {
        await run(...wrap(join(PG_BIN, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']), { cwd: dir }).catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    return `cannot start a temporary PostgreSQL: ${(err as Error).message.split('\n')[0]}`;
  }
}

/**
 * Runs `fn` against a throwaway cluster and stops it afterwards; skips the test (with the
 * reason) when this machine cannot run one.
 */
export async function withTempPostgres(t: TestContext, fn: (cluster: TempPostgres) => Promise<void>): Promise<void> {
  const cluster = await startTempPostgres();
  if (typeof cluster === 'string') {
    t.skip(cluster);
    return;
  }
  try {
    await fn(cluster);
  } finally {
    await cluster.stop();
  }
}
