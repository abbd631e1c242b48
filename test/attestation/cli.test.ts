import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { Command } from 'commander';
import { registerVerify, runVerify } from '../../src/cli/verify.js';
import { isCocoonError } from '../../src/errors.js';
import { haveVectors, vectorsRoot } from './vectors.js';

const set = (id: string, f: string): string => path.join(vectorsRoot, 'sets', id, f);

describe('cocoon verify (CLI module)', () => {
  it('documents every flag in --help', () => {
    const p = new Command().exitOverride();
    registerVerify(p);
    const help = p.commands.find((c) => c.name() === 'verify')!.helpInformation();
    for (const f of ['--tee', '--evidence', '--collateral', '--certs', '--ak', '--report-data', '--at', '--offline', '--json', '--expect', '--deny-debug']) assert.ok(help.includes(f), f);
  });

  it('bad usage throws BAD_USAGE (exit 2)', async () => {
    await assert.rejects(runVerify({ tee: 'nope', evidence: 'x' }, () => undefined), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
    await assert.rejects(runVerify({ tee: 'sgx', evidence: '/nonexistent/evidence' }, () => undefined), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
    await assert.rejects(runVerify({ tee: 'sgx', evidence: 'x', at: 'yesterday' }, () => undefined), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
    await assert.rejects(runVerify({ tee: 'sgx', evidence: 'x', expect: ['mr_td'] }, () => undefined), (e: unknown) => isCocoonError(e, 'BAD_USAGE'));
  });

  it('verifies a vector set offline with --json (exit 0) and rejects with --expect mismatch (exit 1)', async (t) => {
    if (!haveVectors) return t.skip(`vectors not found at ${vectorsRoot}`);
    let out = '';
    const code = await runVerify({ tee: 'tdx', evidence: set('tdx-4', 'evidence.bin'), collateral: set('tdx-4', 'collateral.json'), at: '2025-07-19T10:00:34Z', offline: true, json: true }, (s) => (out = s));
    assert.equal(code, 0);
    const j = JSON.parse(out) as { verified: boolean; tee: string; tcbStatus: string; claims: Record<string, unknown>; errors: unknown[] };
    assert.deepEqual(Object.keys(j).slice(0, 6), ['verified', 'tee', 'tcbStatus', 'advisories', 'claims', 'errors']);
    assert.equal(j.tcbStatus, 'UpToDate');
    const bad = await runVerify({ tee: 'tdx', evidence: set('tdx-4', 'evidence.bin'), collateral: set('tdx-4', 'collateral.json'), at: '2025-07-19T10:00:34Z', offline: true, json: true, expect: ['mr_td=00'] }, (s) => (out = s));
    assert.equal(bad, 1);
    assert.match(out, /CLAIM_MISMATCH/);
  });

  it('offline without collateral is rejected (exit 1), human output names the problem', async (t) => {
    if (!haveVectors) return t.skip(`vectors not found at ${vectorsRoot}`);
    let out = '';
    const code = await runVerify({ tee: 'sgx', evidence: set('sgx-1', 'evidence.bin'), offline: true }, (s) => (out = s));
    assert.equal(code, 1);
    assert.match(out, /COLLATERAL_UNAVAILABLE/);
  });

  it('tpm with --ak and --report-data', async (t) => {
    if (!haveVectors) return t.skip(`vectors not found at ${vectorsRoot}`);
    const code = await runVerify({ tee: 'tpm', evidence: set('tpm-1', 'evidence.json'), ak: set('tpm-1', 'ak.pem'), reportData: '6368616c6c656e6765', offline: true }, () => undefined);
    assert.equal(code, 0);
  });
});
