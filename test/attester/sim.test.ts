import { test } from 'node:test';
import { webcrypto } from 'node:crypto';
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

test('sim platforms sign ES256 now; P-384 platforms of earlier versions still verify; other keys are refused', async (t) => {
  const { createSelfSignedCa, issueLeafCertificate, exportPrivateKeyPem, ECDSA_P384 } = await import('../../src/crypto/x509.js');
  const { createPrivateKey, createSign } = await import('node:crypto');
  const { writeFile } = await import('node:fs/promises');
  const p = await platform();
  t.after(() => rm(p.dir, { recursive: true, force: true }));
  const fresh = (await new SimAttester(p.platformDir).getEvidence(reportData, measurement)) as SimEvidence;
  assert.equal(Buffer.from(fresh.signature, 'base64').length, 64, 'P-256 P1363 signature');

  // A P-384 platform as createSimPlatform made it before: signature over SHA-384.
  const root = await createSelfSignedCa('CN=old sim root', 30);
  const leaf = await issueLeafCertificate(root, 'CN=old sim platform', 30, ECDSA_P384);
  await writeFile(join(p.platformDir, 'platform.pem'), leaf.cert.toString('pem'));
  await writeFile(join(p.platformDir, 'platform.key.pem'), await exportPrivateKeyPem(leaf.keys.privateKey));
  const old = (await new SimAttester(p.platformDir).getEvidence(reportData, measurement)) as SimEvidence;
  assert.equal(Buffer.from(old.signature, 'base64').length, 96, 'P-384 P1363 signature');
  const rootPem = root.cert.toString('pem');
  const ok = await verifySimEvidence(old, { roots: [rootPem] }, { at: new Date(), reportData });
  assert.equal(ok.verified, true, JSON.stringify(ok.errors));
  // The hash is fixed by the curve: a P-384 key signing SHA-256 does not verify.
  const key = createPrivateKey(await readFile(join(p.platformDir, 'platform.key.pem'), 'utf8'));
  const wrongHash = createSign('sha256').update(Buffer.from(old.report, 'base64')).sign({ key, dsaEncoding: 'ieee-p1363' });
  const bad = await verifySimEvidence({ ...old, signature: wrongHash.toString('base64') }, { roots: [rootPem] }, { at: new Date() });
  assert.deepEqual(bad.errors.map((e) => e.code), ['EVIDENCE_SIGNATURE_INVALID']);

  // An Ed25519 platform certificate (self-issued, no sim root) is refused as malformed, not crashed on.
  const { X509CertificateGenerator } = await import('@peculiar/x509');
  const edKeys = (await webcrypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const edCert = await X509CertificateGenerator.createSelfSigned({ serialNumber: '01', name: 'CN=ed', notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86_400_000), keys: edKeys, signingAlgorithm: { name: 'Ed25519' } });
  await assert.rejects(
    verifySimEvidence({ ...old, certs: [edCert.toString('pem')] }, { roots: [rootPem] }, { at: new Date() }),
    (e: unknown) => isCocoonError(e) && e.code === 'EVIDENCE_MALFORMED',
  );
});
