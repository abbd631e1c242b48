import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { verifyEvidence } from '../../src/attestation/index.js';
import { parseAkPublic, parseAttest, parseTpmtSignature } from '../../src/attestation/tpm/structs.js';
import { isCocoonError } from '../../src/errors.js';
import { makeAttest, rsaTpmtPublic, signAttest, trusteeEvidence } from './fixtures/tpm.js';

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
const at = new Date('2026-01-01T00:00:00Z');
const nonce = Buffer.from('c0ffee', 'hex');
const spki = (k: typeof rsa.publicKey): Buffer => k.export({ type: 'spki', format: 'der' });

describe('TPM 2.0 quote verifier (generated quotes)', () => {
  const cases = [
    ['rsassa', 'sha256', rsa],
    ['rsapss', 'sha256', rsa],
    ['ecdsa', 'sha256', ec],
    ['rsassa', 'sha1', rsa],
    ['ecdsa', 'sha384', ec],
  ] as const;
  for (const [kind, hash, keys] of cases) {
    it(`${kind}/${hash} quote verifies with the pinned AK`, async () => {
      const pcrs = Array.from({ length: 24 }, (_, i) => Buffer.alloc(hash === 'sha1' ? 20 : hash === 'sha256' ? 32 : 48, i));
      const msg = makeAttest(nonce, pcrs, hash);
      const ev = trusteeEvidence(spki(keys.publicKey), msg, signAttest(msg, keys.privateKey, hash, kind), pcrs);
      const r = await verifyEvidence('tpm', ev, { ak: spki(keys.publicKey) }, { at, reportData: nonce });
      assert.deepEqual(r.errors, []);
      assert.equal(r.claims.nonce, 'c0ffee');
      assert.equal(r.claims.pcr_alg, hash);
      assert.equal(r.claims.pcr05, pcrs[5]!.toString('hex'));
    });
  }

  const pcrs = Array.from({ length: 24 }, (_, i) => Buffer.alloc(32, i));
  const msg = makeAttest(nonce, pcrs, 'sha256');
  const sig = signAttest(msg, rsa.privateKey, 'sha256', 'rsassa');
  const ev = trusteeEvidence(spki(rsa.publicKey), msg, sig, pcrs);

  it('a different pinned AK → AK_NOT_TRUSTED', async () => {
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const r = await verifyEvidence('tpm', ev, { ak: spki(other.publicKey) }, { at, reportData: nonce });
    assert.deepEqual(r.errors.map((e) => e.code), ['AK_NOT_TRUSTED']);
  });

  it('no pinned AK → AK_NOT_TRUSTED', async () => {
    const r = await verifyEvidence('tpm', ev, {}, { at, reportData: nonce });
    assert.deepEqual(r.errors.map((e) => e.code), ['AK_NOT_TRUSTED']);
  });

  it('AK given as TPM2B_PUBLIC / TPMT_PUBLIC / PEM is accepted', async () => {
    const t = rsaTpmtPublic(rsa.publicKey);
    const size = Buffer.alloc(2);
    size.writeUInt16BE(t.length);
    for (const ak of [t, Buffer.concat([size, t]), rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string]) {
      const r = await verifyEvidence('tpm', ev, { ak }, { at, reportData: nonce });
      assert.deepEqual(r.errors, []);
    }
    assert.equal(parseAkPublic(t).asymmetricKeyType, 'rsa');
  });

  it('wrong nonce → NONCE_INVALID; changed PCR → PCR_DIGEST_MISMATCH; bad signature → TPM_SIGNATURE_INVALID', async () => {
    const a = await verifyEvidence('tpm', ev, { ak: spki(rsa.publicKey) }, { at, reportData: Buffer.from('00', 'hex') });
    assert.deepEqual(a.errors.map((e) => e.code), ['NONCE_INVALID']);
    const pcrs2 = pcrs.map((p, i) => (i === 3 ? Buffer.alloc(32, 0xee) : p));
    const b = await verifyEvidence('tpm', trusteeEvidence(spki(rsa.publicKey), msg, sig, pcrs2), { ak: spki(rsa.publicKey) }, { at, reportData: nonce });
    assert.deepEqual(b.errors.map((e) => e.code), ['PCR_DIGEST_MISMATCH']);
    const bad = Buffer.from(sig);
    bad[20]! ^= 1;
    const c = await verifyEvidence('tpm', trusteeEvidence(spki(rsa.publicKey), msg, bad, pcrs), { ak: spki(rsa.publicKey) }, { at, reportData: nonce });
    assert.deepEqual(c.errors.map((e) => e.code), ['TPM_SIGNATURE_INVALID']);
  });

  it('truncated structures throw EVIDENCE_MALFORMED', () => {
    for (let n = 0; n < msg.length; n += 7) assert.throws(() => parseAttest(msg.subarray(0, n)), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
    for (let n = 0; n < sig.length; n += 5) assert.throws(() => parseTpmtSignature(sig.subarray(0, n)), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
  });
});
