import { cocoonEntryOf, decodeKataAnnotation, parseInitDataToml } from '../kbs/init-data.js';
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
  /** Attested-TLS certificate lifecycle (docs/tls.md "Revocation and renewal"). */
  tls?: TlsLifecycleSettings;
  /** `gramine` inside a Gramine SGX enclave (COCOON_LIBOS, set by the manifest of `cocoon wrap --libos gramine`). */
  libos?: 'gramine';
  /** COCOON_EXPECTED_MEASUREMENT: the workload measurement fixed in the Gramine manifest. */
  expectedMeasurement?: string;
  /** CoCo init-data TOML from COCOON_INIT_DATA: sent as the attest request's init-data, so the KBS can check it against HOST_DATA / MRCONFIGID. */
  initData?: string;
}

/** When the launcher refreshes the deployment CA's CRL and renews its workload certificate. */
export interface TlsLifecycleSettings {
  /** CRL refresh interval (COCOON_TLS_CRL_REFRESH_MS, default 5 min). */
  crlRefreshMs: number;
  /** Renew when this percentage of the remaining lifetime (at receipt) has passed (COCOON_TLS_RENEW_AT_PERCENT, default 67). */
  renewAtPercent: number;
  /** First retry delay of a failed renewal, doubling with jitter (COCOON_TLS_RENEW_RETRY_MS, default 5 s). */
  renewRetryMs: number;
  /** Retry delay cap (COCOON_TLS_RENEW_RETRY_MAX_MS, default 5 min). */
  renewRetryMaxMs: number;
}

export const DEFAULT_TLS_LIFECYCLE: TlsLifecycleSettings = { crlRefreshMs: 300_000, renewAtPercent: 67, renewRetryMs: 5_000, renewRetryMaxMs: 300_000 };

export function tlsLifecycleFromEnv(env: NodeJS.ProcessEnv): TlsLifecycleSettings {
  const d = DEFAULT_TLS_LIFECYCLE;
  return {
    crlRefreshMs: intFromEnv(env, 'COCOON_TLS_CRL_REFRESH_MS', d.crlRefreshMs, 100, 86_400_000),
    renewAtPercent: intFromEnv(env, 'COCOON_TLS_RENEW_AT_PERCENT', d.renewAtPercent, 10, 95),
    renewRetryMs: intFromEnv(env, 'COCOON_TLS_RENEW_RETRY_MS', d.renewRetryMs, 10, 3_600_000),
    renewRetryMaxMs: intFromEnv(env, 'COCOON_TLS_RENEW_RETRY_MAX_MS', d.renewRetryMaxMs, 10, 86_400_000),
  };
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
  const libosRaw = env.COCOON_LIBOS;
  if (libosRaw !== undefined && libosRaw !== '' && libosRaw !== 'gramine') throw new CocoonError('BAD_USAGE', `COCOON_LIBOS: unknown LibOS "${libosRaw.slice(0, 32)}" (supported: gramine)`);
  const initData = env.COCOON_INIT_DATA ? initDataFromEnv(env.COCOON_INIT_DATA) : undefined;
  const expected = env.COCOON_EXPECTED_MEASUREMENT;
  if (expected !== undefined && expected !== '' && !/^[0-9a-f]{96}$/.test(expected)) throw new CocoonError('BAD_USAGE', 'COCOON_EXPECTED_MEASUREMENT must be 96 lowercase hex digits');
  return {
    ...(libosRaw === 'gramine' ? { libos: 'gramine' as const } : {}),
    ...(expected ? { expectedMeasurement: expected } : {}),
    ...(initData !== undefined ? { initData } : {}),
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
    tls: tlsLifecycleFromEnv(env),
  };
}

/**
 * COCOON_INIT_DATA: the pod's init-data as the Kata annotation carries it (base64 of the
 * gzipped TOML; `cocoon k8s render` passes the annotation through the downward API). Checked
 * here so that a malformed value stops the launcher before it attests.
 */
function initDataFromEnv(value: string): string {
  const toml = decodeKataAnnotation(value);
  cocoonEntryOf(parseInitDataToml(toml).doc);
  return toml;
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
