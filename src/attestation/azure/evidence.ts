/**
 * Azure confidential VM evidence (CoCo Trustee az-snp-vtpm / az-tdx-vtpm, formats v0, v1, v2)
 * and the HCL report it carries.
 */
import type { KeyObject } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import { fail, fromBase64, fromHex, MAX_EVIDENCE_BYTES, need } from '../bytes.js';
import { pemCerts, type Cert } from '../pki.js';

export interface AzureEvidence {
  version: 0 | 1 | 2;
  hcl: Buffer;
  tpmMessage: Buffer;
  tpmSignature: Buffer;
  pcrs: Buffer[];
  vcek?: Cert;
  tdQuote?: Buffer;
}

export interface HclReport {
  version: number;
  reportType: number;
  hashType: number;
  hw: Buffer;
  varData: Buffer;
}

type J = Record<string, unknown>;

function obj(v: unknown, what: string): J {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('EVIDENCE_MALFORMED', `${what} is not an object`);
  return v as J;
}

function byteArray(v: unknown, what: string): Buffer {
  if (!Array.isArray(v) || v.length > MAX_EVIDENCE_BYTES) fail('EVIDENCE_MALFORMED', `${what} is not a byte array`);
  for (const x of v) if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > 255) fail('EVIDENCE_MALFORMED', `${what} is not a byte array`);
  return Buffer.from(v as number[]);
}

function strField(o: J, k: string, what: string): string {
  const v = o[k];
  if (typeof v !== 'string') fail('EVIDENCE_MALFORMED', `${what}.${k} is not a string`);
  return v;
}

function pcrList(v: unknown, dec: (x: unknown, w: string) => Buffer): Buffer[] {
  if (!Array.isArray(v) || v.length > 32) fail('EVIDENCE_MALFORMED', 'pcrs is not a list');
  const out = v.map((p, i) => dec(p, `pcrs[${i}]`));
  need(out.every((p) => p.length === 32), 'EVIDENCE_MALFORMED', 'PCR values must be SHA-256 digests');
  return out;
}

export function parseAzureEvidence(json: unknown, kind: 'az-snp-vtpm' | 'az-tdx-vtpm'): AzureEvidence {
  const d = obj(json, 'evidence');
  const v = d.version;
  if (v === 1 || v === 2) {
    const t = obj(d.tpm_quote, 'tpm_quote');
    const hex = (x: unknown, w: string): Buffer => (typeof x === 'string' ? fromHex(x, w) : fail('EVIDENCE_MALFORMED', `${w} is not hex`));
    const ev: AzureEvidence = {
      version: v,
      hcl: fromBase64(strField(d, 'hcl_report', 'evidence'), 'hcl_report'),
      tpmMessage: hex(t.message, 'tpm_quote.message'),
      tpmSignature: hex(t.signature, 'tpm_quote.signature'),
      pcrs: pcrList(t.pcrs, hex),
    };
    if (kind === 'az-snp-vtpm') {
      const [c] = pemCerts(`-----BEGIN CERTIFICATE-----\n${fromBase64(strField(d, 'vcek', 'evidence'), 'vcek').toString('base64')}\n-----END CERTIFICATE-----`);
      ev.vcek = c;
    } else ev.tdQuote = fromBase64(strField(d, 'td_quote', 'evidence'), 'td_quote');
    return ev;
  }
  need(v === undefined, 'EVIDENCE_MALFORMED', `unknown Azure evidence version ${String(v)}`);
  if (kind === 'az-snp-vtpm') {
    const t = obj(d.quote, 'quote');
    const vc = pemCerts(strField(d, 'vcek', 'evidence'));
    need(vc.length === 1, 'EVIDENCE_MALFORMED', 'vcek must hold one PEM certificate');
    return { version: 0, hcl: byteArray(d.report, 'report'), tpmMessage: byteArray(t.message, 'quote.message'), tpmSignature: byteArray(t.signature, 'quote.signature'), pcrs: pcrList(t.pcrs, byteArray), vcek: vc[0]! };
  }
  const t = obj(d.tpm_quote, 'tpm_quote');
  return { version: 0, hcl: byteArray(d.hcl_report, 'hcl_report'), tpmMessage: byteArray(t.message, 'tpm_quote.message'), tpmSignature: byteArray(t.signature, 'tpm_quote.signature'), pcrs: pcrList(t.pcrs, byteArray), tdQuote: byteArray(d.td_quote, 'td_quote') };
}

export function parseHcl(b: Buffer): HclReport {
  need(b.length >= 0x4d4 && b.subarray(0, 4).toString('latin1') === 'HCLA', 'EVIDENCE_MALFORMED', 'not an HCL report');
  const version = b.readUInt32LE(4);
  const reportType = b.readUInt32LE(0x4c8);
  const hashType = b.readUInt32LE(0x4cc);
  const varSize = b.readUInt32LE(0x4d0);
  need(varSize <= b.length - 0x4d4, 'EVIDENCE_MALFORMED', 'HCL variable data truncated');
  need(hashType === 1, 'EVIDENCE_MALFORMED', `HCL report data hash type ${hashType} is not SHA-256 (1)`);
  return { version, reportType, hashType, hw: b.subarray(0x20, 0x20 + 1184), varData: b.subarray(0x4d4, 0x4d4 + varSize) };
}

function varJson(varData: Buffer): J {
  try {
    return obj(JSON.parse(varData.toString('utf8')), 'HCL variable data');
  } catch (e) {
    if (e instanceof SyntaxError) fail('EVIDENCE_MALFORMED', 'HCL variable data is not JSON');
    throw e;
  }
}

const akMemo = new Map<string, KeyObject>();

/** The vTPM attestation key (JWK kid HCLAkPub) from the HCL variable data. */
export function hclAkPub(varData: Buffer): KeyObject {
  const keys = varJson(varData).keys;
  if (!Array.isArray(keys)) fail('EVIDENCE_MALFORMED', 'HCL variable data has no keys');
  const jwk = keys.find((k) => typeof k === 'object' && k !== null && (k as J).kid === 'HCLAkPub') as J | undefined;
  if (!jwk) fail('EVIDENCE_MALFORMED', 'HCLAkPub not found in HCL variable data');
  need(jwk.kty === 'RSA' && typeof jwk.n === 'string' && typeof jwk.e === 'string', 'EVIDENCE_MALFORMED', 'HCLAkPub is not an RSA JWK');
  const memoKey = `${jwk.n as string}.${jwk.e as string}`;
  const hit = akMemo.get(memoKey);
  if (hit) return hit;
  try {
    const key = createPublicKey({ key: { kty: 'RSA', n: jwk.n as string, e: jwk.e as string }, format: 'jwk' });
    if (akMemo.size > 256) akMemo.clear();
    akMemo.set(memoKey, key);
    return key;
  } catch (e) {
    return fail('EVIDENCE_MALFORMED', `HCLAkPub unusable: ${(e as Error).message}`);
  }
}

export function hclUserData(varData: Buffer): Buffer {
  const u = varJson(varData)['user-data'];
  if (typeof u !== 'string') fail('USER_DATA_MISMATCH', 'HCL variable data has no user-data');
  return fromHex(u, 'user-data', 'USER_DATA_MISMATCH');
}
