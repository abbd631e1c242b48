import { Migrator } from 'kysely';
import type { Kysely, Migration, MigrationProvider } from 'kysely';
import { CocoonError } from '../../errors.js';

/**
 * Schema migrations, written with kysely's schema builder so that one definition serves
 * SQLite and PostgreSQL. Append new migrations; never edit a shipped one.
 */
export function migrations(dialect: 'sqlite' | 'postgres'): Record<string, Migration> {
  return {
  '0001_initial': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.createTable('kbs_meta').addColumn('key', 'varchar(128)', (c) => c.primaryKey()).addColumn('value', 'text', (c) => c.notNull()).execute();
      await db.schema
        .createTable('kbs_owners')
        .addColumn('kid', 'varchar(128)', (c) => c.primaryKey())
        .addColumn('jwk', 'text', (c) => c.notNull())
        .addColumn('label', 'varchar(256)', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('kbs_policies')
        .addColumn('name', 'varchar(160)', (c) => c.primaryKey())
        .addColumn('version', 'integer', (c) => c.notNull())
        .addColumn('hash', 'varchar(128)', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('kbs_policy_versions')
        .addColumn('name', 'varchar(160)', (c) => c.notNull())
        .addColumn('version', 'integer', (c) => c.notNull())
        .addColumn('hash', 'varchar(128)', (c) => c.notNull())
        .addColumn('predecessor', 'varchar(128)')
        .addColumn('yaml', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('created_by', 'varchar(128)', (c) => c.notNull())
        .addPrimaryKeyConstraint('kbs_policy_versions_pk', ['name', 'version'])
        .execute();
      await db.schema
        .createTable('kbs_secrets')
        .addColumn('policy', 'varchar(160)', (c) => c.notNull())
        .addColumn('name', 'varchar(128)', (c) => c.notNull())
        .addColumn('kind', 'varchar(32)', (c) => c.notNull())
        .addColumn('sealed', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('kbs_secrets_pk', ['policy', 'name'])
        .execute();
      await db.schema
        .createTable('kbs_sessions')
        .addColumn('id', 'varchar(128)', (c) => c.primaryKey())
        .addColumn('tee', 'varchar(32)', (c) => c.notNull())
        .addColumn('nonce', 'varchar(128)', (c) => c.notNull())
        .addColumn('nonce_used', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('tee_pubkey', 'text')
        .addColumn('attestation', 'text')
        .execute();
      await db.schema.createIndex('kbs_sessions_expiry').on('kbs_sessions').column('expires_at').execute();
      await db.schema
        .createTable('kbs_jti')
        .addColumn('jti', 'varchar(256)', (c) => c.primaryKey())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('kbs_jti_expiry').on('kbs_jti').column('expires_at').execute();
      await db.schema
        .createTable('kbs_events')
        // seq orders events; auto-increment is the one place the dialects differ.
        .addColumn('seq', 'integer', (c) => (dialect === 'postgres' ? c.primaryKey().generatedByDefaultAsIdentity() : c.primaryKey().autoIncrement()))
        .addColumn('id', 'varchar(64)', (c) => c.notNull().unique())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('kind', 'varchar(16)', (c) => c.notNull())
        .addColumn('status', 'varchar(32)', (c) => c.notNull())
        .addColumn('tee', 'varchar(32)', (c) => c.notNull())
        .addColumn('policy', 'varchar(160)')
        .addColumn('workload', 'varchar(128)')
        .addColumn('resource', 'varchar(256)')
        .addColumn('code', 'varchar(64)')
        .addColumn('detail', 'text', (c) => c.notNull())
        .addColumn('insecure', 'integer', (c) => c.notNull())
        .addColumn('session_id', 'varchar(128)')
        .execute();
      await db.schema.createIndex('kbs_events_policy').on('kbs_events').columns(['policy', 'seq']).execute();
    },
  },
  '0002_governance_audit_ca': {
    async up(db: Kysely<unknown>): Promise<void> {
      // admin: bootstrap owner (serve --owner); policy: registered because a policy lists it.
      await db.schema.alterTable('kbs_owners').addColumn('role', 'varchar(16)', (c) => c.notNull().defaultTo('admin')).execute();
      await db.schema
        .createTable('kbs_pending')
        .addColumn('id', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('policy', 'varchar(160)', (c) => c.notNull())
        .addColumn('base_hash', 'varchar(128)')
        .addColumn('base_version', 'integer', (c) => c.notNull())
        .addColumn('yaml', 'text', (c) => c.notNull())
        .addColumn('threshold', 'integer', (c) => c.notNull())
        .addColumn('proposed_by', 'varchar(128)', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('status', 'varchar(16)', (c) => c.notNull())
        .addColumn('decided_at', 'bigint')
        .execute();
      await db.schema.createIndex('kbs_pending_policy').on('kbs_pending').columns(['policy', 'status']).execute();
      await db.schema
        .createTable('kbs_approvals')
        .addColumn('pending_id', 'varchar(64)', (c) => c.notNull())
        .addColumn('owner', 'varchar(128)', (c) => c.notNull())
        .addColumn('decision', 'varchar(16)', (c) => c.notNull())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('kbs_approvals_pk', ['pending_id', 'owner'])
        .execute();
      await db.schema
        .createTable('kbs_audit')
        .addColumn('seq', 'bigint', (c) => c.primaryKey())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('actor', 'varchar(160)', (c) => c.notNull())
        .addColumn('action', 'varchar(64)', (c) => c.notNull())
        .addColumn('policy', 'varchar(160)')
        .addColumn('detail', 'text', (c) => c.notNull())
        .addColumn('prev', 'varchar(64)', (c) => c.notNull())
        .addColumn('hash', 'varchar(64)', (c) => c.notNull())
        .addColumn('sig', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('kbs_ca')
        .addColumn('id', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('kind', 'varchar(16)', (c) => c.notNull())
        .addColumn('serial', 'varchar(64)', (c) => c.notNull())
        .addColumn('cert', 'text', (c) => c.notNull())
        .addColumn('sealed_key', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('not_after', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('kbs_ca_kind').on('kbs_ca').columns(['kind', 'created_at']).execute();
      await db.schema
        .createTable('kbs_revoked')
        .addColumn('serial', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('reason', 'varchar(64)', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('kbs_activations')
        .addColumn('policy', 'varchar(160)', (c) => c.notNull())
        .addColumn('workload', 'varchar(128)', (c) => c.notNull())
        .addColumn('count', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('kbs_activations_pk', ['policy', 'workload'])
        .execute();
    },
  },
  '0003_volumes': {
    async up(db: Kysely<unknown>): Promise<void> {
      // Protected volumes: sealed key and monotonic version counter per (policy, workload, volume).
      await db.schema
        .createTable('kbs_volumes')
        .addColumn('policy', 'varchar(160)', (c) => c.notNull())
        .addColumn('workload', 'varchar(128)', (c) => c.notNull())
        .addColumn('volume', 'varchar(64)', (c) => c.notNull())
        .addColumn('version', 'bigint', (c) => c.notNull())
        .addColumn('sealed_key', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('kbs_volumes_pk', ['policy', 'workload', 'volume'])
        .execute();
    },
  },
  '0004_issued_certs': {
    async up(db: Kysely<unknown>): Promise<void> {
      // Workload certificates issued by the deployment CA: revocation by workload, unknown serials refused.
      await db.schema
        .createTable('kbs_certs')
        .addColumn('serial', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('policy', 'varchar(160)', (c) => c.notNull())
        .addColumn('workload', 'varchar(128)', (c) => c.notNull())
        .addColumn('issued_at', 'bigint', (c) => c.notNull())
        .addColumn('not_after', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('kbs_certs_workload').on('kbs_certs').columns(['policy', 'workload', 'not_after']).execute();
    },
  },
  '0005_instance_secrets': {
    async up(db: Kysely<unknown>): Promise<void> {
      // Per-instance secret values, generated once per attested instance (session or token) and
      // kept, sealed, until it expires: a launch plan and a later fetch see the same value.
      await db.schema
        .createTable('kbs_instance_secrets')
        .addColumn('instance', 'varchar(96)', (c) => c.notNull())
        .addColumn('policy', 'varchar(160)', (c) => c.notNull())
        .addColumn('name', 'varchar(128)', (c) => c.notNull())
        .addColumn('sealed', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('kbs_instance_secrets_pk', ['instance', 'policy', 'name'])
        .execute();
      await db.schema.createIndex('kbs_instance_secrets_expiry').on('kbs_instance_secrets').column('expires_at').execute();
    },
  },
  '0006_certs_expiry': {
    async up(db: Kysely<unknown>): Promise<void> {
      // The minute purge deletes issuance records (and their revocations) by not_after alone;
      // kbs_certs_workload leads with policy, so without this it scanned the table.
      await db.schema.createIndex('kbs_certs_expiry').on('kbs_certs').column('not_after').execute();
    },
  },
  };
}

export async function migrateToLatest(db: Kysely<unknown>, dialect: 'sqlite' | 'postgres'): Promise<void> {
  const provider: MigrationProvider = { getMigrations: () => Promise.resolve(migrations(dialect)) };
  const migrator = new Migrator({ db, provider, migrationTableName: 'kbs_migration', migrationLockTableName: 'kbs_migration_lock' });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new CocoonError('IO_ERROR', `store migration ${failed} failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
}
