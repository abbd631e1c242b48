import { decodeJwt } from 'jose';
import { CocoonError } from '../../errors.js';
import { signOwnerToken } from '../owner-key.js';
import type { OwnerSigningKey } from '../owner-key.js';
import type { UiRole } from './session.js';

/** The path a login token is bound to (its `htu`); owner API routes therefore refuse it. */
export const UI_LOGIN_PATH = '/ui/api/session';
export const UI_LOGIN_PURPOSE = 'ui';
export const DEFAULT_LOGIN_TTL_S = 120;

/**
 * A dashboard login token: an owner JWS (aud = KBS id, single-use jti) bound to
 * `POST /ui/api/session` with `purpose: "ui"` and the role the session gets.
 */
export async function mintUiLoginToken(key: OwnerSigningKey, kbsId: string, options: { role: UiRole; ttlS?: number; now?: Date }): Promise<string> {
  const ttl = options.ttlS ?? DEFAULT_LOGIN_TTL_S;
  if (!Number.isInteger(ttl) || ttl < 10 || ttl > 300) throw new CocoonError('BAD_USAGE', 'login token lifetime must be 10-300 s');
  return signOwnerToken(key, { audience: kbsId, method: 'POST', path: UI_LOGIN_PATH, ttlS: ttl, ...(options.now ? { now: options.now } : {}), claims: { purpose: UI_LOGIN_PURPOSE, role: options.role } });
}

/** Reads purpose and role of a token whose signature verifyOwnerToken has already checked. */
export function loginClaims(token: string): { role: UiRole } {
  let claims: Record<string, unknown>;
  try {
    claims = decodeJwt(token) as Record<string, unknown>;
  } catch {
    throw new CocoonError('AUTH_INVALID', 'login token payload is not a JWT claims set');
  }
  if (claims.purpose !== UI_LOGIN_PURPOSE) throw new CocoonError('AUTH_INVALID', 'not a dashboard login token (purpose must be "ui"); mint one with `cocoon ui login`');
  if (claims.htm !== 'POST' || claims.htu !== UI_LOGIN_PATH) throw new CocoonError('AUTH_INVALID', `login token must be bound to POST ${UI_LOGIN_PATH}`);
  if (claims.role !== 'owner' && claims.role !== 'auditor') throw new CocoonError('AUTH_INVALID', 'login token role must be owner or auditor');
  return { role: claims.role };
}
