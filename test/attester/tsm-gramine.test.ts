/**
 * configfs-tsm (TDX, SNP) and Gramine /dev/attestation attesters against fake trees that
 * reproduce the kernel / LibOS file protocols (see fake-tree.ts). No hardware involved.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TsmAttester, parseSnpCertTable, tsmReport } from '../../src/attester/tsm.js';
import { GramineAttester } from '../../src/attester/gramine.js';
import { applyEventLog, EVENT_LOG_KEY } from '../../src/attestation/eventlog.js';
import { decodeEvidence } from '../../src/attestation/index.js';
import { evidenceBytes } from '../../src/attestation/input.js';
import { isCocoonError } from '../../src/errors.js';
import { fakeGramineFs, fakeRtmrFs, fakeTsmFs, makeGramineTree } from './fake-tree.js';

let work: string;
let base: string;
const quoteOf = (inblob: Buffer): Buffer => Buffer.concat([Buffer.from('FAKEQUOTE'), inblob]);

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'cocoon-fake-tsm-'));
  base = join(work, 'tsm', 'report');
  await mkdir(base, { recursive: true });
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

test('configfs-tsm: report request follows the protocol and removes its entry', async () => {
  const rd = randomBytes(64);
  const fs = fakeTsmFs(base, 'tdx_guest', quoteOf, undefined);
  const r = await tsmReport(rd, { base, fs });
  assert.deepEqual(r.outblob, quoteOf(rd));
  assert.equal(r.provider, 'tdx_guest');
  assert.equal(r.generation, 1);
  assert.equal(r.auxblob, undefined);
  assert.deepEqual(await readdir(base), [], 'entry removed');
  // SNP with privlevel: two writes → generation 2
  const r2 = await tsmReport(rd, { base, fs: fakeTsmFs(base, 'sev_guest', quoteOf, Buffer.alloc(24)), privlevel: 1 });
  assert.equal(r2.generation, 2);
  await assert.rejects(tsmReport(rd.subarray(0, 32), { base, fs }), (e) => isCocoonError(e, 'BAD_USAGE'));
  await assert.rejects(tsmReport(rd, { base, fs, privlevel: 4 }), (e) => isCocoonError(e, 'BAD_USAGE'));
});

test('configfs-tsm: a concurrent writer (generation changes) is detected', async () => {
  const rd = randomBytes(64);
  // another process writes inblob between our write and our read of outblob
  const racer = fakeTsmFs(base, 'tdx_guest', quoteOf, undefined, {
    beforeRead: async (name, dir) => {
      if (name === 'outblob') {
        await writeFile(join(dir, 'inblob'), randomBytes(64));
        const g = Number((await readFile(join(dir, 'generation'), 'utf8')).trim());
        await writeFile(join(dir, 'generation'), `${g + 1}\n`);
      }
    },
  });
  await assert.rejects(tsmReport(rd, { base, fs: racer }), (e) => isCocoonError(e, 'TSM_REPORT_RACE') && /changed from 1 to 2/.test(e.message));
  // another process wrote before our first generation read
  let first = true;
  const early = fakeTsmFs(base, 'tdx_guest', quoteOf, undefined, {
    beforeRead: async (name, dir) => {
      if (name === 'generation' && first) {
        first = false;
        await writeFile(join(dir, 'generation'), '7\n');
      }
    },
  });
  await assert.rejects(tsmReport(rd, { base, fs: early }), (e) => isCocoonError(e, 'TSM_REPORT_RACE'));
  assert.deepEqual(await readdir(base), [], 'entries removed after failures too');
});

test('configfs-tsm: missing tree or files give clear errors', async () => {
  const rd = randomBytes(64);
  await assert.rejects(tsmReport(rd, { base: join(work, 'absent'), fs: fakeTsmFs(base, 'tdx_guest', quoteOf, undefined) }), (e) => isCocoonError(e, 'TEE_NOT_FOUND') && /configfs-tsm/.test(e.message));
  await assert.rejects(tsmReport(rd, { base, fs: fakeTsmFs(base, 'tdx_guest', quoteOf, undefined, { omit: ['provider'] }) }), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED') && /provider/.test(e.message));
  await assert.rejects(tsmReport(rd, { base, fs: fakeTsmFs(base, 'tdx_guest', quoteOf, undefined, { omit: ['inblob'] }) }), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED') && /inblob/.test(e.message));
  await assert.rejects(tsmReport(rd, { base, fs: fakeTsmFs(base, 'tdx_guest', () => Buffer.alloc(0), undefined) }), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED') && /empty outblob/.test(e.message));
  await assert.rejects(tsmReport(rd, { base, fs: fakeTsmFs(base, 'tdx_guest', quoteOf, undefined, { omit: ['generation'] }) }), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED'));
  // wrong provider for the requested TEE
  await assert.rejects(new TsmAttester('snp', { base, fs: fakeTsmFs(base, 'tdx_guest', quoteOf, undefined) }).getEvidence(rd), (e) => isCocoonError(e, 'TEE_NOT_FOUND') && /tdx_guest/.test(e.message));
});

function guidBytes(text: string): Buffer {
  const h = text.replace(/-/g, '');
  const b = Buffer.from(h, 'hex');
  return Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(), Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8)]);
}

function certTable(entries: Array<[string, Buffer]>): Buffer {
  const head = Buffer.alloc(24 * (entries.length + 1));
  let offset = head.length;
  entries.forEach(([guid, der], i) => {
    guidBytes(guid).copy(head, i * 24);
    head.writeUInt32LE(offset, i * 24 + 16);
    head.writeUInt32LE(der.length, i * 24 + 20);
    offset += der.length;
  });
  return Buffer.concat([head, ...entries.map(([, d]) => d)]);
}

test('SNP: report plus the auxblob certificate table → {"report", "certs": [VEK, ASK, ARK]}', async () => {
  const vcek = randomBytes(900);
  const ask = randomBytes(1500);
  const ark = randomBytes(1400);
  const table = certTable([
    ['c0b406a4-a803-4952-9743-3fb6014cd0ae', ark],
    ['63da758d-e664-4564-adc5-f4b93be8accd', vcek],
    ['4ab7b379-bbac-4fe4-a02f-05aef327c782', ask],
  ]);
  const report = (inblob: Buffer): Buffer => {
    const r = Buffer.alloc(1184);
    inblob.copy(r, 0x50);
    return r;
  };
  const rd = randomBytes(64);
  const a = new TsmAttester('snp', { base, fs: fakeTsmFs(base, 'sev_guest', report, table) });
  assert.equal(await a.measure({ measurement: 'a'.repeat(96), policy: 'o/a', workload: 'w' }), undefined, 'SNP has no runtime register');
  const ev = await a.getEvidence(rd);
  const certs = ev.certs as string[];
  assert.equal(certs.length, 3);
  const der = (pem: string) => Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64');
  assert.deepEqual([der(certs[0]!), der(certs[1]!), der(certs[2]!)], [vcek, ask, ark]);
  // the KBS's decoder finds the report in this shape
  const bytes = evidenceBytes(decodeEvidence(JSON.stringify(ev)));
  assert.equal(bytes.length, 1184);
  assert.deepEqual(bytes.subarray(0x50, 0x90), rd);
  // malformed tables
  assert.throws(() => parseSnpCertTable(Buffer.alloc(10)), (e) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
  const oob = certTable([['63da758d-e664-4564-adc5-f4b93be8accd', vcek]]);
  oob.writeUInt32LE(1 << 20, 20);
  assert.throws(() => parseSnpCertTable(oob), (e) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
  const noEnd = certTable([['63da758d-e664-4564-adc5-f4b93be8accd', vcek]]).subarray(0, 24);
  assert.throws(() => parseSnpCertTable(noEnd), (e) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
  // a short report is refused
  await assert.rejects(new TsmAttester('snp', { base, fs: fakeTsmFs(base, 'sev_guest', quoteOf, undefined) }).getEvidence(rd), (e) => isCocoonError(e, 'EVIDENCE_MALFORMED'));
});

test('TDX: RTMR3 extension via sysfs and an event log that replays against the quoted RTMR3', async () => {
  const rtmr = join(work, 'rtmr3:sha384');
  await writeFile(rtmr, Buffer.alloc(48));
  const a = new TsmAttester('tdx', { base, rtmrPath: rtmr, fs: fakeRtmrFs(rtmr, fakeTsmFs(base, 'tdx_guest', quoteOf, undefined)) });
  const measurement = createHash('sha384').update('workload').digest('hex');
  assert.equal(await a.measure({ measurement, policy: 'test/redis', workload: 'redis' }), 'RTMR3');
  const rd = randomBytes(64);
  const ev = await a.getEvidence(rd);
  assert.deepEqual(Buffer.from(ev.quote as string, 'base64'), quoteOf(rd));
  const claims: Record<string, unknown> = { rtmr3: (await readFile(rtmr)).toString('hex') };
  assert.equal(applyEventLog(ev, claims), true);
  assert.equal(claims.measurement, measurement);
  assert.equal(claims.workload_register, 'rtmr3:sha384');
  // a second launcher in the same TD cannot reuse RTMR3
  await assert.rejects(new TsmAttester('tdx', { base, rtmrPath: rtmr }).measure({ measurement, policy: 'test/redis', workload: 'redis' }), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED') && /RTMR3/.test(e.message));
  // kernel without the RTMR attribute: no event log, evidence is the plain quote
  const b = new TsmAttester('tdx', { base, rtmrPath: join(work, 'no-rtmr'), fs: fakeTsmFs(base, 'tdx_guest', quoteOf, undefined) });
  assert.equal(await b.measure({ measurement, policy: 'test/redis', workload: 'redis' }), undefined);
  assert.equal(EVENT_LOG_KEY in (await b.getEvidence(rd)), false);
});

test('Gramine /dev/attestation: dcap, user_report_data, quote', async () => {
  const dir = join(work, 'attestation');
  await makeGramineTree(dir);
  const rd = randomBytes(64);
  const ev = await new GramineAttester(dir, fakeGramineFs(dir)).getEvidence(rd);
  const quote = Buffer.from(ev.quote as string, 'base64');
  assert.deepEqual(quote.subarray(368, 432), rd);
  assert.deepEqual(await readFile(join(dir, 'user_report_data')), rd);
  // a concurrent writer replaced user_report_data before the quote was read
  await assert.rejects(new GramineAttester(dir, fakeGramineFs(dir, { tamper: true })).getEvidence(rd), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED'));
  // wrong attestation type, missing interface, bad input
  const epid = join(work, 'attestation-epid');
  await makeGramineTree(epid, 'epid');
  await assert.rejects(new GramineAttester(epid, fakeGramineFs(epid)).getEvidence(rd), (e) => isCocoonError(e, 'TEE_UNSUPPORTED') && /dcap/.test(e.message));
  await assert.rejects(new GramineAttester(join(work, 'none')).getEvidence(rd), (e) => isCocoonError(e, 'TEE_NOT_FOUND'));
  await assert.rejects(new GramineAttester(dir, fakeGramineFs(dir)).getEvidence(rd.subarray(0, 10)), (e) => isCocoonError(e, 'BAD_USAGE'));
});
