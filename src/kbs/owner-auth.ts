import { calculateJwkThumbprint, compactVerify, decodeProtectedHeader, importJWK } from 'jose';
import type { JWK } from 'jose';
import { CocoonError } from '../errors.js';
import { ownerAlgOf, publicPart } from './owner-key.js';
import type { Store } from './store/types.js';

export const OWNER_TOKEN_MAX_LIFETIME_S = 300;
export const CLOCK_SKEW_S = 60;
const MAX_TOKEN_CHARS = 4096;
const JTI_RE = /^[A-Za-z0-9_-]{16,128}$/;

export interface OwnerTokenContext {
  audience: string;
  now: Date;
  method: string;
  /** Request path (with query), compared with an `htu` claim when present. */
  path: string;
}

/** Registers owner public keys (bootstrap from `serve --owner`); returns their kids. */
export async function registerOwners(store: Store, owners: readonly JWK[], now: number): Promise<string[]> {
  const kids: string[] = [];
  for (const jwk of owners) {
    ownerAlgOf(jwk);
    const pub = publicPart(jwk);
    const kid = await calculateJwkThumbprint(pub, 'sha256');
    await store.upsertOwner({ kid, jwk: JSON.stringify(pub), label: typeof jwk.kid === 'string' ? jwk.kid.slice(0, 200) : kid, createdAt: now });
    kids.push(kid);
  }
  return kids;
}

/**
 * Checks `Authorization: Bearer <compact JWS>` from an owner: signature by a registered owner
 * key, aud, iat/exp within bounds, and a never-seen jti. Returns the owner's kid.
 */
export async function verifyOwnerToken(store: Store, authorization: string | undefined, ctx: OwnerTokenContext): Promise<string> {
  if (!authorization) throw new CocoonError('AUTH_REQUIRED', 'owner API requires "Authorization: Bearer <owner token>"');
  const m = /^Bearer ([A-Za-z0-9_.-]+)$/.exec(authorization);
  if (!m || (m[1] as string).length > MAX_TOKEN_CHARS) throw new CocoonError('AUTH_INVALID', 'malformed bearer token');
  const token = m[1] as string;
  let header;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    throw new CocoonError('AUTH_INVALID', 'malformed bearer token');
  }
  if (header.alg !== 'ES256' && header.alg !== 'EdDSA') throw new CocoonError('AUTH_INVALID', 'owner token must be ES256 or EdDSA');
  if (header.crit !== undefined || header.jwk !== undefined || header.jku !== undefined || header.x5u !== undefined) {
    throw new CocoonError('AUTH_INVALID', 'owner token header carries unsupported members');
  }
  const candidates = typeof header.kid === 'string' ? [await store.getOwner(header.kid)].filter((o) => o !== undefined) : await store.listOwners();
  let payloadBytes: Uint8Array | undefined;
  let ownerKid: string | undefined;
  for (const owner of candidates.slice(0, 64)) {
    const jwk = JSON.parse(owner.jwk) as JWK;
    if (ownerAlgOf(jwk) !== header.alg) continue;
    try {
      const key = await importJWK({ ...jwk, alg: header.alg }, header.alg);
      ({ payload: payloadBytes } = await compactVerify(token, key, { algorithms: [header.alg] }));
      ownerKid = owner.kid;
      break;
    } catch {
      // try the next key; a single generic error below
    }
  }
  if (!payloadBytes || !ownerKid) throw new CocoonError('AUTH_INVALID', 'owner token signature does not verify with any registered owner key');
  const claims = parseClaims(payloadBytes);
  const now = Math.floor(ctx.now.getTime() / 1000);
  if (claims.aud !== ctx.audience) throw new CocoonError('AUTH_INVALID', 'owner token audience is not this KBS');
  if (typeof claims.iat !== 'number' || typeof claims.exp !== 'number' || !Number.isInteger(claims.iat) || !Number.isInteger(claims.exp)) {
    throw new CocoonError('AUTH_INVALID', 'owner token needs integer iat and exp');
  }
  if (claims.exp <= now - CLOCK_SKEW_S) throw new CocoonError('AUTH_INVALID', 'owner token expired');
  if (claims.iat > now + CLOCK_SKEW_S) throw new CocoonError('AUTH_INVALID', 'owner token issued in the future');
  if (claims.exp < claims.iat || claims.exp > now + OWNER_TOKEN_MAX_LIFETIME_S + CLOCK_SKEW_S || claims.exp - claims.iat > OWNER_TOKEN_MAX_LIFETIME_S) {
    throw new CocoonError('AUTH_INVALID', `owner token lifetime must be at most ${OWNER_TOKEN_MAX_LIFETIME_S} s`);
  }
  if (typeof claims.jti !== 'string' || !JTI_RE.test(claims.jti)) throw new CocoonError('AUTH_INVALID', 'owner token needs a jti of 16-128 base64url characters');
  if (claims.htm !== undefined && claims.htm !== ctx.method) throw new CocoonError('AUTH_INVALID', 'owner token is bound to another HTTP method');
  if (claims.htu !== undefined && claims.htu !== ctx.path) throw new CocoonError('AUTH_INVALID', 'owner token is bound to another request path');
  const fresh = await store.rememberJti(`${ownerKid}:${claims.jti}`, (claims.exp + CLOCK_SKEW_S) * 1000, ctx.now.getTime());
  if (!fresh) throw new CocoonError('TOKEN_REPLAYED', 'owner token was already used (jti replay)');
  return ownerKid;
}

function parseClaims(bytes: Uint8Array): Record<string, unknown> {
  try {
    const v = JSON.parse(Buffer.from(bytes).toString('utf8')) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // reported below
  }
  throw new CocoonError('AUTH_INVALID', 'owner token payload is not a JSON object');
}
