import { randomUUID } from 'node:crypto';
import { x509 } from '../crypto/x509.js';
import { CocoonError } from '../errors.js';
import { createRootCa, createSubCa, generateKeyPairPem, importSigningKey, issueLeaf, pem, signingAlgorithmOf } from './certs.js';
import type { Issuer, LeafParams } from './certs.js';
import { isRevocationReason } from './revocation-reasons.js';
import { openValue, sealValue } from './secret-box.js';
import type { CaRecord, Store } from './store/types.js';

export const ROOT_VALID_MS = 10 * 365 * 86_400_000;
export const INTERMEDIATE_VALID_MS = 90 * 86_400_000;
/** Workload certificates for attested CSRs: short-lived, renewed by attesting again. */
export const WORKLOAD_CERT_VALID_MS = 24 * 3_600_000;
const ROOT_ID = 'root';
/**
 * Housekeeping (pruneCaRecords): an issued workload certificate's record, and its revocation,
 * are kept this long past its notAfter — a revoked serial leaves the CRL only once the
 * certificate has expired (RFC 5280 §3.3), with a day's margin for relying parties' clocks.
 */
export const CERT_RECORD_GRACE_MS = 86_400_000;
/**
 * Revocations of serials the KBS has no issuance record of (forced: x509 secrets' certificates,
 * certificates issued before issuance was recorded) are kept this long after the revocation:
 * the longest validity a deployment-CA leaf can have (x509 `validityDays` ≤ 825) plus a day.
 */
export const UNRECORDED_REVOCATION_RETENTION_MS = 826 * 86_400_000;

interface LoadedCa extends Issuer {
  record: CaRecord;
}

/**
 * The deployment CA: a P-384 root (created once, pinned by clients) and an intermediate that
 * is replaced on every policy update (the new one is inserted in the same transaction as the
 * policy version). Private keys are sealed under the data key in the store.
 */
export class DeploymentCa {
  private cache = new Map<string, LoadedCa>();

  constructor(
    private readonly store: Store,
    private readonly dataKey: Buffer,
    private readonly now: () => Date,
  ) {}

  private async load(rec: CaRecord): Promise<LoadedCa> {
    let c = this.cache.get(rec.id);
    if (!c) {
      const keyPem = openValue(this.dataKey, rec.sealedKey, `ca:${rec.id}`).toString('utf8');
      c = { record: rec, cert: new x509.X509Certificate(rec.cert), key: await importSigningKey(keyPem, 'P-384') };
      if (this.cache.size > 64) this.cache.clear();
      this.cache.set(rec.id, c);
    }
    return c;
  }

  async root(): Promise<LoadedCa> {
    const existing = (await this.store.listCa('root', 1))[0];
    if (existing) return this.load(existing);
    const kp = await generateKeyPairPem('P-384');
    const now = this.now();
    const cert = await createRootCa(kp.keys, { subject: 'CN=Cocoon deployment root CA, O=Cocoon', validMs: ROOT_VALID_MS, now, pathLength: 1 });
    const stored = await this.store.putCaIfAbsent({
      id: ROOT_ID,
      kind: 'root',
      serial: cert.serialNumber,
      cert: cert.toString('pem'),
      sealedKey: sealValue(this.dataKey, Buffer.from(kp.key), `ca:${ROOT_ID}`),
      createdAt: now.getTime(),
      notAfter: cert.notAfter.getTime(),
    });
    return this.load(stored);
  }

  /** A new intermediate, not yet stored: the caller inserts it with the policy version. */
  async prepareIntermediate(): Promise<CaRecord> {
    const root = await this.root();
    const kp = await generateKeyPairPem('P-384');
    const now = this.now();
    const id = randomUUID();
    const cert = await createSubCa(root, kp.keys.publicKey, { subject: `CN=Cocoon deployment intermediate ${now.toISOString().slice(0, 19)}Z, O=Cocoon`, validMs: INTERMEDIATE_VALID_MS, now, pathLength: 0 });
    return { id, kind: 'intermediate', serial: cert.serialNumber, cert: cert.toString('pem'), sealedKey: sealValue(this.dataKey, Buffer.from(kp.key), `ca:${id}`), createdAt: now.getTime(), notAfter: cert.notAfter.getTime() };
  }

  /** The newest intermediate (one is created when none exists or the newest has expired). */
  async current(): Promise<LoadedCa> {
    const rec = await this.store.latestCa('intermediate');
    if (rec && rec.notAfter > this.now().getTime() + 3_600_000) return this.load(rec);
    const fresh = await this.prepareIntermediate();
    await this.store.insertCa(fresh);
    return this.load(fresh);
  }

