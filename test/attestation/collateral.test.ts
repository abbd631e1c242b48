import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { verifyEvidence } from '../../src/attestation/index.js';
import { DiskCache, MemoryCache } from '../../src/attestation/collateral/cache.js';
import { IntelPcsClient, rawJsonMember } from '../../src/attestation/collateral/pcs.js';
import { AmdKdsClient } from '../../src/attestation/collateral/kds.js';
import { FileCollateralSource } from '../../src/attestation/collateral/source.js';
import { isCocoonError } from '../../src/errors.js';
import { toPem } from '../../src/attestation/pki.js';
import { AT, makeDcapWorld } from './fixtures/dcap.js';
import { makeSnpWorld, SNP_AT } from './fixtures/snp.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

async function listen(h: Handler): Promise<{ server: Server; url: string }> {
  const server = createServer(h);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address() as { port: number };
  return { server, url: `http://127.0.0.1:${addr.port}` };
}

describe('collateral clients against a local HTTP server', () => {
  const w = makeDcapWorld({ tee: 'tdx' });
  const snp = makeSnpWorld();
  const hits: string[] = [];
  let srv: { server: Server; url: string };
  let hang: { server: Server; url: string };
  let dir: string;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'cocoon-cache-'));
    srv = await listen((req, res) => {
      const u = new URL(req.url ?? '/', 'http://x');
      hits.push(u.pathname);
      const c = w.collateral;
      if (u.pathname === '/tdx/certification/v4/tcb') {
        res.setHeader('TCB-Info-Issuer-Chain', encodeURIComponent(c.tcb_info_issuer_chain));
        res.end(`{"tcbInfo":${c.tcb_info},"signature":"${c.tcb_info_signature}"}`);
      } else if (u.pathname === '/tdx/certification/v4/qe/identity') {
        res.setHeader('SGX-Enclave-Identity-Issuer-Chain', encodeURIComponent(c.qe_identity_issuer_chain));
        res.end(`{"enclaveIdentity": ${c.qe_identity}, "signature": "${c.qe_identity_signature}"}`);
      } else if (u.pathname === '/sgx/certification/v4/pckcrl') {
        res.setHeader('SGX-PCK-CRL-Issuer-Chain', encodeURIComponent(c.pck_crl_issuer_chain));
        res.end(Buffer.from(c.pck_crl, 'hex'));
      } else if (u.pathname === '/root.crl') res.end(Buffer.from(c.root_ca_crl, 'hex'));
      else if (u.pathname.startsWith('/vcek/v1/Milan/cert_chain')) res.end(toPem(snp.certs[1]!) + toPem(snp.certs[2]!));
      else if (u.pathname.startsWith('/vcek/v1/Milan/')) res.end(snp.certs[0]!.der);
      else {
        res.statusCode = 404;
        res.end();
      }
    });
    hang = await listen(() => undefined);
  });
  after(async () => {
    srv.server.close();
    hang.server.closeAllConnections();
    hang.server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('rawJsonMember returns the exact signed text', () => {
    assert.equal(rawJsonMember('{"a":1, "tcbInfo" : {"x":"}{\\"","y":[1,{}]} ,"signature":"ab"}', 'tcbInfo'), '{"x":"}{\\"","y":[1,{}]}');
    assert.equal(rawJsonMember('{"tcbInfo":{"signature":"no"},"signature":"ab"}', 'signature'), '"ab"');
    assert.throws(() => rawJsonMember('{"a":{"tcbInfo":{}}}', 'tcbInfo'), (e: unknown) => isCocoonError(e, 'COLLATERAL_MALFORMED'));
  });

  it('PCS client → verified TDX quote; second run served from the disk cache', async () => {
    const mk = (): IntelPcsClient => new IntelPcsClient({ baseUrl: srv.url, rootCrlUrl: `${srv.url}/root.crl`, cache: new DiskCache(dir), now: () => AT, timeoutMs: 2000 });
    hits.length = 0;
    const r = await verifyEvidence('tdx', w.quote, { anchors: w.anchors, collateral: mk() }, { at: AT });
    assert.deepEqual(r.errors, []);
    assert.equal(hits.length, 4);
    const r2 = await verifyEvidence('tdx', w.quote, { anchors: w.anchors, collateral: mk() }, { at: AT });
    assert.equal(r2.verified, true);
    assert.equal(hits.length, 4, 'second verification must not hit the network');
  });

  it('cache entries past nextUpdate are refetched', async () => {
    const cache = new MemoryCache();
    const later = new Date(AT.getTime() + 25 * 86400e3);
    let now = AT;
    const c = new IntelPcsClient({ baseUrl: srv.url, rootCrlUrl: `${srv.url}/root.crl`, cache, now: () => now });
    hits.length = 0;
    await c.dcap({ tee: 'tdx', fmspc: '00906ed50000', ca: 'processor' });
    assert.equal(hits.length, 4);
    now = later;
    await c.dcap({ tee: 'tdx', fmspc: '00906ed50000', ca: 'processor' });
    assert.equal(hits.length, 7, 'TCB info, QE identity and PCK CRL expired (root CRL still fresh)');
  });

  it('timeouts and HTTP errors become COLLATERAL_UNAVAILABLE', async () => {
    const t0 = Date.now();
    const c = new IntelPcsClient({ baseUrl: hang.url, rootCrlUrl: `${hang.url}/r`, timeoutMs: 200 });
    await assert.rejects(c.dcap({ tee: 'sgx', fmspc: '00906ed50000', ca: 'processor' }), (e: unknown) => isCocoonError(e, 'COLLATERAL_UNAVAILABLE'));
    assert.ok(Date.now() - t0 < 2000);
    const d = new IntelPcsClient({ baseUrl: `${srv.url}/nothing`, timeoutMs: 1000 });
    await assert.rejects(d.dcap({ tee: 'sgx', fmspc: '00906ed50000', ca: 'processor' }), (e: unknown) => isCocoonError(e, 'COLLATERAL_UNAVAILABLE'));
  });

  it('KDS client fetches VCEK + chain for an SNP report', async () => {
    hits.length = 0;
    const kds = new AmdKdsClient({ baseUrl: srv.url, cache: new MemoryCache(), timeoutMs: 2000 });
    const r = await verifyEvidence('snp', snp.report, { anchors: snp.anchors, collateral: { dcap: () => Promise.reject(new Error('unused')), snp: (q) => kds.snp(q) } }, { at: SNP_AT });
    assert.deepEqual(r.errors, []);
    assert.ok(hits.some((h) => h.startsWith(`/vcek/v1/Milan/${'c1'.repeat(64)}`)));
  });

  it('CLI without --offline/--collateral fetches through PCS into the disk cache', async () => {
    const { writeFile, readdir } = await import('node:fs/promises');
    const { runVerify } = await import('../../src/cli/verify.js');
    const f = path.join(dir, 'quote.bin');
    await writeFile(f, w.quote);
    const cacheDir = path.join(dir, 'cli-cache');
    const saved = { ...process.env };
    Object.assign(process.env, { COCOON_PCS_URL: srv.url, COCOON_ROOT_CRL_URL: `${srv.url}/root.crl`, COCOON_CACHE_DIR: cacheDir });
    try {
      hits.length = 0;
      let out = '';
      const code = await runVerify({ tee: 'tdx', evidence: f, at: AT.toISOString(), json: true }, (x) => (out = x));
      assert.equal(code, 1, 'generated chain is not under the pinned Intel root');
      const j = JSON.parse(out) as { errors: { code: string; stage: string }[] };
      assert.ok(hits.length >= 4);
      assert.ok(j.errors.every((e) => e.stage !== 'collateral_parse'), JSON.stringify(j.errors));
      assert.ok(j.errors.some((e) => e.code === 'PCK_CHAIN_INVALID'));
      assert.equal((await readdir(cacheDir)).length, 4);
    } finally {
      for (const k of ['COCOON_PCS_URL', 'COCOON_ROOT_CRL_URL', 'COCOON_CACHE_DIR']) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
    }
  });

  it('file source reads QuoteCollateralV3 JSON', async () => {
    const { writeFile } = await import('node:fs/promises');
    const f = path.join(dir, 'coll.json');
    await writeFile(f, JSON.stringify(w.collateral));
    const r = await verifyEvidence('tdx', w.quote, { anchors: w.anchors, collateral: new FileCollateralSource({ collateral: f }) }, { at: AT });
    assert.equal(r.verified, true);
    await assert.rejects(new FileCollateralSource({}).dcap(), (e: unknown) => isCocoonError(e, 'COLLATERAL_UNAVAILABLE'));
  });
});
