import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { verifyEvidence } from '../../src/attestation/index.js';
import { defaultAnchors } from '../../src/attestation/trust.js';
import type { TeeKind } from '../../src/attestation/types.js';

const at = new Date('2026-01-01T00:00:00Z');

describe('verifyEvidence dispatcher', () => {
  it('pinned default anchors match their fingerprints', () => {
    const a = defaultAnchors();
    assert.equal(a.intelRoots[0]!.fingerprint, '44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3');
    assert.deepEqual(Object.keys(a.amd).sort(), ['genoa', 'milan', 'turin']);
  });

  it('never throws: garbage evidence for every TEE is a rejected result', async () => {
    for (const tee of ['sgx', 'tdx', 'snp', 'tpm', 'az-snp-vtpm', 'az-tdx-vtpm', 'sim'] as TeeKind[]) {
      for (const ev of [Buffer.alloc(0), Buffer.from('{"version":7}'), Buffer.from([0, 1, 2, 3]), 'deadbeef', '[1,2']) {
        const r = await verifyEvidence(tee, ev, {}, { at });
        assert.equal(r.verified, false, `${tee} ${String(ev)}`);
        assert.ok(r.errors.length > 0);
        assert.equal(r.tee, tee);
      }
    }
  });

  it('sim without trusted sim roots → SIM_NOT_ALLOWED', async () => {
    const r = await verifyEvidence('sim', '{"report":"","signature":"","certs":[]}', {}, { at });
    assert.deepEqual(r.errors.map((e) => e.code), ['SIM_NOT_ALLOWED']);
  });

  it('sim can be delegated to a caller-provided verifier; deny-debug still applies', async () => {
    const r = await verifyEvidence('sim', '{}', { sim: async () => ({ verified: true, tee: 'sim', advisories: [], claims: { debug: true }, errors: [], insecure: true }) }, { at, allowDebug: false });
    assert.equal(r.verified, false);
    assert.equal(r.insecure, true);
    assert.deepEqual(r.errors.map((e) => e.code), ['DEBUG_NOT_ALLOWED']);
  });
});

describe('verifyEvidence input validation', () => {
  it('an invalid time is a BAD_USAGE problem, not an exception', async () => {
    const r = await verifyEvidence('sgx', Buffer.alloc(10), {}, { at: new Date('nope') });
    assert.deepEqual(r.errors.map((e) => e.code), ['BAD_USAGE']);
  });
});