  async chainPem(): Promise<{ root: string; intermediate: string; chain: string }> {
    const [root, inter] = [await this.root(), await this.current()];
    return { root: root.record.cert, intermediate: inter.record.cert, chain: inter.record.cert + root.record.cert };
  }

  /** Issues a leaf under the current intermediate, or under `via` (an intermediate about to be stored). */
  async issue(publicKey: x509.PublicKeyType, params: Omit<LeafParams, 'now'>, via?: CaRecord): Promise<{ cert: string; chain: string; serial: string; notAfter: string }> {
    const inter = via ? await this.load(via) : await this.current();
    const root = await this.root();
    const cert = await issueLeaf(inter, publicKey, { ...params, now: this.now() });
    return { cert: cert.toString('pem'), chain: inter.record.cert + root.record.cert, serial: cert.serialNumber, notAfter: cert.notAfter.toISOString() };
  }

  private crlCache: { key: string; pem: string; until: number } | undefined;

  /**
   * CRL of the current intermediate, listing revoked serials (reason always set: pkijs needs it).
   * Cached for a minute per (intermediate, revocation list): the endpoint is public.
   */
  async crlPem(): Promise<string> {
    const inter = await this.current();
    const revoked = await this.store.listRevoked();
    const now = this.now();
    const last = revoked[revoked.length - 1];
    const key = `${inter.record.id}:${revoked.length}:${last?.serial ?? ''}:${last?.at ?? ''}`;
    if (this.crlCache && this.crlCache.key === key && this.crlCache.until > now.getTime()) return this.crlCache.pem;
    const crl = await x509.X509CrlGenerator.create({
      issuer: inter.cert.subject,
      thisUpdate: now,
      nextUpdate: new Date(now.getTime() + 86_400_000),
      signingKey: inter.key,
      signingAlgorithm: signingAlgorithmOf(inter.key),
      entries: revoked.map((r) => ({ serialNumber: r.serial, revocationDate: new Date(r.at), reason: crlReason(r.reason) })),
      extensions: [await x509.AuthorityKeyIdentifierExtension.create(inter.cert)],
    });
    // RFC 7468 label (what openssl expects); @peculiar/x509 writes "CRL".
    const text = pem('X509 CRL', new Uint8Array(crl.rawData));
    this.crlCache = { key, pem: text, until: now.getTime() + 60_000 };
    return text;
  }
}

/**
 * Periodic housekeeping of the CA's records (run with the store's purge, every minute, by every
 * replica; idempotent): expired issued certificates and the revocations that no longer matter.
 */
export async function pruneCaRecords(store: Store, now: number): Promise<{ certs: number; revoked: number }> {
  return store.pruneCertificates(now - CERT_RECORD_GRACE_MS, now - UNRECORDED_REVOCATION_RETENTION_MS);
}

/** RFC 5280 reason code of a stored reason name (older free-text reasons: unspecified). */
function crlReason(name: string): x509.X509CrlReason {
  return isRevocationReason(name) ? x509.X509CrlReason[name] : x509.X509CrlReason.unspecified;
}

/** Parses and verifies a PKCS#10 CSR (PEM or base64 DER, ≤ 8 KiB); returns its public key. */
export async function parseCsr(text: string): Promise<{ csr: x509.Pkcs10CertificateRequest; publicKeyDer: Buffer }> {
  if (text.length > 8192) throw new CocoonError('INPUT_TOO_LARGE', 'CSR larger than 8 KiB');
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = text.includes('-----BEGIN') ? new x509.Pkcs10CertificateRequest(text) : new x509.Pkcs10CertificateRequest(Buffer.from(text, 'base64'));
  } catch {
    throw new CocoonError('INPUT_MALFORMED', 'csr is not a PKCS#10 certificate request');
  }
  let ok = false;
  try {
    ok = await csr.verify();
  } catch {
    ok = false;
  }
  if (!ok) throw new CocoonError('INPUT_MALFORMED', 'csr signature does not verify (proof of possession failed)');
  const alg = csr.publicKey.algorithm as { name: string; namedCurve?: string };
  if (!(alg.name === 'ECDSA' && (alg.namedCurve === 'P-256' || alg.namedCurve === 'P-384')) && alg.name !== 'Ed25519' && !alg.name.startsWith('RSA')) {
    throw new CocoonError('INPUT_MALFORMED', `csr key algorithm ${alg.name} is not supported`);
  }
  return { csr, publicKeyDer: Buffer.from(csr.publicKey.rawData) };
}

