import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SimAttester } from '../../src/attester/sim.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { verifySimEvidence, type SimEvidence } from '../../src/attestation/sim/index.js';
import { isCocoonError } from '../../src/errors.js';

const measurement = 'ab'.repeat(48);
const reportData = Buffer.alloc(64, 7);

async function platform() {
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-sim-'));
  const { rootPem, platformDir } = await createSimPlatform(dir);
  return { dir, rootPem, platformDir };
}

test('sim evidence verifies against its root and carries the INSECURE marker', async (t) => {
  const p = await platform();
  t.after(() => rm(p.dir, { recursive: true, force: true }));
  const evidence = await new SimAttester(p.platformDir).getEvidence(reportData, measurement);
  const result = await verifySimEvidence(evidence, { roots: [p.rootPem] }, { at: new Date(), reportData });
  assert.equal(result.verified, true, JSON.stringify(result.errors));
  assert.equal(result.insecure, true);
  assert.equal(result.claims.measurement, measurement);
  assert.equal(result.claims.report_data, reportData.toString('hex'));
  assert.match(String(result.claims.insecure), /INSECURE/);
  assert.equal(await readFile(join(p.dir, 'root.pem'), 'utf8'), p.rootPem);
});

test('sim evidence from another root is rejected', async (t) => {
  const [a, b] = await Promise.all([platform(), platform()]);
  t.after(() => Promise.all([rm(a.dir, { recursive: true }), rm(b.dir, { recursive: true })]));
  const evidence = await new SimAttester(a.platformDir).getEvidence(reportData, measurement);
  const result = await verifySimEvidence(evidence, { roots: [b.rootPem] }, { at: new Date() });
  assert.equal(result.verified, false);
  assert.deepEqual(result.errors.map((e) => e.code), ['EVIDENCE_CHAIN_INVALID']);
});

test('tampered sim report, wrong report data and expired time are rejected with codes', async (t) => {
  const p = await platform();
  t.after(() => rm(p.dir, { recursive: true, force: true }));
  const evidence = (await new SimAttester(p.platformDir).getEvidence(reportData, measurement)) as SimEvidence;
  const report = JSON.parse(Buffer.from(evidence.report, 'base64').toString());
  report.measurement = 'cd'.repeat(48);
  const tampered = { ...evidence, report: Buffer.from(JSON.stringify(report)).toString('base64') };
  const r1 = await verifySimEvidence(tampered, { roots: [p.rootPem] }, { at: new Date() });
  assert.deepEqual(r1.errors.map((e) => e.code), ['EVIDENCE_SIGNATURE_INVALID']);

  const r2 = await verifySimEvidence(evidence, { roots: [p.rootPem] }, { at: new Date(), reportData: Buffer.alloc(64, 8) });
  assert.deepEqual(r2.errors.map((e) => e.code), ['REPORT_DATA_MISMATCH']);

  const r3 = await verifySimEvidence(evidence, { roots: [p.rootPem] }, { at: new Date(Date.now() + 20 * 365 * 86_400_000) });
  assert.deepEqual(r3.errors.map((e) => e.code), ['EVIDENCE_CHAIN_INVALID']);
});

test('malformed sim evidence throws EVIDENCE_MALFORMED only', async () => {
  const inputs: unknown[] = [null, 'x', [], {}, { report: 'a', signature: 'b', certs: [] }, { report: '!!', signature: '', certs: ['x'] }, { report: Buffer.from('{"v":1}').toString('base64'), signature: '', certs: ['pem'] }];
  for (const input of inputs) {
    await assert.rejects(verifySimEvidence(input, { roots: [] }, { at: new Date() }), (err) => isCocoonError(err, 'EVIDENCE_MALFORMED'));
  }
});

test('the attester refuses report data that is not 64 bytes and a missing platform', async () => {
  await assert.rejects(new SimAttester('/nonexistent').getEvidence(Buffer.alloc(32), measurement), (err) => isCocoonError(err, 'BAD_USAGE'));
  await assert.rejects(new SimAttester('/nonexistent').getEvidence(reportData, measurement), (err) => isCocoonError(err, 'TEE_NOT_FOUND'));
});
