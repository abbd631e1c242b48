import { existsSync } from 'node:fs';
import { CocoonError } from '../errors.js';
import type { TeeKind } from '../attestation/types.js';
import type { Attester } from '../attester/types.js';
import { SimAttester } from '../attester/sim.js';

/** What the launcher looks for, in order, when no TEE is named. */
export const TEE_PROBES: ReadonlyArray<{ path: string; tee: TeeKind; what: string }> = [
  { path: '/sys/kernel/config/tsm/report', tee: 'tdx', what: 'configfs-tsm (TDX/SNP)' },
  { path: '/dev/tdx_guest', tee: 'tdx', what: 'TDX guest device' },
  { path: '/dev/sev-guest', tee: 'snp', what: 'SEV-SNP guest device' },
  { path: '/dev/attestation/quote', tee: 'sgx', what: 'Gramine /dev/attestation (SGX)' },
  { path: '/dev/tpmrm0', tee: 'tpm', what: 'TPM resource manager' },
];

export interface AttesterChoice {
  attester: Attester;
  probed: string[];
}

/**
 * Chooses the attester. Never falls back to `sim` silently: sim must be requested, and a
 * machine without a supported TEE is an error that lists what was probed.
 */
export function chooseAttester(requested: TeeKind | undefined, simDir: string, exists: (p: string) => boolean = existsSync): AttesterChoice {
  const probed = TEE_PROBES.map((p) => `${p.what} at ${p.path}: ${exists(p.path) ? 'present' : 'absent'}`);
  if (requested === 'sim') return { attester: new SimAttester(simDir), probed };
  const found = requested ? TEE_PROBES.find((p) => p.tee === requested && exists(p.path)) : TEE_PROBES.find((p) => exists(p.path));
  if (!found) {
    throw new CocoonError('TEE_NOT_FOUND', `no supported TEE found${requested ? ` for COCOON_TEE=${requested}` : ''}; probed: ${probed.join('; ')}. Set COCOON_TEE=sim to run with the INSECURE simulated TEE.`, {
      details: { probed },
    });
  }
  throw new CocoonError('TEE_UNSUPPORTED', `${found.what} found, but this launcher build attests only with the simulated TEE so far`, { details: { probed } });
}
