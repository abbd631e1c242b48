/**
 * Azure vTPM attester, structurally only (no Azure CVM here): a swtpm is given a fake HCL
 * report in NV index 0x01400001 (binding an RSA AK persisted at 0x81000003, created with
 * tpm2-tools as an independent peer) and IMDS is a stub. The evidence must parse as Trustee
 * v1 JSON and its vTPM quote must verify (signature, nonce, PCR digest); the SNP hardware
 * report in it is fake, so the hardware stages fail — as they must.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createPublicKey, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { AzureVtpmAttester, HCL_REPORT_NV_INDEX } from '../../src/attester/azure.js';
import { parseTcti } from '../../src/attester/tpm/tcti.js';
import { verifyEvidence } from '../../src/attestation/index.js';
import { createSelfSignedCa } from '../../src/crypto/x509.js';
import { isCocoonError } from '../../src/errors.js';
import { startSwtpm, swtpmMissing, type Swtpm } from './swtpm-helper.js';

const execFileAsync = promisify(execFile);
const toolsMissing = spawnSync('sh', ['-c', 'command -v tpm2_createprimary && command -v tpm2_nvdefine && command -v tpm2_nvwrite']).status !== 0 ? 'tpm2-tools missing — Azure structural test skipped' : false;
const skip = swtpmMissing || toolsMissing;

let tpm: Swtpm;
const run = (args: string[]) => execFileAsync(args[0]!, args.slice(1), { env: { ...process.env, TPM2TOOLS_TCTI: tpm.tcti }, cwd: tpm.dir, timeout: 60_000 });

before(async () => {
  if (skip) return;
  tpm = await startSwtpm();
  await run(['tpm2_createprimary', '-C', 'e', '-G', 'rsa2048:rsassa-sha256:null', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign', '-c', 'ak.ctx']);
  await run(['tpm2_evictcontrol', '-C', 'o', '-c', 'ak.ctx', '0x81000003']);
  await run(['tpm2_flushcontext', '-t']).catch(() => undefined);
  await run(['tpm2_readpublic', '-c', '0x81000003', '-f', 'pem', '-o', 'ak.pem']);
  const jwk = createPublicKey(await readFile(join(tpm.dir, 'ak.pem'))).export({ format: 'jwk' });
  const varData = Buffer.from(JSON.stringify({ keys: [{ kid: 'HCLAkPub', kty: 'RSA', n: jwk.n, e: jwk.e }] }));
  const hcl = Buffer.alloc(0x4d4 + varData.length);
  hcl.write('HCLA', 0, 'latin1');
  hcl.writeUInt32LE(1, 4);
  hcl.writeUInt32LE(2, 0x4c8); // SNP
  hcl.writeUInt32LE(1, 0x4cc); // SHA-256
  hcl.writeUInt32LE(varData.length, 0x4d0);
  varData.copy(hcl, 0x4d4);
  await writeFile(join(tpm.dir, 'hcl.bin'), hcl);
  await run(['tpm2_nvdefine', `0x${HCL_REPORT_NV_INDEX.toString(16)}`, '-C', 'o', '-s', String(hcl.length), '-a', 'ownerread|ownerwrite']);
  await run(['tpm2_nvwrite', `0x${HCL_REPORT_NV_INDEX.toString(16)}`, '-C', 'o', '-i', 'hcl.bin']);
});

after(async () => {
  if (!skip) await tpm?.stop();
});

test('az-snp-vtpm: Trustee v1 evidence from NV index + vTPM quote + IMDS VCEK (structural)', { skip }, async () => {
  const ca = await createSelfSignedCa('CN=fake VCEK', 1);
  const imdsCalls: string[] = [];
  const fetchImpl = (async (url: string | URL) => {
    imdsCalls.push(String(url));
    return new Response(JSON.stringify({ vcekCert: ca.cert.toString('pem'), certificateChain: '' }), { status: 200 });
  }) as typeof fetch;
  const rd = randomBytes(64);
  const ev = await new AzureVtpmAttester('az-snp-vtpm', { tcti: parseTcti(tpm.tcti), fetchImpl }).getEvidence(rd);
  assert.deepEqual(imdsCalls, ['http://169.254.169.254/metadata/THIM/amd/certification']);
  assert.equal(ev.version, 1);
  const r = await verifyEvidence('az-snp-vtpm', JSON.stringify(ev), {}, { at: new Date(), reportData: rd });
  const stages = new Set(r.errors.map((e) => e.stage));
  for (const s of ['tpm_signature', 'tpm_nonce', 'pcr_digest']) assert.ok(!stages.has(s), `${s}: ${JSON.stringify(r.errors)}`);
  // the only parse problem is the fake (all-zero) SNP hardware report inside the HCL report
  assert.deepEqual(r.errors.filter((e) => e.stage === 'parse' && !/SNP report/.test(e.message)), []);
  assert.equal(r.claims.tpm_nonce, rd.toString('hex'));
  assert.ok(r.errors.some((e) => e.stage === 'var_data_binding'), 'the fake hardware report does not bind the variable data');
  assert.equal(r.verified, false);
  // IMDS failures are attester errors, not silent
  const down = (async () => new Response('nope', { status: 503 })) as typeof fetch;
  await assert.rejects(new AzureVtpmAttester('az-snp-vtpm', { tcti: parseTcti(tpm.tcti), fetchImpl: down }).getEvidence(rd), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED'));
  // an oversized IMDS answer is refused (bounded read), not buffered
  const huge = (async () => new Response(JSON.stringify({ vcekCert: 'x'.repeat(300 * 1024) }), { status: 200 })) as typeof fetch;
  await assert.rejects(new AzureVtpmAttester('az-snp-vtpm', { tcti: parseTcti(tpm.tcti), fetchImpl: huge }).getEvidence(rd), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED') && /larger than/.test((e as Error).message));
});
