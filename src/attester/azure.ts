/**
 * Azure confidential VMs (az-snp-vtpm, az-tdx-vtpm): the paravisor (HCL) puts its report,
 * which binds the vTPM AK through its variable data, into vTPM NV index 0x01400001; the AK
 * is the persistent key 0x81000003; a vTPM quote (SHA-256 PCRs 0–23) carries the report data
 * as qualifying data. The VCEK (SNP) and the TD quote (TDX) come from the Azure instance
 * metadata service (IMDS) on 169.254.169.254.
 *
 * Evidence: Trustee v1 JSON, as src/attestation/azure parses it:
 *   {"version": 1, "tpm_quote": {"signature": hex, "message": hex, "pcrs": [24 × hex]},
 *    "hcl_report": b64, "vcek": b64 DER (SNP) | "td_quote": b64 (TDX)}
 *
 * NOT EXERCISED on the development machines (no Azure CVM): see docs/tee-support.md.
 */
import { CocoonError } from '../errors.js';
import { httpRequest, type HttpResult } from '../kbs/client/http.js';
import { ALG, TpmClient } from './tpm/client.js';
import type { Tcti } from './tpm/tcti.js';
import type { Attester } from './types.js';

export const HCL_REPORT_NV_INDEX = 0x01400001;
export const AZURE_AK_HANDLE = 0x81000003;
const IMDS = 'http://169.254.169.254';
const ALL_PCRS = Array.from({ length: 24 }, (_, i) => i);
const MAX_IMDS = 256 * 1024;

export interface AzureAttesterOptions {
  tcti: Tcti;
  fetchImpl?: typeof fetch;
  imdsTimeoutMs?: number;
  connect?: (tcti: Tcti) => Promise<TpmClient>;
}

async function imds(fetchImpl: typeof fetch, path: string, init: { method: 'GET' | 'POST'; body?: unknown }, timeoutMs: number): Promise<Record<string, unknown>> {
  let res: HttpResult;
  try {
    // bounded read (MAX_IMDS): a larger answer is refused, not buffered
    res = await httpRequest(`${IMDS}${path}`, { ...init, headers: { Metadata: 'true' }, timeoutMs, maxBytes: MAX_IMDS, fetchImpl });
  } catch (err) {
    throw new CocoonError('ATTESTER_IO_FAILED', `Azure IMDS ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (res.status < 200 || res.status > 299) throw new CocoonError('ATTESTER_IO_FAILED', `Azure IMDS ${path}: HTTP ${res.status}`);
  let v: unknown;
  try {
    v = JSON.parse(res.bytes.toString('utf8'));
  } catch (err) {
    throw new CocoonError('ATTESTER_IO_FAILED', `Azure IMDS ${path}: response is not a JSON object`, { cause: err });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CocoonError('ATTESTER_IO_FAILED', `Azure IMDS ${path}: response is not a JSON object`);
  return v as Record<string, unknown>;
}

function pemToDer(pem: string): Buffer {
  const m = pem.match(/-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/);
  if (!m) throw new CocoonError('ATTESTER_IO_FAILED', 'Azure IMDS: vcekCert is not a PEM certificate');
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}

export class AzureVtpmAttester implements Attester {
  constructor(readonly tee: 'az-snp-vtpm' | 'az-tdx-vtpm', private readonly options: AzureAttesterOptions) {}

  async getEvidence(reportData: Uint8Array): Promise<Record<string, unknown>> {
    if (reportData.length !== 64) throw new CocoonError('BAD_USAGE', 'Azure attester: report data must be 64 bytes');
    const fetchImpl = this.options.fetchImpl ?? fetch;
    const timeoutMs = this.options.imdsTimeoutMs ?? 10_000;
    const c = await (this.options.connect ?? ((t: Tcti) => TpmClient.connect(t)))(this.options.tcti);
    let hcl: Buffer;
    let message: Buffer;
    let signature: Buffer;
    let pcrs: Map<number, Buffer>;
    try {
      hcl = await c.nvRead(HCL_REPORT_NV_INDEX, 8 * 1024);
      const q = await c.quote(AZURE_AK_HANDLE, Buffer.from(reportData), ALG.SHA256, ALL_PCRS);
      pcrs = await c.pcrRead(ALG.SHA256, ALL_PCRS);
      message = q.message;
      // TPMT_SIGNATURE (RSASSA): sigAlg u16, hash u16, TPM2B signature → the raw signature
      if (q.signature.length < 6 || q.signature.readUInt16BE(0) !== ALG.RSASSA) throw new CocoonError('TPM_COMMAND_FAILED', 'the Azure vTPM AK did not sign with RSASSA');
      signature = q.signature.subarray(6, 6 + q.signature.readUInt16BE(4));
    } finally {
      await c.close();
    }
    if (hcl.length < 0x4d4 || hcl.subarray(0, 4).toString('latin1') !== 'HCLA') throw new CocoonError('ATTESTER_IO_FAILED', `NV index 0x${HCL_REPORT_NV_INDEX.toString(16)} does not hold an HCL report`);
    const evidence: Record<string, unknown> = {
      version: 1,
      tpm_quote: { signature: signature.toString('hex'), message: message.toString('hex'), pcrs: ALL_PCRS.map((p) => pcrs.get(p)!.toString('hex')) },
      hcl_report: hcl.toString('base64'),
    };
    if (this.tee === 'az-snp-vtpm') {
      const certs = await imds(fetchImpl, '/metadata/THIM/amd/certification', { method: 'GET' }, timeoutMs);
      if (typeof certs.vcekCert !== 'string') throw new CocoonError('ATTESTER_IO_FAILED', 'Azure IMDS: no vcekCert');
      evidence.vcek = pemToDer(certs.vcekCert).toString('base64');
    } else {
      const tdReport = hcl.subarray(0x20, 0x20 + 1024);
      const r = await imds(fetchImpl, '/acc/tdquote', { method: 'POST', body: { report: tdReport.toString('base64url') } }, timeoutMs);
      if (typeof r.quote !== 'string' || r.quote.length > MAX_IMDS) throw new CocoonError('ATTESTER_IO_FAILED', 'Azure IMDS: no TD quote');
      evidence.td_quote = Buffer.from(r.quote, 'base64url').toString('base64');
    }
    return evidence;
  }
}
