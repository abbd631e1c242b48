/**
 * Client side of KBS self-attestation (`cocoon attest`, docs/kbs.md "KBS self-attestation"):
 * fetch the KBS's evidence for a fresh nonce, verify it, and check that it binds the TLS key
 * this very connection saw and the deployment CA root it returns.
 */
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { isTeeKind } from '../../attestation/types.js';
import type { Claims, TeeKind } from '../../attestation/types.js';
import type { TrustInput } from '../../attestation/index.js';
import { EVENT_LOG_KEY, parseEventLog, WORKLOAD_EVENT } from '../../attestation/eventlog.js';
import { CocoonError } from '../../errors.js';
import { certSha256, KBS_ATTESTATION_PATH, KBS_ATTESTATION_VERSION, KBS_SELF_EVENT, kbsAttestationReportData } from '../self-attest.js';
import type { KbsAttestationBinding } from '../self-attest.js';
import { createBrokerVerifier } from '../verifier.js';

const MAX_BODY = 4 * 1024 * 1024;
const PEM_CERT_RE = /^-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\r?\n?$/;

export interface KbsAttestOptions {
  kbsUrl: string;
  /** Lower-case hex SHA-384 the KBS must report. */
  expectMeasurement?: string;
  /** Accept INSECURE simulated evidence, verified against these sim roots. */
  insecureSimRoots?: string[];
  /** PEM public keys of the TPM attestation keys whose quotes are accepted (`tpm` evidence). */
  trustedAks?: string[];
  /**
   * Collateral / certificates for hardware evidence, asked once the TEE kind is known
   * (`cocoon attest` passes the `cocoon verify` collateral flags through collateralTrust).
   */
  trustFor?: (tee: TeeKind) => Promise<Pick<TrustInput, 'collateral' | 'certs'>>;
  timeoutMs?: number;
}

export interface KbsAttestResult {
  kbsUrl: string;
  tee: TeeKind;
  insecure: boolean;
  /**
   * The KBS measurement the evidence binds (sim: the signed report; tpm / tdx: the replayed
   * event log), null when the TEE has no runtime register and the evidence binds none.
   */
  measurement: string | null;
  /** The verified claims of the evidence (hardware launch measurements, TCB, PCRs, …). */
  claims: Claims;
  tcbStatus?: string;
  caRootPem: string;
  caRootSha256: string;
  /** SHA-256 of the KBS TLS SubjectPublicKeyInfo seen on the connection (https), null for http. */
  tlsSpkiSha256: string | null;
  /** The KBS TLS certificate seen on the connection (https). */
  tlsCertPem: string | null;
}

export function spkiSha256OfDer(der: Buffer): string {
  return createHash('sha256').update(new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
}

function derToPem(der: Buffer): string {
  return `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}

/** Opens a TLS connection without CA checks (the evidence authenticates the key) and hands back the peer certificate. */
export function openTls(url: URL, timeoutMs: number): Promise<{ socket: TLSSocket; peerDer: Buffer }> {
  return new Promise((resolve, reject) => {
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const socket = tlsConnect({ host, port: Number(url.port || 443), rejectUnauthorized: false, minVersion: 'TLSv1.2', ...(/^[\d.]+$|:/.test(host) ? {} : { servername: host }) });
    const timer = setTimeout(() => socket.destroy(new Error(`no TLS handshake within ${timeoutMs} ms`)), timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const peer = socket.getPeerCertificate();
      if (!peer?.raw) {
        socket.destroy();
        reject(new CocoonError('KBS_NOT_TRUSTED', `${url.host}: the KBS presented no TLS certificate`));
        return;
      }
      resolve({ socket, peerDer: peer.raw });
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(new CocoonError('KBS_UNREACHABLE', `${url.host}: ${err.message}`, { cause: err }));
    });
  });
}

async function getJson(url: URL, timeoutMs: number): Promise<{ body: unknown; peerDer: Buffer | null }> {
  let socket: TLSSocket | undefined;
  let peerDer: Buffer | null = null;
  if (url.protocol === 'https:') ({ socket, peerDer } = await openTls(url, timeoutMs));
  const body = await new Promise<unknown>((resolve, reject) => {
    const opts = { method: 'GET', headers: { accept: 'application/json' }, timeout: timeoutMs, ...(socket ? { createConnection: () => socket } : {}) };
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, opts, (res) => {
      const chunks: Buffer[] = [];
      let total = 0;
      res.on('data', (c: Buffer) => {
        total += c.length;
        if (total > MAX_BODY) req.destroy(new CocoonError('INPUT_TOO_LARGE', 'KBS attestation response larger than 4 MiB'));
        else chunks.push(c);
      });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode === 404) return reject(new CocoonError('NOT_FOUND', `${url.origin} serves no attestation (${KBS_ATTESTATION_PATH}); start it with --tee (hardware TEE) or --allow-sim and a sim platform`));
        if (res.statusCode !== 200) return reject(new CocoonError('KBS_NOT_TRUSTED', `KBS attestation: HTTP ${res.statusCode ?? '?'}: ${text.slice(0, 200)}`));
        try {
          resolve(JSON.parse(text));
        } catch {
          reject(new CocoonError('INPUT_MALFORMED', 'KBS attestation: response is not JSON'));
        }
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new CocoonError('KBS_UNREACHABLE', `${url.origin}: no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => reject(err instanceof CocoonError ? err : new CocoonError('KBS_UNREACHABLE', `${url.origin}: ${err.message}`, { cause: err })));
    req.end();
  });
  return { body, peerDer };
}

