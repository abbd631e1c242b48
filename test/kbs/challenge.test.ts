import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SQLITE_FILE } from '../../src/kbs/store/sqlite.js';
import { CocoonError } from '../../src/errors.js';
import { assertFresh, issueChallenge, openChallenge } from '../../src/kbs/challenge.js';
import { rcarReportData } from '../../src/kbs/rcar-protocol.js';
import { applyDemoPolicy, fakeEvidence, ownerRequest, rcarAttest, withKbs } from './helpers.js';

const key = randomBytes(32);
const TTL = 300;
const T0 = 1_800_000_000_000;

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof CocoonError ? err.code : `not a CocoonError: ${String(err)}`;
  }
  return undefined;
}

test('challenge cookie: round trip, derived nonce, bounded format', () => {
  const { cookie, challenge } = issueChallenge(key, 'tdx', T0, TTL);
  assert.match(cookie, /^[A-Za-z0-9_-]{54}$/, 'fits the 128-character cookie limit of clients');
  const opened = openChallenge(key, cookie, TTL);
  assert.deepEqual(opened, challenge);
  assert.equal(opened.tee, 'tdx');
  assert.equal(Buffer.from(opened.nonce, 'base64').length, 32);
  assert.equal(opened.expiresAtMs, Math.floor(T0 / 1000) * 1000 + TTL * 1000);
  const other = issueChallenge(key, 'tdx', T0, TTL);
  assert.notEqual(other.challenge.sessionId, challenge.sessionId);
  assert.notEqual(other.challenge.nonce, challenge.nonce);
});

test('challenge cookie: every flipped bit, another key, truncation and junk are refused', () => {
  const { cookie } = issueChallenge(key, 'sim', T0, TTL);
  const raw = Buffer.from(cookie, 'base64url');
  for (let i = 0; i < raw.length; i++) {
    for (const bit of [0x01, 0x80]) {
      const t = Buffer.from(raw);
      t[i] = (t[i] as number) ^ bit;
      assert.equal(code(() => openChallenge(key, t.toString('base64url'), TTL)), 'NONCE_INVALID', `byte ${i} bit ${bit}`);
    }
  }
  assert.equal(code(() => openChallenge(randomBytes(32), cookie, TTL)), 'NONCE_INVALID', 'issued by another KBS');
  for (const junk of ['', cookie.slice(0, 53), `${cookie}A`, cookie.replace(/.$/, '='), 'x'.repeat(100_000)]) {
    assert.equal(code(() => openChallenge(key, junk, TTL)), 'NONCE_INVALID', junk.slice(0, 60));
  }
});

test('challenge freshness: expired, and issued too far in the future, are refused', () => {
  const { challenge } = issueChallenge(key, 'sim', T0, TTL);
  assert.equal(code(() => assertFresh(challenge, T0)), undefined);
  assert.equal(code(() => assertFresh(challenge, challenge.expiresAtMs - 1)), undefined);
  assert.equal(code(() => assertFresh(challenge, challenge.expiresAtMs)), 'NONCE_INVALID');
  assert.equal(code(() => assertFresh(challenge, T0 - 30_000)), undefined, 'another replica 30 s behind');
  assert.equal(code(() => assertFresh(challenge, T0 - 120_000)), 'NONCE_INVALID');
});

test('auth writes nothing; concurrent answers to one challenge: exactly one session, one activation', () =>
  withKbs(async (kbs) => {
    await applyDemoPolicy(kbs);
    const first = await rcarAttest(kbs);
    assert.equal(first.attest.statusCode, 200, first.attest.body);
    for (let i = 0; i < 20; i++) assert.equal((await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } })).statusCode, 200);

    const unanswered = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } });
    const cookie = String(unanswered.headers['set-cookie']).split(';')[0]!;
    const notYet = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/launch-plan', headers: { cookie } });
    assert.equal(notYet.statusCode, 401, notYet.body);
    assert.equal((notYet.json() as { code: string }).code, 'AUTH_REQUIRED');

    const { body } = first;
    const racer = await rcarAttest(kbs);
    assert.equal(racer.attest.statusCode, 200);
    // Re-answer a fresh challenge 8 times at once with one valid body.
    const auth = await kbs.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'sim' } });
    const c2 = String(auth.headers['set-cookie']).split(';')[0]!;
    const nonce = (auth.json() as { nonce: string }).nonce;
    const b2 = structuredClone(body!);
    b2['runtime-data'].nonce = nonce;
    b2['tee-evidence'].primary_evidence = fakeEvidence(rcarReportData(nonce, b2['runtime-data']['tee-pubkey']));
    const answers = await Promise.all(Array.from({ length: 8 }, () => kbs.app.inject({ method: 'POST', url: '/kbs/v0/attest', headers: { cookie: c2 }, payload: b2 })));
    assert.deepEqual(answers.map((a) => a.statusCode).sort(), [200, 401, 401, 401, 401, 401, 401, 401]);
    for (const a of answers.filter((x) => x.statusCode === 401)) assert.equal((a.json() as { code: string }).code, 'NONCE_INVALID');

    const workloads = await ownerRequest(kbs, 'GET', '/cocoon/v1/policies/demo/redis/workloads');
    assert.equal(workloads.statusCode, 200, workloads.body);
    assert.match(workloads.body, /"activations":3\b/, 'three successful attestations counted, no more');
    const db = new Database(join(kbs.dir, SQLITE_FILE), { readonly: true });
    try {
      assert.equal((db.prepare('select count(*) as n from kbs_sessions').get() as { n: number }).n, 3, 'one row per answered challenge; 22 unanswered challenges stored nothing');
    } finally {
      db.close();
    }
  }));

test('challenge cookie: version 2 ids start with the issue time; version 1 cookies keep their id', () => {
  const a = issueChallenge(key, 'sim', T0, TTL).challenge;
  const b = issueChallenge(key, 'sim', T0, TTL).challenge;
  const issued = (c: { sessionId: string }): number => Buffer.from(c.sessionId, 'base64url').readUInt32BE(0);
  assert.equal(issued(a), Math.floor(T0 / 1000));
  assert.equal(Buffer.from(a.sessionId, 'base64url').length, 22);
  assert.equal(a.sessionId.slice(0, 5), b.sessionId.slice(0, 5), 'same second, same id prefix');
  // A cookie of the previous release (version 1), built as it did: the id was the random bytes alone.
  const fields = Buffer.alloc(24);
  fields[0] = 1;
  fields[1] = 0;
  fields.writeUInt32BE(Math.floor(T0 / 1000), 2);
  randomBytes(18).copy(fields, 6);
  const k = Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), 'cocoon kbs rcar challenge v1', 32));
  const mac = createHmac('sha256', k).update('mac').update(fields).digest().subarray(0, 16);
  const v1 = openChallenge(key, Buffer.concat([fields, mac]).toString('base64url'), TTL);
  assert.equal(v1.sessionId, fields.subarray(6).toString('base64url'));
  assert.equal(v1.nonce, createHmac('sha256', k).update('nonce').update(fields).digest('base64'));
  const v3 = Buffer.from(fields);
  v3[0] = 3;
  const mac3 = createHmac('sha256', k).update('mac').update(v3).digest().subarray(0, 16);
  assert.equal(code(() => openChallenge(key, Buffer.concat([v3, mac3]).toString('base64url'), TTL)), 'NONCE_INVALID', 'an unknown version, even with a valid tag');
});
