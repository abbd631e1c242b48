import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import type { SqliteDatabase, SqliteStatement } from 'kysely';
import { CocoonError } from '../../errors.js';
import { KyselyStore } from './kysely-store.js';
import { migrateToLatest } from './migrations.js';
import type { Database as Schema } from './schema.js';

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

/** Opens (creating and migrating) the SQLite store `<dataDir>/kbs.sqlite`, or in memory with `:memory:`. */
export async function openSqliteStore(dataDirOrMemory: string): Promise<KyselyStore> {
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
    sqlite.pragma('busy_timeout = 5000');
    sqlite.pragma('foreign_keys = ON');
  } catch (err) {
    throw new CocoonError('IO_ERROR', `cannot open the KBS store ${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const db = new Kysely<Schema>({ dialect: new SqliteDialect({ database: cachingStatements(sqlite) }) });
  await migrateToLatest(db as Kysely<unknown>, 'sqlite');
  return new KyselyStore(db, 'sqlite');
}
