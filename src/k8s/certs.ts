/**
 * Webhook TLS without cert-manager: a private CA and a serving certificate for the webhook
 * Service's DNS names (P-256, serverAuth), as PEM. The CA's private key is not kept: it is
 * only needed again to issue a new serving certificate, and then a new CA is as good.
 */
import { x509, createSelfSignedCa, issueLeafCertificate, exportPrivateKeyPem, ECDSA_P256 } from '../crypto/x509.js';
import { CocoonError } from '../errors.js';
import { DNS_LABEL_RE } from './values.js';

export interface WebhookCerts {
  caPem: string;
  certPem: string;
  keyPem: string;
  dnsNames: string[];
  notAfter: Date;
}

export function serviceDnsNames(service: string, namespace: string): string[] {
  return [service, `${service}.${namespace}`, `${service}.${namespace}.svc`, `${service}.${namespace}.svc.cluster.local`];
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

export async function generateWebhookCerts(options: { service: string; namespace: string; validDays?: number; extraDns?: string[]; ips?: string[] }): Promise<WebhookCerts> {
  const { service, namespace } = options;
  if (!DNS_LABEL_RE.test(service) || service.length > 63) throw new CocoonError('BAD_USAGE', `--service "${service}" is not a Service name`);
  if (!DNS_LABEL_RE.test(namespace) || namespace.length > 63) throw new CocoonError('BAD_USAGE', `--namespace "${namespace}" is not a namespace name`);
  const validDays = options.validDays ?? 365;
  if (!Number.isInteger(validDays) || validDays < 1 || validDays > 3650) throw new CocoonError('BAD_USAGE', '--days must be an integer from 1 to 3650');
  for (const d of options.extraDns ?? []) if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(d)) throw new CocoonError('BAD_USAGE', `--dns "${d}" is not a DNS name`);
  for (const ip of options.ips ?? []) if (!IPV4_RE.test(ip) && ip !== '::1') throw new CocoonError('BAD_USAGE', `--ip "${ip}" is not an IPv4 address (or ::1)`);
  const dnsNames = [...serviceDnsNames(service, namespace), ...(options.extraDns ?? [])];
  const ca = await createSelfSignedCa(`CN=cocoon webhook CA (${namespace}/${service})`, validDays, ECDSA_P256);
  const san = new x509.SubjectAlternativeNameExtension([...dnsNames.map((value) => ({ type: 'dns' as const, value })), ...(options.ips ?? []).map((value) => ({ type: 'ip' as const, value }))]);
  const eku = new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]);
  const leaf = await issueLeafCertificate(ca, `CN=${service}.${namespace}.svc`, validDays, ECDSA_P256, [san, eku]);
  return {
    caPem: ca.cert.toString('pem') + '\n',
    certPem: leaf.cert.toString('pem') + '\n',
    keyPem: await exportPrivateKeyPem(leaf.keys.privateKey),
    dnsNames,
    notAfter: leaf.cert.notAfter,
  };
}
