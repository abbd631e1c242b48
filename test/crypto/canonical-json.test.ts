import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { canonicalJson } from '../../src/crypto/canonical-json.js';
import { CocoonError } from '../../src/errors.js';

/** RFC 8785 written the obvious way, as an independent reference for the optimised serializer. */
function reference(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(reference).join(',')}]`;
  const keys = Object.keys(value).filter((k) => (value as Record<string, unknown>)[k] !== undefined);
  keys.sort((a, b) => {
    for (let i = 0; i < Math.min(a.length, b.length); i++) if (a.charCodeAt(i) !== b.charCodeAt(i)) return a.charCodeAt(i) - b.charCodeAt(i);
    return a.length - b.length;
  });
  return `{${keys.map((k) => `${JSON.stringify(k)}:${reference((value as Record<string, unknown>)[k])}`).join(',')}}`;
}

test('canonical JSON: RFC 8785 §3.2.3 key order (UTF-16 code units) and number forms', () => {
  // The sorting example of RFC 8785 §3.2.3: keys compared as UTF-16 code units, not code points.
  const keys = { '\u20ac': 'Euro Sign', '\r': 'Carriage Return', '\ufb33': 'Hebrew Letter Dalet With Dagesh', '1': 'One', '\ud83d\ude00': 'Emoji: Grinning Face', '\u0080': 'Control', '\u00f6': 'Latin Small Letter O With Diaeresis' };
  const order = [...canonicalJson(keys).matchAll(/"([^"]+)":"([^"]+)"/g)].map((m) => m[2]);
  assert.deepEqual(order, ['Carriage Return', 'One', 'Control', 'Latin Small Letter O With Diaeresis', 'Euro Sign', 'Emoji: Grinning Face', 'Hebrew Letter Dalet With Dagesh']);
  assert.equal(canonicalJson({ b: [1e21, 1e-7, -0, 0.1, 333333333.3333333], a: { y: null, x: true, z: undefined } }), '{"a":{"x":true,"y":null},"b":[1e+21,1e-7,0,0.1,333333333.3333333]}');
});

test('canonical JSON: equals the reference serializer on arbitrary JSON values', () => {
  fc.assert(
    fc.property(fc.jsonValue({ maxDepth: 6 }), (v) => {
      assert.equal(canonicalJson(v), reference(v));
      assert.deepEqual(JSON.parse(canonicalJson(v)), JSON.parse(JSON.stringify(v)));
    }),
    { numRuns: 500 },
  );
  fc.assert(fc.property(fc.dictionary(fc.string({ unit: 'binary' }), fc.integer()), (o) => canonicalJson(o) === reference(o)), { numRuns: 300 });
});

test('canonical JSON: refuses what it cannot represent', () => {
  const code = (v: unknown): string | undefined => {
    try {
      canonicalJson(v);
      return undefined;
    } catch (err) {
      return err instanceof CocoonError ? err.code : 'not a CocoonError';
    }
  };
  assert.equal(code(Number.NaN), 'INPUT_MALFORMED');
  assert.equal(code({ a: [Infinity] }), 'INPUT_MALFORMED');
  assert.equal(code({ a: 1n }), 'INPUT_MALFORMED');
  assert.equal(code([undefined]), 'INPUT_MALFORMED');
  let deep: unknown = 1;
  for (let i = 0; i < 70; i++) deep = [deep];
  assert.equal(code(deep), 'INPUT_MALFORMED');
});
