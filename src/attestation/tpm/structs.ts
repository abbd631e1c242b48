/** TPM 2.0 wire structures: TPMS_ATTEST (quote), TPMT_SIGNATURE, TPMT_PUBLIC / TPM2B_PUBLIC. */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { Reader, fail, need, toHex } from '../bytes.js';
import { publicKeyFromSpki } from '../pki.js';

export const TPM_GENERATED_VALUE = 0xff544347;
export const TPM_ST_ATTEST_QUOTE = 0x8018;
export const TPM_ALG = { RSA: 0x0001, SHA1: 0x0004, SHA256: 0x000b, SHA384: 0x000c, SHA512: 0x000d, NULL: 0x0010, RSASSA: 0x0014, RSAPSS: 0x0016, ECDSA: 0x0018, ECC: 0x0023 } as const;
export const HASH_NAME: Record<number, 'sha1' | 'sha256' | 'sha384' | 'sha512'> = { 0x4: 'sha1', 0xb: 'sha256', 0xc: 'sha384', 0xd: 'sha512' };
export const HASH_SIZE: Record<number, number> = { 0x4: 20, 0xb: 32, 0xc: 48, 0xd: 64 };
const MAX_STRUCT = 8192;

export interface PcrSelection {
  hash: number;
  pcrs: number[];
}

export interface TpmsAttest {
  magic: number;
  type: number;
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: number;
  firmwareVersion: bigint;
  pcrSelect: PcrSelection[];
  pcrDigest: Buffer;
}

export interface TpmtSignature {
  alg: number;
  hash: number;
  sig?: Buffer;
  r?: Buffer;
  s?: Buffer;
}

export function parseAttest(m: Buffer): TpmsAttest {
  if (m.length > MAX_STRUCT) fail('EVIDENCE_MALFORMED', 'TPMS_ATTEST too large');
  const r = new Reader(m, 'TPMS_ATTEST');
  const magic = r.u32be();
  const type = r.u16be();
  need(magic === TPM_GENERATED_VALUE, 'EVIDENCE_MALFORMED', 'TPMS_ATTEST magic is not TPM_GENERATED_VALUE');
  need(type === TPM_ST_ATTEST_QUOTE, 'EVIDENCE_MALFORMED', `TPMS_ATTEST type 0x${type.toString(16)} is not a quote`);
  const qualifiedSigner = r.tpm2b(1024);
  const extraData = r.tpm2b(1024);
  const clock = r.u64be();
  const resetCount = r.u32be();
  const restartCount = r.u32be();
  const safe = r.u8();
  const firmwareVersion = r.u64be();
  const count = r.u32be();
  need(count <= 16, 'EVIDENCE_MALFORMED', `PCR selection count ${count} too large`);
  const pcrSelect: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hash = r.u16be();
    const n = r.u8();
    need(n <= 32, 'EVIDENCE_MALFORMED', 'PCR select bitmap too large');
    const bm = r.take(n);
    const pcrs: number[] = [];
    for (let j = 0; j < n * 8; j++) if ((bm[j >> 3]! >> (j & 7)) & 1) pcrs.push(j);
    pcrSelect.push({ hash, pcrs });
  }
  const pcrDigest = r.tpm2b(64);
  need(r.remaining === 0, 'EVIDENCE_MALFORMED', 'trailing bytes after TPMS_ATTEST');
  return { magic, type, qualifiedSigner, extraData, clock, resetCount, restartCount, safe, firmwareVersion, pcrSelect, pcrDigest };
}

export function parseTpmtSignature(s: Buffer): TpmtSignature {
  if (s.length > MAX_STRUCT) fail('EVIDENCE_MALFORMED', 'TPMT_SIGNATURE too large');
  const r = new Reader(s, 'TPMT_SIGNATURE');
  const alg = r.u16be();
  const hash = r.u16be();
  need(HASH_NAME[hash] !== undefined, 'EVIDENCE_MALFORMED', `unsupported signature hash 0x${hash.toString(16)}`);
  let out: TpmtSignature;
  if (alg === TPM_ALG.RSASSA || alg === TPM_ALG.RSAPSS) out = { alg, hash, sig: r.tpm2b(1024) };
  else if (alg === TPM_ALG.ECDSA) out = { alg, hash, r: r.tpm2b(128), s: r.tpm2b(128) };
  else return fail('EVIDENCE_MALFORMED', `unsupported TPMT_SIGNATURE algorithm 0x${alg.toString(16)}`);
  need(r.remaining === 0, 'EVIDENCE_MALFORMED', 'trailing bytes after TPMT_SIGNATURE');
  return out;
}

