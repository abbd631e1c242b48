/**
 * Minimal, strict X.509 certificate and CRL model on our own DER reader, with signature
 * checks on node:crypto. Parsing results and certificate-signature verdicts are memoized by
 * the SHA-256 of the exact DER bytes (a cache of pure functions: same bytes, same answer).
 */
import { createHash, createPublicKey, verify as cryptoVerify, constants, type KeyObject } from 'node:crypto';
import type { ErrorCode } from '../errors.js';
import { fail, fromBase64 } from './bytes.js';
import { children, expectTag, oidToString, parseDer, parseTime, type Tlv } from './der.js';

export interface Cert {
  der: Buffer;
  fingerprint: string;
  tbs: Buffer;
  sigAlg: string;
  sigParams: Tlv | undefined;
  signature: Buffer;
  /** Serial number as lower-case hex of the DER INTEGER content bytes. */
  serial: string;
  issuer: Buffer;
  subject: Buffer;
  issuerCN: string;
  subjectCN: string;
  notBefore: Date;
  notAfter: Date;
  spki: Buffer;
  /** extnID → extnValue (the OCTET STRING contents). */
  extensions: Map<string, Buffer>;
  publicKey(): KeyObject;
}

export interface Crl {
  der: Buffer;
  fingerprint: string;
  tbs: Buffer;
  sigAlg: string;
  sigParams: Tlv | undefined;
  signature: Buffer;
  issuer: Buffer;
  issuerCN: string;
  thisUpdate: Date;
  nextUpdate: Date | undefined;
  revoked: Set<string>;
}

const OID_CN = '2.5.4.3';
const MAX_CACHE = 4096;
const certCache = new Map<string, Cert>();
const crlCache = new Map<string, Crl>();
const sigCache = new Map<string, boolean>();
const keyCache = new Map<string, KeyObject>();

function remember<V>(m: Map<string, V>, k: string, v: V): V {
  if (m.size >= MAX_CACHE) m.clear();
  m.set(k, v);
  return v;
}

export const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** Drops all memoized parse / verification results (tests and benchmarks). */
export function clearPkiCaches(): void {
  certCache.clear();
  crlCache.clear();
  pemMemo.clear();
  sigCache.clear();
  keyCache.clear();
}

export function nameCN(name: Buffer, code: ErrorCode = 'EVIDENCE_MALFORMED'): string {
  const seq = parseDer(name, code);
  for (const set of children(seq, code)) {
    for (const atv of children(set, code)) {
      const [oid, val] = children(atv, code);
      if (oid && val && oid.tag === 0x06 && oidToString(oid.value, code) === OID_CN) return val.value.toString('utf8');
    }
  }
  return '';
}

export function publicKeyFromSpki(spki: Buffer, code: ErrorCode = 'EVIDENCE_MALFORMED'): KeyObject {
  const k = sha256(spki).toString('hex');
  const hit = keyCache.get(k);
  if (hit) return hit;
  try {
    return remember(keyCache, k, createPublicKey({ key: spki, format: 'der', type: 'spki' }));
  } catch (e) {
    return fail(code, `unusable public key: ${(e as Error).message}`);
  }
}

function algId(t: Tlv, code: ErrorCode): { oid: string; params: Tlv | undefined } {
  const c = children(expectTag(t, 0x30, 'AlgorithmIdentifier', code), code);
  return { oid: oidToString(expectTag(c[0], 0x06, 'algorithm', code).value, code), params: c[1] };
}

function bitString(t: Tlv | undefined, code: ErrorCode): Buffer {
  const b = expectTag(t, 0x03, 'BIT STRING', code);
  if (b.value.length < 1 || b.value[0] !== 0) fail(code, 'DER: BIT STRING with unused bits');
  return b.value.subarray(1);
}