function malformed(message: string): CocoonError {
  return new CocoonError('INPUT_MALFORMED', `KBS attestation: ${message}`);
}

/** Fetches and verifies the KBS's evidence. Throws KBS_NOT_TRUSTED (or the verifier's code) on any mismatch. */
export async function attestKbs(options: KbsAttestOptions): Promise<KbsAttestResult> {
  let base: URL;
  try {
    base = new URL(options.kbsUrl);
  } catch {
    throw new CocoonError('BAD_USAGE', `invalid KBS URL "${options.kbsUrl}"`);
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new CocoonError('BAD_USAGE', 'KBS URL must be http(s)');
  if (options.expectMeasurement !== undefined && !/^[0-9a-f]{96}$/.test(options.expectMeasurement)) throw new CocoonError('BAD_USAGE', '--expect-measurement must be 96 lower-case hex characters (SHA-384)');
  const nonce = randomBytes(32).toString('hex');
  const url = new URL(`${base.origin}${KBS_ATTESTATION_PATH}?nonce=${nonce}`);
  const { body, peerDer } = await getJson(url, options.timeoutMs ?? 15_000);

  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw malformed('not an object');
  const o = body as Record<string, unknown>;
  if (o.version !== KBS_ATTESTATION_VERSION) throw malformed(`unknown version ${String(o.version).slice(0, 64)}`);
  if (typeof o.tee !== 'string' || !isTeeKind(o.tee)) throw malformed('unknown tee');
  const tee = o.tee;
  if (typeof o.measurement !== 'string' || !/^[0-9a-f]{96}$/.test(o.measurement)) throw malformed('measurement must be 96 hex characters');
  if (typeof o.caRoot !== 'string' || o.caRoot.length > 16 * 1024 || !PEM_CERT_RE.test(o.caRoot)) throw malformed('caRoot must be one PEM certificate');
  const b = o.binding as Record<string, unknown> | undefined;
  if (typeof b !== 'object' || b === null) throw malformed('binding missing');
  const binding: KbsAttestationBinding = {
    nonce: String(b.nonce),
    tlsSpkiSha256: b.tlsSpkiSha256 === null ? null : String(b.tlsSpkiSha256),
    caRootSha256: String(b.caRootSha256),
  };
  if (binding.nonce !== nonce) throw new CocoonError('NONCE_INVALID', 'KBS attestation: the evidence is not for our nonce');
  const caRootSha256 = certSha256(o.caRoot);
  if (binding.caRootSha256 !== caRootSha256) throw new CocoonError('KBS_NOT_TRUSTED', 'KBS attestation: the returned CA root is not the one the evidence binds');
  const tlsSpki = peerDer ? spkiSha256OfDer(peerDer) : null;
  if (peerDer && binding.tlsSpkiSha256 !== tlsSpki) throw new CocoonError('KBS_NOT_TRUSTED', 'KBS attestation: the TLS key of this connection is not the one the evidence binds (a TLS-terminating proxy or an impostor)');

  if (tee === 'sim' && !options.insecureSimRoots) throw new CocoonError('SIM_NOT_ALLOWED', 'the KBS presents INSECURE simulated evidence; pass --insecure-sim to accept it (development only)');
  const trust = tee === 'sim' || tee === 'tpm' || !options.trustFor ? {} : await options.trustFor(tee);
  const verifier = createBrokerVerifier({ simRoots: options.insecureSimRoots ?? [], trustedAks: options.trustedAks ?? [], trust });
  const reportData = kbsAttestationReportData(binding);
  const result = await verifier(tee, o.evidence, { at: new Date(), reportData });
  if (!result.verified) {
    const e = result.errors[0];
    if (e?.code === 'AK_NOT_TRUSTED') {
      const ak = (o.evidence as Record<string, unknown> | null)?.ak_public;
      const akHash = typeof ak === 'string' ? createHash('sha256').update(Buffer.from(ak, 'base64')).digest('hex') : '?';
      throw new CocoonError('AK_NOT_TRUSTED', `the KBS's TPM attestation key (SPKI sha256:${akHash}) is not one of the ${options.trustedAks?.length ?? 0} --trusted-ak key(s)`, { details: { errors: result.errors.slice(0, 8) } });
    }
    throw new CocoonError('KBS_NOT_TRUSTED', `KBS evidence does not verify: ${e ? `${e.code}: ${e.message}` : 'unknown reason'}`, { details: { errors: result.errors.slice(0, 8) } });
  }
  // Azure vTPM evidence binds the report data as the vTPM quote's qualifying data (checked by the verifier)
  const boundRd = result.claims.report_data ?? (tee === 'az-snp-vtpm' || tee === 'az-tdx-vtpm' ? result.claims.tpm_nonce : undefined);
  if (boundRd !== Buffer.from(reportData).toString('hex')) throw new CocoonError('REPORT_DATA_MISMATCH', 'KBS evidence does not bind the nonce, TLS key and CA root');
  const measured = boundMeasurement(tee, o.evidence, result.claims);
  if (measured !== null && measured !== o.measurement) throw new CocoonError('KBS_NOT_TRUSTED', 'KBS evidence measurement differs from the one the KBS reports');
  if (options.expectMeasurement !== undefined) {
    if (measured === null) throw new CocoonError('MEASUREMENT_MISMATCH', `the ${tee} evidence binds no KBS measurement (no runtime register, no event log): --expect-measurement cannot be checked; compare the TEE's launch measurement in the claims instead`);
    if (measured !== options.expectMeasurement) throw new CocoonError('MEASUREMENT_MISMATCH', `KBS measurement ${measured} is not the expected ${options.expectMeasurement}`);
  }
  return {
    kbsUrl: base.origin,
    tee,
    insecure: result.insecure === true || tee === 'sim',
    measurement: measured,
    claims: result.claims,
    ...(result.tcbStatus ? { tcbStatus: result.tcbStatus } : {}),
    caRootPem: o.caRoot.endsWith('\n') ? o.caRoot : `${o.caRoot}\n`,
    caRootSha256,
    tlsSpkiSha256: tlsSpki,
    tlsCertPem: peerDer ? derToPem(peerDer) : null,
  };
}

/**
 * The KBS measurement that verified evidence binds: sim signs it in its report; tpm / tdx
 * carry it in the replayed event log (the verifier exposes it as `workload_measurement` only
 * after the replay matched the signed register), whose event must be the KBS's own
 * (`cocoon/kbs#kbs`, not a workload's). Null when the evidence has no event log.
 */
function boundMeasurement(tee: TeeKind, evidence: unknown, claims: Claims): string | null {
  if (tee === 'sim') return typeof claims.measurement === 'string' ? claims.measurement : null;
  if (typeof claims.workload_register !== 'string') return null;
  const log = parseEventLog((evidence as Record<string, unknown>)[EVENT_LOG_KEY]);
  const event = log.events.find((e) => e.event.type === WORKLOAD_EVENT)?.event;
  if (!event || event.policy !== KBS_SELF_EVENT.policy || event.workload !== KBS_SELF_EVENT.workload) {
    throw new CocoonError('KBS_NOT_TRUSTED', `KBS evidence: the event log records workload ${event ? `${event.policy}#${event.workload}` : '?'}, not the KBS (${KBS_SELF_EVENT.policy}#${KBS_SELF_EVENT.workload})`);
  }
  return typeof claims.workload_measurement === 'string' ? claims.workload_measurement : null;
}
