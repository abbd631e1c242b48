/**
 * The RCAR challenge as a self-authenticating cookie: `/kbs/v0/auth` writes nothing to the
 * store. The cookie carries the session id, the TEE kind and the issue time under a MAC; the
 * nonce is derived from the same fields, so any replica holding the data key can check both.
 * The single use of a challenge is enforced where it is spent: the attestation inserts the
 * session row keyed by the id, and a second insert of that id is a replay (src/kbs/rcar.ts).
 *
 *   cookie = base64url(version ‖ tee index ‖ issued-at (u32 s) ‖ 18 random bytes ‖ MAC₁₆)
 *   MAC    = HMAC-SHA256(K, "mac" ‖ fields)[0..16]    nonce = base64(HMAC-SHA256(K, "nonce" ‖ fields))
 *   K      = HKDF-SHA256(data key, info "cocoon kbs rcar challenge v1")
 *
 * The session id (the session row's key) is base64url(issued-at ‖ random bytes) in version 2,
 * so the rows of challenges issued in the same second sit next to each other in the sessions
 * index: a group commit writes one or two index pages instead of one random page per row.
 * Version 1 cookies, whose id was the random bytes alone, are still accepted with their own
 * id: replicas of the previous release keep spending the same challenge under the same key
 * during a rolling upgrade.
 */
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { pooledRandomFill } from '../crypto/random-pool.js';
import { CocoonError } from '../errors.js';
import { RCAR_TEES } from './rcar-protocol.js';

const VERSION = 2;
const ACCEPTED_VERSIONS: readonly number[] = [1, 2];
const FIELDS = 24;
const MAC_BYTES = 16;
const COOKIE_BYTES = FIELDS + MAC_BYTES;
/** A challenge issued this far in the future (another replica's clock) is still accepted. */
const CLOCK_SKEW_S = 60;

export interface Challenge {
  /** The session row's key once answered: base64url of issued-at ‖ random bytes (version 1: the random bytes). */
  sessionId: string;
  tee: (typeof RCAR_TEES)[number];
  nonce: string;
  issuedAtMs: number;
  expiresAtMs: number;
}

const keys = new WeakMap<Buffer, Buffer>();

function challengeKey(dataKey: Buffer): Buffer {
  let k = keys.get(dataKey);
  if (!k) {
    k = Buffer.from(hkdfSync('sha256', dataKey, Buffer.alloc(0), 'cocoon kbs rcar challenge v1', 32));
    keys.set(dataKey, k);
  }
  return k;
}

const hmac = (key: Buffer, label: string, fields: Buffer): Buffer => createHmac('sha256', key).update(label).update(fields).digest();

function derive(key: Buffer, fields: Buffer, ttlS: number): Challenge {
  const issuedAtS = fields.readUInt32BE(2);
  return {
    sessionId: fields.subarray(fields[0] === 1 ? 6 : 2).toString('base64url'),
    tee: RCAR_TEES[fields[1] as number] as Challenge['tee'],
    nonce: hmac(key, 'nonce', fields).toString('base64'),
    issuedAtMs: issuedAtS * 1000,
    expiresAtMs: (issuedAtS + ttlS) * 1000,
  };
}

export function issueChallenge(dataKey: Buffer, tee: Challenge['tee'], nowMs: number, ttlS: number): { cookie: string; challenge: Challenge } {
  const fields = Buffer.alloc(FIELDS);
  fields[0] = VERSION;
  fields[1] = RCAR_TEES.indexOf(tee);
  fields.writeUInt32BE(Math.floor(nowMs / 1000), 2);
  pooledRandomFill(fields, 6, 18);
  const key = challengeKey(dataKey);
  const cookie = Buffer.concat([fields, hmac(key, 'mac', fields).subarray(0, MAC_BYTES)]).toString('base64url');
  return { cookie, challenge: derive(key, fields, ttlS) };
}

/**
 * The challenge a cookie names, if this KBS (or a replica with the same data key) issued it.
 * Its age is not checked here: an attested session outlives its challenge (`assertFresh`).
 */
export function openChallenge(dataKey: Buffer, cookie: string, ttlS: number): Challenge {
  const raw = /^[A-Za-z0-9_-]{54}$/.test(cookie) ? Buffer.from(cookie, 'base64url') : undefined;
  if (raw?.length !== COOKIE_BYTES || !ACCEPTED_VERSIONS.includes(raw[0] as number) || (raw[1] as number) >= RCAR_TEES.length) throw invalid();
  const fields = raw.subarray(0, FIELDS);
  const key = challengeKey(dataKey);
  if (!timingSafeEqual(raw.subarray(FIELDS), hmac(key, 'mac', fields).subarray(0, MAC_BYTES))) throw invalid();
  return derive(key, fields, ttlS);
}

/** A challenge may be answered until it expires (and not before it was issued, give or take replica clock skew). */
export function assertFresh(c: Challenge, nowMs: number): void {
  if (c.expiresAtMs <= nowMs || c.issuedAtMs > nowMs + CLOCK_SKEW_S * 1000) throw invalid();
}

function invalid(): CocoonError {
  return new CocoonError('NONCE_INVALID', 'session unknown or expired: request a new challenge');
}
