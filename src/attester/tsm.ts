/**
 * TDX and SEV-SNP evidence through Linux configfs-tsm (Linux ≥ 6.7):
 *   mkdir /sys/kernel/config/tsm/report/<name>; [write privlevel]; write inblob (64 B);
 *   generation must equal the number of our writes (no concurrent writer); read outblob,
 *   auxblob, provider; generation unchanged; rmdir.
 * TDX additionally extends the workload event into RTMR3 through
 *   /sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384 (Linux ≥ 6.16) when present.
 *
 * Evidence (primary_evidence JSON):
 *   tdx: {"quote": "<b64 TD quote>", "cocoon_event_log"?: {…}}
 *   snp: {"report": "<b64 1184-byte report>", "certs"?: ["<PEM VCEK|VLEK>", "<PEM ASK|ASVK>", "<PEM ARK>"]}
 *        (certs from the auxblob certificate table when the host provides it)
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { MAX_EVIDENCE_BYTES } from '../attestation/bytes.js';
import { EVENT_LOG_KEY, eventDigest, workloadEvent, type CocoonEventLog } from '../attestation/eventlog.js';
import { nodeAttesterFs, type AttesterFs } from './fs.js';
import type { Attester, WorkloadIdentity } from './types.js';

export const TSM_REPORT_DIR = '/sys/kernel/config/tsm/report';
export const TDX_RTMR3_PATH = '/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384';
const PROVIDER: Record<'tdx' | 'snp', string> = { tdx: 'tdx_guest', snp: 'sev_guest' };
const MAX_AUXBLOB = 256 * 1024;

export interface TsmReport {
  outblob: Buffer;
  auxblob: Buffer | undefined;
  provider: string;
  generation: number;
}

async function readGeneration(fs: AttesterFs, dir: string): Promise<number> {
  const text = (await fs.read(join(dir, 'generation'), 32)).toString('ascii').trim();
  if (!/^\d{1,12}$/.test(text)) throw new CocoonError('ATTESTER_IO_FAILED', `configfs-tsm: generation "${text.slice(0, 16)}" is not a number`);
  return Number(text);
}

/** One configfs-tsm report request; the entry is always removed again. */
export async function tsmReport(inblob: Uint8Array, options: { base?: string; privlevel?: number; fs?: AttesterFs } = {}): Promise<TsmReport> {
  if (inblob.length !== 64) throw new CocoonError('BAD_USAGE', 'configfs-tsm: inblob must be 64 bytes');
  const fs = options.fs ?? nodeAttesterFs;
  const base = options.base ?? TSM_REPORT_DIR;
  if (!(await fs.exists(base))) throw new CocoonError('TEE_NOT_FOUND', `configfs-tsm not available at ${base} (Linux ≥ 6.7 with CONFIG_TSM_REPORTS, configfs mounted)`);
  const dir = join(base, `cocoon-${process.pid}-${randomBytes(6).toString('hex')}`);
  await fs.mkdir(dir);
  try {
    let writes = 0;
    if (options.privlevel !== undefined) {
      if (!Number.isInteger(options.privlevel) || options.privlevel < 0 || options.privlevel > 3) throw new CocoonError('BAD_USAGE', 'configfs-tsm: privlevel must be 0–3');
      await fs.write(join(dir, 'privlevel'), Buffer.from(`${options.privlevel}\n`));
      writes++;
    }
    await fs.write(join(dir, 'inblob'), Buffer.from(inblob));
    writes++;
    const before = await readGeneration(fs, dir);
    if (before !== writes) throw new CocoonError('TSM_REPORT_RACE', `configfs-tsm: generation is ${before} after our ${writes} write(s): another process wrote to ${dir}`);
    const outblob = await fs.read(join(dir, 'outblob'), MAX_EVIDENCE_BYTES);
    if (outblob.length === 0) throw new CocoonError('ATTESTER_IO_FAILED', 'configfs-tsm: empty outblob');
    let auxblob: Buffer | undefined;
    if (await fs.exists(join(dir, 'auxblob'))) {
      try {
        const a = await fs.read(join(dir, 'auxblob'), MAX_AUXBLOB);
        auxblob = a.length > 0 ? a : undefined;
      } catch (err) {
        if (err instanceof CocoonError && err.code === 'INPUT_TOO_LARGE') throw err;
        auxblob = undefined; // TDX and hosts without certificates: no auxblob content
      }
    }
    const provider = (await fs.read(join(dir, 'provider'), 64)).toString('ascii').trim();
    const after = await readGeneration(fs, dir);
    if (after !== before) throw new CocoonError('TSM_REPORT_RACE', `configfs-tsm: generation changed from ${before} to ${after} while reading: the report may not be ours`);
    return { outblob, auxblob, provider, generation: after };
  } finally {
    await fs.rmdir(dir).catch(() => undefined);
  }
}

