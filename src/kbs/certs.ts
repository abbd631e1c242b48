import { webcrypto } from 'node:crypto';
import { x509 } from '../crypto/x509.js';
import { CocoonError } from '../errors.js';
import type { KeyType, KeyUsageName } from '../policy/types.js';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
type Algorithm = webcrypto.Algorithm;
type EcdsaParams = webcrypto.EcdsaParams;
type RsaHashedKeyGenParams = webcrypto.RsaHashedKeyGenParams;
type EcKeyGenParams = webcrypto.EcKeyGenParams;

/**
 * OID arc of Cocoon certificate extensions. PLACEHOLDER: a private-enterprise arc that must be
 * replaced by Cocoon's own IANA PEN before a release (the registration-free UUID arc
 * 2.25.109622773175964920431584557433245879346 was the first choice, but @peculiar/x509
 * silently truncates OID arcs ≥ 2^53). `.1.1` = workload identity: DER UTF8String holding the
 * JSON `{"v":1,"policy","version","workload","tee","insecure"}` (docs/kbs.md, "Deployment CA").
 */
export const COCOON_OID_ARC = '1.3.6.1.4.1.64444.1';
export const WORKLOAD_IDENTITY_OID = `${COCOON_OID_ARC}.1`;

export interface KeyPairPem {
  key: string;
  public: string;
  keys: CryptoKeyPair;
}

function algorithmFor(keyType: KeyType): RsaHashedKeyGenParams | EcKeyGenParams | { name: 'Ed25519' } {
  switch (keyType) {
    case 'P-256':
      return { name: 'ECDSA', namedCurve: 'P-256' };
    case 'P-384':
      return { name: 'ECDSA', namedCurve: 'P-384' };
    case 'Ed25519':
      return { name: 'Ed25519' };
    case 'RSA-2048':
    case 'RSA-3072':
      return { name: 'RSASSA-PKCS1-v1_5', modulusLength: keyType === 'RSA-2048' ? 2048 : 3072, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };
  }
}

/** Signature algorithm a key of this type signs certificates with. */
export function signingAlgorithmOf(key: CryptoKey): Algorithm | EcdsaParams {
  const alg = key.algorithm as { name: string; namedCurve?: string };
  if (alg.name === 'ECDSA') return { name: 'ECDSA', hash: alg.namedCurve === 'P-256' ? 'SHA-256' : 'SHA-384' } as EcdsaParams;
  if (alg.name === 'Ed25519') return { name: 'Ed25519' };
  return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as Algorithm;
}

export function pem(label: string, der: ArrayBuffer | Uint8Array): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}

export async function generateKeyPairPem(keyType: KeyType): Promise<KeyPairPem> {
  const keys = (await webcrypto.subtle.generateKey(algorithmFor(keyType), true, ['sign', 'verify'])) as CryptoKeyPair;
  return {
    keys,
    key: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)),
    public: pem('PUBLIC KEY', await webcrypto.subtle.exportKey('spki', keys.publicKey)),
  };
}

/** Re-imports a PKCS#8 PEM signing key produced by generateKeyPairPem. */
export async function importSigningKey(pkcs8Pem: string, keyType: KeyType): Promise<CryptoKey> {
  const der = Buffer.from(pkcs8Pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  return webcrypto.subtle.importKey('pkcs8', der, algorithmFor(keyType), true, ['sign']);
}

export function keyTypeOf(key: CryptoKey): KeyType {
  const alg = key.algorithm as { name: string; namedCurve?: string; modulusLength?: number };
  if (alg.name === 'ECDSA') return alg.namedCurve === 'P-384' ? 'P-384' : 'P-256';
  if (alg.name === 'Ed25519') return 'Ed25519';
  return alg.modulusLength === 3072 ? 'RSA-3072' : 'RSA-2048';
}

export function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}

/** DER UTF8String (short and long length forms up to 64 KiB). */
export function derUtf8String(text: string): Uint8Array {
  const body = Buffer.from(text, 'utf8');
  if (body.length > 0xffff) throw new CocoonError('INPUT_TOO_LARGE', 'extension value too large');
  const len = body.length < 0x80 ? [body.length] : body.length < 0x100 ? [0x81, body.length] : [0x82, body.length >> 8, body.length & 0xff];
  return Buffer.concat([Buffer.from([0x0c, ...len]), body]);
}

