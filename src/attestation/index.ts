/**
 * One entry point for evidence verification: `verifyEvidence(tee, evidence, trust, options)`.
 * Collateral I/O (if any) happens here, through the injected CollateralSource, before the
 * pure verifiers run; everything below this module is I/O-free.
 */
import type { KeyObject } from 'node:crypto';
import { CocoonError, asCocoonError } from '../errors.js';
import { fail } from './bytes.js';
import type { CollateralSource } from './collateral/source.js';
import { collateralFromJson, type DcapCollateral, type QuoteCollateralV3 } from './dcap/collateral.js';
import { pckExtension } from './dcap/pck.js';
import { parseDcapQuote } from './dcap/quote.js';
import type { TcbEvaluation } from './dcap/tcb.js';
import { verifyDcap } from './dcap/verify.js';
import { verifyAzure } from './azure/verify.js';
import { decodeEvidence, evidenceBytes, type DecodedEvidence } from './input.js';
import { parseCert, pemCerts, publicKeyFromSpki, type Cert } from './pki.js';
import { parseSnpReport, productFromCpuid } from './snp/report.js';
import { verifySnp } from './snp/verify.js';
import { Stages } from './stages.js';
import { parseAkPublic } from './tpm/structs.js';
import { verifyTpmQuote, type PcrBanks } from './tpm/verify.js';
import { defaultAnchors, type AmdProduct, type TrustAnchors } from './trust.js';
import type { Claims, TeeKind, VerificationResult, VerifyOptions } from './types.js';
import { fromBase64, fromHex } from './bytes.js';
import { verifySimEvidence } from './sim/index.js';
import { applyEventLog } from './eventlog.js';

export type { TrustAnchors } from './trust.js';
export { defaultAnchors, customAnchors } from './trust.js';
export type { CollateralSource } from './collateral/source.js';
export { decodeEvidence } from './input.js';

export type SimVerifier = (evidence: unknown, options: VerifyEvidenceOptions) => Promise<VerificationResult>;

export interface TrustInput {
  /** Trust anchors; default: the pinned Intel / AMD roots. */
  anchors?: TrustAnchors;
  /** DCAP collateral (wire JSON, parsed) or a source to ask. */
  collateral?: QuoteCollateralV3 | DcapCollateral | CollateralSource;
  /** SNP: [VEK, ASK/ASVK, ARK] (or [ASK, ARK] for Azure), as certificates or PEM text. */
  certs?: Cert[] | string;
  /** TPM: the pinned attestation key (SPKI DER/PEM, TPMT_PUBLIC, or a KeyObject). */
  ak?: KeyObject | Buffer | string;
  /** Verifier for `sim` evidence (overrides the built-in one). */
  sim?: SimVerifier;
  /** PEM roots the built-in sim verifier accepts (sim is insecure: callers must opt in). */
  simRoots?: string[];
}

export interface VerifyEvidenceOptions extends VerifyOptions {
  /** When false, a debug TEE is rejected with DEBUG_NOT_ALLOWED (stage `policy`). Default true. */
  allowDebug?: boolean;
  /** Claims that must equal the given lower-case hex (stage `policy`, CLAIM_MISMATCH). */
  expect?: Record<string, string>;
}

const isSource = (c: unknown): c is CollateralSource => typeof c === 'object' && c !== null && typeof (c as CollateralSource).dcap === 'function';

function certsOf(c: Cert[] | string | undefined): Cert[] | undefined {
  if (c === undefined) return undefined;
  return typeof c === 'string' ? pemCerts(c, 'COLLATERAL_MALFORMED') : c;
}

function akKey(ak: TrustInput['ak']): KeyObject | undefined {
  if (ak === undefined) return undefined;
  if (typeof ak === 'object' && !Buffer.isBuffer(ak)) return ak as KeyObject;
  return parseAkPublic(ak as Buffer | string);
}

const spkiCache = new WeakMap<KeyObject, Buffer>();
function spkiDer(k: KeyObject): Buffer {
  let d = spkiCache.get(k);
  if (!d) {
    d = k.export({ type: 'spki', format: 'der' });
    spkiCache.set(k, d);
  }
  return d;
}

