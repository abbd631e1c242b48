import { CocoonError } from '../errors.js';
import { SECRET_NAME_RE } from './names.js';
import type { SecretField, Template, TemplateFilter, TemplatePart } from './types.js';

const EXPR_RE = /^secret\.([^\s|}]+?)(?:\.(cert|key|chain|public))?\s*(?:\|\s*([a-z0-9]+)\s*)?$/;

/**
 * Parses `text {{ secret.NAME }} more {{ secret.OTHER | base64 }}`. Throws a plain message
 * (the policy parser adds the position); anything inside `{{ }}` other than a secret
 * reference is an error so that a later template language can extend the syntax safely.
 */
export function parseTemplate(source: string): Template {
  const parts: TemplatePart[] = [];
  let rest = source;
  while (rest.length > 0) {
    const open = rest.indexOf('{{');
    if (open < 0) {
      parts.push({ literal: rest });
      break;
    }
    if (open > 0) parts.push({ literal: rest.slice(0, open) });
    const close = rest.indexOf('}}', open + 2);
    if (close < 0) throw new TemplateError('unterminated "{{" in template');
    const expr = rest.slice(open + 2, close).trim();
    const m = EXPR_RE.exec(expr);
    if (!m) throw new TemplateError(`unsupported template expression "{{ ${expr.slice(0, 80)} }}" (expected "{{ secret.NAME[.cert|.key|.chain|.public] }}" with an optional "| raw|hex|base64")`);
    const name = m[1] ?? '';
    if (!SECRET_NAME_RE.test(name)) throw new TemplateError(`invalid secret name "${name.slice(0, 80)}" in template`);
    const field = m[2] as SecretField | undefined;
    const filter = m[3] ?? 'raw';
    if (filter !== 'raw' && filter !== 'hex' && filter !== 'base64') throw new TemplateError(`unknown template filter "${filter}" (raw, hex or base64)`);
    parts.push(field ? { secret: name, field, filter } : { secret: name, filter });
    rest = rest.slice(close + 2);
  }
  return { source, parts };
}

export class TemplateError extends Error {}

export type SecretRef = { secret: string; field?: SecretField; filter: TemplateFilter };

export function templateSecrets(t: Template): SecretRef[] {
  return t.parts.filter((p): p is SecretRef => 'secret' in p);
}

/**
 * Renders to bytes; `lookup` returns a secret's stored bytes (for `.field` references, the
 * field's bytes — see fieldLookup in src/kbs/launch-plan.ts).
 */
export function renderTemplate(t: Template, lookup: (name: string, field?: SecretField) => Uint8Array): Buffer {
  const chunks: Buffer[] = [];
  for (const part of t.parts) {
    if ('literal' in part) {
      chunks.push(Buffer.from(part.literal, 'utf8'));
      continue;
    }
    const value = Buffer.from(lookup(part.secret, part.field));
    switch (part.filter) {
      case 'raw':
        chunks.push(value);
        break;
      case 'hex':
        chunks.push(Buffer.from(value.toString('hex'), 'utf8'));
        break;
      case 'base64':
        chunks.push(Buffer.from(value.toString('base64'), 'utf8'));
        break;
    }
  }
  return Buffer.concat(chunks);
}

/** Renders for env/argv, which must be valid UTF-8 without NUL. */
export function renderTemplateText(t: Template, lookup: (name: string, field?: SecretField) => Uint8Array): string {
  const bytes = renderTemplate(t, lookup);
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  if (!Buffer.from(text, 'utf8').equals(bytes) || text.includes('\0')) {
    throw new CocoonError('INPUT_MALFORMED', 'a secret rendered into env/args is not valid text; use "| hex" or "| base64"');
  }
  return text;
}
