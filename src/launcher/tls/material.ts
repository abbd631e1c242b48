import { webcrypto } from 'node:crypto';
import { x509 } from '../../crypto/x509.js';
import { CocoonError } from '../../errors.js';
import { pem } from '../../kbs/certs.js';

/** The TLS key (generated in the TEE, never leaves it) and what the KBS issued for it. */
export interface TlsMaterial {
  keyPem: string;
  /** Leaf + intermediate, PEM: what the proxies present. */
  certChainPem: string;
  /** The deployment root CA: the only trust anchor of the proxies. */
  rootPem: string;
  notAfter: Date;
}

export interface WorkloadKey {
  keyPem: string;
  csrPem: string;
}

/** A fresh P-256 key and a PKCS#10 CSR for it (the CSR is bound into the attestation's report data). */
export async function generateWorkloadKey(subject = 'CN=cocoon-workload'): Promise<WorkloadKey> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: subject, keys, signingAlgorithm: alg });
  return { keyPem: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)), csrPem: csr.toString('pem') };
}

const MAX_CERT_RESOURCE = 64 * 1024;
const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----/g;

function certs(text: string, what: string): x509.X509Certificate[] {
  const blocks = text.match(PEM_CERT_RE) ?? [];
  if (blocks.length === 0 || blocks.length > 8) throw new CocoonError('INPUT_MALFORMED', `workload-cert: ${what} must hold 1–8 PEM certificates`);
  try {
    return blocks.map((b) => new x509.X509Certificate(b));
  } catch (err) {
    throw new CocoonError('INPUT_MALFORMED', `workload-cert: ${what} does not parse`, { cause: err });
  }
}

/** Strict parse of the `workload-cert` resource `{cert, chain, notAfter}` (chain = intermediate… root). */
export function parseWorkloadCert(bytes: Uint8Array | undefined, keyPem: string): TlsMaterial {
  if (!bytes) throw new CocoonError('INPUT_MALFORMED', 'workload-cert missing from the KBS response');
  if (bytes.length > MAX_CERT_RESOURCE) throw new CocoonError('INPUT_TOO_LARGE', 'workload-cert larger than 64 KiB');
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new CocoonError('INPUT_MALFORMED', 'workload-cert is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CocoonError('INPUT_MALFORMED', 'workload-cert must be an object');
  const o = v as Record<string, unknown>;
  if (typeof o.cert !== 'string' || typeof o.chain !== 'string') throw new CocoonError('INPUT_MALFORMED', 'workload-cert needs string cert and chain');
  const [leaf] = certs(o.cert, 'cert');
  const chain = certs(o.chain, 'chain');
  const root = chain[chain.length - 1] as x509.X509Certificate;
  if (!leaf || chain.length < 2 || root.subject !== root.issuer) throw new CocoonError('INPUT_MALFORMED', 'workload-cert: chain must end with the self-signed deployment root');
  const intermediates = chain.slice(0, -1).map((c) => c.toString('pem')).join('\n');
  return { keyPem, certChainPem: `${leaf.toString('pem')}\n${intermediates}\n`, rootPem: `${root.toString('pem')}\n`, notAfter: leaf.notAfter };
}
