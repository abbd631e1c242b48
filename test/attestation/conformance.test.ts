/**
 * Conformance against the real public vectors in ../shared/vectors (read in place, never
 * copied): verdict, tcbStatus, advisories and every claim at the pinned time, and every
 * listed negative (XOR of one byte) rejected at the stage it names.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { haveVectors, loadSets, vectorsRoot } from './vectors.js';
import { runSet } from './harness.js';

describe('conformance: ../shared/vectors', () => {
  if (!haveVectors) {
    it('vector sets', (t) => t.skip(`vectors not found at ${vectorsRoot} — conformance suite skipped`));
    return;
  }
  for (const set of loadSets()) {
    const e = set.expected;
    it(`${set.id} (${e.tee}) → verified=${e.verified}${e.tcbStatus ? ` ${e.tcbStatus}` : ''}`, async () => {
      const r = await runSet(set);
      assert.equal(r.verified, e.verified, `errors: ${JSON.stringify(r.errors)}`);
      if (e.expectedError) assert.ok(r.errors.some((x) => x.stage === e.expectedError!.stage), `expected a failure at ${e.expectedError.stage}: ${JSON.stringify(r.errors)}`);
      if (e.tcbStatus !== undefined && (e.verified || r.tcbStatus !== undefined)) {
        assert.equal(r.tcbStatus, e.tcbStatus);
        assert.deepEqual(r.advisories, e.advisories ?? []);
      }
      if (!e.tee.startsWith('sgx') && !e.tee.startsWith('tdx') && e.tee !== 'az-tdx-vtpm') assert.deepEqual(r.advisories, []);
      for (const [k, v] of Object.entries(e.claims)) assert.deepEqual(r.claims[k], v, `claim ${k}`);
    });
    for (const n of e.negatives ?? []) {
      it(`${set.id} negative ${n.file}@${n.offset}^${n.xor} → invalid${n.failsAt ? ` at ${n.failsAt}` : ''}`, async () => {
        const files = { ...set.files };
        const b = Buffer.from(files[n.file]!);
        b[n.offset]! ^= n.xor;
        files[n.file] = b;
        const r = await runSet(set, files);
        assert.equal(r.verified, false, n.why);
        if (n.failsAt) assert.ok(r.errors.some((x) => x.stage === n.failsAt), `expected ${n.failsAt} in ${JSON.stringify(r.errors.map((x) => x.stage))}`);
      });
    }
  }
});
