import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AttestedSessions } from '../../src/kbs/attested-sessions.js';

test('attested sessions: found until they expire, then dropped', () => {
  const s = new AttestedSessions<string>();
  s.remember('a', 'grant-a', 1_000);
  assert.equal(s.get('a', 999)?.value, 'grant-a');
  assert.equal(s.get('a', 1_000), undefined, 'expired at expiresAt');
  assert.equal(s.size, 0, 'an expired entry is dropped when found');
  assert.equal(s.get('never', 0), undefined);
});

test('attested sessions: bounded, the oldest entry goes first', () => {
  const s = new AttestedSessions<number>(3);
  for (let i = 0; i < 5; i++) s.remember(`s${i}`, i, 10_000);
  assert.equal(s.size, 3);
  assert.equal(s.get('s0', 0), undefined);
  assert.equal(s.get('s1', 0), undefined);
  assert.deepEqual(['s2', 's3', 's4'].map((id) => s.get(id, 0)?.value), [2, 3, 4]);
});
