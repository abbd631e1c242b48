import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { verifyEvidence } from '../../src/attestation/index.js';
import { parseSnpReport } from '../../src/attestation/snp/report.js';
import { isCocoonError } from '../../src/errors.js';
import type { VerificationResult } from '../../src/attestation/types.js';
import { makeSnpWorld, SNP_AT, type SnpWorldOptions } from './fixtures/snp.js';

async function run(o: SnpWorldOptions = {}, mutate?: (w: ReturnType<typeof makeSnpWorld>) => void, at = SNP_AT): Promise<VerificationResult> {
  const w = makeSnpWorld(o);
  mutate?.(w);
  return verifyEvidence('snp', w.report, { anchors: w.anchors, certs: w.certs }, { at });
}
const codes = (r: VerificationResult): string[] => r.errors.map((e) => e.code);

describe('SEV-SNP verifier on generated chains', () => {
  for (const product of ['milan', 'genoa', 'turin'] as const) {
    it(`verifies a generated ${product} v3 report`, async () => {
      const r = await run({ product });
      assert.deepEqual(r.errors, []);
      assert.equal(r.claims.measurement, '5b'.repeat(48));
      if (product === 'turin') assert.deepEqual(r.claims.reported_tcb, { fmc: 1, bootloader: 4, tee: 0, snp: 24, microcode: 219 });
    });
  }

  it('accepts a v2 report (product from the VCEK issuer) and an OCTET STRING hwID', async () => {
    const r = await run({ version: 2, hwIdOctetString: true });
    assert.deepEqual(r.errors, []);
  });

  it('wrong chip id → VCEK_MISMATCH', async () => {
    const r = await run({}, (w) => {
      w.report.fill(0, 0x1a0, 0x1e0);
    });
    assert.ok(codes(r).includes('VCEK_MISMATCH'));
  });

  it('reported TCB differs from VCEK SPLs → TCB_MISMATCH', async () => {
    const r = await run({ vcekBl: 3 });
    assert.deepEqual(codes(r), ['TCB_MISMATCH']);
  });

  it('expired VCEK → CERT_EXPIRED', async () => {
    const r = await run({ vcekNotAfter: new Date(SNP_AT.getTime() - 1000) });
    assert.deepEqual(codes(r), ['CERT_EXPIRED']);
  });

  it('tampered report → REPORT_SIGNATURE_INVALID', async () => {
    const r = await run({}, (w) => (w.report[0x90]! ^= 1));
    assert.deepEqual(codes(r), ['REPORT_SIGNATURE_INVALID']);
  });

  it('ARK not pinned → ARK_NOT_TRUSTED; production anchors reject a self-made ARK', async () => {
    const w = makeSnpWorld();
    const r = await verifyEvidence('snp', w.report, { certs: w.certs }, { at: SNP_AT });
    assert.equal(r.verified, false);
    assert.ok(codes(r).includes('ARK_NOT_TRUSTED'));
  });

  it('CPUID product differs from the VCEK issuer → PRODUCT_MISMATCH', async () => {
    const r = await run({}, (w) => (w.report[0x188] = 0x1a));
    assert.ok(codes(r).includes('PRODUCT_MISMATCH'));
  });

  it('debug policy bit and VMPL are claims; deny-debug rejects', async () => {
    const w = makeSnpWorld({ debug: true, vmpl: 2 });
    const r = await verifyEvidence('snp', w.report, { anchors: w.anchors, certs: w.certs }, { at: SNP_AT });
    assert.equal(r.verified, true);
    assert.equal(r.claims.debug, true);
    assert.equal(r.claims.vmpl, 2);
    const d = await verifyEvidence('snp', w.report, { anchors: w.anchors, certs: w.certs }, { at: SNP_AT, allowDebug: false });
    assert.deepEqual(codes(d), ['DEBUG_NOT_ALLOWED']);
  });

  it('bad sizes and versions throw EVIDENCE_MALFORMED', () => {
    const w = makeSnpWorld();
    for (const n of [0, 100, 1183, 1185]) assert.throws(() => parseSnpReport(Buffer.alloc(n)), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
    const v = Buffer.from(w.report);
    v.writeUInt32LE(1, 0);
    assert.throws(() => parseSnpReport(v), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
  });
});

describe('SNP chain completion', () => {
  it('a lone VCEK is completed with the pinned ASK and ARK of its product line', async () => {
    const w = makeSnpWorld();
    const r = await verifyEvidence('snp', w.report, { anchors: w.anchors, certs: [w.certs[0]!] }, { at: SNP_AT });
    assert.deepEqual(r.errors, []);
  });
});
