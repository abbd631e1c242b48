import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { generateKeyPairPem, randomSerial } from './certs.js';
import { x509 } from '../crypto/x509.js';

export const TLS_CERT_FILE = 'kbs-tls.crt';
export const TLS_KEY_FILE = 'kbs-tls.key';

/**
 * The KBS's own TLS certificate when none is given: a self-signed P-256 certificate kept in
 * the data dir (key 0600), valid one year, SANs localhost, 127.0.0.1, ::1 and `hosts`.
 * Clients pin it (NODE_EXTRA_CA_CERTS, or the KBS's attested identity).
 */
export async function loadOrCreateSelfSignedTls(dataDir: string, hosts: string[] = []): Promise<{ cert: string; key: string; created: boolean }> {
  const certFile = join(dataDir, TLS_CERT_FILE);
  const keyFile = join(dataDir, TLS_KEY_FILE);
  try {
    return { cert: await readFile(certFile, 'utf8'), key: await readFile(keyFile, 'utf8'), created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new CocoonError('IO_ERROR', `cannot read ${certFile}: ${(err as Error).message}`);
  }
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const kp = await generateKeyPairPem('P-256');
  const now = Date.now();
  const names = [...new Set(['localhost', '127.0.0.1', '::1', ...hosts])];
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: 'CN=Cocoon KBS',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 365 * 86_400_000),
    keys: kp.keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } as never,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names.map((n) => (/^[\d.]+$|:/.test(n) ? { type: 'ip' as const, value: n } : { type: 'dns' as const, value: n }))),
    ],
  });
  await writeFile(keyFile, kp.key, { mode: 0o600, flag: 'wx' });
  await chmod(keyFile, 0o600);
  await writeFile(certFile, cert.toString('pem'), { mode: 0o644 });
  return { cert: cert.toString('pem'), key: kp.key, created: true };
}
