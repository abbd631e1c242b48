/**
 * Real TPM 2.0: swtpm on loopback + tpm2-tools create an AK and a quote; our verifier checks
 * it. Skipped (visibly) when swtpm / tpm2-tools are not installed. Every wait is bounded.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createPublicKey, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { verifyEvidence } from '../../src/attestation/index.js';
import { startSwtpm, type Swtpm } from '../attester/swtpm-helper.js';

const TOOLS = ['swtpm', 'tpm2_createek', 'tpm2_createak', 'tpm2_quote', 'tpm2_flushcontext'];
const missing = TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, cwd, timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve(stdout)));
  });
}

describe('real TPM 2.0 (swtpm + tpm2-tools)', { skip: missing.length ? `swtpm/tpm2-tools missing (${missing.join(', ')}) — real TPM test skipped` : false }, () => {
  let tpm: Swtpm | undefined;
  let dir = '';
  let env: NodeJS.ProcessEnv = {};

  before(async () => {
    tpm = await startSwtpm();
    dir = tpm.dir;
    env = { ...process.env, TPM2TOOLS_TCTI: tpm.tcti };
    await run('tpm2_createek', ['-c', 'ek.ctx', '-G', 'rsa', '-u', 'ek.pub'], env, dir);
    await run('tpm2_flushcontext', ['-t'], env, dir);
  });

  after(async () => {
    await tpm?.stop();
  });

  for (const [alg, scheme] of [['rsa', 'rsassa'], ['ecc', 'ecdsa']] as const) {
    it(`${alg}/${scheme} AK: quote with a nonce verifies; wrong nonce / other AK rejected`, async () => {
      const p = (f: string): string => `${alg}-${f}`;
      await run('tpm2_createak', ['-C', 'ek.ctx', '-c', p('ak.ctx'), '-G', alg, '-g', 'sha256', '-s', scheme, '-u', p('ak.pem'), '-f', 'pem', '-n', p('ak.name')], env, dir);
      await run('tpm2_flushcontext', ['-t'], env, dir);
      await run('tpm2_flushcontext', ['-s'], env, dir);
      const nonce = randomBytes(16);
      await run('tpm2_quote', ['-c', p('ak.ctx'), '-l', 'sha256:0,1,2,3,4,5,6,7,16', '-q', nonce.toString('hex'), '-m', p('q.msg'), '-s', p('q.sig'), '-o', p('pcrs.bin'), '-F', 'values', '-g', 'sha256'], env, dir);
      await run('tpm2_flushcontext', ['-t'], env, dir);
      const rd = (f: string): Promise<Buffer> => readFile(path.join(dir, p(f)));
      const akPem = (await rd('ak.pem')).toString('utf8');
      const values = await rd('pcrs.bin');
      const idx = [0, 1, 2, 3, 4, 5, 6, 7, 16];
      const pcrs: string[] = Array.from({ length: 17 }, () => '00'.repeat(32));
      idx.forEach((i, k) => (pcrs[i] = values.subarray(k * 32, k * 32 + 32).toString('hex')));
      const spki = createPublicKey(akPem).export({ type: 'spki', format: 'der' });
      const evidence = JSON.stringify({ ak_public: spki.toString('base64'), tpm_quote: { message: (await rd('q.msg')).toString('base64'), signature: (await rd('q.sig')).toString('base64'), pcrs } });
      const at = new Date();
      const ok = await verifyEvidence('tpm', evidence, { ak: akPem }, { at, reportData: nonce });
      assert.deepEqual(ok.errors, []);
      assert.equal(ok.claims.nonce, nonce.toString('hex'));
      assert.equal(ok.claims.pcr16, pcrs[16]);
      const wrongNonce = await verifyEvidence('tpm', evidence, { ak: akPem }, { at, reportData: randomBytes(16) });
      assert.deepEqual(wrongNonce.errors.map((e) => e.code), ['NONCE_INVALID']);
      const other = (await import('node:crypto')).generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
      const wrongAk = await verifyEvidence('tpm', evidence, { ak: other }, { at, reportData: nonce });
      assert.deepEqual(wrongAk.errors.map((e) => e.code), ['AK_NOT_TRUSTED']);
    });
  }
});
