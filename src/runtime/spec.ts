/**
 * The OCI runtime spec (config.json) for a wrapped image under runc. Pure: inputs → object.
 *
 * Layout inside the container: the launcher root (layers 0 and 1) is the container root,
 * read-only; /cocoon/root is a tmpfs that receives the decrypted application, with its own
 * /proc, /dev (tmpfs + device nodes), /dev/pts, /dev/shm and /sys, so the application sees a
 * normal root after the launcher chroots into it. Host networking by default.
 */
import { CocoonError } from '../errors.js';
import { POLICY_VOLUME_NAME_RE } from '../policy/volumes.js';

export interface RuncSpecInput {
  args: string[];
  env: string[];
  hostname: string;
  /** Size limit of the in-memory application root, e.g. "1g". */
  memoryRootSize: string;
  /** Host directory with the sim platform key, mounted read-only at /run/cocoon/sim. */
  simPlatformDir?: string;
  /** Share the host network namespace (default true). */
  hostNetwork: boolean;
  /** Root filesystem path (absolute, or relative to the bundle). Default "rootfs". */
  rootfs?: string;
  /**
   * Host character devices passed to the launcher (not to the application), e.g. the TPM
   * resource manager `{ path: '/dev/tpmrm0', major, minor }` for `cocoon run --tee tpm`.
   */
  devices?: HostCharDevice[];
  /**
   * Protected volumes' encrypted stores (`cocoon run --volume NAME=HOSTDIR`): each host
   * directory is bind-mounted read-write at /cocoon/volumes/NAME for the launcher, which
   * decrypts it into the application root (docs/volumes.md).
   */
  volumes?: { name: string; hostDir: string }[];
}

export interface HostCharDevice {
  /** Absolute path inside the container (the launcher's /dev), e.g. /dev/tpmrm0. */
  path: string;
  major: number;
  minor: number;
}

const PASSTHROUGH_RE = /^\/dev\/(?:tpmrm\d{1,3}|tpm\d{1,3}|tdx_guest|sev-guest)$/;

function checkDevice(d: HostCharDevice): HostCharDevice {
  if (!PASSTHROUGH_RE.test(d.path)) throw new CocoonError('BAD_USAGE', `device ${d.path} may not be passed through (TPM / TEE guest devices only)`);
  if (!Number.isInteger(d.major) || !Number.isInteger(d.minor) || d.major < 0 || d.minor < 0 || d.major > 4095 || d.minor > 1048575) throw new CocoonError('BAD_USAGE', `device ${d.path}: bad major/minor`);
  return d;
}

const APP_ROOT = '/cocoon/root';

const CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_AUDIT_WRITE',
];

const DEVICES: Array<[string, number, number]> = [
  ['null', 1, 3],
  ['zero', 1, 5],
  ['full', 1, 7],
  ['random', 1, 8],
  ['urandom', 1, 9],
  ['tty', 5, 0],
];

export function buildRuncSpec(input: RuncSpecInput): Record<string, unknown> {
  const mounts: Array<Record<string, unknown>> = [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: APP_ROOT, type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'mode=755', `size=${input.memoryRootSize}`] },
    { destination: `${APP_ROOT}/proc`, type: 'proc', source: 'proc' },
    { destination: `${APP_ROOT}/dev`, type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: `${APP_ROOT}/dev/pts`, type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
    { destination: `${APP_ROOT}/dev/shm`, type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: `${APP_ROOT}/sys`, type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
  ];
  if (input.hostNetwork) {
    mounts.push({ destination: '/etc/resolv.conf', type: 'bind', source: '/etc/resolv.conf', options: ['rbind', 'ro'] });
  }
  if (input.simPlatformDir) {
    mounts.push({ destination: '/run/cocoon/sim', type: 'bind', source: input.simPlatformDir, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] });
  }
  for (const v of input.volumes ?? []) {
    if (!POLICY_VOLUME_NAME_RE.test(v.name)) throw new CocoonError('BAD_USAGE', `volume name ${v.name.slice(0, 64)} is invalid`);
    if (!v.hostDir.startsWith('/') || v.hostDir.includes('\0') || v.hostDir.includes(',')) throw new CocoonError('BAD_USAGE', `volume ${v.name}: host directory must be an absolute path without commas`);
    mounts.push({ destination: `/cocoon/volumes/${v.name}`, type: 'bind', source: v.hostDir, options: ['rbind', 'rw', 'nosuid', 'nodev', 'noexec'] });
  }
  const namespaces = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }];
  if (!input.hostNetwork) namespaces.push({ type: 'network' });

  const passthrough = (input.devices ?? []).map(checkDevice);

  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: input.args,
      env: input.env,
      cwd: '/',
      capabilities: { bounding: CAPABILITIES, effective: CAPABILITIES, permitted: CAPABILITIES },
      noNewPrivileges: false,
    },
    root: { path: input.rootfs ?? 'rootfs', readonly: true },
    hostname: input.hostname,
    mounts,
    linux: {
      namespaces,
      devices: [
        ...DEVICES.map(([name, major, minor]) => ({ path: `${APP_ROOT}/dev/${name}`, type: 'c', major, minor, fileMode: 0o666, uid: 0, gid: 0 })),
        ...passthrough.map((d) => ({ path: d.path, type: 'c', major: d.major, minor: d.minor, fileMode: 0o600, uid: 0, gid: 0 })),
      ],
      resources: {
        devices: [
          { allow: false, access: 'rwm' },
          ...DEVICES.map(([, major, minor]) => ({ allow: true, type: 'c', major, minor, access: 'rwm' })),
          { allow: true, type: 'c', major: 136, access: 'rwm' },
          { allow: true, type: 'c', major: 5, minor: 2, access: 'rwm' },
          ...passthrough.map((d) => ({ allow: true, type: 'c', major: d.major, minor: d.minor, access: 'rw' })),
        ],
      },
      maskedPaths: ['/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware'],
      readonlyPaths: ['/proc/asound', '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}
