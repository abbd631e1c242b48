import { Type } from 'typebox';

export const NAME_SEGMENT = '^[a-z0-9][a-z0-9._-]{0,62}$';
export const SECRET_SEGMENT = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';

export const PolicyParams = Type.Object(
  { org: Type.String({ pattern: NAME_SEGMENT }), app: Type.String({ pattern: NAME_SEGMENT }) },
  { additionalProperties: false },
);
export const ResourceParams = Type.Object(
  { org: Type.String({ pattern: NAME_SEGMENT }), app: Type.String({ pattern: NAME_SEGMENT }), name: Type.String({ pattern: SECRET_SEGMENT }) },
  { additionalProperties: false },
);

/** Reads one cookie value from a Cookie header (no cookie plugin needed for one name). */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header || header.length > 8192) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) {
      const value = part.slice(eq + 1).trim();
      return /^[A-Za-z0-9_-]{1,128}$/.test(value) ? value : undefined;
    }
  }
  return undefined;
}
