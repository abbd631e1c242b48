/**
 * Intel DCAP quote verification (SGX v3, TDX v4/v5, ECDSA-P256 attestation key, PCK cert
 * chain in certification data type 5), in the order of the vectors' stage names. Pure:
 * bytes + collateral + anchors + time → stages, claims, TCB evaluation.
 */
import { createHash } from 'node:crypto';
import { fail, need } from '../bytes.js';
import { crlSignedBy, isCaCert, isSignedBy, pemCerts, sha256, validAt, type Cert, type Crl } from '../pki.js';
import { p256FromRaw, verifyEcdsaRaw, verifyEcdsaRawMemo } from '../sig.js';
import type { Stages } from '../stages.js';
import type { TrustAnchors } from '../trust.js';
import type { Claims } from '../types.js';
import { parseCollateral, type DcapCollateral, type QuoteCollateralV3 } from './collateral.js';
import { pckExtension, type PckExtension } from './pck.js';
import { INTEL_QE_VENDOR_ID, parseDcapQuote, TEE_TYPE_SGX, type DcapQuote } from './quote.js';
import { evaluateTcb, qeTcbLevel, type StatusWithAdvisories, type TcbEvaluation } from './tcb.js';

export interface DcapOutcome {
  quote?: DcapQuote;
  pck?: PckExtension;
  tcb?: TcbEvaluation;
  claims: Claims;
}

const iso = (d: Date): string => d.toISOString().replace('.000Z', 'Z');

function pinnedRoot(anchors: TrustAnchors, c: Cert | undefined, what: string, code: 'PCK_CHAIN_INVALID' | 'CRL_INVALID' | 'TCB_INFO_CHAIN_INVALID' | 'QE_IDENTITY_CHAIN_INVALID'): Cert {
  const root = c && anchors.intelRoots.find((a) => a.fingerprint === c.fingerprint);
  if (!root) fail(code, `${what}: root is not a pinned Intel SGX Root CA`);
  return root;
}

const parsedCollateral = new Map<string, DcapCollateral>();

function collateralKey(c: QuoteCollateralV3): string {
  const h = createHash('sha256');
  for (const v of Object.values(c)) h.update(String(v)).update('\0');
  return h.digest('hex');
}

/** Parses wire collateral, memoized by the hash of its exact text. */
const byObject = new WeakMap<object, { fields: string[]; parsed: DcapCollateral }>();

export function resolveCollateral(c: QuoteCollateralV3 | DcapCollateral): DcapCollateral {
  if ('tcbInfo' in c && typeof c.tcbInfo === 'object') return c;
  const wire = c as QuoteCollateralV3;
  const same = byObject.get(wire);
  const fields = Object.values(wire) as string[];
  if (same && same.fields.length === fields.length && same.fields.every((f, i) => f === fields[i])) return same.parsed;
  const k = collateralKey(wire);
  const hit = parsedCollateral.get(k);
  const parsed = hit ?? parseCollateral(wire);
  if (parsedCollateral.size > 256) parsedCollateral.clear();
  parsedCollateral.set(k, parsed);
  byObject.set(wire, { fields, parsed });
  return parsed;
}

export function dcapClaims(q: DcapQuote, pck: PckExtension | undefined): Claims {
  const cl: Claims = {};
  if (q.sgx) {
    const s = q.sgx;
    Object.assign(cl, {
      mrenclave: s.mrenclave,
      mrsigner: s.mrsigner,
      isvprodid: s.isvprodid,
      isvsvn: s.isvsvn,
      report_data: s.report_data,
      attributes: s.attributes,
      miscselect: s.miscselect,
      cpusvn: s.cpusvn,
      debug: (Buffer.from(s.attributes, 'hex')[0]! & 0x02) !== 0,
    });
  } else if (q.td) {
    for (const [k, v] of Object.entries(q.td)) cl[k] = v as string;
    const ta = Buffer.from(q.td.td_attributes, 'hex').readBigUInt64LE(0);
    cl.debug = (ta & 1n) !== 0n;
    cl.sept_ve_disable = (ta & (1n << 28n)) !== 0n;
  }
  Object.assign(cl, {
    qe_mrsigner: q.qeReportBody.mrsigner,
    qe_isvprodid: q.qeReportBody.isvprodid,
    qe_isvsvn: q.qeReportBody.isvsvn,
    quote_version: q.version,
    trailing_bytes: q.trailingBytes,
  });
  if (pck) Object.assign(cl, { fmspc: pck.fmspc, pceid: pck.pceid, pcesvn: pck.pcesvn, pck_cpusvn: pck.cpusvn, ppid: pck.ppid });
  return cl;
}

