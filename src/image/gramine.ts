import { stringify } from 'smol-toml';
import { CocoonError } from '../errors.js';
import { LAUNCHER_ROOT, type LauncherFile } from './measure.js';

/**
 * `cocoon wrap --libos gramine`: the Gramine manifest that runs the launcher in an SGX enclave
 * (docs/tee-support.md "SGX with Gramine"). Written against the manifest syntax of Gramine 1.9
 * (Documentation/manifest-syntax.rst and python/graminelibos/manifest_check.py of that release).
 *
 * What MRENCLAVE then covers: the manifest itself (gramine-sgx-sign hashes it into the
 * enclave), hence every `sgx.trusted_files` hash — each launcher file (node, its shared
 * libraries and loader, launcher.mjs, cocoon-exec) and payload.json, from which the launcher
 * recomputes the workload measurement — and the expected measurement, fixed in `loader.env`.
 * The signer keeps a `sha256` that is already present (it hashes only entries without one), so
 * the hashes here are the ones signed. The encrypted layer blobs are `sgx.allowed_files`:
 * the launcher authenticates them (digest and HMAC) before any plaintext exists.
 */

/** Gramine release whose manifest syntax this module writes. */
export const GRAMINE_SYNTAX_VERSION = '1.9';
/** Where the manifest sits inside the wrapped image (payload layer; not part of the launcher digest). */
export const GRAMINE_DIR = `${LAUNCHER_ROOT}/gramine`;
export const GRAMINE_MANIFEST_PATH = `${GRAMINE_DIR}/cocoon.manifest`;
/** Encrypted-files key name of the application root mount; the launcher sets it at run time. */
export const GRAMINE_ROOT_KEY_NAME = 'cocoon_root';
/** Application root inside the enclave and its encrypted backing directory on the host. */
export const GRAMINE_APP_ROOT = `${LAUNCHER_ROOT}/root`;
export const GRAMINE_NODE_ARGV = [`${LAUNCHER_ROOT}/bin/node`, '--v8-pool-size=4', `${LAUNCHER_ROOT}/launcher.mjs`, 'launch'];
/**
 * Launcher settings the host may still choose (read through `{ passthrough = true }`). None of
 * them can change what runs: the KBS URL only decides whom the launcher attests to (a wrong KBS
 * cannot produce the layer key), the others are retry and timeout knobs.
 */
export const GRAMINE_PASSTHROUGH_ENV = ['COCOON_KBS_URL', 'COCOON_KBS_RETRIES', 'COCOON_KBS_RETRY_DELAY_MS', 'COCOON_KBS_RETRY_MAX_DELAY_MS', 'COCOON_KBS_TIMEOUT_MS', 'COCOON_STOP_GRACE_MS'] as const;

export interface GramineOptions {
  /** `sgx.enclave_size` (Gramine size string, e.g. "4G"); every process (launcher, app) is an enclave of this size. */
  enclaveSize?: string;
  /** `sgx.max_threads`. */
  maxThreads?: number;
  isvProdId?: number;
  isvSvn?: number;
  /** `sgx.debug`: a debuggable enclave — its memory is readable by the host. For development only. */
  debug?: boolean;
}

export interface GramineManifestInputs {
  /** The launcher files exactly as measured (launcherFiles()). */
  launcherFiles: LauncherFile[];
  /** Hex SHA-256 of the serialized payload.json. */
  payloadSha256: string;
  /** The workload measurement (96 hex). */
  measurement: string;
  options?: GramineOptions;
}

export const GRAMINE_DEFAULTS = { enclaveSize: '4G', maxThreads: 64, isvProdId: 0, isvSvn: 0, debug: false } as const;

const SIZE_RE = /^[1-9][0-9]{0,5}[KMG]$/;

function checkOptions(o: GramineOptions): Required<GramineOptions> {
  const r = { ...GRAMINE_DEFAULTS, ...o };
  if (!SIZE_RE.test(r.enclaveSize)) throw new CocoonError('BAD_USAGE', `enclave size must look like 4G, 2048M (got ${JSON.stringify(r.enclaveSize)})`);
  const u16 = (v: number, what: string, min: number) => {
    if (!Number.isSafeInteger(v) || v < min || v > 0xffff) throw new CocoonError('BAD_USAGE', `${what} must be a whole number ${min}–65535`);
  };
  u16(r.maxThreads, 'max threads', 4);
  u16(r.isvProdId, 'ISV product ID', 0);
  u16(r.isvSvn, 'ISV SVN', 0);
  return r;
}

