import { createPrivateKey, createPublicKey, createSign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { canonicalJson } from '../crypto/canonical-json.js';
import { simSignatureHash } from '../attestation/sim/index.js';
import type { SimEvidence, SimReport } from '../attestation/sim/index.js';
import type { Attester } from './types.js';

/** Files of a simulated platform, as `cocoon init` writes them and `cocoon run --tee sim` mounts them. */
export const SIM_PLATFORM_FILES = { cert: 'platform.pem', key: 'platform.key.pem', root: 'root.pem' } as const;

export class SimAttester implements Attester {
  readonly tee = 'sim' as const;
  constructor(private readonly platformDir: string) {}

  async getEvidence(reportData: Uint8Array, measurement: string): Promise<SimEvidence> {
    if (reportData.length !== 64) throw new CocoonError('BAD_USAGE', 'sim attester: report data must be 64 bytes');
    let keyPem: string;
    let certPem: string;
    try {
      keyPem = await readFile(join(this.platformDir, SIM_PLATFORM_FILES.key), 'utf8');
      certPem = await readFile(join(this.platformDir, SIM_PLATFORM_FILES.cert), 'utf8');
    } catch (err) {
      throw new CocoonError('TEE_NOT_FOUND', `sim TEE: no platform key in ${this.platformDir}`, { cause: err });
    }
    const report: SimReport = {
      v: 1,
      tee: 'sim',
      measurement,
      report_data: Buffer.from(reportData).toString('hex'),
      debug: false,
      platform: 'cocoon-sim',
    };
    const reportBytes = Buffer.from(canonicalJson(report));
    const key = createPrivateKey(keyPem);
    const signature = createSign(simSignatureHash(createPublicKey(key))).update(reportBytes).sign({ key, dsaEncoding: 'ieee-p1363' });
    return { report: reportBytes.toString('base64'), signature: signature.toString('base64'), certs: [certPem] };
  }
}
