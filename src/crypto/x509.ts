import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto, createPublicKey, type KeyObject } from 'node:crypto';
import { sha256Hex } from './hash.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKeyPair = webcrypto.CryptoKeyPair;
type CryptoKey = webcrypto.CryptoKey;

export { x509 };

export const ECDSA_P384 = { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' } as const;
export const ECDSA_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
export type EcAlgorithm = typeof ECDSA_P384 | typeof ECDSA_P256;

export interface IssuedCertificate {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive INTEGER
  return Buffer.from(bytes).toString('hex');
}

export async function createSelfSignedCa(subject: string, validDays: number, alg: EcAlgorithm = ECDSA_P384): Promise<IssuedCertificate> {
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const notBefore = new Date(Date.now() - 60_000);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: subject,
    notBefore,
    notAfter: new Date(notBefore.getTime() + validDays * 86_400_000),
    keys,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, keys };
}

export async function issueLeafCertificate(
  issuer: IssuedCertificate,
  subject: string,
  validDays: number,
  alg: EcAlgorithm = ECDSA_P384,
  extraExtensions: x509.Extension[] = [],
): Promise<IssuedCertificate> {
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const notBefore = new Date(Date.now() - 60_000);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject,
    issuer: issuer.cert.subject,
    notBefore,
    notAfter: new Date(notBefore.getTime() + validDays * 86_400_000),
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: issuer.cert.signatureAlgorithm as EcAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey),
      ...extraExtensions,
    ],
  });
  return { cert, keys };
}

/** SHA-256 fingerprint (lower-case hex) of a certificate's DER encoding. */
export function certFingerprint(cert: x509.X509Certificate): string {
  return sha256Hex(new Uint8Array(cert.rawData));
}

export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END PRIVATE KEY-----\n`;
}

export function certPublicKeyObject(cert: x509.X509Certificate): KeyObject {
  return createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' });
}