const fileUri = (path: string): string => `file:${path}`;

/** The manifest as a plain object (tests parse the TOML and compare against this shape). */
export function gramineManifestObject(i: GramineManifestInputs): Record<string, unknown> {
  const o = checkOptions(i.options ?? {});
  if (!/^[0-9a-f]{96}$/.test(i.measurement)) throw new CocoonError('BAD_USAGE', 'measurement must be 96 lowercase hex digits');
  if (!/^[0-9a-f]{64}$/.test(i.payloadSha256)) throw new CocoonError('BAD_USAGE', 'payload hash must be 64 lowercase hex digits');
  const trusted: Array<{ uri: string; sha256: string }> = [];
  for (const f of i.launcherFiles) {
    if (f.link !== undefined) {
      // Gramine resolves host symlinks itself; a trusted entry would name the link, not its target.
      throw new CocoonError('BAD_USAGE', `launcher file ${f.path} is a symlink: --libos gramine needs regular files only`);
    }
    if (f.sha256 === undefined || !/^[0-9a-f]{64}$/.test(f.sha256)) throw new CocoonError('INTERNAL', `launcher file ${f.path} has no hash`);
    if (!f.path.startsWith(`${LAUNCHER_ROOT}/`) || /["\\\n]/.test(f.path)) throw new CocoonError('BAD_USAGE', `launcher file path ${JSON.stringify(f.path)} cannot be listed`);
    trusted.push({ uri: fileUri(f.path), sha256: f.sha256 });
  }
  trusted.push({ uri: fileUri(`${LAUNCHER_ROOT}/payload/payload.json`), sha256: i.payloadSha256 });

  const env: Record<string, unknown> = {
    LD_LIBRARY_PATH: `${LAUNCHER_ROOT}/lib`,
    COCOON_HOME: LAUNCHER_ROOT,
    COCOON_PAYLOAD: `${LAUNCHER_ROOT}/payload`,
    COCOON_ROOT: GRAMINE_APP_ROOT,
    COCOON_TEE: 'sgx',
    COCOON_LIBOS: 'gramine',
    COCOON_EXPECTED_MEASUREMENT: i.measurement,
  };
  for (const name of GRAMINE_PASSTHROUGH_ENV) env[name] = { passthrough: true };

  return {
    libos: { entrypoint: GRAMINE_NODE_ARGV[0] },
    loader: {
      log_level: 'error',
      // argv is fixed here; neither the host's command line nor its environment reaches the launcher
      argv: [...GRAMINE_NODE_ARGV],
      env,
    },
    fs: {
      root: { type: 'chroot', uri: 'file:/' },
      start_dir: '/',
      mounts: [
        // node's program interpreter (PT_INTERP /lib64/ld-linux-x86-64.so.2) is the launcher's own loader
        { type: 'chroot', path: '/lib64', uri: fileUri(`${LAUNCHER_ROOT}/lib`) },
        // the decrypted application: files exist on the host only in Gramine's encrypted-files format
        { type: 'encrypted', path: GRAMINE_APP_ROOT, uri: fileUri(GRAMINE_APP_ROOT), key_name: GRAMINE_ROOT_KEY_NAME },
      ],
    },
    sys: {
      stack: { size: '2M' },
      enable_sigterm_injection: true,
      enable_extra_runtime_domain_names_conf: true,
    },
    sgx: {
      debug: o.debug,
      remote_attestation: 'dcap',
      enclave_size: o.enclaveSize,
      max_threads: o.maxThreads,
      isvprodid: o.isvProdId,
      isvsvn: o.isvSvn,
      file_check_policy: 'strict',
      trusted_files: trusted,
      allowed_files: [fileUri(`${LAUNCHER_ROOT}/payload/blobs/`), fileUri(`${LAUNCHER_ROOT}/volumes/`)],
    },
  };
}

/** The manifest text (TOML), deterministic for the same inputs. */
export function gramineManifest(i: GramineManifestInputs): string {
  const header = [
    `# Gramine manifest written by \`cocoon wrap --libos gramine\` (Gramine ${GRAMINE_SYNTAX_VERSION} manifest syntax).`,
    '# Sign it in an image that has Gramine (gramine-sgx-sign keeps the sha256 values below) and run',
    `#   gramine-sgx ${GRAMINE_MANIFEST_PATH.replace(/\.manifest$/, '')}`,
    '# Editing any line changes MRENCLAVE; removing a trusted file makes the launcher refuse to start.',
    '',
  ].join('\n');
  return `${header}${stringify(gramineManifestObject(i))}\n`;
}
