/** The Intel SGX PCK certificate extension (OID 1.2.840.113741.1.13.1). */
import { fail, toHex } from '../bytes.js';
import { parseDer, uintValue, walkOidPairs, type Tlv } from '../der.js';
import type { Cert } from '../pki.js';

export const SGX_EXT_OID = '1.2.840.113741.1.13.1';

export interface PckExtension {
  ppid: string;
  /** CPUSVN components 1..16 */
  cpusvnComponents: number[];
  pcesvn: number;
  cpusvn: string;
  pceid: string;
  fmspc: string;
}

const memo = new WeakMap<Cert, PckExtension>();

/** The parsed SGX extension of a PCK certificate (memoized per parsed certificate). */
export function pckExtension(cert: Cert): PckExtension {
  const hit = memo.get(cert);
  if (hit) return hit;
  const ext = parsePckExtension(cert);
  memo.set(cert, ext);
  return ext;
}

function parsePckExtension(cert: Cert): PckExtension {
  const raw = cert.extensions.get(SGX_EXT_OID);
  if (!raw) fail('PCK_CHAIN_INVALID', 'PCK certificate has no SGX extension');
  const vals = new Map<string, Tlv>();
  walkOidPairs(parseDer(raw, 'PCK_CHAIN_INVALID'), (oid, v) => vals.set(oid, v), 'PCK_CHAIN_INVALID');
  const get = (suffix: string): Tlv => vals.get(`${SGX_EXT_OID}.${suffix}`) ?? fail('PCK_CHAIN_INVALID', `SGX extension lacks ${suffix}`);
  const comps: number[] = [];
  for (let i = 1; i <= 16; i++) comps.push(uintValue(get(`2.${i}`).value, 'PCK_CHAIN_INVALID'));
  const fmspc = get('4').value;
  const pceid = get('3').value;
  if (fmspc.length !== 6 || pceid.length !== 2) fail('PCK_CHAIN_INVALID', 'SGX extension: bad FMSPC / PCEID length');
  return {
    ppid: toHex(get('1').value),
    cpusvnComponents: comps,
    pcesvn: uintValue(get('2.17').value, 'PCK_CHAIN_INVALID'),
    cpusvn: toHex(get('2.18').value),
    pceid: toHex(pceid),
    fmspc: toHex(fmspc),
  };
}