const GUIDS: Record<string, 'vcek' | 'vlek' | 'ask' | 'ark'> = {
  '63da758d-e664-4564-adc5-f4b93be8accd': 'vcek',
  'a8074bc2-a25a-483e-aae6-39c045a0b8a1': 'vlek',
  '4ab7b379-bbac-4fe4-a02f-05aef327c782': 'ask',
  'c0b406a4-a803-4952-9743-3fb6014cd0ae': 'ark',
};

/** GUID in the UEFI mixed-endian byte layout → canonical text. */
function guidText(b: Buffer): string {
  const h = (x: Buffer): string => x.toString('hex');
  const le = (x: Buffer): string => h(Buffer.from(x).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${h(b.subarray(8, 10))}-${h(b.subarray(10, 16))}`;
}

/** SNP certificate table (GHCB extended guest request format) → DER certificates by kind. */
export function parseSnpCertTable(table: Buffer): Partial<Record<'vcek' | 'vlek' | 'ask' | 'ark', Buffer>> {
  const out: Partial<Record<'vcek' | 'vlek' | 'ask' | 'ark', Buffer>> = {};
  for (let i = 0; ; i++) {
    const at = i * 24;
    if (i >= 32 || at + 24 > table.length) throw new CocoonError('EVIDENCE_MALFORMED', 'SNP certificate table has no terminating entry');
    const guid = table.subarray(at, at + 16);
    const offset = table.readUInt32LE(at + 16);
    const length = table.readUInt32LE(at + 20);
    if (guid.every((x) => x === 0)) break;
    if (offset < at + 24 || length === 0 || length > 16 * 1024 || offset + length > table.length) throw new CocoonError('EVIDENCE_MALFORMED', `SNP certificate table entry ${i} out of bounds`);
    const kind = GUIDS[guidText(guid)];
    if (kind) out[kind] = Buffer.from(table.subarray(offset, offset + length));
  }
  return out;
}

const pem = (der: Buffer): string => `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`;

export interface TsmAttesterOptions {
  base?: string;
  /** SNP VMPL to request (privlevel); default: not written (kernel default). */
  privlevel?: number;
  /** TDX: the RTMR3 sysfs attribute; default TDX_RTMR3_PATH. */
  rtmrPath?: string;
  fs?: AttesterFs;
}

export class TsmAttester implements Attester {
  private eventLog: CocoonEventLog | undefined;
  private readonly fs: AttesterFs;

  constructor(readonly tee: 'tdx' | 'snp', private readonly options: TsmAttesterOptions = {}) {
    this.fs = options.fs ?? nodeAttesterFs;
  }

  /**
   * TDX: extends the workload event into RTMR3 when the kernel offers the sysfs attribute
   * (returns a description), else returns undefined (the measurement is then not bound by
   * a runtime register). SNP has no runtime register: always undefined.
   */
  async measure(identity: WorkloadIdentity): Promise<string | undefined> {
    if (this.tee !== 'tdx' || this.eventLog) return undefined;
    const path = this.options.rtmrPath ?? TDX_RTMR3_PATH;
    if (!(await this.fs.exists(path))) return undefined;
    const current = await this.fs.read(path, 48);
    if (current.length !== 48) throw new CocoonError('ATTESTER_IO_FAILED', `${path}: expected 48 bytes, read ${current.length}`);
    if (!current.every((x) => x === 0)) throw new CocoonError('ATTESTER_IO_FAILED', `RTMR3 was already extended (${current.toString('hex').slice(0, 16)}…): Cocoon must be its only writer in this TD`);
    const event = workloadEvent(identity.measurement, identity.policy, identity.workload);
    const digest = eventDigest('sha384', event);
    await this.fs.write(path, digest);
    this.eventLog = { v: 1, register: 'rtmr3', alg: 'sha384', events: [{ digest: digest.toString('hex'), event }] };
    return 'RTMR3';
  }

  async getEvidence(reportData: Uint8Array): Promise<Record<string, unknown>> {
    const report = await tsmReport(reportData, { ...(this.options.base ? { base: this.options.base } : {}), ...(this.options.privlevel !== undefined ? { privlevel: this.options.privlevel } : {}), fs: this.fs });
    if (report.provider !== PROVIDER[this.tee]) throw new CocoonError('TEE_NOT_FOUND', `configfs-tsm provider is "${report.provider.slice(0, 32)}", expected ${PROVIDER[this.tee]} for ${this.tee}`);
    if (this.tee === 'tdx') {
      return { quote: report.outblob.toString('base64'), ...(this.eventLog ? { [EVENT_LOG_KEY]: this.eventLog } : {}) };
    }
    if (report.outblob.length < 1184) throw new CocoonError('EVIDENCE_MALFORMED', `SNP report from configfs-tsm has ${report.outblob.length} bytes (expected ≥ 1184)`);
    const evidence: Record<string, unknown> = { report: report.outblob.subarray(0, 1184).toString('base64') };
    if (report.auxblob) {
      const t = parseSnpCertTable(report.auxblob);
      const vek = t.vcek ?? t.vlek;
      if (vek) evidence.certs = [vek, t.ask, t.ark].filter((c): c is Buffer => c !== undefined).map(pem);
    }
    return evidence;
  }
}
