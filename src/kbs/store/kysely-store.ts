import type { Kysely, Selectable } from 'kysely';
import { CocoonError } from '../../errors.js';
import type { Database } from './schema.js';
import type { ApplyPolicyInput, EventRecord, OwnerRecord, PolicyVersionRecord, SecretRecord, SessionRecord, Store } from './types.js';

const num = (v: number | string): number => (typeof v === 'number' ? v : Number(v));

/** The one query layer for every dialect: only portable kysely constructs. */
export class KyselyStore implements Store {
  constructor(
    readonly db: Kysely<Database>,
    readonly dialect: 'sqlite' | 'postgres',
  ) {}

  async getMeta(key: string): Promise<string | undefined> {
    const row = await this.db.selectFrom('kbs_meta').select('value').where('key', '=', key).executeTakeFirst();
    return row?.value;
  }

  async putMetaIfAbsent(key: string, value: string): Promise<string> {
    await this.db
      .insertInto('kbs_meta')
      .values({ key, value })
      .onConflict((oc) => oc.column('key').doNothing())
      .execute();
    const stored = await this.getMeta(key);
    if (stored === undefined) throw new CocoonError('IO_ERROR', `store: meta ${key} vanished`);
    return stored;
  }

  async upsertOwner(owner: OwnerRecord): Promise<void> {
    await this.db
      .insertInto('kbs_owners')
      .values({ kid: owner.kid, jwk: owner.jwk, label: owner.label, created_at: owner.createdAt })
      .onConflict((oc) => oc.column('kid').doUpdateSet({ label: owner.label }))
      .execute();
  }

  async getOwner(kid: string): Promise<OwnerRecord | undefined> {
    const row = await this.db.selectFrom('kbs_owners').selectAll().where('kid', '=', kid).executeTakeFirst();
    return row && toOwner(row);
  }

  async listOwners(): Promise<OwnerRecord[]> {
    const rows = await this.db.selectFrom('kbs_owners').selectAll().orderBy('created_at').limit(1000).execute();
    return rows.map(toOwner);
  }

  async getPolicyHead(name: string): Promise<PolicyVersionRecord | undefined> {
    const row = await this.db
      .selectFrom('kbs_policies as p')
      .innerJoin('kbs_policy_versions as v', (j) => j.onRef('v.name', '=', 'p.name').onRef('v.version', '=', 'p.version'))
      .selectAll('v')
      .where('p.name', '=', name)
      .executeTakeFirst();
    return row && toPolicyVersion(row);
  }

  async listPolicyVersions(name: string, limit: number): Promise<PolicyVersionRecord[]> {
    const rows = await this.db.selectFrom('kbs_policy_versions').selectAll().where('name', '=', name).orderBy('version', 'desc').limit(limit).execute();
    return rows.map(toPolicyVersion);
  }

  async applyPolicy(input: ApplyPolicyInput): Promise<void> {
    const r = input.record;
    try {
      await this.applyPolicyTx(input);
    } catch (err) {
      // A concurrent writer inserting the same (name, version) loses on the primary key.
      if (!(err instanceof CocoonError) && /unique|duplicate key/i.test((err as Error).message)) {
        throw new CocoonError('PREDECESSOR_MISMATCH', `policy ${r.name} changed concurrently; fetch the current version and retry`, { cause: err });
      }
      throw err;
    }
  }

  private async applyPolicyTx(input: ApplyPolicyInput): Promise<void> {
    const r = input.record;
    await this.db.transaction().execute(async (trx) => {
      const head = await trx.selectFrom('kbs_policies').select(['hash', 'version']).where('name', '=', r.name).executeTakeFirst();
      if ((head?.hash ?? null) !== input.expectedHead || (head ? head.version + 1 : 1) !== r.version) {
        throw new CocoonError('PREDECESSOR_MISMATCH', `policy ${r.name} changed concurrently; fetch the current version and retry`, {
          details: { current: head?.hash ?? null },
        });
      }
      await trx
        .insertInto('kbs_policy_versions')
        .values({ name: r.name, version: r.version, hash: r.hash, predecessor: r.predecessor, yaml: r.yaml, created_at: r.createdAt, created_by: r.createdBy })
        .execute();
      if (head) {
        const res = await trx
          .updateTable('kbs_policies')
          .set({ version: r.version, hash: r.hash, updated_at: r.createdAt })
          .where('name', '=', r.name)
          .where('hash', '=', head.hash)
          .executeTakeFirst();
        if (Number(res.numUpdatedRows) !== 1) throw new CocoonError('PREDECESSOR_MISMATCH', `policy ${r.name} changed concurrently`);
      } else {
        await trx.insertInto('kbs_policies').values({ name: r.name, version: r.version, hash: r.hash, updated_at: r.createdAt }).execute();
      }
      for (const s of input.newSecrets) {
        await trx
          .insertInto('kbs_secrets')
          .values({ policy: s.policy, name: s.name, kind: s.kind, sealed: s.sealed, created_at: s.createdAt, updated_at: s.updatedAt })
          .onConflict((oc) => oc.columns(['policy', 'name']).doNothing())
          .execute();
      }
    });
  }

