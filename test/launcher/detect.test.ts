/** TEE detection and selection: order, COCOON_TEE override, legacy devices, never a silent sim. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseAttester, DEFAULT_ATTESTER_SETTINGS } from '../../src/launcher/detect.js';
import { attesterSettingsFromEnv, launcherConfigFromEnv } from '../../src/launcher/config.js';
import { isCocoonError } from '../../src/errors.js';
import { parseTcti } from '../../src/attester/tpm/tcti.js';

const TSM = '/sys/kernel/config/tsm/report';
const present = (...paths: string[]) => (p: string) => paths.includes(p);

test('detection order: configfs-tsm + guest device, then Gramine, then TPM', () => {
  assert.equal(chooseAttester(undefined, '/x', present(TSM, '/dev/tdx_guest', '/dev/tpmrm0')).attester.tee, 'tdx');
  assert.equal(chooseAttester(undefined, '/x', present(TSM, '/dev/sev-guest', '/dev/tpmrm0')).attester.tee, 'snp');
  assert.equal(chooseAttester(undefined, '/x', present('/dev/attestation/attestation_type', '/dev/tpmrm0')).attester.tee, 'sgx');
  assert.equal(chooseAttester(undefined, '/x', present('/dev/tpmrm0')).attester.tee, 'tpm');
});

test('legacy guest devices without configfs-tsm are reported clearly', () => {
  assert.throws(() => chooseAttester(undefined, '/x', present('/dev/tdx_guest')), (e) => isCocoonError(e, 'TEE_UNSUPPORTED') && /configfs-tsm/.test(e.message) && /legacy/.test(e.message));
  assert.throws(() => chooseAttester('snp', '/x', present('/dev/sev-guest')), (e) => isCocoonError(e, 'TEE_UNSUPPORTED') && /sev-guest/.test(e.message));
  assert.throws(() => chooseAttester(undefined, '/x', present(TSM)), (e) => isCocoonError(e, 'TEE_NOT_FOUND') && /COCOON_TEE=tdx/.test(e.message));
});

test('COCOON_TEE names the TEE; a missing interface is TEE_NOT_FOUND, never sim', () => {
  assert.equal(chooseAttester('tpm', '/x', present(TSM, '/dev/tdx_guest', '/dev/tpmrm0')).attester.tee, 'tpm');
  for (const tee of ['tdx', 'snp', 'sgx', 'tpm', 'az-snp-vtpm', 'az-tdx-vtpm'] as const) {
    assert.throws(() => chooseAttester(tee, '/x', () => false), (e) => isCocoonError(e, 'TEE_NOT_FOUND') && /probed/.test(e.message) && !/sim attester/.test(e.message), tee);
  }
  assert.equal(chooseAttester('az-snp-vtpm', '/x', present('/dev/tpmrm0')).attester.tee, 'az-snp-vtpm');
  // a TCP swtpm named explicitly counts as present
  const s = { ...DEFAULT_ATTESTER_SETTINGS, tpmTcti: parseTcti('swtpm:port=2321'), tpmTctiExplicit: true };
  assert.equal(chooseAttester(undefined, '/x', () => false, s).attester.tee, 'tpm');
});

test('attester settings from the environment are strictly parsed', () => {
  const s = attesterSettingsFromEnv({ COCOON_TPM_TCTI: 'swtpm:host=127.0.0.1,port=4000', COCOON_TPM_PCR: '16', COCOON_TPM_AK_HANDLE: '0x81010003', COCOON_TSM_REPORT_DIR: '/tmp/tsm' });
  assert.deepEqual(s.tpmTcti, { kind: 'swtpm', host: '127.0.0.1', port: 4000 });
  assert.equal(s.tpmPcr, 16);
  assert.equal(s.akHandle, 0x81010003);
  assert.equal(s.tsmDir, '/tmp/tsm');
  assert.deepEqual(attesterSettingsFromEnv({}).tpmTcti, { kind: 'device', path: '/dev/tpmrm0' });
  const bad: Array<Record<string, string>> = [
    { COCOON_TPM_TCTI: 'mssim:port=1' },
    { COCOON_TPM_TCTI: 'device:/etc/passwd' },
    { COCOON_TPM_TCTI: 'swtpm:port=99999' },
    { COCOON_TPM_TCTI: 'swtpm:host=a b' },
    { COCOON_TPM_TCTI: 'swtpm:evil=1' },
    { COCOON_TPM_PCR: '24' },
    { COCOON_TPM_AK_HANDLE: '0x80000001' },
    { COCOON_TSM_REPORT_DIR: 'relative' },
    { COCOON_TSM_REPORT_DIR: '/a/../b' },
    { COCOON_SNP_PRIVLEVEL: '4' },
  ];
  for (const env of bad) assert.throws(() => launcherConfigFromEnv({ COCOON_KBS_URL: 'http://x', ...env }), (e) => isCocoonError(e, 'BAD_USAGE'), JSON.stringify(env));
});

test('COCOON_INIT_DATA: the Kata annotation encoding (base64 gzip TOML), checked before anything is sent', async () => {
  const { renderInitData } = await import('../../src/kbs/init-data.js');
  const { gzipSync } = await import('node:zlib');
  const rendered = renderInitData({ policy: 'shop/web', workload: 'web', kbsUrl: 'https://kbs.example' });
  const c = launcherConfigFromEnv({ COCOON_KBS_URL: 'http://x', COCOON_INIT_DATA: rendered.annotation });
  assert.equal(c.initData, rendered.toml);
  assert.equal(launcherConfigFromEnv({ COCOON_KBS_URL: 'http://x' }).initData, undefined);
  const bad: Array<[string, string]> = [
    ['not base64 gzip', 'bm90IGd6aXA='],
    ['gzip of something that is not TOML', gzipSync('version = ').toString('base64')],
    ['TOML without cocoon.json', gzipSync('version = "0.1.0"\nalgorithm = "sha256"\n[data]\n').toString('base64')],
    ['a gzip bomb past 64 KiB', gzipSync(Buffer.alloc(200 * 1024, 0x61)).toString('base64')],
  ];
  for (const [what, value] of bad) assert.throws(() => launcherConfigFromEnv({ COCOON_KBS_URL: 'http://x', COCOON_INIT_DATA: value }), (e) => isCocoonError(e) && ['INPUT_MALFORMED', 'INPUT_TOO_LARGE'].includes(e.code), what);
});
