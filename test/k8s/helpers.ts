import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { isRecord } from '../../src/k8s/manifest.js';
import type { PatchOp } from '../../src/k8s/jsonpatch.js';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = join(HERE, '..', '..');
export const CHART = join(ROOT, 'deploy', 'helm', 'cocoon');
export const WRAPPED = `registry.example/shop/web-cc@sha256:${'a'.repeat(64)}`;

/** Compares text with test/k8s/golden/<name>; UPDATE_GOLDEN=1 rewrites the file instead. */
export async function assertGolden(name: string, text: string): Promise<void> {
  const file = join(HERE, 'golden', name);
  if (process.env.UPDATE_GOLDEN === '1') {
    await writeFile(file, text);
    return;
  }
  const expected = await readFile(file, 'utf8').catch(() => {
    throw new Error(`golden file ${name} is missing: run with UPDATE_GOLDEN=1 once and review it`);
  });
  assert.equal(text, expected, `output differs from golden file ${name} (UPDATE_GOLDEN=1 rewrites it; review the diff)`);
}

export function fixture(name: string): Promise<string> {
  return readFile(join(HERE, 'fixtures', name), 'utf8');
}

function unescape(token: string): string {
  return token.replace(/~1/g, '/').replace(/~0/g, '~');
}

/** Applies a patch produced by diffToPatch (src/k8s/jsonpatch.ts), to check what the webhook sends. */
export function applyPatch(doc: unknown, ops: readonly PatchOp[]): unknown {
  let root = structuredClone(doc);
  for (const op of ops) {
    if (op.path === '') {
      if (op.op === 'remove') throw new Error('cannot remove the root');
      root = structuredClone(op.value);
      continue;
    }
    const tokens = op.path.split('/').slice(1).map(unescape);
    const last = tokens.pop() as string;
    let parent: unknown = root;
    for (const t of tokens) {
      parent = Array.isArray(parent) ? parent[Number(t)] : isRecord(parent) ? parent[t] : undefined;
      if (parent === undefined) throw new Error(`path not found: ${op.path}`);
    }
    if (Array.isArray(parent)) {
      if (op.op === 'remove') parent.splice(Number(last), 1);
      else if (last === '-') parent.push(structuredClone(op.value));
      else if (op.op === 'add') parent.splice(Number(last), 0, structuredClone(op.value));
      else parent[Number(last)] = structuredClone(op.value);
    } else if (isRecord(parent)) {
      if (op.op === 'remove') delete parent[last];
      else parent[last] = structuredClone(op.value);
    } else {
      throw new Error(`path not found: ${op.path}`);
    }
  }
  return root;
}
