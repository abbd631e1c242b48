import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import type { TeeKind } from '../attestation/types.js';
import type { Attester } from '../attester/types.js';
import { SimAttester } from '../attester/sim.js';
import { TSM_REPORT_DIR, TDX_RTMR3_PATH, TsmAttester } from '../attester/tsm.js';
import { GRAMINE_ATTESTATION_DIR, GramineAttester } from '../attester/gramine.js';
import { DEFAULT_AK_HANDLE, DEFAULT_WORKLOAD_PCR, TpmAttester } from '../attester/tpm.js';
import { AzureVtpmAttester } from '../attester/azure.js';
import { DEFAULT_TCTI, parseTcti, tctiToString, type Tcti } from '../attester/tpm/tcti.js';

/** Where the attesters look; every path has a production default (env overrides are for tests). */
export interface AttesterSettings {
  tsmDir: string;
  rtmrPath: string;
  gramineDir: string;
  tpmTcti: Tcti;
  /** True when COCOON_TPM_TCTI was given explicitly (a TCP swtpm counts as present). */
  tpmTctiExplicit: boolean;
  tpmPcr: number;
  akHandle: number;
  snpPrivlevel?: number;
}

export const DEFAULT_ATTESTER_SETTINGS: AttesterSettings = {
  tsmDir: TSM_REPORT_DIR,
  rtmrPath: TDX_RTMR3_PATH,
  gramineDir: GRAMINE_ATTESTATION_DIR,
  tpmTcti: parseTcti(DEFAULT_TCTI),
  tpmTctiExplicit: false,
  tpmPcr: DEFAULT_WORKLOAD_PCR,
  akHandle: DEFAULT_AK_HANDLE,
};

interface Probe {
  what: string;
  path: string;
}

/** The probes in detection order, for a given settings object. */
export function teeProbes(s: AttesterSettings = DEFAULT_ATTESTER_SETTINGS): Record<'tsm' | 'tdxDev' | 'snpDev' | 'gramine' | 'tpm', Probe> {
  return {
    tsm: { what: 'configfs-tsm (TDX/SNP)', path: s.tsmDir },
    tdxDev: { what: 'TDX guest device', path: '/dev/tdx_guest' },
    snpDev: { what: 'SEV-SNP guest device', path: '/dev/sev-guest' },
    gramine: { what: 'Gramine /dev/attestation (SGX)', path: join(s.gramineDir, 'attestation_type') },
    tpm: { what: 'TPM', path: s.tpmTcti.kind === 'device' ? s.tpmTcti.path : tctiToString(s.tpmTcti) },
  };
}

export interface AttesterChoice {
  attester: Attester;
  probed: string[];
}

/**
 * Chooses the attester. Never falls back to `sim` silently: sim must be requested, and a
 * machine without a supported TEE is an error that lists what was probed. Detection order:
 * configfs-tsm with a TDX or SNP guest device, Gramine /dev/attestation, a TPM. Azure CVMs
 * (az-snp-vtpm, az-tdx-vtpm) are only chosen by name (their vTPM looks like any TPM).
 */
export function chooseAttester(requested: TeeKind | undefined, simDir: string, exists: (p: string) => boolean = existsSync, settings: AttesterSettings = DEFAULT_ATTESTER_SETTINGS): AttesterChoice {
  const p = teeProbes(settings);
  const has = {
    tsm: exists(p.tsm.path),
    tdxDev: exists(p.tdxDev.path),
    snpDev: exists(p.snpDev.path),
    gramine: exists(p.gramine.path),
    tpm: settings.tpmTcti.kind === 'device' ? exists(p.tpm.path) : settings.tpmTctiExplicit,
  };
  const probed = (Object.keys(p) as Array<keyof typeof p>).map((k) => `${p[k].what} at ${p[k].path}: ${has[k] ? 'present' : 'absent'}`);
  const notFound = (what: string): never => {
    throw new CocoonError('TEE_NOT_FOUND', `no ${what} found${requested ? ` for COCOON_TEE=${requested}` : ''}; probed: ${probed.join('; ')}. Set COCOON_TEE=sim to run with the INSECURE simulated TEE.`, {
      details: { probed },
    });
  };
  const legacy = (tee: 'tdx' | 'snp'): never => {
    const dev = tee === 'tdx' ? p.tdxDev.path : p.snpDev.path;
    throw new CocoonError('TEE_UNSUPPORTED', `${dev} is present but configfs-tsm (${p.tsm.path}) is missing: Cocoon attests ${tee.toUpperCase()} only through configfs-tsm (Linux ≥ 6.7, CONFIG_TSM_REPORTS, configfs mounted); the legacy ioctl interface is not supported`, {
      details: { probed },
    });
  };
  const tsm = (tee: 'tdx' | 'snp'): AttesterChoice => ({
    attester: new TsmAttester(tee, { base: settings.tsmDir, rtmrPath: settings.rtmrPath, ...(tee === 'snp' && settings.snpPrivlevel !== undefined ? { privlevel: settings.snpPrivlevel } : {}) }),
    probed,
  });
  const tpmOptions = { tcti: settings.tpmTcti, pcr: settings.tpmPcr, akHandle: settings.akHandle };

  switch (requested) {
    case 'sim':
      return { attester: new SimAttester(simDir), probed };
    case 'tdx':
    case 'snp': {
      const dev = requested === 'tdx' ? has.tdxDev : has.snpDev;
      if (has.tsm) return tsm(requested);
      if (dev) legacy(requested);
      return notFound(`${requested.toUpperCase()} interface`);
    }
    case 'sgx':
      if (has.gramine) return { attester: new GramineAttester(settings.gramineDir), probed };
      return notFound('Gramine /dev/attestation');
    case 'tpm':
      if (has.tpm) return { attester: new TpmAttester(tpmOptions), probed };
      return notFound('TPM');
    case 'az-snp-vtpm':
    case 'az-tdx-vtpm':
      if (has.tpm) return { attester: new AzureVtpmAttester(requested, { tcti: settings.tpmTcti }), probed };
      return notFound('vTPM');
    case undefined:
      break;
    default:
      throw new CocoonError('BAD_USAGE', `unknown TEE kind ${String(requested)}`);
  }
  if (has.tsm && has.tdxDev) return tsm('tdx');
  if (has.tsm && has.snpDev) return tsm('snp');
  if (!has.tsm && has.tdxDev) legacy('tdx');
  if (!has.tsm && has.snpDev) legacy('snp');
  if (has.gramine) return { attester: new GramineAttester(settings.gramineDir), probed };
  if (has.tpm) return { attester: new TpmAttester(tpmOptions), probed };
  if (has.tsm) {
    throw new CocoonError('TEE_NOT_FOUND', `configfs-tsm is present but neither /dev/tdx_guest nor /dev/sev-guest: name the TEE with COCOON_TEE=tdx or COCOON_TEE=snp; probed: ${probed.join('; ')}`, { details: { probed } });
  }
  return notFound('supported TEE');
}