export function parseCert(der: Buffer, code: ErrorCode = 'EVIDENCE_MALFORMED'): Cert {
  const fp = sha256(der).toString('hex');
  const hit = certCache.get(fp);
  if (hit) return hit;
  const top = children(expectTag(parseDer(der, code), 0x30, 'Certificate', code), code);
  if (top.length !== 3) fail(code, 'certificate: expected 3 elements');
  const tbsT = expectTag(top[0], 0x30, 'TBSCertificate', code);
  const sa = algId(top[1]!, code);
  const signature = bitString(top[2], code);
  const f = children(tbsT, code);
  let i = 0;
  if (f[0]?.tag === 0xa0) i++;
  const serialT = expectTag(f[i++], 0x02, 'serialNumber', code);
  i++; // inner signature algorithm
  const issuer = expectTag(f[i++], 0x30, 'issuer', code);
  const validity = children(expectTag(f[i++], 0x30, 'validity', code), code);
  if (validity.length !== 2) fail(code, 'certificate: bad validity');
  const subject = expectTag(f[i++], 0x30, 'subject', code);
  const spki = expectTag(f[i++], 0x30, 'subjectPublicKeyInfo', code);
  const extensions = new Map<string, Buffer>();
  for (; i < f.length; i++) {
    const t = f[i]!;
    if (t.tag !== 0xa3) continue;
    const exts = children(expectTag(children(t, code)[0], 0x30, 'extensions', code), code);
    for (const e of exts) {
      const parts = children(expectTag(e, 0x30, 'extension', code), code);
      const oid = oidToString(expectTag(parts[0], 0x06, 'extnID', code).value, code);
      const val = expectTag(parts[parts.length - 1], 0x04, 'extnValue', code);
      extensions.set(oid, val.value);
    }
  }
  const spkiRaw = Buffer.from(spki.raw);
  const cert: Cert = {
    der,
    fingerprint: fp,
    tbs: tbsT.raw,
    sigAlg: sa.oid,
    sigParams: sa.params,
    signature,
    serial: serialT.value.toString('hex'),
    issuer: issuer.raw,
    subject: subject.raw,
    issuerCN: nameCN(issuer.raw, code),
    subjectCN: nameCN(subject.raw, code),
    notBefore: parseTime(validity[0]!, code),
    notAfter: parseTime(validity[1]!, code),
    spki: spkiRaw,
    extensions,
    publicKey: () => publicKeyFromSpki(spkiRaw, code),
  };
  return remember(certCache, fp, cert);
}

export function parseCrl(der: Buffer, code: ErrorCode = 'COLLATERAL_MALFORMED'): Crl {
  const fp = sha256(der).toString('hex');
  const hit = crlCache.get(fp);
  if (hit) return hit;
  const top = children(expectTag(parseDer(der, code), 0x30, 'CertificateList', code), code);
  if (top.length !== 3) fail(code, 'CRL: expected 3 elements');
  const tbsT = expectTag(top[0], 0x30, 'TBSCertList', code);
  const sa = algId(top[1]!, code);
  const signature = bitString(top[2], code);
  const f = children(tbsT, code);
  let i = 0;
  if (f[0]?.tag === 0x02) i++;
  i++; // signature algorithm
  const issuer = expectTag(f[i++], 0x30, 'issuer', code);
  const thisUpdate = parseTime(f[i++] ?? fail(code, 'CRL: no thisUpdate'), code);
  let nextUpdate: Date | undefined;
  if (f[i] && (f[i]!.tag === 0x17 || f[i]!.tag === 0x18)) nextUpdate = parseTime(f[i++]!, code);
  const revoked = new Set<string>();
  if (f[i] && f[i]!.tag === 0x30) {
    for (const entry of children(f[i++]!, code)) {
      const serial = expectTag(children(expectTag(entry, 0x30, 'revoked entry', code), code)[0], 0x02, 'userCertificate', code);
      revoked.add(serial.value.toString('hex'));
    }
  }
  const crl: Crl = {
    der,
    fingerprint: fp,
    tbs: tbsT.raw,
    sigAlg: sa.oid,
    sigParams: sa.params,
    signature,
    issuer: issuer.raw,
    issuerCN: nameCN(issuer.raw, code),
    thisUpdate,
    nextUpdate,
    revoked,
  };
  return remember(crlCache, fp, crl);
}

const HASH_BY_OID: Record<string, string> = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

function pssParams(params: Tlv | undefined): { hash: string; salt: number } {
  let hash = 'sha1';
  let salt = 20;
  if (params && params.tag === 0x30) {
    for (const p of children(params)) {
      if (p.tag === 0xa0) hash = HASH_BY_OID[algId(children(p)[0]!, 'EVIDENCE_MALFORMED').oid] ?? 'unknown';
      if (p.tag === 0xa2) {
        const n = expectTag(children(p)[0], 0x02, 'saltLength');
        salt = n.value.length <= 2 ? n.value.readUIntBE(0, n.value.length) : -1;
      }
    }
  }
  return { hash, salt };
}

