import type { KeyObject } from 'node:crypto';
import { appendAuditAfter, withRetry } from './audit.js';
import type { AuditInput } from './audit.js';
import type { AuditRecord, EventRecord, Store } from './store/types.js';

interface JournalItem {
  event: EventRecord | undefined;
  audit: AuditInput;
  at: number;
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

  record(event: EventRecord | undefined, audit: AuditInput, at: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ event, audit, at, resolve, reject });
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
          await this.write(batch);
          for (const item of batch) item.resolve();
        } catch (err) {
          // One bad record must not sink the others: retry them one by one.
          if (batch.length === 1) (batch[0] as JournalItem).reject(err);
          else for (const item of batch) await this.write([item]).then(item.resolve, item.reject);
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  private write(batch: readonly JournalItem[]): Promise<void> {
    return withRetry(() =>
      this.store.transaction(async (tx) => {
        await tx.lockAuditChain();
        let last: AuditRecord | undefined = await tx.lastAudit();
        for (const item of batch) {
          if (item.event) await tx.addEvent(item.event);
          last = await appendAuditAfter(tx, this.key, item.audit, item.at, last);
        }
      }),
    );
  }
}