async function dcapCollateralFor(quote: Buffer, tee: 'sgx' | 'tdx', trust: TrustInput): Promise<QuoteCollateralV3 | DcapCollateral | undefined> {
  const c = trust.collateral;
  if (!c) return undefined;
  if (!isSource(c)) return 'tcbInfo' in c && typeof c.tcbInfo === 'object' ? c : collateralFromJson(c);
  let req: { tee: 'sgx' | 'tdx'; fmspc: string; ca: 'processor' | 'platform' };
  try {
    const q = parseDcapQuote(quote);
    const [leaf] = pemCerts(q.certData.toString('latin1'));
    if (!leaf) return undefined;
    req = { tee, fmspc: pckExtension(leaf).fmspc, ca: /platform/i.test(leaf.issuerCN) ? 'platform' : 'processor' };
  } catch {
    return undefined; // the verifier reports the parse failure
  }
  return c.dcap(req);
}

async function snpCertsFor(report: Buffer, trust: TrustInput, anchors: TrustAnchors): Promise<Cert[]> {
  const given = certsOf(trust.certs);
  if (given && given.length === 1) {
    // only the VEK: complete the chain with the pinned ASK/ASVK and ARK of its product line
    const vek = given[0]!;
    const a = anchors.amd[vek.issuerCN.split('-').pop()!.toLowerCase() as AmdProduct];
    const mid = a && (vek.issuerCN.includes('VLEK') ? a.asvk : a.ask);
    return a && mid ? [vek, mid, a.ark] : given;
  }
  if (given && given.length > 0) return given;
  const c = trust.collateral;
  if (!isSource(c)) return fail('COLLATERAL_UNAVAILABLE', 'SNP verification needs the VCEK/VLEK chain (--certs) or a collateral source');
  const rep = parseSnpReport(report);
  let products: AmdProduct[];
  if (rep.cpuid) {
    const p = productFromCpuid(rep.cpuid.fam, rep.cpuid.mod);
    if (!p) return fail('PRODUCT_MISMATCH', 'report CPUID names no known SNP product line');
    products = [p];
  } else products = (Object.keys(anchors.amd) as AmdProduct[]).filter((p) => p !== 'turin');
  let last: unknown;
  for (const product of products) {
    try {
      return await c.snp({ product, kind: 'vcek', chipId: rep.chip_id, reportedTcb: rep.reported_tcb });
    } catch (e) {
      last = e;
    }
  }
  throw last ?? fail('COLLATERAL_UNAVAILABLE', 'no SNP product line to ask for');
}

function decodeTpmEvidence(d: DecodedEvidence, pinned: KeyObject | undefined): { ak: KeyObject; message: Buffer; signature: Buffer; pcrs: PcrBanks } {
  if (d.kind !== 'json' || typeof d.json !== 'object' || d.json === null) return fail('EVIDENCE_MALFORMED', 'TPM evidence must be the Trustee TPM JSON');
  const j = d.json as Record<string, unknown>;
  const tq = j.tpm_quote as Record<string, unknown> | undefined;
  if (!tq || typeof tq.message !== 'string' || typeof tq.signature !== 'string' || !Array.isArray(tq.pcrs)) return fail('EVIDENCE_MALFORMED', 'tpm_quote {message, signature, pcrs} missing');
  const bankOf: Record<number, number> = { 20: 0x4, 32: 0xb, 48: 0xc };
  const pcrs: PcrBanks = new Map();
  if (tq.pcrs.length > 24) fail('EVIDENCE_MALFORMED', 'too many PCR values');
  tq.pcrs.forEach((p, i) => {
    if (typeof p !== 'string') fail('EVIDENCE_MALFORMED', 'PCR values must be hex strings');
    const v = fromHex(p, `pcrs[${i}]`);
    const alg = bankOf[v.length] ?? fail('EVIDENCE_MALFORMED', 'PCR values must be SHA-1, SHA-256 or SHA-384 digests');
    if (!pcrs.has(alg)) pcrs.set(alg, new Map());
    pcrs.get(alg)!.set(i, v);
  });
  let ak: KeyObject | undefined;
  if (typeof j.ak_public === 'string') {
    ak = publicKeyFromSpki(fromBase64(j.ak_public, 'ak_public'));
    if (pinned && !spkiDer(pinned).equals(spkiDer(ak))) fail('AK_NOT_TRUSTED', 'the AK in the evidence is not the trusted AK');
  }
  ak ??= pinned;
  if (!pinned) fail('AK_NOT_TRUSTED', 'no trusted attestation key given (pin one with --ak)');
  return { ak: ak!, message: fromBase64(tq.message, 'tpm_quote.message'), signature: fromBase64(tq.signature, 'tpm_quote.signature'), pcrs };
}

