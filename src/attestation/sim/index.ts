import { createVerify, createPublicKey, X509Certificate, type KeyObject } from 'node:crypto';
import { CocoonError } from '../../errors.js';
import { sha256Hex } from '../../crypto/hash.js';
import type { Claims, VerificationProblem, VerificationResult, VerifyOptions } from '../types.js';

/**
 * The simulated TEE. Evidence is a JSON report signed by a "platform" key whose certificate
 * chains to a sim root. It proves nothing about hardware: the KBS accepts it only with
 * --allow-sim and a policy rule naming `sim`, and every result says INSECURE.
 */
export const SIM_INSECURE_NOTICE = 'INSECURE: simulated TEE';

export interface SimReport {
  v: 1;
  tee: 'sim';
  /** Workload measurement, hex SHA-384. */
  measurement: string;
  /** 64 bytes, hex. */
  report_data: string;
  debug: boolean;
  platform: string;
}

export interface SimEvidence {
  report: string; // base64 of the report's canonical JSON bytes
  signature: string; // base64 IEEE-P1363 ECDSA: P-256 / SHA-256, or P-384 / SHA-384 (platforms before 0.2)
  certs: string[]; // PEM, platform certificate first
}

export interface SimTrust {
  /** PEM certificates of the sim roots this verifier accepts. */
  roots: string[];
}

const MAX_FIELD = 16 * 1024;
const HEX96 = /^[0-9a-f]{96}$/;
const HEX128 = /^[0-9a-f]{128}$/;
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

function malformed(message: string): CocoonError {
  return new CocoonError('EVIDENCE_MALFORMED', `sim evidence: ${message}`);
}

export function parseSimEvidence(input: unknown): { evidence: SimEvidence; report: SimReport; reportBytes: Buffer } {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw malformed('not a JSON object');
  const { report, signature, certs } = input as Record<string, unknown>;
  if (typeof report !== 'string' || report.length > MAX_FIELD || !B64.test(report)) throw malformed('report must be base64 (≤ 16 KiB)');
  if (typeof signature !== 'string' || signature.length > 256 || !B64.test(signature)) throw malformed('signature must be base64');
  if (!Array.isArray(certs) || certs.length < 1 || certs.length > 4 || !certs.every((c) => typeof c === 'string' && c.length <= MAX_FIELD)) {
    throw malformed('certs must be 1–4 PEM strings');
  }
  const reportBytes = Buffer.from(report, 'base64');
  let parsed: unknown;
  try {
    parsed = JSON.parse(reportBytes.toString('utf8'));
  } catch {
    throw malformed('report is not JSON');
  }
  const r = parsed as Record<string, unknown>;
  if (typeof r !== 'object' || r === null || r.v !== 1 || r.tee !== 'sim') throw malformed('report version/tee');
  if (typeof r.measurement !== 'string' || !HEX96.test(r.measurement)) throw malformed('measurement must be 96 hex chars');
  if (typeof r.report_data !== 'string' || !HEX128.test(r.report_data)) throw malformed('report_data must be 128 hex chars');
  if (typeof r.debug !== 'boolean' || typeof r.platform !== 'string' || r.platform.length > 256) throw malformed('debug/platform');
  const reportObj: SimReport = { v: 1, tee: 'sim', measurement: r.measurement, report_data: r.report_data, debug: r.debug, platform: r.platform };
  return { evidence: { report, signature, certs: certs as string[] }, report: reportObj, reportBytes };
}

/** The report signature's hash, fixed by the platform key's curve; other keys are refused. */
export function simSignatureHash(key: KeyObject): 'sha256' | 'sha384' {
  const curve = key.asymmetricKeyType === 'ec' ? key.asymmetricKeyDetails?.namedCurve : undefined;
  if (curve === 'prime256v1') return 'sha256';
  if (curve === 'secp384r1') return 'sha384';
  throw malformed('platform key must be ECDSA P-256 or P-384');
}

