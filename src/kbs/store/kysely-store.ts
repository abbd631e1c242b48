import { sql } from 'kysely';
import type { Compilable, CompiledQuery, Kysely, QueryResult, Selectable } from 'kysely';
import { CocoonError } from '../../errors.js';
import type { Database } from './schema.js';
import type { ApplyPolicyInput, ApprovalRecord, AuditRecord, CaRecord, EventRecord, InstanceSecretRecord, IssuedCertRecord, OwnerRecord, PendingRecord, PolicyVersionRecord, SecretRecord, SessionRecord, Store, VolumeRecord } from './types.js';

const num = (v: number | string): number => (typeof v === 'number' ? v : Number(v));

const ARG = '\u0000cocoon-arg:';
/** Stands for the i-th argument of a prepared query when it is built (no caller's value starts with NUL). */
const arg = (i: number): never => `${ARG}${i}` as never;

/**
 * A query of the RCAR hot path, built and compiled once per dialect and then run with fresh
 * arguments. kysely builds and compiles every query anew — about a tenth of the KBS's CPU per
 * RCAR round trip (bench/rcar.ts) — while these few have one fixed shape each; the SQL text
 * and the constants in it are exactly what the builder produced.
 */
class Prepared<O, A extends unknown[]> {
  private readonly byDialect = new Map<string, { query: CompiledQuery<O>; slots: number[]; arity: number }>();

  constructor(private readonly build: (db: Kysely<Database>) => Compilable<O>) {}

  run(store: KyselyStore, ...args: A): Promise<QueryResult<O>> {
    let c = this.byDialect.get(store.dialect);
    if (!c) {
      const query = this.build(store.db).compile();
      const slots = query.parameters.map((p) => (typeof p === 'string' && p.startsWith(ARG) ? Number(p.slice(ARG.length)) : -1));
      c = { query, slots, arity: new Set(slots.filter((i) => i >= 0)).size };
      this.byDialect.set(store.dialect, c);
    }
    if (args.length !== c.arity) throw new CocoonError('INTERNAL', `prepared query takes ${c.arity} arguments, got ${args.length}`);
    const { query, slots } = c;
    return store.db.executeQuery({ ...query, parameters: slots.map((slot, i) => (slot < 0 ? query.parameters[i] : args[slot])) });
  }
}

/** A prepared query whose arguments are the tuple A (so a swapped or missing argument does not compile). */
const prepared =
  <A extends unknown[]>() =>
  <O>(build: (db: Kysely<Database>) => Compilable<O>): Prepared<O, A> =>
    new Prepared<O, A>(build);

type Nullable = string | null;

