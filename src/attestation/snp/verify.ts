/**
 * SEV-SNP report verification: VCEK/VLEK → ASK/ASVK → pinned ARK (RSASSA-PSS SHA-384),
 * report signature (ECDSA P-384 over [0, 0x2A0)), chip_id vs hwID, reported_tcb vs SPLs.
 */
import { fail, need } from '../bytes.js';
import { isCaCert, isSignedBy, unwrapOctetString, validAt, type Cert } from '../pki.js';
import { verifyEcdsaRaw } from '../sig.js';
import type { Stages } from '../stages.js';
import type { AmdProduct, TrustAnchors } from '../trust.js';
import type { Claims } from '../types.js';
import { children, parseDer, uintValue } from '../der.js';
import { parseSnpReport, productFromCpuid, snpClaims, type SnpReport } from './report.js';

const AMD_OID = '1.3.6.1.4.1.3704.1';
const iso = (d: Date): string => d.toISOString().replace('.000Z', 'Z');

export interface VekExtensions {
  blSPL?: number;
  teeSPL?: number;
  snpSPL?: number;
  ucodeSPL?: number;
  fmcSPL?: number;
  hwID?: Buffer;
  productName?: string;
}

export function vekExtensions(c: Cert): VekExtensions {
  const spl = (oid: string): number | undefined => {
    const v = c.extensions.get(oid);
    if (!v) return undefined;
    try {
      const t = parseDer(v);
      if (t.tag === 0x02) return uintValue(t.value);
    } catch {
      /* raw value */
    }
    return v[v.length - 1];
  };
  const out: VekExtensions = {};
  const set = <K extends keyof VekExtensions>(k: K, v: VekExtensions[K] | undefined): void => {
    if (v !== undefined) out[k] = v;
  };
  set('blSPL', spl(`${AMD_OID}.3.1`));
  set('teeSPL', spl(`${AMD_OID}.3.2`));
  set('snpSPL', spl(`${AMD_OID}.3.3`));
  set('ucodeSPL', spl(`${AMD_OID}.3.8`));
  set('fmcSPL', spl(`${AMD_OID}.3.9`));
  set('hwID', c.extensions.get(`${AMD_OID}.4`));
  const pn = c.extensions.get(`${AMD_OID}.2`);
  if (pn) {
    try {
      const t = parseDer(pn);
      out.productName = (t.tag === 0x30 ? children(t)[0]?.value ?? t.value : t.value).toString('utf8');
    } catch {
      out.productName = pn.toString('utf8');
    }
  }
  return out;
}

export interface SnpOutcome {
  report?: SnpReport;
  product?: AmdProduct;
  kind?: 'vcek' | 'vlek';
  claims: Claims;
}

function identify(rep: SnpReport, certs: Cert[], anchors: TrustAnchors): { vek: Cert; ca: Cert; ark: Cert; product: AmdProduct; kind: 'vcek' | 'vlek' } {
  need(certs.length === 3, 'EVIDENCE_MALFORMED', `expected VCEK/VLEK, ASK/ASVK and ARK certificates, got ${certs.length}`);
  const [vek, ca, ark] = certs as [Cert, Cert, Cert];
  need(vek.subjectCN === 'SEV-VCEK' || vek.subjectCN === 'SEV-VLEK', 'EVIDENCE_MALFORMED', `leaf certificate CN ${vek.subjectCN} is not SEV-VCEK / SEV-VLEK`);
  const gen = vek.issuerCN.split('-').pop()!.toLowerCase();
  if (!(gen in anchors.amd)) fail('PRODUCT_MISMATCH', `unknown or untrusted product line in issuer ${vek.issuerCN}`);
  const product = gen as AmdProduct;
  if (rep.cpuid) {
    const fromCpuid = productFromCpuid(rep.cpuid.fam, rep.cpuid.mod);
    need(fromCpuid === product, 'PRODUCT_MISMATCH', `report CPUID says ${fromCpuid ?? 'unknown'}, VEK issuer says ${product}`);
  }
  return { vek, ca, ark, product, kind: vek.issuerCN.includes('VLEK') ? 'vlek' : 'vcek' };
}

