import { randomBytes } from 'node:crypto';
import { constantTimeEqual, sha256Hex } from '../../crypto/hash.js';
import type { Session } from './wire.js';

export type UiRole = Session['role'];

export interface UiSession {
  /** Owner key id (RFC 7638 thumbprint) that signed the login token. */
  kid: string;
  role: UiRole;
  /** Double-submit CSRF token: sent back in `x-csrf-token` on every state-changing call. */
  csrf: string;
  createdAt: number;
  expiresAt: number;
}

export const UI_COOKIE = 'cocoon-ui';
export const DEFAULT_UI_SESSION_TTL_S = 30 * 60;
export const MAX_UI_SESSIONS = 1000;
const ID_RE = /^[A-Za-z0-9_-]{43}$/;

type Listener = (id: string) => void;

/**
 * How sign-ins and sign-outs reach the other worker processes of one `serve --workers` KBS
 * (src/kbs/cluster.ts): each worker keeps a copy of every session, so a browser's connections
 * may land on any worker.
 */
export interface UiSessionReplica {
  /** Resolves once the other workers have the session (or gave up waiting for them). */
  created(key: string, session: UiSession): Promise<void>;
  /** Resolves once the other workers dropped the session (or gave up waiting for them). */
  ended(key: string): Promise<void>;
}

/**
 * Dashboard sessions, in memory of this KBS process (per replica: behind several replicas the
 * load balancer needs session affinity for /ui, or the user signs in on each replica; the
 * workers of one `serve --workers` KBS share them through a UiSessionReplica). The map is
 * keyed by SHA-256 of the cookie value, bounded, and entries expire absolutely.
 */
export class UiSessionStore {
  private readonly sessions = new Map<string, UiSession>();
  private readonly endListeners = new Set<Listener>();

  constructor(
    private readonly max = MAX_UI_SESSIONS,
    private readonly replica?: UiSessionReplica,
  ) {}

  create(kid: string, role: UiRole, now: number, ttlS: number): { id: string; key: string; session: UiSession } {
    const id = randomBytes(32).toString('base64url');
    const key = sha256Hex(id);
    const session: UiSession = { kid, role, csrf: randomBytes(24).toString('base64url'), createdAt: now, expiresAt: now + ttlS * 1000 };
    this.adopt(key, session, now);
    return { id, key, session };
  }

  /** A sign-in: create(), and with a replica, once the other workers know the session too. */
  async signIn(kid: string, role: UiRole, now: number, ttlS: number): Promise<{ id: string; key: string; session: UiSession }> {
    const created = this.create(kid, role, now, ttlS);
    await this.replica?.created(created.key, created.session);
    return created;
  }

  /** A sign-out: ends the session here and, with a replica, once the other workers dropped it too. */
  async signOut(key: string): Promise<void> {
    this.end(key);
    await this.replica?.ended(key);
  }

  /** Keeps a session under its map key (create, or one another worker created). */
  adopt(key: string, session: UiSession, now: number): void {
    this.purge(now);
    while (this.sessions.size >= this.max) {
      const oldest = this.sessions.keys().next().value;
      if (oldest === undefined) break;
      this.end(oldest);
    }
    this.sessions.set(key, session);
  }

  /** The live sessions by map key (what a new worker starts with). */
  entries(now: number): [string, UiSession][] {
    this.purge(now);
    return [...this.sessions];
  }

  /** The live session of a cookie value, or undefined (unknown, malformed or expired). */
  get(id: string | undefined, now: number): (UiSession & { key: string }) | undefined {
    if (!id || !ID_RE.test(id)) return undefined;
    const key = sha256Hex(id);
    const s = this.sessions.get(key);
    if (!s) return undefined;
    if (s.expiresAt <= now) {
      this.end(key);
      return undefined;
    }
    return { ...s, key };
  }

  /** Ends a session by its map key (logout); open event streams are told through onEnd. */
  end(key: string): void {
    if (this.sessions.delete(key)) for (const l of this.endListeners) l(key);
  }

  onEnd(listener: Listener): () => void {
    this.endListeners.add(listener);
    return () => this.endListeners.delete(listener);
  }

  purge(now: number): void {
    for (const [key, s] of this.sessions) if (s.expiresAt <= now) this.end(key);
  }

  get size(): number {
    return this.sessions.size;
  }

  clear(): void {
    for (const key of [...this.sessions.keys()]) this.end(key);
  }
}

export function csrfMatches(expected: string, given: unknown): boolean {
  if (typeof given !== 'string' || given.length !== expected.length) return false;
  return constantTimeEqual(Buffer.from(given, 'utf8'), Buffer.from(expected, 'utf8'));
}

/** The cookie value of `name` (only the base64url alphabet; anything else is ignored). */
export function readUiCookie(header: string | undefined, name = UI_COOKIE): string | undefined {
  if (!header || header.length > 8192) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      const v = part.slice(eq + 1).trim();
      return ID_RE.test(v) ? v : undefined;
    }
  }
  return undefined;
}

export function sessionCookie(id: string, maxAgeS: number, secure: boolean): string {
  return `${UI_COOKIE}=${id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=${Math.max(0, Math.floor(maxAgeS))}${secure ? '; Secure' : ''}`;
}

export function clearedCookie(secure: boolean): string {
  return `${UI_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0${secure ? '; Secure' : ''}`;
}
