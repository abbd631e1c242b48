/**
 * Azure CVM (vTPM) verification: TPM quote by the HCL AK, nonce, PCR digest, HCL variable
 * data bound into the hardware report, optional user-data (v2), then SNP or DCAP checks.
 */
import { need } from '../bytes.js';
import type { DcapCollateral, QuoteCollateralV3 } from '../dcap/collateral.js';
import { verifyDcap } from '../dcap/verify.js';
import { sha256, type Cert } from '../pki.js';
import { verifySnp } from '../snp/verify.js';
import type { Stages } from '../stages.js';
import { TPM_ALG } from '../tpm/structs.js';
import { verifyTpmQuote, type PcrBanks } from '../tpm/verify.js';
import type { TrustAnchors } from '../trust.js';
import type { Claims } from '../types.js';
import type { TcbEvaluation } from '../dcap/tcb.js';
import { hclAkPub, hclUserData, parseAzureEvidence, parseHcl, type AzureEvidence } from './evidence.js';

export interface AzureInputs {
  kind: 'az-snp-vtpm' | 'az-tdx-vtpm';
  evidence: unknown;
  /** SNP: ASK/ASVK + ARK (optionally preceded by a VCEK that must equal the evidence's). */
  certs?: Cert[];
  collateral?: QuoteCollateralV3 | DcapCollateral;
  reportData?: Buffer;
}

export function verifyAzure(inp: AzureInputs, anchors: TrustAnchors, at: Date, st: Stages): { claims: Claims; tcb?: TcbEvaluation; vcek?: Cert } {
  const ev = st.run('parse', 'EVIDENCE_MALFORMED', () => parseAzureEvidence(inp.evidence, inp.kind)) as AzureEvidence | undefined;
  if (!ev) return { claims: {} };
  const hcl = st.run('parse', 'EVIDENCE_MALFORMED', () => parseHcl(ev.hcl));
  if (!hcl) return { claims: {} };
  const ak = st.run('parse', 'EVIDENCE_MALFORMED', () => hclAkPub(hcl.varData));
  const claims: Claims = { hcl_version: hcl.version, evidence_version: ev.version };
  ev.pcrs.forEach((p, i) => (claims[`pcr${String(i).padStart(2, '0')}`] = p.toString('hex')));
  if (ak) {
    const bank = new Map<number, Buffer>(ev.pcrs.map((p, i) => [i, p]));
    const pcrs: PcrBanks = new Map([[TPM_ALG.SHA256, bank]]);
    const sig = { alg: TPM_ALG.RSASSA, hash: TPM_ALG.SHA256, sig: ev.tpmSignature };
    const r = verifyTpmQuote({ ak, message: ev.tpmMessage, signature: sig, pcrs }, inp.reportData, st, 'sha256');
    if (r.attest) claims.tpm_nonce = r.attest.extraData.toString('hex');
  }
  if (ev.version >= 2 && inp.reportData) {
    const rd = inp.reportData;
    st.run('user_data', 'USER_DATA_MISMATCH', () => need(hclUserData(hcl.varData).subarray(0, rd.length).equals(rd), 'USER_DATA_MISMATCH', 'HCL user-data does not match the expected report data'));
  }
  const vh = sha256(hcl.varData);
  if (inp.kind === 'az-snp-vtpm') {
    st.run('parse', 'EVIDENCE_MALFORMED', () => need(hcl.reportType === 2, 'EVIDENCE_MALFORMED', `HCL report type ${hcl.reportType} is not SNP (2)`));
    st.run('var_data_binding', 'VAR_DATA_BINDING_MISMATCH', () => need(hcl.hw.subarray(0x50, 0x70).equals(vh), 'VAR_DATA_BINDING_MISMATCH', 'SHA-256(HCL variable data) != SNP report_data[0:32]'));
    const vcek = ev.vcek!;
    let chain = inp.certs ?? [];
    if (chain.length === 3) {
      const given = chain[0]!;
      st.run('vcek_consistency', 'VCEK_MISMATCH', () => need(given.der.equals(vcek.der), 'VCEK_MISMATCH', 'the VCEK in the evidence differs from the supplied certificate chain'));
      chain = chain.slice(1);
    }
    if (chain.length === 0) {
      const gen = vcek.issuerCN.split('-').pop()!.toLowerCase() as keyof TrustAnchors['amd'];
      const a = anchors.amd[gen];
      if (a) chain = [vcek.issuerCN.includes('VLEK') && a.asvk ? a.asvk : a.ask, a.ark];
    }
    const out = verifySnp(hcl.hw, [vcek, ...chain], anchors, at, st);
    for (const [k, v] of Object.entries(out.claims)) claims[`snp_${k}`] = v;
    return { claims, vcek };
  }
  st.run('parse', 'EVIDENCE_MALFORMED', () => need(hcl.reportType === 4, 'EVIDENCE_MALFORMED', `HCL report type ${hcl.reportType} is not TDX (4)`));
  st.run('var_data_binding', 'VAR_DATA_BINDING_MISMATCH', () => need(hcl.hw.subarray(128, 160).equals(vh), 'VAR_DATA_BINDING_MISMATCH', 'SHA-256(HCL variable data) != TDREPORT report_data[0:32]'));
  const out = verifyDcap(ev.tdQuote!, inp.collateral, anchors, at, st.child('td_quote.'));
  if (out.quote?.td) {
    const rd = Buffer.from(out.quote.td.report_data, 'hex');
    st.run('var_data_binding', 'VAR_DATA_BINDING_MISMATCH', () => need(rd.subarray(0, 32).equals(vh), 'VAR_DATA_BINDING_MISMATCH', 'SHA-256(HCL variable data) != TD quote report_data[0:32]'));
  }
  for (const [k, v] of Object.entries(out.claims)) claims[`td_${k}`] = v;
  return { claims, ...(out.tcb ? { tcb: out.tcb } : {}) };
}