/** Verifies an X.509-style signature (certificate or CRL) with the issuer key. Never throws. */
export function verifyX509Signature(tbs: Buffer, sigAlg: string, sigParams: Tlv | undefined, signature: Buffer, key: KeyObject): boolean {
  try {
    switch (sigAlg) {
      case '1.2.840.10045.4.3.2':
        return cryptoVerify('sha256', tbs, { key, dsaEncoding: 'der' }, signature);
      case '1.2.840.10045.4.3.3':
        return cryptoVerify('sha384', tbs, { key, dsaEncoding: 'der' }, signature);
      case '1.2.840.113549.1.1.11':
        return cryptoVerify('sha256', tbs, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
      case '1.2.840.113549.1.1.12':
        return cryptoVerify('sha384', tbs, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
      case '1.2.840.113549.1.1.10': {
        const { hash, salt } = pssParams(sigParams);
        if (hash === 'unknown' || salt < 0) return false;
        return cryptoVerify(hash, tbs, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: salt }, signature);
      }
      default:
        return false;
    }
  } catch {
    return false;
  }
}

/** True iff `child` carries a valid signature by `issuer`'s key and names it as issuer. Memoized. */
export function isSignedBy(child: Cert, issuer: Cert): boolean {
  const k = child.fingerprint + issuer.fingerprint;
  const hit = sigCache.get(k);
  if (hit !== undefined) return hit;
  let ok = child.issuer.equals(issuer.subject);
  if (ok) {
    try {
      ok = verifyX509Signature(child.tbs, child.sigAlg, child.sigParams, child.signature, issuer.publicKey());
    } catch {
      ok = false;
    }
  }
  return remember(sigCache, k, ok);
}

export function crlSignedBy(crl: Crl, issuer: Cert): boolean {
  const k = 'crl' + crl.fingerprint + issuer.fingerprint;
  const hit = sigCache.get(k);
  if (hit !== undefined) return hit;
  let ok = crl.issuer.equals(issuer.subject);
  if (ok) {
    try {
      ok = verifyX509Signature(crl.tbs, crl.sigAlg, crl.sigParams, crl.signature, issuer.publicKey());
    } catch {
      ok = false;
    }
  }
  return remember(sigCache, k, ok);
}

/** basicConstraints cA = TRUE. */
export function isCaCert(c: Cert): boolean {
  const v = c.extensions.get('2.5.29.19');
  if (!v) return false;
  try {
    const first = children(parseDer(v))[0];
    return first !== undefined && first.tag === 0x01 && first.value.length === 1 && first.value[0] !== 0;
  } catch {
    return false;
  }
}

export const validAt = (c: Cert, at: Date): boolean => c.notBefore.getTime() <= at.getTime() && at.getTime() <= c.notAfter.getTime();

const PEM_RE = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----/g;

const pemMemo = new Map<string, Cert[]>();

/** All certificates of a PEM text, in order (memoized by the text's hash). */
export function pemCerts(text: string, code: ErrorCode = 'EVIDENCE_MALFORMED', max = 16): Cert[] {
  const k = `${max}:${createHash('sha256').update(text).digest('hex')}`;
  const hit = pemMemo.get(k);
  if (hit) return [...hit];
  const out = pemCertsUncached(text, code, max);
  remember(pemMemo, k, out);
  return [...out];
}

function pemCertsUncached(text: string, code: ErrorCode, max: number): Cert[] {
  const out: Cert[] = [];
  for (const m of text.matchAll(PEM_RE)) {
    if (out.length >= max) fail(code, `more than ${max} certificates`);
    out.push(parseCert(fromBase64(m[1]!, 'PEM certificate', code), code));
  }
  return out;
}

export function toPem(c: Cert): string {
  const b64 = c.der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

/** Extracts an OCTET STRING wrapper if the bytes are exactly one. */
export function unwrapOctetString(b: Buffer): Buffer {
  if (b.length >= 2 && b[0] === 0x04) {
    try {
      return parseDer(b).value;
    } catch {
      return b;
    }
  }
  return b;
}