const Q = {
  auditHead: prepared<[]>()((db) => db.selectFrom('kbs_audit').select(['seq', 'hash']).orderBy('seq', 'desc').limit(1)),
  insertAudit: prepared<[seq: number, at: number, actor: string, action: string, policy: Nullable, detail: string, prev: string, hash: string, sig: string]>()((db) =>
    db.insertInto('kbs_audit').values({ seq: arg(0), at: arg(1), actor: arg(2), action: arg(3), policy: arg(4), detail: arg(5), prev: arg(6), hash: arg(7), sig: arg(8) }),
  ),
  addEvent: prepared<[id: string, at: number, kind: string, status: string, tee: string, policy: Nullable, workload: Nullable, resource: Nullable, code: Nullable, detail: string, insecure: 0 | 1, sessionId: Nullable]>()((db) =>
    db.insertInto('kbs_events').values({
      id: arg(0),
      at: arg(1),
      kind: arg(2),
      status: arg(3),
      tee: arg(4),
      policy: arg(5),
      workload: arg(6),
      resource: arg(7),
      code: arg(8),
      detail: arg(9),
      insecure: arg(10),
      session_id: arg(11),
    }),
  ),
  insertSession: prepared<[id: string, tee: string, nonce: string, createdAt: number, expiresAt: number, teePubkey: Nullable, attestation: Nullable]>()((db) =>
    db
      .insertInto('kbs_sessions')
      .values({ id: arg(0), tee: arg(1), nonce: arg(2), nonce_used: 1, created_at: arg(3), expires_at: arg(4), tee_pubkey: arg(5), attestation: arg(6) })
      .onConflict((oc) => oc.column('id').doNothing()),
  ),
  sessionExists: prepared<[id: string]>()((db) => db.selectFrom('kbs_sessions').select(sql<number>`1`.as('one')).where('id', '=', arg(0))),
  getSession: prepared<[id: string]>()((db) => db.selectFrom('kbs_sessions').select(['id', 'tee', 'nonce', 'created_at', 'expires_at', 'tee_pubkey', 'attestation']).where('id', '=', arg(0))),
  countActivation: prepared<[policy: string, workload: string]>()((db) =>
    db
      .insertInto('kbs_activations')
      .values({ policy: arg(0), workload: arg(1), count: 1 })
      .onConflict((oc) => oc.columns(['policy', 'workload']).doUpdateSet({ count: sql<number>`kbs_activations.count + 1` }))
      .returning('count'),
  ),
  countActivationBelow: prepared<[policy: string, workload: string, max: number]>()((db) =>
    db
      .insertInto('kbs_activations')
      .values({ policy: arg(0), workload: arg(1), count: 1 })
      .onConflict((oc) => oc.columns(['policy', 'workload']).doUpdateSet({ count: sql<number>`kbs_activations.count + 1` }).where('kbs_activations.count', '<', arg(2)))
      .returning('count'),
  ),
  policyHeadRef: prepared<[name: string]>()((db) => db.selectFrom('kbs_policies').select(['version', 'hash']).where('name', '=', arg(0))),
  policyHead: prepared<[name: string]>()((db) =>
    db
      .selectFrom('kbs_policies as p')
      .innerJoin('kbs_policy_versions as v', (j) => j.onRef('v.name', '=', 'p.name').onRef('v.version', '=', 'p.version'))
      .selectAll('v')
      .where('p.name', '=', arg(0)),
  ),
  getSecret: prepared<[policy: string, name: string]>()((db) => db.selectFrom('kbs_secrets').selectAll().where('policy', '=', arg(0)).where('name', '=', arg(1))),
  getInstanceSecret: prepared<[instance: string, policy: string, name: string]>()((db) => db.selectFrom('kbs_instance_secrets').select('sealed').where('instance', '=', arg(0)).where('policy', '=', arg(1)).where('name', '=', arg(2))),
};

/** The one query layer for every dialect: only portable kysely constructs. */
export class KyselyStore implements Store {
  constructor(
    readonly db: Kysely<Database>,
    readonly dialect: 'sqlite' | 'postgres',
    private readonly inTx = false,
    /** Runs after the database is closed (e.g. stopping the SQLite WAL checkpoint thread). */
    private readonly afterClose?: () => Promise<void>,
  ) {}

