/**
 * SGX evidence inside Gramine through its /dev/attestation pseudo-files:
 * attestation_type must read "dcap"; write 64 bytes to user_report_data; read quote.
 * Evidence: {"quote": "<b64 SGX DCAP quote>"}. The workload measurement is bound through the
 * manifest (MRENCLAVE), not through a runtime register.
 */
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { MAX_EVIDENCE_BYTES } from '../attestation/bytes.js';
import { nodeAttesterFs, type AttesterFs } from './fs.js';
import type { Attester } from './types.js';

export const GRAMINE_ATTESTATION_DIR = '/dev/attestation';

export class GramineAttester implements Attester {
  readonly tee = 'sgx' as const;
  private readonly fs: AttesterFs;

  constructor(private readonly dir: string = GRAMINE_ATTESTATION_DIR, fs?: AttesterFs) {
    this.fs = fs ?? nodeAttesterFs;
  }

  async getEvidence(reportData: Uint8Array): Promise<Record<string, unknown>> {
    if (reportData.length !== 64) throw new CocoonError('BAD_USAGE', 'Gramine attester: report data must be 64 bytes');
    if (!(await this.fs.exists(join(this.dir, 'attestation_type')))) throw new CocoonError('TEE_NOT_FOUND', `Gramine ${this.dir}/attestation_type not found: not running inside Gramine with remote attestation enabled`);
    const type = (await this.fs.read(join(this.dir, 'attestation_type'), 32)).toString('ascii').trim();
    if (type !== 'dcap') throw new CocoonError('TEE_UNSUPPORTED', `Gramine attestation_type is "${type.slice(0, 16)}": Cocoon needs "dcap" (sgx.remote_attestation = "dcap" in the manifest)`);
    await this.fs.write(join(this.dir, 'user_report_data'), Buffer.from(reportData));
    const quote = await this.fs.read(join(this.dir, 'quote'), MAX_EVIDENCE_BYTES);
    if (quote.length < 48 + 384) throw new CocoonError('ATTESTER_IO_FAILED', `Gramine quote has ${quote.length} bytes: too short for an SGX DCAP quote`);
    if (!quote.subarray(48 + 320, 48 + 384).equals(Buffer.from(reportData))) throw new CocoonError('ATTESTER_IO_FAILED', 'Gramine quote does not carry the report data just written (concurrent writer?)');
    return { quote: quote.toString('base64') };
  }
}
