import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

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