  async transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    if (this.inTx) return fn(this);
    return this.db.transaction().execute((trx) => fn(new KyselyStore(trx, this.dialect, true)));
  }

  async addPolicyOwner(owner: OwnerRecord): Promise<void> {
    await this.db
      .insertInto('kbs_owners')
      .values({ kid: owner.kid, jwk: owner.jwk, label: owner.label, created_at: owner.createdAt, role: 'policy' })
      .onConflict((oc) => oc.column('kid').doNothing())
      .execute();
  }

  async createPending(p: PendingRecord): Promise<void> {
    await this.db
      .insertInto('kbs_pending')
      .values({
        id: p.id,
        policy: p.policy,
        base_hash: p.baseHash,
        base_version: p.baseVersion,
        yaml: p.yaml,
        threshold: p.threshold,
        proposed_by: p.proposedBy,
        created_at: p.createdAt,
        status: p.status,
        decided_at: p.decidedAt,
      })
      .execute();
  }

  async getPending(id: string): Promise<PendingRecord | undefined> {
    const row = await this.db.selectFrom('kbs_pending').selectAll().where('id', '=', id).executeTakeFirst();
    return row && toPending(row);
  }

  async listPending(policy: string, status?: PendingRecord['status']): Promise<PendingRecord[]> {
    let q = this.db.selectFrom('kbs_pending').selectAll().where('policy', '=', policy);
    if (status) q = q.where('status', '=', status);
    return (await q.orderBy('created_at', 'desc').limit(100).execute()).map(toPending);
  }

  async setPendingStatus(id: string, from: PendingRecord['status'], to: PendingRecord['status'], at: number): Promise<boolean> {
    const res = await this.db.updateTable('kbs_pending').set({ status: to, decided_at: at }).where('id', '=', id).where('status', '=', from).executeTakeFirst();
    return Number(res.numUpdatedRows) === 1;
  }

  async addApproval(a: ApprovalRecord): Promise<boolean> {
    const res = await this.db
      .insertInto('kbs_approvals')
      .values({ pending_id: a.pendingId, owner: a.owner, decision: a.decision, at: a.at })
      .onConflict((oc) => oc.columns(['pending_id', 'owner']).doNothing())
      .executeTakeFirst();
    return Number(res.numInsertedOrUpdatedRows ?? 0n) === 1;
  }

  async listApprovals(pendingId: string): Promise<ApprovalRecord[]> {
    const rows = await this.db.selectFrom('kbs_approvals').selectAll().where('pending_id', '=', pendingId).orderBy('at').execute();
    return rows.map((r) => ({ pendingId: r.pending_id, owner: r.owner, decision: r.decision as ApprovalRecord['decision'], at: num(r.at) }));
  }

  async lockAuditChain(): Promise<void> {
    if (this.dialect !== 'postgres') return;
    if (!this.inTx) throw new CocoonError('INTERNAL', 'lockAuditChain outside a transaction');
    // 0x636f636f = "coco": one lock for the one chain, released at commit/rollback.
    await sql`select pg_advisory_xact_lock(${0x636f636f})`.execute(this.db);
  }

  async auditHead(): Promise<Pick<AuditRecord, 'seq' | 'hash'> | undefined> {
    const row = (await Q.auditHead.run(this)).rows[0];
    return row && { seq: num(row.seq), hash: row.hash };
  }

  async insertAudit(r: AuditRecord): Promise<void> {
    await Q.insertAudit.run(this, r.seq, r.at, r.actor, r.action, r.policy, r.detail, r.prev, r.hash, r.sig);
  }

  async listAudit(options: { afterSeq?: number; limit: number; policy?: string; desc?: boolean }): Promise<AuditRecord[]> {
    let q = this.db.selectFrom('kbs_audit').selectAll();
    if (options.afterSeq !== undefined) q = q.where('seq', '>', options.afterSeq);
    if (options.policy !== undefined) q = q.where('policy', '=', options.policy);
    const rows = await q.orderBy('seq', options.desc ? 'desc' : 'asc').limit(options.limit).execute();
    return rows.map(toAudit);
  }

  async putCaIfAbsent(rec: CaRecord): Promise<CaRecord> {
    await this.db
      .insertInto('kbs_ca')
      .values(caRow(rec))
      .onConflict((oc) => oc.column('id').doNothing())
      .execute();
    const row = await this.db.selectFrom('kbs_ca').selectAll().where('id', '=', rec.id).executeTakeFirstOrThrow();
    return toCa(row);
  }

  async insertCa(rec: CaRecord): Promise<void> {
    await this.db.insertInto('kbs_ca').values(caRow(rec)).execute();
  }

  async latestCa(kind: CaRecord['kind']): Promise<CaRecord | undefined> {
    const row = await this.db.selectFrom('kbs_ca').selectAll().where('kind', '=', kind).orderBy('created_at', 'desc').orderBy('id', 'desc').limit(1).executeTakeFirst();
    return row && toCa(row);
  }

  async listCa(kind: CaRecord['kind'], limit: number): Promise<CaRecord[]> {
    const rows = await this.db.selectFrom('kbs_ca').selectAll().where('kind', '=', kind).orderBy('created_at', 'desc').orderBy('id', 'desc').limit(limit).execute();
    return rows.map(toCa);
  }

  async revokeSerial(serial: string, at: number, reason: string): Promise<boolean> {
    const res = await this.db
      .insertInto('kbs_revoked')
      .values({ serial, at, reason })
      .onConflict((oc) => oc.column('serial').doNothing())
      .executeTakeFirst();
    return Number(res.numInsertedOrUpdatedRows ?? 0n) === 1;
  }

  async listRevoked(): Promise<{ serial: string; at: number; reason: string }[]> {
    const rows = await this.db.selectFrom('kbs_revoked').selectAll().orderBy('at').limit(100_000).execute();
    return rows.map((r) => ({ serial: r.serial, at: num(r.at), reason: r.reason }));
  }

  async getRevoked(serial: string): Promise<{ serial: string; at: number; reason: string } | undefined> {
    const r = await this.db.selectFrom('kbs_revoked').selectAll().where('serial', '=', serial).executeTakeFirst();
    return r && { serial: r.serial, at: num(r.at), reason: r.reason };
  }

  async recordCert(rec: IssuedCertRecord): Promise<void> {
    await this.db
      .insertInto('kbs_certs')
      .values({ serial: rec.serial, policy: rec.policy, workload: rec.workload, issued_at: rec.issuedAt, not_after: rec.notAfter })
      .onConflict((oc) => oc.column('serial').doNothing())
      .execute();
  }

  async getCert(serial: string): Promise<IssuedCertRecord | undefined> {
    const r = await this.db.selectFrom('kbs_certs').selectAll().where('serial', '=', serial).executeTakeFirst();
    return r && certFromRow(r);
  }

  async listCerts(policy: string, workload: string, validAt: number, limit: number): Promise<IssuedCertRecord[]> {
    const rows = await this.db.selectFrom('kbs_certs').selectAll().where('policy', '=', policy).where('workload', '=', workload).where('not_after', '>', validAt).orderBy('issued_at', 'desc').limit(limit).execute();
    return rows.map(certFromRow);
  }

  async pruneCertificates(certsExpiredBefore: number, unrecordedRevokedBefore: number): Promise<{ certs: number; revoked: number }> {
    return this.transaction(async (tx) => {
      const db = (tx as KyselyStore).db;
      // Order matters: revocations first, while the issuance records still tell which serials expired.
      const ofExpired = await db
        .deleteFrom('kbs_revoked')
        .where('serial', 'in', (eb) => eb.selectFrom('kbs_certs').select('kbs_certs.serial').where('kbs_certs.not_after', '<=', certsExpiredBefore))
        .executeTakeFirst();
      const unrecorded = await db
        .deleteFrom('kbs_revoked')
        .where('at', '<=', unrecordedRevokedBefore)
        .where((eb) => eb.not(eb.exists(eb.selectFrom('kbs_certs').select('kbs_certs.serial').whereRef('kbs_certs.serial', '=', 'kbs_revoked.serial'))))
        .executeTakeFirst();
      const certs = await db.deleteFrom('kbs_certs').where('not_after', '<=', certsExpiredBefore).executeTakeFirst();
      return { certs: Number(certs.numDeletedRows), revoked: Number(ofExpired.numDeletedRows) + Number(unrecorded.numDeletedRows) };
    });
  }

  async listActivations(policy: string): Promise<Record<string, number>> {
    const rows = await this.db.selectFrom('kbs_activations').select(['workload', 'count']).where('policy', '=', policy).limit(1000).execute();
    return Object.fromEntries(rows.map((r) => [r.workload, num(r.count)]));
  }

  async putVolumeIfAbsent(rec: VolumeRecord): Promise<VolumeRecord> {
    await this.db
      .insertInto('kbs_volumes')
      .values({ policy: rec.policy, workload: rec.workload, volume: rec.volume, version: rec.version, sealed_key: rec.sealedKey, created_at: rec.createdAt, updated_at: rec.updatedAt })
      .onConflict((oc) => oc.columns(['policy', 'workload', 'volume']).doNothing())
      .execute();
    const stored = await this.getVolume(rec.policy, rec.workload, rec.volume);
    if (!stored) throw new CocoonError('IO_ERROR', 'volume record vanished after insert');
    return stored;
  }

  async getVolume(policy: string, workload: string, volume: string): Promise<VolumeRecord | undefined> {
    const r = await this.db.selectFrom('kbs_volumes').selectAll().where('policy', '=', policy).where('workload', '=', workload).where('volume', '=', volume).executeTakeFirst();
    return r && volumeFromRow(r);
  }

  async listVolumes(policy: string): Promise<VolumeRecord[]> {
    const rows = await this.db.selectFrom('kbs_volumes').selectAll().where('policy', '=', policy).orderBy('workload').orderBy('volume').limit(10_000).execute();
    return rows.map(volumeFromRow);
  }

  async advanceVolume(policy: string, workload: string, volume: string, from: number, to: number, at: number): Promise<boolean> {
    if (!(to > from)) return false;
    const res = await this.db
      .updateTable('kbs_volumes')
      .set({ version: to, updated_at: at })
      .where('policy', '=', policy)
      .where('workload', '=', workload)
      .where('volume', '=', volume)
      .where('version', '=', from)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) === 1;
  }

  async countActivation(policy: string, workload: string, max: number | undefined): Promise<number | false> {
    if (max !== undefined && max < 1) return false;
    const { rows } = max === undefined ? await Q.countActivation.run(this, policy, workload) : await Q.countActivationBelow.run(this, policy, workload, max);
    return rows[0] ? num(rows[0].count) : false;
  }

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

  async putMeta(key: string, value: string): Promise<void> {
    await this.db
      .insertInto('kbs_meta')
      .values({ key, value })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value }))
      .execute();
  }

  async upsertOwner(owner: OwnerRecord): Promise<void> {
    await this.db
      .insertInto('kbs_owners')
      .values({ kid: owner.kid, jwk: owner.jwk, label: owner.label, created_at: owner.createdAt, role: owner.role ?? 'admin' })
      .onConflict((oc) => oc.column('kid').doUpdateSet({ label: owner.label, role: owner.role ?? 'admin' }))
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

  async getPolicyHeadRef(name: string): Promise<{ version: number; hash: string } | undefined> {
    const row = (await Q.policyHeadRef.run(this, name)).rows[0];
    return row && { version: num(row.version), hash: row.hash };
  }

  async getPolicyHead(name: string): Promise<PolicyVersionRecord | undefined> {
    const row = (await Q.policyHead.run(this, name)).rows[0];
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
    await this.transaction(async (tx) => {
      const trx = (tx as KyselyStore).db;
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
      for (const s of input.replaceSecrets ?? []) {
        await trx
          .insertInto('kbs_secrets')
          .values({ policy: s.policy, name: s.name, kind: s.kind, sealed: s.sealed, created_at: s.createdAt, updated_at: s.updatedAt })
          .onConflict((oc) => oc.columns(['policy', 'name']).doUpdateSet({ kind: s.kind, sealed: s.sealed, updated_at: s.updatedAt }))
          .execute();
      }
    });
  }

  async getSecret(policy: string, name: string): Promise<SecretRecord | undefined> {
    const row = (await Q.getSecret.run(this, policy, name)).rows[0];
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

  async insertSession(s: SessionRecord): Promise<boolean> {
    const res = await Q.insertSession.run(this, s.id, s.tee, s.nonce, s.createdAt, s.expiresAt, s.teePubkey, s.attestation);
    return Number(res.numAffectedRows ?? 0n) === 1;
  }

  async sessionExists(id: string): Promise<boolean> {
    return (await Q.sessionExists.run(this, id)).rows.length > 0;
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    const row = (await Q.getSession.run(this, id)).rows[0];
    if (!row) return undefined;
    return {
      id: row.id,
      tee: row.tee,
      nonce: row.nonce,
      createdAt: num(row.created_at),
      expiresAt: num(row.expires_at),
      teePubkey: row.tee_pubkey,
      attestation: row.attestation,
    };
  }

  async purgeExpired(now: number): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('kbs_sessions').where('expires_at', '<=', now).execute();
      await trx.deleteFrom('kbs_jti').where('expires_at', '<=', now).execute();
      await trx.deleteFrom('kbs_instance_secrets').where('expires_at', '<=', now).execute();
    });
  }

  async putInstanceSecretIfAbsent(rec: InstanceSecretRecord): Promise<string> {
    await this.db
      .insertInto('kbs_instance_secrets')
      .values({ instance: rec.instance, policy: rec.policy, name: rec.name, sealed: rec.sealed, expires_at: rec.expiresAt })
      .onConflict((oc) => oc.columns(['instance', 'policy', 'name']).doNothing())
      .execute();
    const sealed = await this.getInstanceSecret(rec.instance, rec.policy, rec.name);
    if (sealed === undefined) throw new CocoonError('IO_ERROR', 'instance secret vanished after insert');
    return sealed;
  }

  async getInstanceSecret(instance: string, policy: string, name: string): Promise<string | undefined> {
    return (await Q.getInstanceSecret.run(this, instance, policy, name)).rows[0]?.sealed;
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
    await Q.addEvent.run(this, e.id, e.at, e.kind, e.status, e.tee, e.policy, e.workload, e.resource, e.code, e.detail, e.insecure ? 1 : 0, e.sessionId);
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
    if (this.inTx) return;
    await this.db.destroy();
    await this.afterClose?.();
  }
}