function finish(tee: TeeKind, st: Stages, claims: Claims, options: VerifyEvidenceOptions, tcb?: TcbEvaluation, detail?: Record<string, unknown>): VerificationResult {
  const debugKey = tee === 'az-tdx-vtpm' ? 'td_debug' : tee === 'az-snp-vtpm' ? 'snp_debug' : 'debug';
  if (options.allowDebug === false && claims[debugKey] === true) st.record('policy', 'DEBUG_NOT_ALLOWED', 'the TEE runs in debug mode');
  for (const [k, v] of Object.entries(options.expect ?? {})) {
    const got = claims[k];
    const want = v.toLowerCase();
    let ok = false;
    if (typeof got === 'string') ok = got.toLowerCase() === want;
    else if ((typeof got === 'number' || typeof got === 'boolean') && /^[0-9a-f]+$/.test(want)) ok = BigInt(`0x${want}`) === BigInt(Number(got));
    if (!ok) st.record('policy', 'CLAIM_MISMATCH', `claim ${k} is ${typeof got === 'string' ? got : JSON.stringify(got)}, expected ${want}`);
  }
  return {
    verified: st.ok,
    tee,
    ...(tcb ? { tcbStatus: tcb.status } : {}),
    advisories: tcb ? [...tcb.advisories] : [],
    claims,
    errors: st.problems,
    ...(options.at instanceof Date && !Number.isNaN(options.at.getTime()) ? { verifiedAt: options.at.toISOString() } : {}),
    detail: { ...(tcb ? { tcb: { platformLevel: tcb.platformLevel, tdxModuleLevel: tcb.tdxModuleLevel, qeLevel: tcb.qeLevel } } : {}), ...detail },
  };
}

