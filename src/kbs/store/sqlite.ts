import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect, SqliteDriver } from 'kysely';
import type { Driver, SqliteDatabase, SqliteStatement } from 'kysely';
import { CocoonError } from '../../errors.js';
import { KyselyStore } from './kysely-store.js';
import { migrateToLatest } from './migrations.js';
import type { Database as Schema } from './schema.js';
import { BACKSTOP_PAGES, DEFAULT_AUTOCHECKPOINT_PAGES, startWalCheckpointer } from './wal-checkpointer.js';
import type { WalCheckpointer } from './wal-checkpointer.js';

export const SQLITE_FILE = 'kbs.sqlite';

/**
 * kysely prepares every query anew; better-sqlite3 statements are reusable, and preparing was
 * ~5 % of the KBS's CPU per RCAR round trip. The query layer produces a small, fixed set of
 * SQL texts (values are parameters), so a bounded cache keyed by the text is enough.
 */
function cachingStatements(sqlite: Database.Database, max = 512): SqliteDatabase {
  const cache = new Map<string, SqliteStatement>();
  return {
    close: () => {
      cache.clear();
      sqlite.close();
    },
    prepare: (sql: string) => {
      let stmt = cache.get(sql);
      if (!stmt) {
        stmt = sqlite.prepare(sql) as unknown as SqliteStatement;
        if (cache.size >= max) cache.delete(cache.keys().next().value as string);
        cache.set(sql, stmt);
      }
      return stmt;
    },
  };
}

/** Largest part of the database file read through mmap. */
const MMAP_BYTES = 256 * 1024 * 1024;

/** How long SQLite waits for another connection's lock (busy_timeout), and a write transaction for the write lock. */
const BUSY_TIMEOUT_MS = 5000;

/**
 * Transactions begin with `BEGIN IMMEDIATE`: the write lock is taken up front. Several
 * processes share the file with `serve --workers` (and the CLI's admin commands run next to a
 * KBS); a deferred transaction that reads and then writes fails with SQLITE_BUSY(_SNAPSHOT)
 * when another process committed in between, and busy_timeout does not cover that upgrade.
 * With the lock taken at BEGIN, the audit chain head read inside the transaction is still the
 * head when the entry is inserted.
 *
 * While another process holds the lock, SQLite's own wait (busy_timeout) would sleep this
 * process's whole event loop in steps of up to 100 ms; instead BEGIN IMMEDIATE is tried
 * without waiting and, on SQLITE_BUSY, tried again after a short timer (the event loop keeps
 * serving meanwhile), until BUSY_TIMEOUT_MS — then the SQLITE_BUSY error, which withRetry reruns.
 * This covers transactions only: a single-statement write outside one still waits in SQLite.
 */
class ImmediateSqliteDriver extends SqliteDriver {
  private readonly noWait: Database.Statement;
  private readonly wait: Database.Statement;
  private readonly begin: Database.Statement;

  constructor(database: SqliteDatabase, sqlite: Database.Database) {
    super({ database });
    this.noWait = sqlite.prepare('PRAGMA busy_timeout = 0');
    this.wait = sqlite.prepare(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
    this.begin = sqlite.prepare('BEGIN IMMEDIATE');
  }

  override async beginTransaction(): Promise<void> {
    const deadline = performance.now() + BUSY_TIMEOUT_MS;
    for (let attempt = 0; ; attempt++) {
      this.noWait.get();
      try {
        this.begin.run();
        return;
      } catch (err) {
        if (!String((err as { code?: unknown }).code).startsWith('SQLITE_BUSY') || performance.now() > deadline) throw err;
      } finally {
        this.wait.get();
      }
      // transactions hold the lock for well under a millisecond: look again soon, backing off to 16 ms for a long holder (a migration, a purge)
      await new Promise((resolve) => setTimeout(resolve, Math.min(2 ** attempt, 16)));
    }
  }
}

class ImmediateSqliteDialect extends SqliteDialect {
  constructor(
    private readonly database: SqliteDatabase,
    private readonly sqlite: Database.Database,
  ) {
    super({ database });
  }

  override createDriver(): Driver {
    return new ImmediateSqliteDriver(this.database, this.sqlite);
  }
}

export interface SqliteStoreOptions {
  /**
   * Who checkpoints the WAL (src/kbs/store/wal-checkpointer.ts): `thread` (default) a worker
   * thread of this process, off the event loop; `external` another process does (the primary
   * of `serve --workers`), this connection only keeps the backstop; `inline` SQLite's default,
   * inside commits (short-lived CLI commands).
   */
  walCheckpoints?: 'thread' | 'external' | 'inline';
  /** Told when the checkpoint thread fails or is gone (it then falls back to inline checkpoints). */
  onCheckpointError?: (message: string) => void;
}

/** Opens (creating and migrating) the SQLite store `<dataDir>/kbs.sqlite`, or in memory with `:memory:`. */
export async function openSqliteStore(dataDirOrMemory: string, options: SqliteStoreOptions = {}): Promise<KyselyStore> {
  let file = ':memory:';
  if (dataDirOrMemory !== ':memory:') {
    mkdirSync(dataDirOrMemory, { recursive: true, mode: 0o700 });
    file = join(dataDirOrMemory, SQLITE_FILE);
  }
  let sqlite: Database.Database;
  try {
    sqlite = new Database(file);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = NORMAL');
    // Pages are read through a memory map instead of a read() call each: ≈ 7 % less KBS CPU per RCAR round trip (bench/rcar.ts).
    if (file !== ':memory:') sqlite.pragma(`mmap_size = ${MMAP_BYTES}`);
    sqlite.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    sqlite.pragma('foreign_keys = ON');
  } catch (err) {
    throw new CocoonError('IO_ERROR', `cannot open the KBS store ${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const mode = file === ':memory:' ? 'inline' : (options.walCheckpoints ?? 'thread');
  let checkpointer: WalCheckpointer | undefined;
  if (mode !== 'inline') sqlite.pragma(`wal_autocheckpoint = ${BACKSTOP_PAGES}`);
  if (mode === 'thread') {
    const report = options.onCheckpointError ?? ((message: string) => process.emitWarning(`KBS store: ${message}`));
    checkpointer = startWalCheckpointer(file, {
      onError: (message) => report(`WAL checkpoint failed: ${message}`),
      onExit: () => {
        if (sqlite.open) sqlite.pragma(`wal_autocheckpoint = ${DEFAULT_AUTOCHECKPOINT_PAGES}`);
        report('the WAL checkpoint thread is gone; checkpointing inside commits again');
      },
    });
  }
  const db = new Kysely<Schema>({ dialect: new ImmediateSqliteDialect(cachingStatements(sqlite), sqlite) });
  try {
    await migrateToLatest(db as Kysely<unknown>, 'sqlite');
  } catch (err) {
    await db.destroy();
    await checkpointer?.stop();
    throw err;
  }
  // The checkpoint thread closes its connection before close() returns: the files are then free to move or delete.
  return new KyselyStore(db, 'sqlite', false, async () => checkpointer?.stop());
}
