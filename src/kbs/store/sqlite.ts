import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { CocoonError } from '../../errors.js';
import { KyselyStore } from './kysely-store.js';
import { migrateToLatest } from './migrations.js';
import type { Database as Schema } from './schema.js';

export const SQLITE_FILE = 'kbs.sqlite';

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
  const db = new Kysely<Schema>({ dialect: new SqliteDialect({ database: sqlite }) });
  await migrateToLatest(db as Kysely<unknown>, 'sqlite');
  return new KyselyStore(db, 'sqlite');
}
