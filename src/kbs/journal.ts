import type { KeyObject } from 'node:crypto';
import { appendAuditAfter, withRetry } from './audit.js';
import type { AuditInput } from './audit.js';
import type { AuditRecord, EventRecord, Store } from './store/types.js';

/**
 * A write that belongs with a record (e.g. spending an RCAR challenge), run first in the same
 * transaction. It may add audit detail, or refuse the record: its event and audit entry are
 * then not written, what the step wrote is kept, and `record` rejects with `refused` once the
 * batch has committed. A step that throws fails its batch, which is retried record by record.
 */
export type JournalStep = (tx: Store) => Promise<{ detail?: Record<string, unknown> } | { refused: Error }>;

interface JournalItem {
  event: EventRecord | undefined;
  audit: AuditInput;
  at: number;
  step: JournalStep | undefined;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * The record of every attestation and release: an event row (what `cocoon events` and the
 * dashboard list) and a signed audit entry, committed together. Records made at the same
 * time are group-committed — one transaction, one chain lock and one read of the chain head
 * per batch instead of two transactions per record — which is what lets the audit chain, a
 * single serial resource shared by every replica, keep up with many RCAR round trips at once.
 * `record` settles only after its batch has committed, so nothing is released before its
 * audit entry is durable.
 */
export class Journal {
  private queue: JournalItem[] = [];
  private flushing = false;

  constructor(
    private readonly store: Store,
    private readonly key: KeyObject,
    private readonly maxBatch = 128,
  ) {}

  record(event: EventRecord | undefined, audit: AuditInput, at: number, step?: JournalStep): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ event, audit, at, step, resolve, reject });
      if (!this.flushing) {
        this.flushing = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        try {
          settle(batch, await this.write(batch));
        } catch (err) {
          // One bad record must not sink the others: retry them one by one.
          if (batch.length === 1) (batch[0] as JournalItem).reject(err);
          else for (const item of batch) await this.write([item]).then((refusals) => settle([item], refusals), item.reject);
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Writes a batch in one transaction; returns the refusals of its steps, by item. */
  private write(batch: readonly JournalItem[]): Promise<Map<JournalItem, Error>> {
    return withRetry(() =>
      this.store.transaction(async (tx) => {
        const refusals = new Map<JournalItem, Error>();
        const details = new Map<JournalItem, Record<string, unknown>>();
        // The steps first: they never touch the chain, so the chain lock (on PostgreSQL the one
        // every replica waits for) is held only while the batch's entries are appended.
        for (const item of batch) {
          if (!item.step) continue;
          const outcome = await item.step(tx);
          if ('refused' in outcome) refusals.set(item, outcome.refused);
          else if (outcome.detail) details.set(item, outcome.detail);
        }
        await tx.lockAuditChain();
        let last: Pick<AuditRecord, 'seq' | 'hash'> | undefined = await tx.auditHead();
        for (const item of batch) {
          if (refusals.has(item)) continue;
          const detail = details.get(item);
          const audit = detail ? { ...item.audit, detail: { ...item.audit.detail, ...detail } } : item.audit;
          if (item.event) await tx.addEvent(item.event);
          last = await appendAuditAfter(tx, this.key, audit, item.at, last);
        }
        return refusals;
      }),
    );
  }
}

function settle(items: readonly JournalItem[], refusals: Map<JournalItem, Error>): void {
  for (const item of items) {
    const refused = refusals.get(item);
    if (refused) item.reject(refused);
    else item.resolve();
  }
}
