/**
 * Sessions this process attested, by their cookie: a launcher asks for its resources right
 * after attesting, usually over the same connection, so the release finds its grant here
 * instead of checking the cookie's MAC again and reading and re-parsing the session row (only
 * the exact cookie that was attested finds it). Only what is durable is kept — an entry is added
 * after the attestation's transaction committed, and session rows never change once written —
 * so a miss (evicted, or attested by another replica or worker) just reads the store.
 */
export class AttestedSessions<T> {
  private readonly entries = new Map<string, { value: T; expiresAt: number }>();

  constructor(private readonly max = 4096) {}

  remember(id: string, value: T, expiresAt: number): void {
    if (this.entries.size >= this.max) this.entries.delete(this.entries.keys().next().value as string);
    this.entries.set(id, { value, expiresAt });
  }

  /** The entry, unless it expired by `nowMs` (then it is dropped). */
  get(id: string, nowMs: number): { value: T; expiresAt: number } | undefined {
    const entry = this.entries.get(id);
    if (entry && entry.expiresAt <= nowMs) {
      this.entries.delete(id);
      return undefined;
    }
    return entry;
  }

  get size(): number {
    return this.entries.size;
  }
}
