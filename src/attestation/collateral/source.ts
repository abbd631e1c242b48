/**
 * Where collateral comes from. Verifiers never do I/O: the dispatcher awaits a
 * CollateralSource before calling the pure verifier.
 */
import { readFile } from 'node:fs/promises';
import { fail } from '../bytes.js';
import { collateralFromJson, type QuoteCollateralV3 } from '../dcap/collateral.js';
import { pemCerts, type Cert } from '../pki.js';
import type { SnpTcb } from '../snp/report.js';
import type { AmdProduct } from '../trust.js';

export interface DcapCollateralRequest {
  tee: 'sgx' | 'tdx';
  fmspc: string;
  /** PCK issuer CA: processor or platform. */
  ca: 'processor' | 'platform';
}

export interface SnpCertRequest {
  product: AmdProduct;
  kind: 'vcek' | 'vlek';
  /** chip_id from the report (hex, 64 bytes; Turin uses the first 8). */
  chipId: string;
  reportedTcb: SnpTcb;
}

export interface CollateralSource {
  dcap(req: DcapCollateralRequest): Promise<QuoteCollateralV3>;
  /** [VEK, ASK/ASVK, ARK] for an SNP report. */
  snp(req: SnpCertRequest): Promise<Cert[]>;
}

/** Offline source: fixed QuoteCollateralV3 JSON and/or PEM chain files. */
export class FileCollateralSource implements CollateralSource {
  constructor(private readonly files: { collateral?: string; certs?: string }) {}

  async dcap(): Promise<QuoteCollateralV3> {
    if (!this.files.collateral) fail('COLLATERAL_UNAVAILABLE', 'no collateral file given (offline)');
    const text = await readFile(this.files.collateral, 'utf8').catch((e: Error) => fail('IO_ERROR', `cannot read collateral: ${e.message}`));
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      fail('COLLATERAL_MALFORMED', 'collateral file is not JSON');
    }
    return collateralFromJson(json);
  }

  async snp(): Promise<Cert[]> {
    if (!this.files.certs) fail('COLLATERAL_UNAVAILABLE', 'no certificate chain file given (offline)');
    const text = await readFile(this.files.certs, 'utf8').catch((e: Error) => fail('IO_ERROR', `cannot read certificates: ${e.message}`));
    return pemCerts(text, 'COLLATERAL_MALFORMED');
  }
}

/** Tries sources in order; the first success wins. */
export class ChainedCollateralSource implements CollateralSource {
  constructor(private readonly sources: CollateralSource[]) {}
  async dcap(req: DcapCollateralRequest): Promise<QuoteCollateralV3> {
    return this.first((s) => s.dcap(req));
  }
  async snp(req: SnpCertRequest): Promise<Cert[]> {
    return this.first((s) => s.snp(req));
  }
  private async first<T>(f: (s: CollateralSource) => Promise<T>): Promise<T> {
    let last: unknown;
    for (const s of this.sources) {
      try {
        return await f(s);
      } catch (e) {
        last = e;
      }
    }
    throw last ?? fail('COLLATERAL_UNAVAILABLE', 'no collateral source configured');
  }
}