function toOwner(row: Selectable<Database['kbs_owners']>): OwnerRecord {
  return { kid: row.kid, jwk: row.jwk, label: row.label, createdAt: num(row.created_at), role: row.role === 'policy' ? 'policy' : 'admin' };
}

function toPending(row: Selectable<Database['kbs_pending']>): PendingRecord {
  return {
    id: row.id,
    policy: row.policy,
    baseHash: row.base_hash,
    baseVersion: num(row.base_version),
    yaml: row.yaml,
    threshold: num(row.threshold),
    proposedBy: row.proposed_by,
    createdAt: num(row.created_at),
    status: row.status as PendingRecord['status'],
    decidedAt: row.decided_at === null ? null : num(row.decided_at),
  };
}

function toAudit(row: Selectable<Database['kbs_audit']>): AuditRecord {
  return { seq: num(row.seq), at: num(row.at), actor: row.actor, action: row.action, policy: row.policy, detail: row.detail, prev: row.prev, hash: row.hash, sig: row.sig };
}

function caRow(r: CaRecord) {
  return { id: r.id, kind: r.kind, serial: r.serial, cert: r.cert, sealed_key: r.sealedKey, created_at: r.createdAt, not_after: r.notAfter };
}

function toCa(row: Selectable<Database['kbs_ca']>): CaRecord {
  return { id: row.id, kind: row.kind as CaRecord['kind'], serial: row.serial, cert: row.cert, sealedKey: row.sealed_key, createdAt: num(row.created_at), notAfter: num(row.not_after) };
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

function volumeFromRow(r: Selectable<Database['kbs_volumes']>): VolumeRecord {
  return { policy: r.policy, workload: r.workload, volume: r.volume, version: num(r.version), sealedKey: r.sealed_key, createdAt: num(r.created_at), updatedAt: num(r.updated_at) };
}

function certFromRow(r: Selectable<Database['kbs_certs']>): IssuedCertRecord {
  return { serial: r.serial, policy: r.policy, workload: r.workload, issuedAt: num(r.issued_at), notAfter: num(r.not_after) };
}