function crlFresh(crl: Crl, at: Date, name: string): void {
  if (crl.thisUpdate.getTime() > at.getTime()) fail('CRL_EXPIRED', `${name} thisUpdate ${iso(crl.thisUpdate)} is after ${iso(at)}`);
  if (!crl.nextUpdate || at.getTime() >= crl.nextUpdate.getTime())
    fail('CRL_EXPIRED', `${name} nextUpdate ${crl.nextUpdate ? iso(crl.nextUpdate) : 'missing'} is before ${iso(at)}`);
}

function qePolicy(q: DcapQuote, c: DcapCollateral): StatusWithAdvisories {
  const qi = c.qeIdentity;
  const qe = q.qeReportBody;
  const expId = q.teeType === TEE_TYPE_SGX ? 'QE' : 'TD_QE';
  need(qi.id === expId, 'QE_IDENTITY_MISMATCH', `QE identity id ${qi.id} != ${expId}`);
  need(qe.mrsigner === qi.mrsigner, 'QE_IDENTITY_MISMATCH', 'QE MRSIGNER mismatch');
  need(qe.isvprodid === qi.isvprodid, 'QE_IDENTITY_MISMATCH', 'QE ISVPRODID mismatch');
  const ms = Buffer.from(qi.miscselect, 'hex');
  const mm = Buffer.from(qi.miscselectMask, 'hex');
  need(ms.length === 4 && mm.length === 4, 'COLLATERAL_MALFORMED', 'QE identity miscselect must be 4 bytes');
  const msel = ms.readUInt32LE(0);
  const mmask = mm.readUInt32LE(0);
  need(((qe.miscselect & mmask) >>> 0) === ((msel & mmask) >>> 0), 'QE_IDENTITY_MISMATCH', 'QE MISCSELECT mismatch');
  const a = Buffer.from(qi.attributes, 'hex');
  const am = Buffer.from(qi.attributesMask, 'hex');
  const qa = Buffer.from(qe.attributes, 'hex');
  for (let i = 0; i < qa.length; i++) {
    const m = am[i] ?? 0;
    need((qa[i]! & m) === ((a[i] ?? 0) & m), 'QE_IDENTITY_MISMATCH', 'QE ATTRIBUTES mismatch');
  }
  need((qa[0]! & 0x02) === 0, 'QE_IDENTITY_MISMATCH', 'the QE is a debug enclave');
  return qeTcbLevel(qi, qe.isvsvn);
}

/** Collateral signature verdicts, memoized on the (immutable, cached) parsed collateral. */
const sigVerdicts = new WeakMap<DcapCollateral, { tcb: boolean; qe: boolean }>();
function collateralSignatures(c: DcapCollateral): { tcb: boolean; qe: boolean } {
  let v = sigVerdicts.get(c);
  if (!v) {
    const t = c.tcbChain[0]!;
    const q = c.qeChain[0]!;
    v = {
      tcb: verifyEcdsaRawMemo('sha256', t.publicKey(), t.fingerprint, Buffer.from(c.tcbInfoText, 'utf8'), c.tcbInfoSignature),
      qe: verifyEcdsaRawMemo('sha256', q.publicKey(), q.fingerprint, Buffer.from(c.qeIdentityText, 'utf8'), c.qeIdentitySignature),
    };
    sigVerdicts.set(c, v);
  }
  return v;
}

function signingChain(anchors: TrustAnchors, chain: Cert[], at: Date, what: string, code: 'TCB_INFO_CHAIN_INVALID' | 'QE_IDENTITY_CHAIN_INVALID'): void {
  const root = pinnedRoot(anchors, chain[chain.length - 1], what, code);
  const signer = chain[0]!;
  need(isSignedBy(signer, root), code, `${what}: signing certificate is not signed by the Intel root`);
  need(validAt(signer, at), code, `${what}: signing certificate not valid at ${iso(at)}`);
  need(signer.subjectCN === 'Intel SGX TCB Signing', code, `${what}: unexpected signer ${signer.subjectCN}`);
}