/** Verifies evidence of kind `tee`. Never throws for bad evidence: problems are in `errors`. */
export async function verifyEvidence(tee: TeeKind, evidence: Uint8Array | string | DecodedEvidence, trust: TrustInput, options: VerifyEvidenceOptions): Promise<VerificationResult> {
  const st = new Stages();
  try {
    if (!(options.at instanceof Date) || Number.isNaN(options.at.getTime())) fail('BAD_USAGE', 'verification time (at) must be a valid Date');
    const anchors = trust.anchors ?? defaultAnchors();
    const d: DecodedEvidence = typeof evidence === 'object' && 'kind' in evidence && !(evidence instanceof Uint8Array) ? evidence : decodeEvidence(evidence as Uint8Array | string);
    const at = options.at;
    switch (tee) {
      case 'sgx':
      case 'tdx': {
        const q = evidenceBytes(d);
        const coll = await st.run('collateral_parse', 'COLLATERAL_UNAVAILABLE', () => dcapCollateralFor(q, tee, trust))?.catch((e: unknown) => {
          st.record('collateral_parse', asCocoonError(e, 'COLLATERAL_UNAVAILABLE').code, asCocoonError(e).message);
          return undefined;
        });
        const out = verifyDcap(q, coll, anchors, at, st);
        if (out.quote && (out.quote.teeType === 0 ? 'sgx' : 'tdx') !== tee) st.record('parse', 'TEE_UNSUPPORTED', `evidence is a ${out.quote.teeType === 0 ? 'SGX' : 'TDX'} quote, not ${tee}`);
        if (options.reportData) checkReportData(st, out.claims.report_data, options.reportData);
        if (tee === 'tdx' && d.kind === 'json' && st.ok) st.run('event_log', 'EVENT_LOG_MALFORMED', () => applyEventLog(d.json, out.claims));
        return finish(tee, st, out.claims, options, out.tcb);
      }
      case 'snp': {
        const r = evidenceBytes(d);
        const certs = await snpCertsFor(r, trust, anchors).catch((e: unknown) => {
          const ce = asCocoonError(e, 'COLLATERAL_UNAVAILABLE');
          st.record('parse', ce.code, ce.message);
          return [] as Cert[];
        });
        const out = verifySnp(r, certs, anchors, at, st);
        if (options.reportData) checkReportData(st, out.claims.report_data, options.reportData);
        return finish(tee, st, out.claims, options, undefined, { product: out.product, endorsement: out.kind });
      }
      case 'tpm': {
        const ev = st.run('parse', 'EVIDENCE_MALFORMED', () => decodeTpmEvidence(d, akKey(trust.ak)));
        if (!ev) return finish(tee, st, {}, options);
        const out = verifyTpmQuote({ ak: ev.ak, message: ev.message, signature: ev.signature, pcrs: ev.pcrs }, options.reportData ? Buffer.from(options.reportData) : undefined, st);
        if (d.kind === 'json' && st.ok) st.run('event_log', 'EVENT_LOG_MALFORMED', () => applyEventLog(d.json, out.claims));
        return finish(tee, st, out.claims, options);
      }
      case 'az-snp-vtpm':
      case 'az-tdx-vtpm': {
        if (d.kind !== 'json') fail('EVIDENCE_MALFORMED', 'Azure evidence must be the Trustee JSON');
        let collateral: QuoteCollateralV3 | DcapCollateral | undefined;
        if (tee === 'az-tdx-vtpm' && trust.collateral) {
          if (isSource(trust.collateral)) {
            const { parseAzureEvidence } = await import('./azure/evidence.js');
            let quote: Buffer | undefined;
            try {
              quote = parseAzureEvidence(d.json, tee).tdQuote;
            } catch {
              quote = undefined;
            }
            collateral = quote ? await dcapCollateralFor(quote, 'tdx', trust).catch((e: unknown) => {
              st.record('td_quote.collateral_parse', asCocoonError(e, 'COLLATERAL_UNAVAILABLE').code, asCocoonError(e).message);
              return undefined;
            }) : undefined;
          } else collateral = 'tcbInfo' in trust.collateral && typeof trust.collateral.tcbInfo === 'object' ? trust.collateral as DcapCollateral : collateralFromJson(trust.collateral);
        }
        const certs = certsOf(trust.certs);
        const out = verifyAzure({ kind: tee, evidence: d.json, ...(certs ? { certs } : {}), ...(collateral ? { collateral } : {}), ...(options.reportData ? { reportData: Buffer.from(options.reportData) } : {}) }, anchors, at, st);
        return finish(tee, st, out.claims, options, out.tcb);
      }
      case 'sim': {
        const ev = d.kind === 'json' ? d.json : d.bytes;
        let r: VerificationResult;
        if (trust.sim) r = await trust.sim(ev, options);
        else {
          if (!trust.simRoots?.length) fail('SIM_NOT_ALLOWED', 'sim evidence needs explicitly trusted sim roots');
          r = await verifySimEvidence(ev, { roots: trust.simRoots }, options);
        }
        for (const p of r.errors) st.problems.push(p);
        const out = finish(tee, st, r.claims, options);
        return { ...r, verified: r.verified && out.verified, errors: out.errors };
      }
      default:
        return fail('TEE_UNSUPPORTED', `unknown TEE ${String(tee)}`);
    }
  } catch (e) {
    const ce = e instanceof CocoonError ? e : asCocoonError(e);
    st.record('parse', ce.code, ce.message);
    return finish(tee, st, {}, options);
  }
}

function checkReportData(st: Stages, got: unknown, expected: Uint8Array): void {
  if (typeof got !== 'string') return;
  const g = Buffer.from(got, 'hex');
  const e = Buffer.from(expected);
  if (e.length > g.length || !g.subarray(0, e.length).equals(e)) st.record('report_data', 'REPORT_DATA_MISMATCH', 'report_data does not match the expected value');
}

export { parseCert };
