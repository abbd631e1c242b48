import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { verifyEvidence } from '../../src/attestation/index.js';
import { parseHcl } from '../../src/attestation/azure/evidence.js';
import { isCocoonError } from '../../src/errors.js';
import { makeAzureSnpWorld } from './fixtures/azure.js';
import { makeSnpWorld } from './fixtures/snp.js';

describe('Azure az-snp-vtpm (generated evidence)', () => {
  it('v1 and v2 evidence verify; claims are prefixed', async () => {
    for (const version of [1, 2] as const) {
      const w = makeAzureSnpWorld({ version });
      const r = await verifyEvidence('az-snp-vtpm', w.evidence, { anchors: w.snp.anchors, certs: w.snp.certs.slice(1) }, { at: w.snp.at, reportData: w.nonce });
      assert.deepEqual(r.errors, []);
      assert.equal(r.claims.evidence_version, version);
      assert.equal(r.claims.snp_measurement, '5b'.repeat(48));
      assert.equal(r.claims.tpm_nonce, w.nonce.toString('hex'));
      assert.equal(r.claims.pcr07, '07'.repeat(32));
    }
  });

  it('the pinned ASK/ARK are used when no chain is given', async () => {
    const w = makeAzureSnpWorld();
    const r = await verifyEvidence('az-snp-vtpm', w.evidence, { anchors: w.snp.anchors }, { at: w.snp.at, reportData: w.nonce });
    assert.deepEqual(r.errors, []);
  });

  it('wrong nonce → NONCE_INVALID; v2 user-data mismatch → USER_DATA_MISMATCH', async () => {
    const w = makeAzureSnpWorld({ version: 2 });
    const r = await verifyEvidence('az-snp-vtpm', w.evidence, { anchors: w.snp.anchors }, { at: w.snp.at, reportData: Buffer.from('other') });
    assert.deepEqual(r.errors.map((e) => e.code).sort(), ['NONCE_INVALID', 'USER_DATA_MISMATCH']);
  });

  it('tampered variable data → VAR_DATA_BINDING_MISMATCH', async () => {
    const w = makeAzureSnpWorld();
    const j = JSON.parse(w.evidence) as { hcl_report: string };
    const hcl = Buffer.from(j.hcl_report, 'base64url');
    const i = hcl.indexOf(Buffer.from('secure-boot'));
    hcl[i]! ^= 0x20;
    j.hcl_report = hcl.toString('base64url');
    const r = await verifyEvidence('az-snp-vtpm', JSON.stringify(j), { anchors: w.snp.anchors }, { at: w.snp.at, reportData: w.nonce });
    assert.deepEqual(r.errors.map((e) => e.code), ['VAR_DATA_BINDING_MISMATCH']);
  });

  it('a chain whose VCEK differs from the evidence → VCEK_MISMATCH', async () => {
    const w = makeAzureSnpWorld();
    const other = makeSnpWorld({ chipId: Buffer.alloc(64, 0x99) });
    const r = await verifyEvidence('az-snp-vtpm', w.evidence, { anchors: w.snp.anchors, certs: [other.certs[0]!, ...w.snp.certs.slice(1)] }, { at: w.snp.at, reportData: w.nonce });
    assert.ok(r.errors.some((e) => e.code === 'VCEK_MISMATCH' && e.stage === 'vcek_consistency'));
  });

  it('HCL parser rejects short / oversized variable data with EVIDENCE_MALFORMED', () => {
    const hcl = Buffer.alloc(0x4d4 + 4);
    hcl.write('HCLA');
    hcl.writeUInt32LE(1, 0x4cc);
    hcl.writeUInt32LE(0xffffffff, 0x4d0);
    assert.throws(() => parseHcl(hcl), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
    assert.throws(() => parseHcl(Buffer.alloc(10)), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
  });
});
