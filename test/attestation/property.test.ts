/** Property tests: parsers given random or mutated input only ever throw CocoonError. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CocoonError } from '../../src/errors.js';
import { parseDcapQuote } from '../../src/attestation/dcap/quote.js';
import { parseSnpReport } from '../../src/attestation/snp/report.js';
import { parseAttest, parseAkPublic, parseTpmtPublic, parseTpmtSignature } from '../../src/attestation/tpm/structs.js';
import { parseCert, parseCrl, pemCerts } from '../../src/attestation/pki.js';
import { parseQeIdentity, parseTcbInfo } from '../../src/attestation/dcap/collateral.js';
import { parseAzureEvidence, parseHcl } from '../../src/attestation/azure/evidence.js';
import { decodeEvidence } from '../../src/attestation/input.js';
import { pckExtension } from '../../src/attestation/dcap/pck.js';
import { verifyEvidence } from '../../src/attestation/index.js';
import { makeDcapWorld } from './fixtures/dcap.js';
import { makeSnpWorld } from './fixtures/snp.js';
import { makeAttest } from './fixtures/tpm.js';

function onlyCocoon(f: () => unknown): void {
  try {
    f();
  } catch (e) {
    if (!(e instanceof CocoonError)) throw new Error(`non-CocoonError thrown: ${String(e)}`);
  }
}

const dcap = makeDcapWorld({ tee: 'tdx', version: 5 });
const snp = makeSnpWorld();
const attest = makeAttest(Buffer.from('abcd', 'hex'), Array.from({ length: 24 }, () => Buffer.alloc(32)), 'sha256');
const certDer = snp.certs[0]!.der;
const crlDer = Buffer.from(dcap.collateral.pck_crl, 'hex');

/** Random single-byte flips, truncation and extension of a valid sample. */
const mutated = (sample: Buffer): fc.Arbitrary<Buffer> =>
  fc.tuple(fc.array(fc.tuple(fc.nat(sample.length - 1), fc.integer({ min: 1, max: 255 })), { maxLength: 6 }), fc.option(fc.nat(sample.length)), fc.uint8Array({ maxLength: 16 })).map(([flips, cut, tail]) => {
    const b = Buffer.from(sample);
    for (const [i, x] of flips) b[i]! ^= x;
    return Buffer.concat([b.subarray(0, cut ?? b.length), Buffer.from(tail)]);
  });
const random = fc.uint8Array({ maxLength: 2048 }).map((u) => Buffer.from(u));

const PARSERS: [string, (b: Buffer) => unknown, Buffer][] = [
  ['DCAP quote', parseDcapQuote, dcap.quote],
  ['SNP report', parseSnpReport, snp.report],
  ['TPMS_ATTEST', parseAttest, attest],
  ['TPMT_SIGNATURE', parseTpmtSignature, Buffer.from('0014000b0004deadbeef', 'hex')],
  ['TPMT_PUBLIC', parseTpmtPublic, Buffer.from('0001000b00050072000000100014000b0800000000000400abcdef01', 'hex')],
  ['AK public', parseAkPublic, snp.certs[0]!.spki],
  ['certificate', (b) => pckExtension(parseCert(b)), certDer],
  ['CRL', parseCrl, crlDer],
  ['HCL report', parseHcl, Buffer.concat([Buffer.from('HCLA'), Buffer.alloc(0x4d4)])],
  ['evidence decoding', decodeEvidence, Buffer.from(JSON.stringify({ a: 1 }))],
];

describe('parsers never throw anything but CocoonError', () => {
  for (const [name, parse, sample] of PARSERS) {
    it(`${name}: random and mutated input`, () => {
      fc.assert(fc.property(fc.oneof(random, mutated(sample)), (b) => onlyCocoon(() => parse(b))), { numRuns: 300 });
    });
  }

  it('collateral JSON texts: mutated TCB info / QE identity', () => {
    const texts = [dcap.collateral.tcb_info, dcap.collateral.qe_identity];
    fc.assert(
      fc.property(fc.nat(1), fc.string({ maxLength: 40 }), fc.nat(4000), (which, ins, at) => {
        const t = texts[which]!;
        const s = t.slice(0, at % t.length) + ins + t.slice(at % t.length);
        onlyCocoon(() => parseTcbInfo(s));
        onlyCocoon(() => parseQeIdentity(s));
      }),
      { numRuns: 300 },
    );
    fc.assert(fc.property(fc.json(), (j) => onlyCocoon(() => parseTcbInfo(j))), { numRuns: 200 });
  });

  it('Azure evidence: arbitrary JSON values', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (j) => {
        onlyCocoon(() => parseAzureEvidence(j, 'az-snp-vtpm'));
        onlyCocoon(() => parseAzureEvidence(j, 'az-tdx-vtpm'));
      }),
      { numRuns: 300 },
    );
  });

  it('PEM text with mutated base64', () => {
    const p = `-----BEGIN CERTIFICATE-----\n${certDer.toString('base64')}\n-----END CERTIFICATE-----\n`;
    fc.assert(fc.property(fc.nat(p.length - 1), fc.constantFrom('A', '/', '=', '-', ' '), (i, ch) => onlyCocoon(() => pemCerts(p.slice(0, i) + ch + p.slice(i + 1)))), { numRuns: 300 });
  });

  it('verifyEvidence never throws on mutated quotes, and never verifies a mutated signed byte', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(dcap.quote.length - 1), fc.integer({ min: 1, max: 255 }), async (i, x) => {
        const q = Buffer.from(dcap.quote);
        q[i]! ^= x;
        const r = await verifyEvidence('tdx', q, { anchors: dcap.anchors, collateral: dcap.collateral }, { at: dcap.at });
        if (i < 54 + 584 + 4 + 64 + 64) assert.equal(r.verified, false, `byte ${i} flipped but verified`);
      }),
      { numRuns: 200 },
    );
  });
});
