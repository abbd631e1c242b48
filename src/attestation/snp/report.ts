/** AMD SEV-SNP ATTESTATION_REPORT (versions 2–5; 1184 bytes). */
import { fail, need, toHex } from '../bytes.js';
import type { Claims } from '../types.js';

export const SNP_REPORT_SIZE = 1184;
export const SNP_SIGNED_END = 0x2a0;

export interface SnpTcb {
  fmc?: number;
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
}

export interface SnpReport {
  version: number;
  guest_svn: number;
  policy: string;
  policyValue: bigint;
  vmpl: number;
  sigAlgo: number;
  family_id: string;
  image_id: string;
  platform_info: string;
  report_data: string;
  measurement: string;
  host_data: string;
  id_key_digest: string;
  author_key_digest: string;
  report_id: string;
  chip_id: string;
  chipIdBytes: Buffer;
  current_tcb: SnpTcb;
  reported_tcb: SnpTcb;
  committed_tcb: SnpTcb;
  launch_tcb: SnpTcb;
  cpuid?: { fam: number; mod: number; step: number };
  signed: Buffer;
  /** Signature r, s as big-endian 48-byte values (converted from little-endian 72-byte fields). */
  r: Buffer;
  s: Buffer;
  sigHighBytesZero: boolean;
}

/** TCB_VERSION layout: Turin (family 1Ah) has FMC at byte 0 and a different order. */
export function snpTcb(v: Buffer, turin: boolean): SnpTcb {
  return turin
    ? { fmc: v[0]!, bootloader: v[1]!, tee: v[2]!, snp: v[3]!, microcode: v[7]! }
    : { bootloader: v[0]!, tee: v[1]!, snp: v[6]!, microcode: v[7]! };
}

function leToBe48(b: Buffer): { v: Buffer; zero: boolean } {
  const v = Buffer.from(b.subarray(0, 48)).reverse();
  return { v, zero: b.subarray(48).every((x) => x === 0) };
}

export function parseSnpReport(r: Buffer): SnpReport {
  if (r.length !== SNP_REPORT_SIZE) fail('EVIDENCE_MALFORMED', `SNP report must be ${SNP_REPORT_SIZE} bytes, got ${r.length}`);
  const version = r.readUInt32LE(0);
  need(version >= 2 && version <= 5, 'EVIDENCE_MALFORMED', `unsupported SNP report version ${version}`);
  const sigAlgo = r.readUInt32LE(0x34);
  need(sigAlgo === 1, 'EVIDENCE_MALFORMED', `signature algorithm ${sigAlgo} is not ECDSA P-384 SHA-384 (1)`);
  const cpuid = version >= 3 ? { fam: r[0x188]!, mod: r[0x189]!, step: r[0x18a]! } : undefined;
  const turin = cpuid?.fam === 0x1a;
  const tcb = (off: number): SnpTcb => snpTcb(r.subarray(off, off + 8), turin);
  const rr = leToBe48(r.subarray(0x2a0, 0x2a0 + 72));
  const ss = leToBe48(r.subarray(0x2a0 + 72, 0x2a0 + 144));
  const policyValue = r.readBigUInt64LE(8);
  return {
    version,
    guest_svn: r.readUInt32LE(4),
    policy: policyValue.toString(16).padStart(16, '0'),
    policyValue,
    vmpl: r.readUInt32LE(0x30),
    sigAlgo,
    family_id: toHex(r.subarray(0x10, 0x20)),
    image_id: toHex(r.subarray(0x20, 0x30)),
    platform_info: r.readBigUInt64LE(0x40).toString(16).padStart(16, '0'),
    report_data: toHex(r.subarray(0x50, 0x90)),
    measurement: toHex(r.subarray(0x90, 0xc0)),
    host_data: toHex(r.subarray(0xc0, 0xe0)),
    id_key_digest: toHex(r.subarray(0xe0, 0x110)),
    author_key_digest: toHex(r.subarray(0x110, 0x140)),
    report_id: toHex(r.subarray(0x140, 0x160)),
    chip_id: toHex(r.subarray(0x1a0, 0x1e0)),
    chipIdBytes: r.subarray(0x1a0, 0x1e0),
    current_tcb: tcb(0x38),
    reported_tcb: tcb(0x180),
    committed_tcb: tcb(0x1e0),
    launch_tcb: tcb(0x1f0),
    ...(cpuid ? { cpuid } : {}),
    signed: r.subarray(0, SNP_SIGNED_END),
    r: rr.v,
    s: ss.v,
    sigHighBytesZero: rr.zero && ss.zero,
  };
}

/** Product line from CPUID family/model (v3+ reports). */
export function productFromCpuid(fam: number, mod: number): 'milan' | 'genoa' | 'turin' | undefined {
  if (fam === 0x19 && mod <= 0x0f) return 'milan';
  if (fam === 0x19 && ((mod >= 0x10 && mod <= 0x1f) || (mod >= 0xa0 && mod <= 0xaf))) return 'genoa';
  if (fam === 0x1a && mod <= 0x11) return 'turin';
  return undefined;
}

export function snpClaims(rep: SnpReport): Claims {
  const tcbClaim = (t: SnpTcb): Record<string, number> => ({ ...(t.fmc !== undefined ? { fmc: t.fmc } : {}), bootloader: t.bootloader, tee: t.tee, snp: t.snp, microcode: t.microcode });
  return {
    version: rep.version,
    guest_svn: rep.guest_svn,
    policy: rep.policy,
    vmpl: rep.vmpl,
    family_id: rep.family_id,
    image_id: rep.image_id,
    platform_info: rep.platform_info,
    report_data: rep.report_data,
    measurement: rep.measurement,
    host_data: rep.host_data,
    id_key_digest: rep.id_key_digest,
    author_key_digest: rep.author_key_digest,
    report_id: rep.report_id,
    chip_id: rep.chip_id,
    current_tcb: tcbClaim(rep.current_tcb),
    reported_tcb: tcbClaim(rep.reported_tcb),
    committed_tcb: tcbClaim(rep.committed_tcb),
    launch_tcb: tcbClaim(rep.launch_tcb),
    ...(rep.cpuid ? { cpuid_fam_id: rep.cpuid.fam, cpuid_mod_id: rep.cpuid.mod, cpuid_step: rep.cpuid.step } : {}),
    debug: (rep.policyValue & (1n << 19n)) !== 0n,
  };
}
