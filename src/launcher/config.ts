import { CocoonError } from '../errors.js';
import { isTeeKind, type TeeKind } from '../attestation/types.js';
import { parseTcti } from '../attester/tpm/tcti.js';
import { DEFAULT_ATTESTER_SETTINGS, type AttesterSettings } from './detect.js';

export interface LauncherConfig {
  kbsUrl: string;
  /** Requested TEE; undefined = detect. `sim` is never chosen by detection. */
  tee: TeeKind | undefined;
  /** Directory holding payload.json and the encrypted blobs. */
  payloadDir: string;
  /** Directory of the launcher's own files (measured as the launcher digest). */
  launcherDir: string;
  /** In-memory (tmpfs) directory that becomes the application's root. */
  rootDir: string;
  /** Sim platform key directory (only for `sim`). */
  simDir: string;
  retry: { attempts: number; baseDelayMs: number; maxDelayMs: number };
  requestTimeoutMs: number;
  stopGraceMs: number;
  /** Path of the static exec helper. */
  execHelper: string;
  /** Where the hardware attesters look (TPM TCTI, PCR, configfs-tsm, Gramine). */
  attester: AttesterSettings;
  /** Parent of the protected volumes' encrypted stores (`<dir>/<name>`); default `<launcherDir>/volumes`. */
  volumesDir?: string;
}

function intFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d{1,9}$/.test(raw)) throw new CocoonError('BAD_USAGE', `${name} must be a whole number`);
  const value = Number(raw);
  if (value < min || value > max) throw new CocoonError('BAD_USAGE', `${name} must be between ${min} and ${max}`);
  return value;
}

/** Reads the launcher's settings from its environment (set by `cocoon run` or a pod spec). */
export function launcherConfigFromEnv(env: NodeJS.ProcessEnv): LauncherConfig {
  const kbsUrl = env.COCOON_KBS_URL;
  if (!kbsUrl) throw new CocoonError('BAD_USAGE', 'COCOON_KBS_URL is not set: the launcher needs the Key Broker Service URL');
  let parsed: URL;
  try {
    parsed = new URL(kbsUrl);
  } catch {
    throw new CocoonError('BAD_USAGE', 'COCOON_KBS_URL is not a valid URL');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new CocoonError('BAD_USAGE', 'COCOON_KBS_URL must be http(s)');
  const teeRaw = env.COCOON_TEE;
  if (teeRaw !== undefined && teeRaw !== '' && !isTeeKind(teeRaw)) throw new CocoonError('BAD_USAGE', `COCOON_TEE: unknown TEE kind "${teeRaw}"`);
  const cocoonDir = env.COCOON_HOME ?? '/cocoon';
  return {
    kbsUrl: parsed.href.replace(/\/$/, ''),
    tee: teeRaw ? (teeRaw as TeeKind) : undefined,
    payloadDir: env.COCOON_PAYLOAD ?? `${cocoonDir}/payload`,
    launcherDir: cocoonDir,
    rootDir: env.COCOON_ROOT ?? `${cocoonDir}/root`,
    simDir: env.COCOON_SIM_DEVICE ?? '/run/cocoon/sim',
    retry: {
      attempts: intFromEnv(env, 'COCOON_KBS_RETRIES', 6, 1, 100),
      baseDelayMs: intFromEnv(env, 'COCOON_KBS_RETRY_DELAY_MS', 250, 1, 60_000),
      maxDelayMs: intFromEnv(env, 'COCOON_KBS_RETRY_MAX_DELAY_MS', 5_000, 1, 600_000),
    },
    requestTimeoutMs: intFromEnv(env, 'COCOON_KBS_TIMEOUT_MS', 10_000, 100, 600_000),
    stopGraceMs: intFromEnv(env, 'COCOON_STOP_GRACE_MS', 10_000, 0, 3_600_000),
    execHelper: `${cocoonDir}/bin/cocoon-exec`,
    attester: attesterSettingsFromEnv(env),
    volumesDir: pathFromEnv(env, 'COCOON_VOLUMES', `${cocoonDir}/volumes`),
  };
}

function pathFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: string): string {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (raw.length > 512 || !raw.startsWith('/') || raw.includes('\0') || raw.split('/').includes('..')) throw new CocoonError('BAD_USAGE', `${name} must be an absolute path`);
  return raw;
}

/**
 * COCOON_TPM_TCTI (device:/dev/tpmrm0 | swtpm:host=H,port=P), COCOON_TPM_PCR (0–23, default 23),
 * COCOON_TPM_AK_HANDLE (persistent handle, default 0x81010002), COCOON_SNP_PRIVLEVEL (0–3);
 * COCOON_TSM_REPORT_DIR, COCOON_TDX_RTMR3_PATH, COCOON_GRAMINE_ATTESTATION_DIR relocate the
 * kernel/LibOS interfaces (tests use fake trees; pointing them elsewhere can only make attestation fail).
 */
export function attesterSettingsFromEnv(env: NodeJS.ProcessEnv): AttesterSettings {
  const d = DEFAULT_ATTESTER_SETTINGS;
  const tctiRaw = env.COCOON_TPM_TCTI;
  const akRaw = env.COCOON_TPM_AK_HANDLE;
  let akHandle = d.akHandle;
  if (akRaw !== undefined && akRaw !== '') {
    if (!/^0x81[0-9a-fA-F]{6}$/.test(akRaw)) throw new CocoonError('BAD_USAGE', 'COCOON_TPM_AK_HANDLE must be a persistent handle 0x81xxxxxx');
    akHandle = Number(akRaw);
  }
  const privRaw = env.COCOON_SNP_PRIVLEVEL;
  return {
    tsmDir: pathFromEnv(env, 'COCOON_TSM_REPORT_DIR', d.tsmDir),
    rtmrPath: pathFromEnv(env, 'COCOON_TDX_RTMR3_PATH', d.rtmrPath),
    gramineDir: pathFromEnv(env, 'COCOON_GRAMINE_ATTESTATION_DIR', d.gramineDir),
    tpmTcti: tctiRaw ? parseTcti(tctiRaw) : d.tpmTcti,
    tpmTctiExplicit: Boolean(tctiRaw),
    tpmPcr: intFromEnv(env, 'COCOON_TPM_PCR', d.tpmPcr, 0, 23),
    akHandle,
    ...(privRaw !== undefined && privRaw !== '' ? { snpPrivlevel: intFromEnv(env, 'COCOON_SNP_PRIVLEVEL', 0, 0, 3) } : {}),
  };
}
