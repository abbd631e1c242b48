import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { jwtVerify } from 'jose';
import { buildEar, earStatus, trustVector } from '../../src/attestation/result.js';
import type { VerificationResult } from '../../src/attestation/types.js';

const base: VerificationResult = { verified: true, tee: 'tdx', tcbStatus: 'UpToDate', advisories: [], claims: { mr_td: 'aa', debug: false }, errors: [] };

describe('attestation results (AR4SI, EAR)', () => {
  it('trust vector tiers follow the verdict, TCB status and debug flag', () => {
    assert.equal(earStatus(trustVector(base)), 'affirming');
    assert.equal(trustVector({ ...base, tcbStatus: 'OutOfDate' }).hardware, 32);
    assert.equal(earStatus(trustVector({ ...base, tcbStatus: 'OutOfDate' })), 'warning');
    assert.equal(earStatus(trustVector({ ...base, claims: { debug: true } })), 'contraindicated');
    const failed = { ...base, verified: false, errors: [{ code: 'PCK_CHAIN_INVALID', message: 'x', stage: 'pck_chain' }] };
    assert.equal(trustVector(failed).hardware, 97);
    assert.equal(earStatus(trustVector(failed)), 'contraindicated');
  });

  it('builds an ES256 EAR JWT that verifies and carries the submod', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const jwt = await buildEar(base, { key: privateKey, kid: 'k1', iat: new Date('2026-01-01T00:00:00Z'), ttlSeconds: 60 });
    const { payload, protectedHeader } = await jwtVerify(jwt, publicKey, { currentDate: new Date('2026-01-01T00:00:30Z') });
    assert.equal(protectedHeader.alg, 'ES256');
    assert.equal(payload.eat_profile, 'tag:github.com,2023:veraison/ear');
    const sub = (payload.submods as Record<string, Record<string, unknown>>).cpu0!;
    assert.equal(sub['ear.status'], 'affirming');
    assert.equal((sub['ear.trustworthiness-vector'] as Record<string, number>)['instance-identity'], 2);
    assert.equal(payload.exp, (payload.iat as number) + 60);
  });
});
