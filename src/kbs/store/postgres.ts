import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { KyselyStore } from './kysely-store.js';
import { migrateToLatest } from './migrations.js';
import type { Database as Schema } from './schema.js';

/**
 * PostgreSQL store for several KBS replicas. Same queries as SQLite.
 * Exercised by test/kbs/postgres.test.ts against a throwaway PostgreSQL 15.
 */
export async function openPostgresStore(connectionString: string, options: { maxConnections?: number } = {}): Promise<KyselyStore> {
  const pool = new pg.Pool({ connectionString, max: options.maxConnections ?? 10 });
  const db = new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) });
  await migrateToLatest(db as Kysely<unknown>, 'postgres');
  return new KyselyStore(db, 'postgres');
}
