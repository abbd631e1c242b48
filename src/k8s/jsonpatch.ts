/**
 * RFC 6902 JSON Patch between two JSON documents: only what differs. Objects are compared
 * key by key, arrays element by element (appended elements become `add …/-`, surplus
 * elements `remove` from the end), anything else is `replace`.
 */
import { isDeepStrictEqual } from 'node:util';
import { isRecord } from './manifest.js';

export type PatchOp = { op: 'add' | 'replace'; path: string; value: unknown } | { op: 'remove'; path: string };

function escape(token: string): string {
  return token.replace(/~/g, '~0').replace(/\//g, '~1');
}

export function diffToPatch(before: unknown, after: unknown, path = ''): PatchOp[] {
  if (isDeepStrictEqual(before, after)) return [];
  if (isRecord(before) && isRecord(after)) {
    const ops: PatchOp[] = [];
    for (const key of Object.keys(before)) if (!(key in after)) ops.push({ op: 'remove', path: `${path}/${escape(key)}` });
    for (const [key, value] of Object.entries(after)) {
      const p = `${path}/${escape(key)}`;
      if (!(key in before)) ops.push({ op: 'add', path: p, value });
      else ops.push(...diffToPatch(before[key], value, p));
    }
    return ops;
  }
  if (Array.isArray(before) && Array.isArray(after)) {
    const ops: PatchOp[] = [];
    const common = Math.min(before.length, after.length);
    for (let i = 0; i < common; i++) ops.push(...diffToPatch(before[i], after[i], `${path}/${i}`));
    for (let i = common; i < after.length; i++) ops.push({ op: 'add', path: `${path}/-`, value: after[i] });
    for (let i = before.length - 1; i >= common; i--) ops.push({ op: 'remove', path: `${path}/${i}` });
    return ops;
  }
  return [{ op: 'replace', path, value: after }];
}