/** Reads the JSON of a Cocoon workload-identity extension, if the certificate has one. */
export function workloadIdentityOf(cert: x509.X509Certificate): Record<string, unknown> | undefined {
  const ext = cert.getExtension(WORKLOAD_IDENTITY_OID);
  if (!ext) return undefined;
  const v = Buffer.from(ext.value);
  if (v[0] !== 0x0c) return undefined;
  const first = v[1] ?? 0;
  const start = first < 0x80 ? 2 : 2 + (first & 0x7f);
  return JSON.parse(v.subarray(start).toString('utf8')) as Record<string, unknown>;
}

export interface Issuer {
  cert: x509.X509Certificate;
  key: CryptoKey;
}

export interface CaParams {
  subject: string;
  validMs: number;
  now: Date;
  pathLength?: number;
}

export async function createRootCa(keys: CryptoKeyPair, p: CaParams): Promise<x509.X509Certificate> {
  return x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: p.subject,
    notBefore: new Date(p.now.getTime() - 60_000),
    notAfter: new Date(p.now.getTime() + p.validMs),
    keys,
    signingAlgorithm: signingAlgorithmOf(keys.privateKey),
    extensions: [
      new x509.BasicConstraintsExtension(true, p.pathLength, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
}

export async function createSubCa(issuer: Issuer, publicKey: CryptoKey, p: CaParams): Promise<x509.X509Certificate> {
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: p.subject,
    issuer: issuer.cert.subject,
    notBefore: new Date(p.now.getTime() - 60_000),
    notAfter: new Date(Math.min(p.now.getTime() + p.validMs, issuer.cert.notAfter.getTime())),
    publicKey,
    signingKey: issuer.key,
    signingAlgorithm: signingAlgorithmOf(issuer.key),
    extensions: [
      new x509.BasicConstraintsExtension(true, p.pathLength ?? 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.cert),
    ],
  });
}

export interface LeafParams {
  subject: string;
  sans: string[];
  usage: 'server' | 'client' | 'both';
  keyUsage: KeyUsageName[];
  validMs: number;
  now: Date;
  /** JSON object put into the workload-identity extension. */
  identity?: Record<string, unknown>;
}

const KU: Record<KeyUsageName, number> = {
  digitalSignature: x509.KeyUsageFlags.digitalSignature,
  keyEncipherment: x509.KeyUsageFlags.keyEncipherment,
  keyAgreement: x509.KeyUsageFlags.keyAgreement,
  nonRepudiation: x509.KeyUsageFlags.nonRepudiation,
};

function generalNames(sans: string[]): { type: 'dns' | 'ip' | 'url' | 'email'; value: string }[] {
  return sans.map((s) => {
    if (s.startsWith('uri:')) return { type: 'url', value: s.slice(4) };
    if (s.startsWith('email:')) return { type: 'email', value: s.slice(6) };
    if (/^\d{1,3}(\.\d{1,3}){3}$/.test(s) || s.includes(':')) return { type: 'ip', value: s };
    return { type: 'dns', value: s };
  });
}

export async function issueLeaf(issuer: Issuer, publicKey: x509.PublicKeyType, p: LeafParams): Promise<x509.X509Certificate> {
  const eku = p.usage === 'server' ? [x509.ExtendedKeyUsage.serverAuth] : p.usage === 'client' ? [x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(p.keyUsage.reduce((a, k) => a | KU[k], 0), true),
    new x509.ExtendedKeyUsageExtension(eku, false),
    await x509.AuthorityKeyIdentifierExtension.create(issuer.cert),
  ];
  if (p.sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(generalNames(p.sans), false));
  if (p.identity) extensions.push(new x509.Extension(WORKLOAD_IDENTITY_OID, false, derUtf8String(JSON.stringify(p.identity))));
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: p.subject,
    issuer: issuer.cert.subject,
    notBefore: new Date(p.now.getTime() - 60_000),
    notAfter: new Date(Math.min(p.now.getTime() + p.validMs, issuer.cert.notAfter.getTime())),
    publicKey,
    signingKey: issuer.key,
    signingAlgorithm: signingAlgorithmOf(issuer.key),
    extensions,
  });
}
