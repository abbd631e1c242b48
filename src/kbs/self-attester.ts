/**
 * Which attester the KBS uses for its own evidence (`cocoon serve --tee`, docs/kbs.md "KBS
 * self-attestation"). Hardware TEEs go through the launcher's detection (`chooseAttester`,
 * src/launcher/detect.ts) and, where the TEE has a runtime register (TPM PCR, TDX RTMR3), the
 * KBS's measurement is extended there with the launcher's event (attester.measure), so the
 * evidence carries an event log that a verifier replays. `sim` only with --allow-sim.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError, isCocoonError } from '../errors.js';
import type { TeeKind } from '../attestation/types.js';
import type { Attester } from '../attester/types.js';
import { KBS_SELF_EVENT, SELF_ATTESTATION_NOT_CONFIGURED, type SelfAttestation } from './self-attest.js';

export const KBS_TEE_CHOICES = ['auto', 'sim', 'tdx', 'snp', 'sgx', 'tpm', 'az-snp-vtpm', 'az-tdx-vtpm'] as const;
export type KbsTeeChoice = (typeof KBS_TEE_CHOICES)[number];
const TCTI_TEES: readonly string[] = ['auto', 'tpm', 'az-snp-vtpm', 'az-tdx-vtpm'];

export interface SelfAttesterOptions {
  /** `--tee`; undefined keeps the old behaviour: sim when --allow-sim and a sim platform exist, else none. */
  tee: KbsTeeChoice | undefined;
  allowSim: boolean;
  simPlatformDir: string;
  /** --sim-platform was given (a missing platform is then an error, not "no attester"). */
  simPlatformExplicit: boolean;
  /** `--tpm-tcti` (device:/dev/tpmrm0 | swtpm:host=H,port=P). */
  tpmTcti?: string;
  /** The launcher's COCOON_* attester variables (TPM PCR and AK handle, relocated kernel interfaces). Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The script whose SHA-384 is the KBS measurement. Default process.argv[1]. */
  entryScript?: string;
  exists?: (path: string) => boolean;
  log: { info(message: string): void; warn(message: string): void };
}

export interface SelfAttesterResult {
  self?: SelfAttestation;
  /** Why there is none (shown on the dashboard, logged at startup). */
  reason?: string;
}

/** SHA-384 of the running CLI entry script: the KBS measurement (real TEEs additionally measure the VM/enclave). */
export async function kbsMeasurement(entryScript: string | undefined = process.argv[1]): Promise<string> {
  const entry = entryScript ? await readFile(entryScript).catch(() => Buffer.alloc(0)) : Buffer.alloc(0);
  return createHash('sha384').update(entry).digest('hex');
}

export async function createSelfAttestation(o: SelfAttesterOptions): Promise<SelfAttesterResult> {
  if (o.tpmTcti !== undefined && (o.tee === undefined || !TCTI_TEES.includes(o.tee))) throw new CocoonError('BAD_USAGE', '--tpm-tcti needs --tee tpm, az-snp-vtpm, az-tdx-vtpm or auto');
  const exists = o.exists ?? existsSync;

  if (o.tee === undefined || o.tee === 'sim') {
    if (o.tee === 'sim' && !o.allowSim) throw new CocoonError('BAD_USAGE', '--tee sim needs --allow-sim (the simulated TEE is INSECURE)');
    if (!o.allowSim) return { reason: SELF_ATTESTATION_NOT_CONFIGURED };
    const { SimAttester, SIM_PLATFORM_FILES } = await import('../attester/sim.js');
    if (exists(join(o.simPlatformDir, SIM_PLATFORM_FILES.key))) {
      const measurement = await kbsMeasurement(o.entryScript);
      o.log.info(`INSECURE: KBS self-attestation with the simulated TEE (${o.simPlatformDir}), measurement ${measurement}`);
      return { self: { attester: new SimAttester(o.simPlatformDir), measurement } };
    }
    if (o.simPlatformExplicit || o.tee === 'sim') throw new CocoonError('BAD_USAGE', `sim platform ${o.simPlatformDir}: no ${SIM_PLATFORM_FILES.key} there (cocoon init creates one)`);
    return { reason: `no sim platform at ${o.simPlatformDir} (cocoon init creates one) and no --tee` };
  }

  const { chooseAttester } = await import('../launcher/detect.js');
  const { attesterSettingsFromEnv } = await import('../launcher/config.js');
  const settings = attesterSettingsFromEnv(o.env ?? process.env);
  if (o.tpmTcti !== undefined) {
    const { parseTcti } = await import('../attester/tpm/tcti.js');
    settings.tpmTcti = parseTcti(o.tpmTcti);
    settings.tpmTctiExplicit = true;
  }
  const requested: TeeKind | undefined = o.tee === 'auto' ? undefined : o.tee;
  let attester: Attester;
  let probed: string[];
  try {
    ({ attester, probed } = chooseAttester(requested, o.simPlatformDir, exists, settings));
  } catch (err) {
    if (!isCocoonError(err) || (err.code !== 'TEE_NOT_FOUND' && err.code !== 'TEE_UNSUPPORTED')) throw err;
    const list = Array.isArray(err.details?.probed) ? (err.details.probed as string[]).join('; ') : '';
    const what = err.code === 'TEE_UNSUPPORTED' ? err.message : `no ${requested ?? 'supported'} TEE found`;
    if (o.tee !== 'auto') throw new CocoonError(err.code, `--tee ${o.tee}: ${what}${list ? `; probed: ${list}` : ''}`, err.details ? { details: err.details } : undefined);
    const reason = `--tee auto: ${what}; probed: ${list}`;
    o.log.warn(`KBS self-attestation not available (GET /cocoon/v1/attestation answers 404): ${reason}`);
    return { reason };
  }

  const measurement = await kbsMeasurement(o.entryScript);
  let register: string | undefined;
  if (attester.measure) register = await attester.measure({ measurement, ...KBS_SELF_EVENT });
  // one quote at startup: a broken TEE interface is a startup error, not a 500 on the first `cocoon attest`
  const probe = (await attester.getEvidence(new Uint8Array(64), measurement)) as Record<string, unknown> | undefined;
  const ak = attester.tee === 'tpm' && typeof probe?.ak_public === 'string' ? ` (AK SPKI sha256:${createHash('sha256').update(Buffer.from(probe.ak_public, 'base64')).digest('hex')}; clients pin it with cocoon attest --trusted-ak)` : '';
  o.log.info(`KBS self-attestation: ${attester.tee} (${probed.join('; ')}), measurement ${measurement}${ak}`);
  if (register) o.log.info(`extended the KBS measurement into ${register}; the event log goes with the evidence`);
  else o.log.warn(`${attester.tee}: no runtime measurement register: the KBS evidence does not bind the KBS measurement (pin the TEE's launch measurement instead; docs/tee-support.md)`);
  return { self: { attester, measurement, ...(register ? { register } : {}) } };
}
