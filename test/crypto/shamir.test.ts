import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { CocoonError } from '../../src/errors.js';
import { combineShares, gfDiv, gfMul, splitSecret } from '../../src/crypto/shamir.js';

test('GF(256) arithmetic: known products, inverses, distributivity', () => {
  // FIPS-197 §4.2: {57} • {83} = {c1}, {57} • {13} = {fe}
  assert.equal(gfMul(0x57, 0x83), 0xc1);
  assert.equal(gfMul(0x57, 0x13), 0xfe);
  for (let a = 1; a < 256; a++) {
    assert.equal(gfMul(a, gfDiv(1, a)), 1, `inverse of ${a}`);
    assert.equal(gfMul(a, 0), 0);
  }
  fc.assert(fc.property(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), (a, b, c) => gfMul(a, b ^ c) === (gfMul(a, b) ^ gfMul(a, c)) && gfMul(a, b) === gfMul(b, a)));
});

test('any m of n shares recover the secret; every subset order works', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.integer({ min: 1, max: 7 }), fc.integer({ min: 0, max: 5 }), (secret, m, extra) => {
      const n = m + extra;
      const shares = splitSecret(secret, n, m);
      const pick = [...shares].sort(() => Math.random() - 0.5).slice(0, m);
      return combineShares(pick).equals(Buffer.from(secret)) && combineShares(shares).equals(Buffer.from(secret));
    }),
    { numRuns: 200 },
  );
});

test('fewer than m shares do not reveal the secret; shares are fresh randomness each time', () => {
  const secret = randomBytes(32);
  const shares = splitSecret(secret, 5, 3);
  assert.notDeepEqual(combineShares(shares.slice(0, 2)), secret);
  assert.notDeepEqual(splitSecret(secret, 5, 3)[0]?.y, shares[0]?.y);
  // with 2 of a 3-threshold scheme, each candidate first byte is equally consistent: any value is reachable
  const seen = new Set<number>();
  for (let i = 0; i < 2000 && seen.size < 256; i++) seen.add(combineShares(splitSecret(Buffer.from([0x42]), 3, 3).slice(0, 2))[0] as number);
  assert.ok(seen.size > 200, `2 of 3 shares look uniform (${seen.size} values)`);
});

test('bad parameters and malformed shares are refused with codes', () => {
  const bad = (fn: () => unknown, code: string) => assert.throws(fn, (e: unknown) => e instanceof CocoonError && e.code === code);
  bad(() => splitSecret(Buffer.from('x'), 2, 3), 'BAD_USAGE');
  bad(() => splitSecret(Buffer.from('x'), 256, 2), 'BAD_USAGE');
  bad(() => splitSecret(Buffer.alloc(0), 3, 2), 'BAD_USAGE');
  const s = splitSecret(Buffer.from('secret'), 3, 2);
  bad(() => combineShares([s[0]!, s[0]!]), 'INPUT_MALFORMED');
  bad(() => combineShares([s[0]!, { x: 0, y: s[1]!.y }]), 'INPUT_MALFORMED');
  bad(() => combineShares([s[0]!, { x: 2, y: Buffer.alloc(3) }]), 'INPUT_MALFORMED');
  bad(() => combineShares([]), 'BAD_USAGE');
});
