/**
 * Intel PCS v4 client (I/O module): TCB info, QE identity, PCK CRL and root CA CRL as a
 * QuoteCollateralV3. The signed texts are the exact substrings of the response bodies.
 */
import { fail } from '../bytes.js';
import { parseQeIdentity, parseTcbInfo, type QuoteCollateralV3 } from '../dcap/collateral.js';
import { parseCrl } from '../pki.js';
import { cachedGet, type HttpOptions } from './http.js';
import type { CollateralSource, DcapCollateralRequest, SnpCertRequest } from './source.js';
import type { Cert } from '../pki.js';

export const INTEL_PCS_URL = 'https://api.trustedservices.intel.com';
export const INTEL_ROOT_CRL_URL = 'https://certificates.trustedservices.intel.com/IntelSGXRootCA.der';

/** Exact text of the value of top-level member `key` of a JSON object text. */
export function rawJsonMember(text: string, key: string): string {
  let depth = 0;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === '"') {
      const start = i;
      i++;
      while (i < n && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
      const str = text.slice(start + 1, i);
      i++;
      if (depth === 1) {
        let j = i;
        while (j < n && /\s/.test(text[j]!)) j++;
        if (text[j] === ':' && str === key) {
          j++;
          while (j < n && /\s/.test(text[j]!)) j++;
          const vStart = j;
          let d = 0;
          for (; j < n; j++) {
            const ch = text[j]!;
            if (ch === '"') {
              j++;
              while (j < n && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
              if (d === 0) return text.slice(vStart, j + 1);
            } else if (ch === '{' || ch === '[') d++;
            else if (ch === '}' || ch === ']') {
              d--;
              if (d === 0) return text.slice(vStart, j + 1);
            }
          }
          break;
        }
      }
      continue;
    }
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    i++;
  }
  return fail('COLLATERAL_MALFORMED', `member ${key} not found`);
}

function decodeChainHeader(h: string | undefined, what: string): string {
  if (!h) fail('COLLATERAL_MALFORMED', `PCS response lacks the ${what} header`);
  try {
    return decodeURIComponent(h);
  } catch {
    return fail('COLLATERAL_MALFORMED', `${what} header is not URL-encoded PEM`);
  }
}

function crlDer(body: Buffer): Buffer {
  const t = body.subarray(0, 32).toString('latin1');
  if (t.startsWith('-----BEGIN X509 CRL-----')) {
    const b64 = body.toString('latin1').replace(/-----(BEGIN|END) X509 CRL-----/g, '').replace(/\s+/g, '');
    return Buffer.from(b64, 'base64');
  }
  if (/^[0-9a-fA-F]+$/.test(body.toString('latin1').trim())) return Buffer.from(body.toString('latin1').trim(), 'hex');
  return body;
}

export interface PcsOptions extends HttpOptions {
  baseUrl?: string;
  rootCrlUrl?: string;
}

export class IntelPcsClient implements CollateralSource {
  constructor(private readonly o: PcsOptions = {}) {}

  async dcap(req: DcapCollateralRequest): Promise<QuoteCollateralV3> {
    if (!/^[0-9a-f]{12}$/.test(req.fmspc)) fail('BAD_USAGE', 'FMSPC must be 6 bytes of hex');
    const base = (this.o.baseUrl ?? INTEL_PCS_URL).replace(/\/$/, '');
    const farFuture = (): Date => new Date(Date.now() + 24 * 3600 * 1000);
    const tcb = await cachedGet(`${base}/${req.tee}/certification/v4/tcb?fmspc=${req.fmspc}`, ['TCB-Info-Issuer-Chain', 'SGX-TCB-Info-Issuer-Chain'], (b) => parseTcbInfo(rawJsonMember(b.toString('utf8'), 'tcbInfo')).nextUpdate, this.o);
    const qe = await cachedGet(`${base}/${req.tee}/certification/v4/qe/identity`, ['SGX-Enclave-Identity-Issuer-Chain'], (b) => parseQeIdentity(rawJsonMember(b.toString('utf8'), 'enclaveIdentity')).nextUpdate, this.o);
    const pck = await cachedGet(`${base}/sgx/certification/v4/pckcrl?ca=${req.ca}&encoding=der`, ['SGX-PCK-CRL-Issuer-Chain'], (b) => parseCrl(crlDer(b)).nextUpdate ?? farFuture(), this.o);
    const root = await cachedGet(this.o.rootCrlUrl ?? INTEL_ROOT_CRL_URL, [], (b) => parseCrl(crlDer(b)).nextUpdate ?? farFuture(), this.o);
    const tcbText = tcb.body.toString('utf8');
    const qeText = qe.body.toString('utf8');
    const sigOf = (text: string): string => {
      const s = JSON.parse(rawJsonMember(text, 'signature')) as unknown;
      if (typeof s !== 'string') fail('COLLATERAL_MALFORMED', 'signature is not a string');
      return s;
    };
    return {
      pck_crl_issuer_chain: decodeChainHeader(pck.headers['sgx-pck-crl-issuer-chain'], 'SGX-PCK-CRL-Issuer-Chain'),
      root_ca_crl: crlDer(root.body).toString('hex'),
      pck_crl: crlDer(pck.body).toString('hex'),
      tcb_info_issuer_chain: decodeChainHeader(tcb.headers['tcb-info-issuer-chain'] ?? tcb.headers['sgx-tcb-info-issuer-chain'], 'TCB-Info-Issuer-Chain'),
      tcb_info: rawJsonMember(tcbText, 'tcbInfo'),
      tcb_info_signature: sigOf(tcbText),
      qe_identity_issuer_chain: decodeChainHeader(qe.headers['sgx-enclave-identity-issuer-chain'], 'SGX-Enclave-Identity-Issuer-Chain'),
      qe_identity: rawJsonMember(qeText, 'enclaveIdentity'),
      qe_identity_signature: sigOf(qeText),
    };
  }

  async snp(_req: SnpCertRequest): Promise<Cert[]> {
    return fail('COLLATERAL_UNAVAILABLE', 'Intel PCS does not serve AMD certificates');
  }
}