/** Verifies an SNP report with its [VEK, ASK/ASVK, ARK] chain. */
export function verifySnp(reportBytes: Buffer, certs: Cert[], anchors: TrustAnchors, at: Date, st: Stages): SnpOutcome {
  const rep = st.run('parse', 'EVIDENCE_MALFORMED', () => parseSnpReport(reportBytes));
  if (!rep) return { claims: {} };
  const claims = snpClaims(rep);
  const id = st.run('parse', 'EVIDENCE_MALFORMED', () => identify(rep, certs, anchors));
  if (!id) return { report: rep, claims };
  const { vek, ca, ark, product, kind } = id;
  const pin = anchors.amd[product]!;
  st.run('ark_anchor', 'ARK_NOT_TRUSTED', () => {
    need(ark.fingerprint === pin.ark.fingerprint, 'ARK_NOT_TRUSTED', `ARK is not the pinned ARK-${product}`);
    need(isSignedBy(ark, ark), 'ARK_NOT_TRUSTED', 'ARK self-signature invalid');
  });
  st.run('ask_by_ark', 'ASK_INVALID', () => {
    const expected = kind === 'vlek' ? pin.asvk : pin.ask;
    need(expected && ca.subjectCN === expected.subjectCN, 'ASK_INVALID', `intermediate CN ${ca.subjectCN} is not the ${kind === 'vlek' ? 'ASVK' : 'ASK'}`);
    need(isSignedBy(ca, pin.ark), 'ASK_INVALID', 'ASK/ASVK is not signed by the pinned ARK');
    need(isCaCert(ca), 'ASK_INVALID', 'ASK/ASVK is not a CA certificate (basicConstraints)');
  });
  st.run('vek_chain', 'VEK_CHAIN_INVALID', () => need(isSignedBy(vek, ca), 'VEK_CHAIN_INVALID', `${vek.subjectCN} is not signed by ${ca.subjectCN}`));
  st.run('cert_validity', 'CERT_EXPIRED', () => {
    for (const x of [vek, ca, ark]) need(validAt(x, at), 'CERT_EXPIRED', `${x.subjectCN} not valid at ${iso(at)} (${iso(x.notBefore)} .. ${iso(x.notAfter)})`);
  });
  st.run('report_signature', 'REPORT_SIGNATURE_INVALID', () => {
    const key = vek.publicKey();
    need(key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'secp384r1', 'REPORT_SIGNATURE_INVALID', 'VEK key is not P-384');
    need(rep.sigHighBytesZero, 'REPORT_SIGNATURE_INVALID', 'signature r/s exceed 48 bytes');
    need(verifyEcdsaRaw('sha384', key, rep.signed, Buffer.concat([rep.r, rep.s])), 'REPORT_SIGNATURE_INVALID', 'report signature invalid');
  });
  const ext = vekExtensions(vek);
  st.run('chip_id', 'VCEK_MISMATCH', () => {
    if (kind === 'vlek') return;
    const hw = ext.hwID ?? fail('VCEK_MISMATCH', 'VCEK has no hwID extension');
    const cands = [hw, unwrapOctetString(hw)];
    need(cands.some((x) => (x.length === 8 || x.length === 64) && rep.chipIdBytes.subarray(0, x.length).equals(x)), 'VCEK_MISMATCH', 'report chip_id does not match the VCEK hwID');
  });
  st.run('tcb_match', 'TCB_MISMATCH', () => {
    const rt = rep.reported_tcb;
    const pairs: [keyof VekExtensions, number][] = [
      ['blSPL', rt.bootloader],
      ['teeSPL', rt.tee],
      ['snpSPL', rt.snp],
      ['ucodeSPL', rt.microcode],
    ];
    if (rt.fmc !== undefined) pairs.push(['fmcSPL', rt.fmc]);
    for (const [k, v] of pairs) need(ext[k] === v, 'TCB_MISMATCH', `reported_tcb ${k.replace('SPL', '')}=${v} but VEK ${k}=${String(ext[k])}`);
  });
  return { report: rep, product, kind, claims };
}