  async getSecret(policy: string, name: string): Promise<SecretRecord | undefined> {
    const row = await this.db.selectFrom('kbs_secrets').selectAll().where('policy', '=', policy).where('name', '=', name).executeTakeFirst();
    return row && { policy: row.policy, name: row.name, kind: row.kind, sealed: row.sealed, createdAt: num(row.created_at), updatedAt: num(row.updated_at) };
  }

  async listSecretNames(policy: string): Promise<string[]> {
    const rows = await this.db.selectFrom('kbs_secrets').select('name').where('policy', '=', policy).execute();
    return rows.map((r) => r.name);
  }

  async putSecret(s: SecretRecord): Promise<void> {
    await this.db
      .insertInto('kbs_secrets')
      .values({ policy: s.policy, name: s.name, kind: s.kind, sealed: s.sealed, created_at: s.createdAt, updated_at: s.updatedAt })
      .onConflict((oc) => oc.columns(['policy', 'name']).doUpdateSet({ kind: s.kind, sealed: s.sealed, updated_at: s.updatedAt }))
      .execute();
  }

  async createSession(s: SessionRecord): Promise<void> {
    await this.db
      .insertInto('kbs_sessions')
      .values({
        id: s.id,
        tee: s.tee,
        nonce: s.nonce,
        nonce_used: s.nonceUsed ? 1 : 0,
        created_at: s.createdAt,
        expires_at: s.expiresAt,
        tee_pubkey: s.teePubkey,
        attestation: s.attestation,
      })
      .execute();
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    const row = await this.db.selectFrom('kbs_sessions').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) return undefined;
    return {
      id: row.id,
      tee: row.tee,
      nonce: row.nonce,
      nonceUsed: row.nonce_used !== 0,
      createdAt: num(row.created_at),
      expiresAt: num(row.expires_at),
      teePubkey: row.tee_pubkey,
      attestation: row.attestation,
    };
  }

  async consumeNonce(id: string, now: number): Promise<boolean> {
    const res = await this.db
      .updateTable('kbs_sessions')
      .set({ nonce_used: 1 })
      .where('id', '=', id)
      .where('nonce_used', '=', 0)
      .where('expires_at', '>', now)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) === 1;
  }

  async completeSession(id: string, teePubkey: string, attestation: string, expiresAt: number): Promise<void> {
    await this.db.updateTable('kbs_sessions').set({ tee_pubkey: teePubkey, attestation, expires_at: expiresAt }).where('id', '=', id).execute();
  }

  async purgeExpired(now: number): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('kbs_sessions').where('expires_at', '<=', now).execute();
      await trx.deleteFrom('kbs_jti').where('expires_at', '<=', now).execute();
    });
  }

  async rememberJti(jti: string, expiresAt: number, now: number): Promise<boolean> {
    // An expired row with the same jti may be reused: the token it belonged to is no longer accepted.
    await this.db.deleteFrom('kbs_jti').where('jti', '=', jti).where('expires_at', '<=', now).execute();
    const res = await this.db
      .insertInto('kbs_jti')
      .values({ jti, expires_at: expiresAt })
      .onConflict((oc) => oc.column('jti').doNothing())
      .executeTakeFirst();
    return Number(res.numInsertedOrUpdatedRows ?? 0n) === 1;
  }

  async addEvent(e: EventRecord): Promise<void> {
    await this.db
      .insertInto('kbs_events')
      .values({
        id: e.id,
        at: e.at,
        kind: e.kind,
        status: e.status,
        tee: e.tee,
        policy: e.policy,
        workload: e.workload,
        resource: e.resource,
        code: e.code,
        detail: e.detail,
        insecure: e.insecure ? 1 : 0,
        session_id: e.sessionId,
      })
      .execute();
  }

  async listEvents(options: { limit: number; policy?: string; before?: number }): Promise<EventRecord[]> {
    let q = this.db.selectFrom('kbs_events').selectAll();
    if (options.policy !== undefined) q = q.where('policy', '=', options.policy);
    if (options.before !== undefined) q = q.where('seq', '<', options.before);
    const rows = await q.orderBy('seq', 'desc').limit(options.limit).execute();
    return rows.map(toEvent);
  }

  async ping(): Promise<void> {
    await this.db.selectFrom('kbs_meta').select('key').limit(1).execute();
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }
}

function toOwner(row: Selectable<Database['kbs_owners']>): OwnerRecord {
  return { kid: row.kid, jwk: row.jwk, label: row.label, createdAt: num(row.created_at) };
}

function toPolicyVersion(row: Selectable<Database['kbs_policy_versions']>): PolicyVersionRecord {
  return {
    name: row.name,
    version: num(row.version),
    hash: row.hash,
    predecessor: row.predecessor,
    yaml: row.yaml,
    createdAt: num(row.created_at),
    createdBy: row.created_by,
  };
}

function toEvent(row: Selectable<Database['kbs_events']>): EventRecord & { seq: number } {
  return {
    seq: num(row.seq),
    id: row.id,
    at: num(row.at),
    kind: row.kind as EventRecord['kind'],
    status: row.status as EventRecord['status'],
    tee: row.tee,
    policy: row.policy,
    workload: row.workload,
    resource: row.resource,
    code: row.code,
    detail: row.detail,
    insecure: row.insecure !== 0,
    sessionId: row.session_id,
  };
}