const CURVES: Record<number, string> = { 0x3: 'P-256', 0x4: 'P-384', 0x5: 'P-521' };

/** TPMT_PUBLIC (RSA or ECC) → public key. */
export function parseTpmtPublic(b: Buffer): KeyObject {
  if (b.length > MAX_STRUCT) fail('EVIDENCE_MALFORMED', 'TPMT_PUBLIC too large');
  const r = new Reader(b, 'TPMT_PUBLIC');
  const type = r.u16be();
  r.u16be(); // nameAlg
  r.u32be(); // objectAttributes
  r.tpm2b(128); // authPolicy
  const sym = r.u16be();
  if (sym !== TPM_ALG.NULL) {
    r.u16be();
    r.u16be();
  }
  const scheme = r.u16be();
  if (scheme !== TPM_ALG.NULL) r.u16be();
  let jwk: Record<string, string>;
  if (type === TPM_ALG.RSA) {
    r.u16be(); // keyBits
    const exp = r.u32be() || 65537;
    const n = r.tpm2b(1024);
    let e = Buffer.alloc(4);
    e.writeUInt32BE(exp);
    while (e.length > 1 && e[0] === 0) e = e.subarray(1);
    jwk = { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') };
  } else if (type === TPM_ALG.ECC) {
    const curve = CURVES[r.u16be()] ?? fail('EVIDENCE_MALFORMED', 'unsupported TPM ECC curve');
    const kdf = r.u16be();
    if (kdf !== TPM_ALG.NULL) r.u16be();
    const x = r.tpm2b(66);
    const y = r.tpm2b(66);
    jwk = { kty: 'EC', crv: curve, x: x.toString('base64url'), y: y.toString('base64url') };
  } else return fail('EVIDENCE_MALFORMED', `unsupported TPMT_PUBLIC type 0x${type.toString(16)}`);
  need(r.remaining === 0, 'EVIDENCE_MALFORMED', 'trailing bytes after TPMT_PUBLIC');
  try {
    return createPublicKey({ key: jwk, format: 'jwk' });
  } catch (e) {
    return fail('EVIDENCE_MALFORMED', `TPMT_PUBLIC key unusable: ${(e as Error).message}`);
  }
}

const akMemo = new Map<string, KeyObject>();

/** An AK given as SPKI DER, SPKI PEM, TPMT_PUBLIC or TPM2B_PUBLIC (memoized by content). */
export function parseAkPublic(input: Buffer | string): KeyObject {
  const k = createHash('sha256').update(input).digest('hex');
  const hit = akMemo.get(k);
  if (hit) return hit;
  const key = parseAkUncached(input);
  if (akMemo.size > 256) akMemo.clear();
  akMemo.set(k, key);
  return key;
}

function parseAkUncached(input: Buffer | string): KeyObject {
  const text = typeof input === 'string' ? input : input.subarray(0, 64).toString('latin1');
  if (text.includes('-----BEGIN PUBLIC KEY-----')) {
    try {
      return createPublicKey(typeof input === 'string' ? input : input.toString('latin1'));
    } catch (e) {
      return fail('EVIDENCE_MALFORMED', `AK PEM unusable: ${(e as Error).message}`);
    }
  }
  const b = typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
  if (b[0] === 0x30) return publicKeyFromSpki(b);
  if (b.length >= 2 && b.readUInt16BE(0) === b.length - 2) return parseTpmtPublic(b.subarray(2));
  return parseTpmtPublic(b);
}

export const attestSummary = (a: TpmsAttest): string => `quote extraData=${toHex(a.extraData)} pcrs=${a.pcrSelect.map((s) => `${HASH_NAME[s.hash] ?? s.hash}:${s.pcrs.join(',')}`).join(' ')}`;
