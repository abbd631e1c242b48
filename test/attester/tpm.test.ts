/**
 * The raw TPM 2.0 client and the tpm attester against a real software TPM (swtpm), with
 * tpm2-tools as an independent peer where installed; the KBS verifier's trusted-AK list and
 * event-log replay on real quotes; malformed TPM responses. Skips visibly without swtpm.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TpmClient, ALG, TpmResponseError } from '../../src/attester/tpm/client.js';
import type { TpmTransport } from '../../src/attester/tpm/transport.js';
import { parseTcti } from '../../src/attester/tpm/tcti.js';
import { TpmAttester, ensureAk, DEFAULT_AK_HANDLE } from '../../src/attester/tpm.js';
import { parseTpmtPublic } from '../../src/attestation/tpm/structs.js';
import { verifyEvidence } from '../../src/attestation/index.js';
import { eventDigest, type CocoonEventLog } from '../../src/attestation/eventlog.js';
import { createBrokerVerifier, parseTrustedAks } from '../../src/kbs/verifier.js';
import { isCocoonError } from '../../src/errors.js';
import { startSwtpm, swtpmMissing, type Swtpm } from './swtpm-helper.js';

const execFileAsync = promisify(execFile);
const tools = spawnSync('sh', ['-c', 'command -v tpm2_pcrread && command -v tpm2_readpublic && command -v tpm2_createprimary && command -v tpm2_evictcontrol']).status === 0;
const measurement = createHash('sha384').update('workload').digest('hex');
const identity = { measurement, policy: 'test/redis', workload: 'redis' };

class FakeTransport implements TpmTransport {
  constructor(private readonly reply: (cmd: Buffer) => Buffer) {}
  async send(cmd: Buffer): Promise<Buffer> {
    return this.reply(cmd);
  }
  async close(): Promise<void> {}
}

function response(rc: number, body: Buffer = Buffer.alloc(0), tag = 0x8001, sizeDelta = 0): Buffer {
  const h = Buffer.alloc(10);
  h.writeUInt16BE(tag, 0);
  h.writeUInt32BE(10 + body.length + sizeDelta, 2);
  h.writeUInt32BE(rc, 6);
  return Buffer.concat([h, body]);
}

test('TPM client: TPM errors and malformed responses are bounded TPM_COMMAND_FAILED errors', async () => {
  const rc = new TpmClient(new FakeTransport(() => response(0x18b)));
  await assert.rejects(rc.readPublic(0x81010002), (e) => e instanceof TpmResponseError && e.isHandleError && e.code === 'TPM_COMMAND_FAILED' && /0x18b/.test(e.message));
  const sizeLie = new TpmClient(new FakeTransport(() => response(0, Buffer.alloc(4), 0x8001, 3)));
  await assert.rejects(sizeLie.readPublic(1), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED'));
  const truncated = new TpmClient(new FakeTransport(() => response(0, Buffer.from([0x01, 0x00, 0x01]))));
  await assert.rejects(truncated.readPublic(1), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED') && /truncated/.test(e.message));
  const hugeCount = Buffer.alloc(12);
  hugeCount.writeUInt32BE(0xffffffff, 4);
  await assert.rejects(new TpmClient(new FakeTransport(() => response(0, hugeCount))).pcrRead(ALG.SHA256, [0]), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED'));
  const paramLie = Buffer.alloc(4);
  paramLie.writeUInt32BE(1000);
  await assert.rejects(new TpmClient(new FakeTransport(() => response(0, paramLie, 0x8002))).pcrExtend(23, ALG.SHA256, Buffer.alloc(32)), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED'));
  // retryable warnings are retried, then the answer is used
  let n = 0;
  const retry = new TpmClient(new FakeTransport(() => (++n < 3 ? response(0x922) : response(0x18b))));
  await assert.rejects(retry.readPublic(1), (e) => e instanceof TpmResponseError && e.rc === 0x18b);
  assert.equal(n, 3);
  await assert.rejects(TpmClient.connect(parseTcti('swtpm:host=127.0.0.1,port=1')), (e) => isCocoonError(e, 'TEE_NOT_FOUND'));
  await assert.rejects(TpmClient.connect(parseTcti('device:/dev/tpmrm99')), (e) => isCocoonError(e, 'TEE_NOT_FOUND'));
});

test('swtpm TCP transport: silent, oversized and truncated peers fail within bounds', async () => {
  for (const [name, onData] of [
    ['silent', () => undefined],
    ['oversized', (sock: Socket) => sock.write(response(0, Buffer.alloc(20 * 1024)))],
    ['hangs up', (sock: Socket) => sock.end(response(0).subarray(0, 6))],
  ] as const) {
    const server = createServer((sock) => sock.on('data', () => onData(sock)));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    const c = await TpmClient.connect(parseTcti(`swtpm:host=127.0.0.1,port=${port}`), 300);
    const t0 = Date.now();
    await assert.rejects(c.readPublic(0x81010002), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED'), name);
    assert.ok(Date.now() - t0 < 5000, name);
    await assert.rejects(c.readPublic(0x81010002), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED'), `${name}: connection unusable afterwards`);
    await c.close();
    server.close();
  }
});

describe('real TPM 2.0 (swtpm)', { skip: swtpmMissing }, () => {
  let tpm: Swtpm;
  // swtpm serves one connection at a time: connect per step so tpm2-tools can take turns
  const withClient = async <T>(fn: (c: TpmClient) => Promise<T>): Promise<T> => {
    const c = await TpmClient.connect(parseTcti(tpm.tcti));
    try {
      return await fn(c);
    } finally {
      await c.close();
    }
  };
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, TPM2TOOLS_TCTI: tpm.tcti });

  before(async () => {
    tpm = await startSwtpm();
  });
  after(async () => {
    await tpm?.stop();
  });

  test('PCR read / extend / reset (tpm2_pcrread as peer)', async () => {
    const d = randomBytes(32);
    const want = createHash('sha256').update(Buffer.alloc(32)).update(d).digest();
    await withClient(async (client) => {
      const all = await client.pcrRead(ALG.SHA256, Array.from({ length: 24 }, (_, i) => i));
      assert.equal(all.size, 24);
      await client.pcrReset(23);
      await client.pcrExtend(23, ALG.SHA256, d);
      assert.deepEqual((await client.pcrRead(ALG.SHA256, [23])).get(23), want);
    });
    if (tools) {
      const { stdout } = await execFileAsync('tpm2_pcrread', ['sha256:23'], { env: env(), timeout: 30_000 });
      assert.match(stdout.toLowerCase(), new RegExp(want.toString('hex')));
    }
    await withClient(async (client) => {
      await client.pcrReset(23);
      assert.deepEqual((await client.pcrRead(ALG.SHA256, [23])).get(23), Buffer.alloc(32));
      await assert.rejects(client.pcrReset(0), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED'), 'PCR 0 is not resettable from locality 0');
      await assert.rejects(client.pcrExtend(23, ALG.SHA256, Buffer.alloc(5)), (e) => isCocoonError(e, 'BAD_USAGE'));
    });
  });

  test('AK: created and persisted at 0x81010002 when absent, then reused (tpm2_readpublic as peer)', async () => {
    const first = await withClient((c) => ensureAk(c, DEFAULT_AK_HANDLE));
    const again = await withClient((c) => ensureAk(c, DEFAULT_AK_HANDLE));
    assert.deepEqual(first, again);
    const key = parseTpmtPublic(first);
    assert.equal(key.asymmetricKeyType, 'ec');
    if (tools) {
      const out = join(tpm.dir, 'ak.pem');
      await execFileAsync('tpm2_readpublic', ['-c', '0x81010002', '-f', 'pem', '-o', out], { env: env(), timeout: 30_000 });
      const peer = createPublicKey((await import('node:fs')).readFileSync(out));
      assert.deepEqual(peer.export({ type: 'spki', format: 'der' }), key.export({ type: 'spki', format: 'der' }));
      // a non-AK object at a handle is refused
      await execFileAsync('tpm2_createprimary', ['-C', 'o', '-G', 'ecc', '-c', join(tpm.dir, 'p.ctx')], { env: env(), timeout: 30_000 });
      await execFileAsync('tpm2_evictcontrol', ['-C', 'o', '-c', join(tpm.dir, 'p.ctx'), '0x81010003'], { env: env(), timeout: 30_000 });
      await execFileAsync('tpm2_flushcontext', ['-t'], { env: env(), timeout: 30_000 }).catch(() => undefined);
      await assert.rejects(withClient((c) => ensureAk(c, 0x81010003)), (e) => isCocoonError(e, 'TPM_COMMAND_FAILED') && /not a restricted/.test(e.message));
    }
  });

  test('attester: measure + quote → the verifier replays the event log and exposes the measurement', async () => {
    const a = new TpmAttester({ tcti: tpm.tcti });
    assert.equal(await a.measure(identity), 'PCR 23 (sha256)');
    const rd = randomBytes(64);
    const ev = await a.getEvidence(rd);
    const ak = Buffer.from(ev.ak_public as string, 'base64');
    const at = new Date();
    const ok = await verifyEvidence('tpm', JSON.stringify(ev), { ak }, { at, reportData: rd });
    assert.deepEqual(ok.errors, []);
    assert.equal(ok.claims.measurement, measurement);
    assert.equal(ok.claims.workload_register, 'pcr23:sha256');
    assert.equal(ok.claims.nonce, rd.toString('hex'));

    // negative: tampered event (digest recomputed so only the replay can notice)
    const tampered = structuredClone(ev) as { cocoon_event_log: CocoonEventLog };
    tampered.cocoon_event_log.events[0]!.event.measurement = 'e'.repeat(96);
    tampered.cocoon_event_log.events[0]!.digest = eventDigest('sha256', tampered.cocoon_event_log.events[0]!.event).toString('hex');
    const t = await verifyEvidence('tpm', JSON.stringify(tampered), { ak }, { at, reportData: rd });
    assert.deepEqual(t.errors.map((e) => e.code), ['EVENT_LOG_MISMATCH']);
    assert.equal(t.claims.measurement, undefined);
    // negative: the log names a PCR that was not extended
    const wrongPcr = structuredClone(ev) as { cocoon_event_log: CocoonEventLog };
    wrongPcr.cocoon_event_log.register = 'pcr7';
    const w = await verifyEvidence('tpm', JSON.stringify(wrongPcr), { ak }, { at, reportData: rd });
    assert.deepEqual(w.errors.map((e) => e.code), ['EVENT_LOG_MISMATCH']);
    // negative: a PCR value changed in transit
    const pcrs = structuredClone(ev) as { tpm_quote: { pcrs: string[] } };
    pcrs.tpm_quote.pcrs[23] = '11'.repeat(32);
    const p = await verifyEvidence('tpm', JSON.stringify(pcrs), { ak }, { at, reportData: rd });
    assert.ok(p.errors.some((e) => e.code === 'PCR_DIGEST_MISMATCH'));
    // negative: replayed with another report data
    const n = await verifyEvidence('tpm', JSON.stringify(ev), { ak }, { at, reportData: randomBytes(64) });
    assert.ok(n.errors.some((e) => e.code === 'NONCE_INVALID'));
  });

  test('KBS verifier: only trusted AKs; report_data from the quote; event-log mismatch refused', async () => {
    const a = new TpmAttester({ tcti: tpm.tcti });
    await a.measure(identity);
    const rd = randomBytes(64);
    const ev = await a.getEvidence(rd);
    const akPem = createPublicKey({ key: Buffer.from(ev.ak_public as string, 'base64'), format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }) as string;
    const otherPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const at = new Date();
    const trusted = createBrokerVerifier({ simRoots: [], trustedAks: [otherPem, akPem] });
    const ok = await trusted('tpm', ev, { at, reportData: rd });
    assert.equal(ok.verified, true, JSON.stringify(ok.errors));
    assert.equal(ok.claims.report_data, rd.toString('hex'));
    assert.equal(ok.claims.measurement, measurement);
    const untrusted = await createBrokerVerifier({ simRoots: [], trustedAks: [otherPem] })('tpm', ev, { at, reportData: rd });
    assert.deepEqual(untrusted.errors.map((e) => e.code), ['AK_NOT_TRUSTED']);
    assert.equal((await createBrokerVerifier({ simRoots: [] })('tpm', ev, { at, reportData: rd })).errors[0]?.code, 'AK_NOT_TRUSTED');
    assert.equal((await trusted('tpm', { ...ev, ak_public: 'AAAA' }, { at, reportData: rd })).errors[0]?.code, 'EVIDENCE_MALFORMED');
    assert.equal((await trusted('tpm', 'not json', { at, reportData: rd })).errors[0]?.code, 'EVIDENCE_MALFORMED');
    const bad = structuredClone(ev) as { cocoon_event_log: CocoonEventLog };
    bad.cocoon_event_log.register = 'pcr16';
    const mismatch = await trusted('tpm', bad, { at, reportData: rd });
    assert.equal(mismatch.verified, false);
    assert.equal(mismatch.errors[0]?.code, 'EVENT_LOG_MISMATCH');
    assert.throws(() => parseTrustedAks(['not a key']), (e) => isCocoonError(e, 'BAD_USAGE'));
    // qualifying data = SHA-256(report data) (TPMs whose TPM2B_DATA is < 64 bytes) is accepted; other values are not
    const all = Array.from({ length: 24 }, (_, i) => i);
    for (const [q, want] of [[createHash('sha256').update(rd).digest(), true], [randomBytes(32), false]] as const) {
      const quoted = await withClient(async (c) => ({ q: await c.quote(DEFAULT_AK_HANDLE, q, ALG.SHA256, [0, 23]), pcrs: await c.pcrRead(ALG.SHA256, all) }));
      const short = { ak_public: ev.ak_public, tpm_quote: { message: quoted.q.message.toString('base64'), signature: quoted.q.signature.toString('base64'), pcrs: all.map((i) => quoted.pcrs.get(i)!.toString('hex')) } };
      const r = await trusted('tpm', short, { at, reportData: rd });
      assert.equal(r.verified, want, JSON.stringify(r.errors));
      if (want) assert.equal(r.claims.report_data, rd.toString('hex'));
      else assert.equal(r.errors[0]?.code, 'NONCE_INVALID');
    }
  });

  test('a non-resettable PCR that was already extended is refused before attesting', async () => {
    await withClient((c) => c.pcrExtend(15, ALG.SHA256, randomBytes(32)));
    await assert.rejects(new TpmAttester({ tcti: tpm.tcti, pcr: 15 }).measure(identity), (e) => isCocoonError(e, 'ATTESTER_IO_FAILED') && /PCR 15/.test(e.message));
  });
});
