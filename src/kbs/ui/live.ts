import type { EventRecord, Store } from '../store/types.js';
import type { UiEvent } from './wire.js';


const MEASUREMENT_RE = /measurement ([0-9a-f]{96})/i;

export function toUiEvent(e: EventRecord): UiEvent {
  return {
    id: e.id,
    at: new Date(e.at).toISOString(),
    kind: e.kind,
    status: e.status,
    tee: e.tee,
    policy: e.policy,
    workload: e.workload,
    resource: e.resource,
    code: e.code,
    detail: e.detail.slice(0, 2000),
    insecure: e.insecure,
    measurement: MEASUREMENT_RE.exec(e.detail)?.[1]?.toLowerCase() ?? null,
  };
}

/** The part of a Node ServerResponse an SSE client writes to. */
export interface SseSink {
  write(chunk: string): boolean;
  once(event: 'drain', listener: () => void): unknown;
  end(): void;
  readonly writableEnded: boolean;
}

export function sseFrame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * One event-stream client with a bounded queue. Frames wait while the socket is not
 * draining; when the queue is full the oldest frame is dropped and the client is told to
 * refetch (`event: resync`) before anything else it receives.
 */
export class SseClient {
  private readonly queue: string[] = [];
  private blocked = false;
  private lost = false;
  dropped = 0;

  constructor(
    private readonly sink: SseSink,
    private readonly maxQueue: number,
  ) {}

  get queued(): number {
    return this.queue.length;
  }

  push(frame: string): void {
    if (this.sink.writableEnded) return;
    if (this.queue.length >= this.maxQueue) {
      this.queue.shift();
      this.dropped++;
      this.lost = true;
    }
    this.queue.push(frame);
    this.flush();
  }

  /** Writes a frame past the queue (heartbeats, the closing notice); skipped while blocked. */
  direct(frame: string): void {
    if (!this.blocked && !this.sink.writableEnded) this.write(frame);
  }

  close(frame?: string): void {
    if (this.sink.writableEnded) return;
    if (frame) this.sink.write(frame);
    this.sink.end();
  }

  private write(frame: string): void {
    if (!this.sink.write(frame)) {
      this.blocked = true;
      this.sink.once('drain', () => {
        this.blocked = false;
        this.flush();
      });
    }
  }

  private flush(): void {
    while (!this.blocked && !this.sink.writableEnded && (this.lost || this.queue.length > 0)) {
      if (this.lost) {
        this.lost = false;
        this.write(sseFrame('resync', { reason: 'events were dropped; refetch the list', dropped: this.dropped }));
        continue;
      }
      this.write(this.queue.shift() as string);
    }
  }
}

export interface HubSubscriber {
  events(events: EventRecord[]): void;
  resync(): void;
}

/**
 * Watches the store for new events (polling: the store is shared by every replica, so this
 * sees attestations handled by any of them) while at least one dashboard stream is open.
 */
export class EventHub {
  private readonly subscribers = new Set<HubSubscriber>();
  private timer: NodeJS.Timeout | undefined;
  private seen = new Set<string>();
  private primed = false;
  private polling = false;

  constructor(
    private readonly store: Store,
    private readonly pollMs: number,
    private readonly onError: (err: unknown) => void,
    private readonly batch = 100,
  ) {}

  subscribe(s: HubSubscriber): () => void {
    this.subscribers.add(s);
    if (!this.timer) {
      this.timer = setInterval(() => void this.poll(), this.pollMs);
      this.timer.unref();
      void this.poll();
    }
    return () => {
      this.subscribers.delete(s);
      if (this.subscribers.size === 0) this.stop();
    };
  }

  get size(): number {
    return this.subscribers.size;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.primed = false;
    this.seen.clear();
  }

  async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const latest = await this.store.listEvents({ limit: this.batch });
      if (!this.primed) {
        this.seen = new Set(latest.map((e) => e.id));
        this.primed = true;
        return;
      }
      const fresh = latest.filter((e) => !this.seen.has(e.id)).reverse();
      if (fresh.length === 0) return;
      const gap = fresh.length === latest.length && latest.length === this.batch;
      this.seen = new Set(latest.map((e) => e.id));
      for (const s of this.subscribers) {
        if (gap) s.resync();
        else s.events(fresh);
      }
    } catch (err) {
      this.onError(err);
    } finally {
      this.polling = false;
    }
  }
}
