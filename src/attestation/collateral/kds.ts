/** AMD KDS client (I/O module): VCEK by chip id + reported TCB, and the ASK/ARK chain. */
import { fail } from '../bytes.js';
import type { QuoteCollateralV3 } from '../dcap/collateral.js';
import { parseCert, pemCerts, type Cert } from '../pki.js';
import { cachedGet, type HttpOptions } from './http.js';
import type { CollateralSource, SnpCertRequest } from './source.js';

export const AMD_KDS_URL = 'https://kdsintf.amd.com';

export interface KdsOptions extends HttpOptions {
  baseUrl?: string;
}

const pad2 = (n: number): string => String(n).padStart(2, '0');
const NAMES = { milan: 'Milan', genoa: 'Genoa', turin: 'Turin' } as const;

export class AmdKdsClient implements CollateralSource {
  constructor(private readonly o: KdsOptions = {}) {}

  async dcap(): Promise<QuoteCollateralV3> {
    return fail('COLLATERAL_UNAVAILABLE', 'AMD KDS does not serve Intel collateral');
  }

  async snp(req: SnpCertRequest): Promise<Cert[]> {
    if (req.kind !== 'vcek') fail('COLLATERAL_UNAVAILABLE', 'VLEKs are issued to cloud providers and cannot be fetched from KDS; pass --certs');
    if (!/^[0-9a-f]{128}$/.test(req.chipId)) fail('BAD_USAGE', 'chip_id must be 64 bytes of hex');
    const base = (this.o.baseUrl ?? AMD_KDS_URL).replace(/\/$/, '');
    const name = NAMES[req.product];
    const t = req.reportedTcb;
    const hwid = req.product === 'turin' ? req.chipId.slice(0, 16) : req.chipId;
    const q = new URLSearchParams();
    if (req.product === 'turin') q.set('fmcSPL', pad2(t.fmc ?? 0));
    q.set('blSPL', pad2(t.bootloader));
    q.set('teeSPL', pad2(t.tee));
    q.set('snpSPL', pad2(t.snp));
    q.set('ucodeSPL', pad2(t.microcode));
    const vcekRes = await cachedGet(`${base}/vcek/v1/${name}/${hwid}?${q.toString()}`, [], (b) => parseCert(b, 'COLLATERAL_MALFORMED').notAfter, this.o);
    const chainRes = await cachedGet(`${base}/vcek/v1/${name}/cert_chain`, [], (b) => {
      const cs = pemCerts(b.toString('latin1'), 'COLLATERAL_MALFORMED');
      return cs.reduce((d, c) => (c.notAfter < d ? c.notAfter : d), new Date(8.64e15));
    }, this.o);
    const vcek = parseCert(vcekRes.body, 'COLLATERAL_MALFORMED');
    const chain = pemCerts(chainRes.body.toString('latin1'), 'COLLATERAL_MALFORMED');
    if (chain.length !== 2) fail('COLLATERAL_MALFORMED', `KDS cert_chain must hold ASK and ARK, got ${chain.length}`);
    return [vcek, ...chain];
  }
}