function loadCert(pem: string, what: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch {
    throw malformed(`${what} is not a certificate`);
  }
}

/** validFrom/validTo of a certificate as epoch ms (X509Certificate returns strings). */
function validityOf(cert: X509Certificate): { from: number; to: number } {
  return { from: Date.parse(cert.validFrom), to: Date.parse(cert.validTo) };
}

function withinValidity(v: { from: number; to: number }, at: Date): boolean {
  const t = at.getTime();
  return v.from <= t && t <= v.to;
}

interface CheckedPlatform {
  key: KeyObject;
  /** SHA-256 of the platform certificate's DER (a claim of every report). */
  sha256: string;
  /** Validity windows of the platform certificate and of the trusted root that signed it (none: no trusted root did). */
  validity: { platform: { from: number; to: number }; issuer: { from: number; to: number } | undefined };
}

/**
 * Parsed platform certificates with their chain verdict, keyed by the exact certificate and
 * root bytes: parsing and the chain signature are the same for every report of one
 * platform. Validity windows are still checked against each call's time.
 */
const platformCache = new Map<string, CheckedPlatform>();
const PLATFORM_CACHE_MAX = 256;

function checkPlatform(certPem: string, rootPems: readonly string[]): CheckedPlatform {
  const cacheKey = sha256Hex(JSON.stringify([certPem, ...rootPems]));
  const cached = platformCache.get(cacheKey);
  if (cached) return cached;
  const platform = loadCert(certPem, 'platform certificate');
  const roots = rootPems.map((pem) => loadCert(pem, 'sim root'));
  const issuer = roots.find((root) => platform.checkIssued(root) && platform.verify(root.publicKey));
  const checked = { key: createPublicKey(platform.publicKey.export({ format: 'pem', type: 'spki' })), sha256: sha256Hex(platform.raw), validity: { platform: validityOf(platform), issuer: issuer && validityOf(issuer) } };
  if (platformCache.size >= PLATFORM_CACHE_MAX) platformCache.delete(platformCache.keys().next().value as string);
  platformCache.set(cacheKey, checked);
  return checked;
}

export async function verifySimEvidence(input: unknown, trust: SimTrust, options: VerifyOptions): Promise<VerificationResult> {
  const { evidence, report, reportBytes } = parseSimEvidence(input);
  const errors: VerificationProblem[] = [];
  const { key, sha256, validity } = checkPlatform(evidence.certs[0] as string, trust.roots);

  if (!validity.issuer) {
    errors.push({ code: 'EVIDENCE_CHAIN_INVALID', stage: 'chain', message: 'platform certificate does not chain to a trusted sim root' });
  } else if (!withinValidity(validity.platform, options.at) || !withinValidity(validity.issuer, options.at)) {
    errors.push({ code: 'EVIDENCE_CHAIN_INVALID', stage: 'cert_validity', message: 'sim certificate outside its validity window' });
  }

  const verifier = createVerify(simSignatureHash(key)).update(reportBytes);
  const signatureOk = verifier.verify({ key, dsaEncoding: 'ieee-p1363' }, Buffer.from(evidence.signature, 'base64'));
  if (!signatureOk) errors.push({ code: 'EVIDENCE_SIGNATURE_INVALID', stage: 'report_signature', message: 'sim report signature does not verify' });

  if (options.reportData && Buffer.from(report.report_data, 'hex').compare(Buffer.from(options.reportData)) !== 0) {
    errors.push({ code: 'REPORT_DATA_MISMATCH', stage: 'report_data', message: 'report_data does not match the expected value' });
  }

  const claims: Claims = {
    measurement: report.measurement,
    report_data: report.report_data,
    debug: report.debug,
    platform: report.platform,
    platform_cert_sha256: sha256,
    insecure: SIM_INSECURE_NOTICE,
  };
  return { verified: errors.length === 0, tee: 'sim', advisories: [], claims, errors, insecure: true };
}