/** Verifies a DCAP quote; every failing stage is recorded in `st`. */
export function verifyDcap(
  quoteBytes: Buffer,
  collateralIn: QuoteCollateralV3 | DcapCollateral | undefined,
  anchors: TrustAnchors,
  at: Date,
  st: Stages,
): DcapOutcome {
  const q = st.run('parse', 'EVIDENCE_MALFORMED', () => parseDcapQuote(quoteBytes));
  if (!q) return { claims: {} };
  st.run('parse', 'EVIDENCE_MALFORMED', () => {
    need(q.qeVendorId === INTEL_QE_VENDOR_ID, 'EVIDENCE_MALFORMED', `unknown QE vendor id ${q.qeVendorId}`);
    need(q.attKeyType === 2, 'EVIDENCE_MALFORMED', `attestation key type ${q.attKeyType} is not ECDSA-P256 (2)`);
    need(q.certDataType === 5, 'EVIDENCE_MALFORMED', `certification data type ${q.certDataType} is not a PEM PCK chain (5)`);
  });
  const c = collateralIn
    ? st.run('collateral_parse', 'COLLATERAL_MALFORMED', () => resolveCollateral(collateralIn))
    : (st.record('collateral_parse', 'COLLATERAL_UNAVAILABLE', 'no collateral for this quote'), undefined);

  const certs = q.certDataType === 5 ? st.run('parse', 'EVIDENCE_MALFORMED', () => {
    const cs = pemCerts(q.certData.toString('latin1'), 'EVIDENCE_MALFORMED', 8);
    need(cs.length === 3, 'EVIDENCE_MALFORMED', `expected PCK, intermediate CA and root in certification data, got ${cs.length}`);
    return cs;
  }) : undefined;

  let pck: PckExtension | undefined;
  if (certs) {
    const [leaf, ca, root] = certs as [Cert, Cert, Cert];
    st.run('pck_chain', 'PCK_CHAIN_INVALID', () => {
      const anchor = pinnedRoot(anchors, root, 'PCK chain', 'PCK_CHAIN_INVALID');
      need(isSignedBy(ca, anchor), 'PCK_CHAIN_INVALID', 'PCK CA certificate is not signed by the Intel root');
      need(isCaCert(ca), 'PCK_CHAIN_INVALID', 'PCK CA certificate is not a CA (basicConstraints)');
      need(isSignedBy(leaf, ca), 'PCK_CHAIN_INVALID', 'PCK certificate is not signed by the PCK CA');
      for (const x of [leaf, ca, anchor]) need(validAt(x, at), 'CERT_EXPIRED', `certificate ${x.subjectCN} not valid at ${iso(at)}`);
    });
    pck = st.run('pck_chain', 'PCK_CHAIN_INVALID', () => pckExtension(leaf));
  }

  if (c) {
    st.run('crl', 'CRL_INVALID', () => {
      const root = pinnedRoot(anchors, c.pckCrlChain[c.pckCrlChain.length - 1], 'pck_crl_issuer_chain', 'CRL_INVALID');
      need(crlSignedBy(c.rootCrl, root), 'CRL_INVALID', 'root CA CRL is not signed by the Intel root');
      const ca = c.pckCrlChain[0]!;
      need(isSignedBy(ca, root), 'CRL_INVALID', 'PCK CRL issuer CA is not signed by the Intel root');
      need(validAt(ca, at), 'CRL_INVALID', `PCK CRL issuer CA not valid at ${iso(at)}`);
      need(crlSignedBy(c.pckCrl, ca), 'CRL_INVALID', 'PCK CRL is not signed by its issuer CA');
      crlFresh(c.rootCrl, at, 'root CA CRL');
      crlFresh(c.pckCrl, at, `PCK CRL (${c.pckCrl.issuerCN})`);
    });
    st.run('revocation', 'CERT_REVOKED', () => {
      for (const x of [...c.tcbChain.slice(0, -1), ...c.qeChain.slice(0, -1), ...c.pckCrlChain.slice(0, -1)])
        need(!c.rootCrl.revoked.has(x.serial), 'CERT_REVOKED', `${x.subjectCN} is revoked`);
      if (certs) {
        const [leaf, ca] = certs as [Cert, Cert];
        need(leaf.issuer.equals(c.pckCrl.issuer), 'CRL_INVALID', 'PCK CRL is not issued by the PCK issuer CA');
        need(!c.rootCrl.revoked.has(ca.serial), 'CERT_REVOKED', 'PCK CA certificate is revoked');
        need(!c.pckCrl.revoked.has(leaf.serial), 'CERT_REVOKED', 'PCK certificate is revoked');
      }
    });
    st.run('tcb_info_chain', 'TCB_INFO_CHAIN_INVALID', () => signingChain(anchors, c.tcbChain, at, 'tcb_info_issuer_chain', 'TCB_INFO_CHAIN_INVALID'));
    st.run('tcb_info_signature', 'TCB_INFO_SIGNATURE_INVALID', () => {
      need(collateralSignatures(c).tcb, 'TCB_INFO_SIGNATURE_INVALID', 'TCB info signature invalid');
    });
    st.run('tcb_info_validity', 'TCB_INFO_EXPIRED', () => {
      const t = c.tcbInfo;
      need(t.issueDate.getTime() <= at.getTime(), 'TCB_INFO_EXPIRED', `TCB info issueDate ${iso(t.issueDate)} is after ${iso(at)}`);
      need(at.getTime() <= t.nextUpdate.getTime(), 'TCB_INFO_EXPIRED', `TCB info expired (nextUpdate ${iso(t.nextUpdate)})`);
    });
    st.run('qe_identity_chain', 'QE_IDENTITY_CHAIN_INVALID', () => signingChain(anchors, c.qeChain, at, 'qe_identity_issuer_chain', 'QE_IDENTITY_CHAIN_INVALID'));
    st.run('qe_identity_signature', 'QE_IDENTITY_SIGNATURE_INVALID', () => {
      need(collateralSignatures(c).qe, 'QE_IDENTITY_SIGNATURE_INVALID', 'QE identity signature invalid');
    });
    st.run('qe_identity_validity', 'QE_IDENTITY_EXPIRED', () => {
      const t = c.qeIdentity;
      need(t.issueDate.getTime() <= at.getTime(), 'QE_IDENTITY_EXPIRED', `QE identity issueDate ${iso(t.issueDate)} is after ${iso(at)}`);
      need(at.getTime() <= t.nextUpdate.getTime(), 'QE_IDENTITY_EXPIRED', `QE identity expired (nextUpdate ${iso(t.nextUpdate)})`);
    });
  }

  if (certs) {
    st.run('qe_report_signature', 'QE_REPORT_SIGNATURE_INVALID', () => {
      need(verifyEcdsaRaw('sha256', certs[0]!.publicKey(), q.qeReport, q.qeReportSignature), 'QE_REPORT_SIGNATURE_INVALID', 'QE report signature (by the PCK key) invalid');
    });
  }
  st.run('qe_report_data', 'QE_REPORT_DATA_MISMATCH', () => {
    const h = sha256(Buffer.concat([q.attestKey, q.qeAuthData]));
    need(h.equals(q.qeReport.subarray(320, 352)), 'QE_REPORT_DATA_MISMATCH', 'QE report data != SHA-256(attestation key || QE auth data)');
    need(q.qeReport.subarray(352, 384).every((b) => b === 0), 'QE_REPORT_DATA_MISMATCH', 'QE report data upper half is not zero');
  });
  st.run('quote_signature', 'QUOTE_SIGNATURE_INVALID', () => {
    need(verifyEcdsaRaw('sha256', p256FromRaw(q.attestKey), q.signed, q.signature), 'QUOTE_SIGNATURE_INVALID', 'quote signature invalid');
  });

  let tcb: TcbEvaluation | undefined;
  if (c) {
    const qeStatus = st.run('qe_identity_policy', 'QE_IDENTITY_MISMATCH', () => qePolicy(q, c));
    tcb = st.run('tcb_level', 'NO_MATCHING_TCB_LEVEL', () => {
      if (!qeStatus) return undefined; // already reported at qe_identity_policy
      const ti = c.tcbInfo;
      need(pck, 'PCK_CHAIN_INVALID', 'no PCK extension to match TCB levels against');
      need(pck.fmspc === ti.fmspc, 'FMSPC_MISMATCH', `FMSPC mismatch: PCK ${pck.fmspc}, TCB info ${ti.fmspc}`);
      need(pck.pceid === ti.pceId, 'FMSPC_MISMATCH', `PCEID mismatch: PCK ${pck.pceid}, TCB info ${ti.pceId}`);
      if (q.teeType === TEE_TYPE_SGX) need(ti.id === 'SGX', 'TCB_INFO_MISMATCH', 'SGX quote with a TDX TCB info');
      else need(ti.id === 'TDX' && ti.version >= 3, 'TCB_INFO_MISMATCH', 'TDX quote with a non-TDX (v3) TCB info');
      return evaluateTcb(ti, pck, q.td, qeStatus);
    });
    if (tcb?.status === 'Revoked') st.record('tcb_level', 'TCB_REVOKED', 'TCB status is Revoked');
  }
  return { quote: q, ...(pck ? { pck } : {}), ...(tcb ? { tcb } : {}), claims: dcapClaims(q, pck) };
}
