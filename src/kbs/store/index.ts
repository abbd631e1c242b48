export type * from './types.js';
export { KyselyStore } from './kysely-store.js';
export { openSqliteStore, SQLITE_FILE } from './sqlite.js';
export { openPostgresStore } from './postgres.js';
