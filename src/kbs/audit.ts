import { createPublicKey, sign, verify } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import type { JWK } from 'jose';
import { canonicalJson } from '../crypto/canonical-json.js';
import { sha256Hex } from '../crypto/hash.js';
import { CocoonError } from '../errors.js';
import type { AuditRecord, Store } from './store/types.js';

/** `prev` of the first entry. */
export const AUDIT_GENESIS = '0'.repeat(64);
const MAX_DETAIL = 16 * 1024;

export interface AuditInput {
  /** Owner kid, `kbs`, or `tee:<session>` for workloads. */
  actor: string;
  action: string;
  policy?: string | null;
  detail?: Record<string, unknown>;
}

/** The bytes an entry's hash covers (docs/audit.md). */
export function auditEntryHash(e: Pick<AuditRecord, 'seq' | 'at' | 'actor' | 'action' | 'policy' | 'detail' | 'prev'>): string {
  return sha256Hex(canonicalJson({ v: 1, seq: e.seq, at: e.at, actor: e.actor, action: e.action, policy: e.policy, detail: e.detail, prev: e.prev }));
}

/**
 * Appends one entry to the chain in `store` (call it inside the transaction of the change
 * it records, so both commit or neither). A concurrent writer that took the same seq makes
 * the insert fail with a unique violation; `withRetry` reruns the whole transaction.
 */
export async function appendAudit(store: Store, key: KeyObject, input: AuditInput, at: number): Promise<AuditRecord> {
  await store.lockAuditChain();
  return appendAuditAfter(store, key, input, at, await store.auditHead());
}

/** Appends after `last`, the chain head read under the chain lock in this transaction. */
export async function appendAuditAfter(store: Store, key: KeyObject, input: AuditInput, at: number, last: Pick<AuditRecord, 'seq' | 'hash'> | undefined): Promise<AuditRecord> {
  let detail = canonicalJson(input.detail ?? {});
  if (detail.length > MAX_DETAIL) detail = canonicalJson({ truncated: true, prefix: detail.slice(0, 1024) });
  const rec = { seq: (last?.seq ?? 0) + 1, at, actor: input.actor.slice(0, 160), action: input.action, policy: input.policy ?? null, detail, prev: last?.hash ?? AUDIT_GENESIS };
  const hash = auditEntryHash(rec);
  const sig = sign('sha256', Buffer.from(hash, 'hex'), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url');
  const full: AuditRecord = { ...rec, hash, sig };
  await store.insertAudit(full);
  return full;
}

/** Errors worth retrying a transaction for: lost races on a unique key, busy SQLite, PG serialization. */
export function isRetryableStoreError(err: unknown): boolean {
  if (err instanceof CocoonError) return false;
  const e = err as { code?: string; message?: string };
  return /unique|duplicate key|SQLITE_BUSY|database is locked|could not serialize|deadlock/i.test(`${e.code ?? ''} ${e.message ?? ''}`);
}

export async function withRetry<T>(fn: () => Promise<T>, attempts = 30): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (i >= attempts || !isRetryableStoreError(err)) throw err;
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 * i)));
    }
  }
}

export interface AuditVerdict {
  ok: boolean;
  count: number;
  lastSeq: number;
  lastHash: string;
  /** The first entry that does not verify, and why. */
  firstBroken?: { seq: number; reason: 'sequence' | 'prev' | 'hash' | 'signature' | 'malformed'; message: string };
}

export function auditPublicKey(jwk: JWK): KeyObject {
  return createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } as never, format: 'jwk' });
}

/**
 * Checks entries in seq order: consecutive seq, prev = hash of the previous entry, hash over
 * the content, signature by the KBS key. `from` continues a verification (paging).
 */
export function verifyAuditChain(entries: readonly AuditRecord[], key: KeyObject, from: { seq: number; hash: string } = { seq: 0, hash: AUDIT_GENESIS }): AuditVerdict {
  let prevSeq = from.seq;
  let prevHash = from.hash;
  let count = 0;
  for (const e of entries) {
    const broken = (reason: NonNullable<AuditVerdict['firstBroken']>['reason'], message: string): AuditVerdict => ({ ok: false, count, lastSeq: prevSeq, lastHash: prevHash, firstBroken: { seq: e.seq, reason, message } });
    if (e.seq !== prevSeq + 1) return broken('sequence', `entry ${e.seq} follows ${prevSeq} (entries missing or reordered)`);
    if (e.prev !== prevHash) return broken('prev', `entry ${e.seq} does not link to the hash of entry ${prevSeq}`);
    try {
      JSON.parse(e.detail);
    } catch {
      return broken('malformed', `entry ${e.seq} detail is not JSON`);
    }
    if (auditEntryHash(e) !== e.hash) return broken('hash', `entry ${e.seq} content does not match its hash (modified)`);
    let good = false;
    try {
      good = verify('sha256', Buffer.from(e.hash, 'hex'), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(e.sig, 'base64url'));
    } catch {
      good = false;
    }
    if (!good) return broken('signature', `entry ${e.seq} signature does not verify with the KBS key`);
    prevSeq = e.seq;
    prevHash = e.hash;
    count++;
  }
  return { ok: true, count, lastSeq: prevSeq, lastHash: prevHash };
}

/** Verifies the whole chain of a store page by page. */
export async function verifyStoreAudit(store: Store, key: KeyObject, pageSize = 1000): Promise<AuditVerdict> {
  let from = { seq: 0, hash: AUDIT_GENESIS };
  let total = 0;
  for (;;) {
    const page = await store.listAudit({ afterSeq: from.seq, limit: pageSize });
    const v = verifyAuditChain(page, key, from);
    total += v.count;
    if (!v.ok || page.length < pageSize) return { ...v, count: total };
    from = { seq: v.lastSeq, hash: v.lastHash };
  }
}
