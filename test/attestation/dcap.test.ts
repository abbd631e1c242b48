import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { verifyEvidence } from '../../src/attestation/index.js';
import { defaultAnchors } from '../../src/attestation/trust.js';
import { parseDcapQuote } from '../../src/attestation/dcap/quote.js';
import { isCocoonError } from '../../src/errors.js';
import type { VerificationResult } from '../../src/attestation/types.js';
import { AT, makeDcapWorld, type DcapWorldOptions } from './fixtures/dcap.js';

async function run(o: DcapWorldOptions = {}, mutate?: (w: ReturnType<typeof makeDcapWorld>) => void, at = AT): Promise<VerificationResult> {
  const w = makeDcapWorld(o);
  mutate?.(w);
  return verifyEvidence(o.tee ?? 'sgx', w.quote, { anchors: w.anchors, collateral: w.collateral }, { at });
}

const codes = (r: VerificationResult): string[] => r.errors.map((e) => e.code);
const stages = (r: VerificationResult): string[] => r.errors.map((e) => e.stage ?? '');

describe('DCAP verifier on generated chains', () => {
  it('verifies a generated SGX v3 quote', async () => {
    const r = await run();
    assert.deepEqual(r.errors, []);
    assert.equal(r.verified, true);
    assert.equal(r.tcbStatus, 'UpToDate');
    assert.equal(r.claims.fmspc, '00906ed50000');
    assert.equal(r.claims.debug, false);
  });

  for (const version of [4, 5] as const) {
    it(`verifies a generated TDX v${version} quote`, async () => {
      const r = await run({ tee: 'tdx', version });
      assert.deepEqual(r.errors, []);
      assert.equal(r.tcbStatus, 'UpToDate');
      assert.equal(r.claims.mr_td, '44'.repeat(48));
    });
  }

  it('TDX 1.5 (v5 body type 3): module identity matched, components 0–1 skipped, statuses converge', async () => {
    const lv = (tdx: number[], status: string, advisories?: string[]) => ({ sgx: Array.from({ length: 16 }, (_, i) => (i < 4 ? 5 : 0)), pcesvn: 13, tdx, status, ...(advisories ? { advisories } : {}) });
    const high01 = [9, 9, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const base = { tee: 'tdx' as const, version: 5 as const, bodyType3: true, moduleIdentities: true, tcbLevels: [lv(high01, 'UpToDate')] };
    const r = await run({ ...base, teeTcbSvn: [4, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
    assert.deepEqual(r.errors, []);
    assert.equal(r.tcbStatus, 'UpToDate');
    assert.equal(r.claims.tee_tcb_svn2, '00'.repeat(16));
    const old = await run({ ...base, teeTcbSvn: [2, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
    assert.equal(old.tcbStatus, 'OutOfDate');
    assert.deepEqual(old.advisories, ['INTEL-SA-00003']);
    // TDX 1.0 (tee_tcb_svn[1] == 0): all 16 components compared → no level
    const v10 = await run({ ...base, teeTcbSvn: [4, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
    assert.deepEqual(codes(v10), ['NO_MATCHING_TCB_LEVEL']);
  });

  it('SGX quote with a TDX TCB info → TCB_INFO_MISMATCH', async () => {
    const w = makeDcapWorld();
    const t = makeDcapWorld({ tee: 'tdx' });
    const r = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: { ...w.collateral, tcb_info: t.collateral.tcb_info, tcb_info_signature: t.collateral.tcb_info_signature } }, { at: AT });
    assert.ok(codes(r).includes('TCB_INFO_MISMATCH'));
  });

  it('TDX quote given as --tee sgx → TEE_UNSUPPORTED', async () => {
    const w = makeDcapWorld({ tee: 'tdx' });
    const r = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: w.collateral }, { at: AT });
    assert.ok(codes(r).includes('TEE_UNSUPPORTED'));
  });

  it('QE identity for another QE → QE_IDENTITY_MISMATCH', async () => {
    const w = makeDcapWorld();
    const t = makeDcapWorld({ tee: 'tdx' });
    const r = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: { ...w.collateral, qe_identity: t.collateral.qe_identity, qe_identity_signature: t.collateral.qe_identity_signature } }, { at: AT });
    assert.deepEqual(codes(r), ['QE_IDENTITY_MISMATCH']);
  });

  it('TCB signing chain not under the pinned root → TCB_INFO_CHAIN_INVALID / QE_IDENTITY_CHAIN_INVALID', async () => {
    const w = makeDcapWorld();
    const bogus = w.collateral.pck_crl_issuer_chain; // PCK CA + root: wrong signer CN
    const r = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: { ...w.collateral, tcb_info_issuer_chain: bogus, qe_identity_issuer_chain: bogus } }, { at: AT });
    assert.ok(codes(r).includes('TCB_INFO_CHAIN_INVALID'));
    assert.ok(codes(r).includes('QE_IDENTITY_CHAIN_INVALID'));
  });

  it('tolerates trailing bytes after the signature data', async () => {
    const r = await run({ trailing: 100 });
    assert.equal(r.verified, true);
    assert.equal(r.claims.trailing_bytes, 100);
  });

  it('rejects a quote whose root is not pinned (production anchors)', async () => {
    const w = makeDcapWorld();
    const r = await verifyEvidence('sgx', w.quote, { anchors: defaultAnchors(), collateral: w.collateral }, { at: AT });
    assert.equal(r.verified, false);
    assert.ok(codes(r).includes('PCK_CHAIN_INVALID'));
  });

  it('PCK signed by the wrong issuer → PCK_CHAIN_INVALID', async () => {
    const r = await run({ wrongPckIssuer: true });
    assert.deepEqual(stages(r), ['pck_chain']);
    assert.equal(codes(r)[0], 'PCK_CHAIN_INVALID');
  });

  it('expired PCK certificate → CERT_EXPIRED', async () => {
    const r = await run({ pckNotAfter: new Date(AT.getTime() - 1000) });
    assert.ok(codes(r).includes('CERT_EXPIRED'));
  });

  it('revoked PCK → CERT_REVOKED at revocation', async () => {
    const r = await run({ revokePck: true });
    assert.deepEqual(stages(r), ['revocation']);
    assert.equal(codes(r)[0], 'CERT_REVOKED');
  });

  it('revoked PCK CA → CERT_REVOKED', async () => {
    const r = await run({ revokePckCa: true });
    assert.ok(codes(r).includes('CERT_REVOKED'));
  });

  it('expired PCK CRL → CRL_EXPIRED', async () => {
    const r = await run({ crlNextUpdate: new Date(AT.getTime() - 1000) });
    assert.deepEqual(codes(r), ['CRL_EXPIRED']);
  });

  it('expired TCB info → TCB_INFO_EXPIRED; expired QE identity → QE_IDENTITY_EXPIRED', async () => {
    assert.deepEqual(codes(await run({ tcbNextUpdate: new Date(AT.getTime() - 1000) })), ['TCB_INFO_EXPIRED']);
    assert.deepEqual(codes(await run({ qeNextUpdate: new Date(AT.getTime() - 1000) })), ['QE_IDENTITY_EXPIRED']);
  });

  it('FMSPC mismatch → FMSPC_MISMATCH', async () => {
    const r = await run({ tcbInfoFmspc: '00a067110000' });
    assert.deepEqual(codes(r), ['FMSPC_MISMATCH']);
  });

  it('no TCB level below the platform → NO_MATCHING_TCB_LEVEL', async () => {
    const hi = Array.from({ length: 16 }, () => 9);
    const r = await run({ pcesvn: 1, tcbLevels: [{ sgx: hi, pcesvn: 13, status: 'UpToDate' }, { sgx: hi, pcesvn: 2, status: 'OutOfDate' }] });
    assert.deepEqual(codes(r), ['NO_MATCHING_TCB_LEVEL']);
  });

  it('older platform matches the lower level, with advisories; QE level converges', async () => {
    const hi = Array.from({ length: 16 }, () => 9);
    const lo = Array.from({ length: 16 }, () => 0);
    const r = await run({
      cpusvn: lo,
      pcesvn: 6,
      qeIsvsvn: 2,
      tcbLevels: [
        { sgx: hi, pcesvn: 13, status: 'UpToDate' },
        { sgx: lo, pcesvn: 5, status: 'OutOfDate', advisories: ['INTEL-SA-00001'] },
      ],
    });
    assert.equal(r.verified, true);
    assert.equal(r.tcbStatus, 'OutOfDate');
    assert.deepEqual(r.advisories, ['INTEL-SA-00001', 'INTEL-SA-00002']);
  });

  it('Revoked TCB level → TCB_REVOKED with tcbStatus Revoked', async () => {
    const cpusvn = Array.from({ length: 16 }, (_, i) => (i < 4 ? 5 : 0));
    const r = await run({ tcbLevels: [{ sgx: cpusvn, pcesvn: 13, status: 'Revoked' }] });
    assert.equal(r.tcbStatus, 'Revoked');
    assert.deepEqual(codes(r), ['TCB_REVOKED']);
  });

  it('TDX: components 0–1 ignored when tee_tcb_svn[1] > 0 needs a module identity', async () => {
    const r = await run({ tee: 'tdx', teeTcbSvn: [3, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
    assert.ok(codes(r).includes('TDX_MODULE_MISMATCH'));
  });

  it('bad quote signature → QUOTE_SIGNATURE_INVALID', async () => {
    const r = await run({}, (w) => (w.quote[100]! ^= 1));
    assert.deepEqual(codes(r), ['QUOTE_SIGNATURE_INVALID']);
  });

  it('bad QE report signature → QE_REPORT_SIGNATURE_INVALID', async () => {
    const r = await run({}, (w) => (w.quote[436 + 128 + 400]! ^= 1));
    assert.ok(codes(r).includes('QE_REPORT_SIGNATURE_INVALID'));
  });

  it('tampered TCB info → TCB_INFO_SIGNATURE_INVALID; tampered QE identity → QE_IDENTITY_SIGNATURE_INVALID', async () => {
    const a = await run({}, (w) => (w.collateral.tcb_info = w.collateral.tcb_info.replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')));
    assert.deepEqual(codes(a), ['TCB_INFO_SIGNATURE_INVALID']);
    const b = await run({}, (w) => (w.collateral.qe_identity = w.collateral.qe_identity.replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')));
    assert.deepEqual(codes(b), ['QE_IDENTITY_SIGNATURE_INVALID']);
  });

  it('debug enclave is a claim; --deny-debug turns it into DEBUG_NOT_ALLOWED', async () => {
    const w = makeDcapWorld({ debug: true });
    const r = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: w.collateral }, { at: AT });
    assert.equal(r.verified, true);
    assert.equal(r.claims.debug, true);
    const d = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: w.collateral }, { at: AT, allowDebug: false });
    assert.deepEqual(codes(d), ['DEBUG_NOT_ALLOWED']);
  });

  it('report data binding → REPORT_DATA_MISMATCH', async () => {
    const w = makeDcapWorld();
    const ok = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: w.collateral }, { at: AT, reportData: Buffer.alloc(64, 0x33) });
    assert.equal(ok.verified, true);
    const bad = await verifyEvidence('sgx', w.quote, { anchors: w.anchors, collateral: w.collateral }, { at: AT, reportData: Buffer.alloc(32, 0x34) });
    assert.deepEqual(codes(bad), ['REPORT_DATA_MISMATCH']);
  });

  it('missing collateral → COLLATERAL_UNAVAILABLE', async () => {
    const w = makeDcapWorld();
    const r = await verifyEvidence('sgx', w.quote, { anchors: w.anchors }, { at: AT });
    assert.equal(r.verified, false);
    assert.ok(codes(r).includes('COLLATERAL_UNAVAILABLE'));
  });

  it('truncated quotes and oversized length fields throw EVIDENCE_MALFORMED only', () => {
    const q = makeDcapWorld().quote;
    for (const n of [0, 10, 47, 48, 431, 432, 435, 500, 1000, q.length - 1]) {
      assert.throws(() => parseDcapQuote(q.subarray(0, n)), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
    }
    const big = Buffer.from(q);
    big.writeUInt32LE(0xffffffff, 432);
    assert.throws(() => parseDcapQuote(big), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
    const v = Buffer.from(q);
    v.writeUInt16LE(9, 0);
    assert.throws(() => parseDcapQuote(v), (e: unknown) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
  });
});

describe('TCB info v2', () => {
  it('parses the v2 component layout (no id, sgxtcbcompNNsvn)', async () => {
    const { parseTcbInfo } = await import('../../src/attestation/dcap/collateral.js');
    const tcb: Record<string, number> = { pcesvn: 7 };
    for (let i = 1; i <= 16; i++) tcb[`sgxtcbcomp${String(i).padStart(2, '0')}svn`] = i;
    const t = parseTcbInfo(JSON.stringify({ version: 2, issueDate: '2020-01-01T00:00:00Z', nextUpdate: '2020-02-01T00:00:00Z', fmspc: '00906ED50000', pceId: '0000', tcbType: 0, tcbEvaluationDataNumber: 5, tcbLevels: [{ tcb, tcbDate: '2019-01-01T00:00:00Z', tcbStatus: 'UpToDate' }] }));
    assert.equal(t.id, 'SGX');
    assert.equal(t.fmspc, '00906ed50000');
    assert.deepEqual(t.tcbLevels[0]!.tcb.sgx, Array.from({ length: 16 }, (_, i) => i + 1));
    assert.equal(t.tcbLevels[0]!.tcb.pcesvn, 7);
  });
});
