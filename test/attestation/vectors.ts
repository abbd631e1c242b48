/** Loads ../shared/vectors sets (never copied into the repository). */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const vectorsRoot = path.resolve(repoRoot, '../shared/vectors');
export const haveVectors = existsSync(path.join(vectorsRoot, 'sets'));

export interface Negative {
  file: string;
  offset: number;
  xor: number;
  failsAt?: string;
  why: string;
}

export interface VectorSet {
  id: string;
  dir: string;
  expected: {
    id: string;
    tee: string;
    at: string;
    verified: boolean;
    expectedError?: { stage: string; code: string };
    tcbStatus?: string;
    advisories?: string[];
    reportData?: string;
    nonce?: string;
    claims: Record<string, unknown>;
    negatives?: Negative[];
  };
  files: Record<string, Buffer>;
}

export function loadSets(): VectorSet[] {
  if (!haveVectors) return [];
  const dir = path.join(vectorsRoot, 'sets');
  return readdirSync(dir)
    .sort()
    .map((id) => {
      const d = path.join(dir, id);
      const files: Record<string, Buffer> = {};
      for (const f of readdirSync(d)) files[f] = readFileSync(path.join(d, f));
      return { id, dir: d, expected: JSON.parse(files['expected.json']!.toString('utf8')) as VectorSet['expected'], files };
    });
}
