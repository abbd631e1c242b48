/**
 * TCB level matching with Intel QVL semantics (TcbLevelCheck / TdxModuleCheck):
 * platform level = first level (highest first) whose SGX components and PCESVN are ≤ the PCK's;
 * for TDX additionally the TDX components ≤ tee_tcb_svn, skipping components 0–1 when
 * tee_tcb_svn[1] > 0 (TDX module ≥ 1.5: those bytes are covered by tdxModuleIdentities).
 * Statuses converge platform → TDX module → QE.
 */
import { fail } from '../bytes.js';
import type { QeIdentity, TcbInfo, TcbLevel } from './collateral.js';
import type { PckExtension } from './pck.js';
import type { TdReportBody } from './quote.js';

export interface StatusWithAdvisories {
  status: string;
  advisories: string[];
}

export interface TcbEvaluation extends StatusWithAdvisories {
  platformLevel: { status: string; advisories: string[]; tcbDate?: string };
  tdxModuleLevel: { id: string; status: string; advisories: string[] } | null;
  qeLevel: StatusWithAdvisories;
}

function cmpLists(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? -1) - (b[i] ?? -1);
    if (d !== 0) return d;
  }
  return 0;
}

function union(a: string[], b: string[]): string[] {
  const out = [...a];
  for (const x of b) if (!out.includes(x)) out.push(x);
  return out;
}

/** Intel QVL convergeTcbStatusWith{Qe,TdxModule}Status. */
export function converge(level: StatusWithAdvisories, other: StatusWithAdvisories): StatusWithAdvisories {
  let status = level.status;
  if (other.status === 'OutOfDate') {
    if (status === 'UpToDate' || status === 'SWHardeningNeeded') status = 'OutOfDate';
    else if (status === 'ConfigurationNeeded' || status === 'ConfigurationAndSWHardeningNeeded') status = 'OutOfDateConfigurationNeeded';
  }
  if (other.status === 'Revoked') status = 'Revoked';
  return { status, advisories: union(level.advisories, other.advisories) };
}

/** QE identity level for the QE's ISVSVN (levels in the published, descending order). */
export function qeTcbLevel(qi: QeIdentity, isvsvn: number): StatusWithAdvisories {
  for (const lv of qi.tcbLevels) if (isvsvn >= lv.isvsvn) return { status: lv.tcbStatus, advisories: [...lv.advisoryIDs] };
  return fail('QE_IDENTITY_MISMATCH', `QE ISVSVN ${isvsvn} is below every QE identity TCB level`);
}

const hexBytes = (h: string): Buffer => Buffer.from(h, 'hex');

/** TDX module identity check; returns the module level or null (TDX 1.0 module). */
export function matchTdxModule(ti: TcbInfo, td: TdReportBody): { id: string; status: string; advisories: string[] } | null {
  const tee = hexBytes(td.tee_tcb_svn);
  const base = ti.tdxModule ?? fail('TCB_INFO_MISMATCH', 'TDX TCB info has no tdxModule');
  let { mrsigner, attributes, attributesMask } = base;
  let levels: TcbInfo['tdxModuleIdentities'][number]['tcbLevels'] | undefined;
  let id = '';
  if (tee[1]! > 0) {
    id = `TDX_${tee[1]!.toString(16).toUpperCase().padStart(2, '0')}`;
    const ident = ti.tdxModuleIdentities.find((m) => m.id.toUpperCase() === id) ?? fail('TDX_MODULE_MISMATCH', `no TDX module identity ${id} in TCB info`);
    ({ mrsigner, attributes, attributesMask } = ident);
    levels = ident.tcbLevels;
  }
  if (hexBytes(td.mr_signer_seam).compare(hexBytes(mrsigner)) !== 0) fail('TDX_MODULE_MISMATCH', 'TDX module MRSIGNER mismatch');
  const sa = hexBytes(td.seam_attributes);
  const ea = hexBytes(attributes);
  const mask = hexBytes(attributesMask);
  for (let i = 0; i < sa.length; i++) {
    const m = mask[i] ?? 0;
    if ((sa[i]! & m) !== ((ea[i] ?? 0) & m)) fail('TDX_MODULE_MISMATCH', 'SEAM attributes mismatch');
    if (sa[i]! & ~m & 0xff) fail('TDX_MODULE_MISMATCH', 'SEAM attributes set outside the mask');
  }
  if (!levels) return null;
  for (const lv of levels) if (tee[0]! >= lv.isvsvn) return { id, status: lv.tcbStatus, advisories: [...lv.advisoryIDs] };
  return fail('TDX_MODULE_MISMATCH', `TDX module ISVSVN ${tee[0]} is below every module TCB level`);
}

export function evaluateTcb(ti: TcbInfo, pck: PckExtension, td: TdReportBody | undefined, qe: StatusWithAdvisories): TcbEvaluation {
  const isTdx = td !== undefined;
  const levels = [...ti.tcbLevels].sort((a, b) => {
    const c = cmpLists(b.tcb.sgx, a.tcb.sgx) || b.tcb.pcesvn - a.tcb.pcesvn;
    return c || (isTdx ? cmpLists(b.tcb.tdx, a.tcb.tdx) : 0);
  });
  const tee = isTdx ? hexBytes(td.tee_tcb_svn) : undefined;
  let sgxLevel: TcbLevel | undefined;
  let tdxLevel: TcbLevel | undefined;
  for (const lv of levels) {
    if (pck.pcesvn < lv.tcb.pcesvn) continue;
    if (pck.cpusvnComponents.some((v, i) => v < lv.tcb.sgx[i]!)) continue;
    if (!tee) {
      sgxLevel = lv;
      break;
    }
    sgxLevel ??= lv;
    if (lv.tcb.tdx.length !== 16) fail('TCB_INFO_MISMATCH', 'TDX TCB level without 16 TDX components');
    const start = tee[1]! > 0 ? 2 : 0;
    let ok = true;
    for (let i = start; i < 16; i++) if (tee[i]! < lv.tcb.tdx[i]!) ok = false;
    if (ok) {
      tdxLevel = lv;
      break;
    }
  }
  const level = isTdx ? tdxLevel : sgxLevel;
  if (!level) fail('NO_MATCHING_TCB_LEVEL', 'no matching TCB level found');
  const platformLevel = { status: level.tcbStatus, advisories: [...level.advisoryIDs], ...(level.tcbDate ? { tcbDate: level.tcbDate } : {}) };
  let acc: StatusWithAdvisories = { status: level.tcbStatus, advisories: [...level.advisoryIDs] };
  let tdxModuleLevel: TcbEvaluation['tdxModuleLevel'] = null;
  if (td) {
    tdxModuleLevel = matchTdxModule(ti, td);
    if (tdxModuleLevel) acc = converge(acc, tdxModuleLevel);
  }
  acc = converge(acc, qe);
  return { ...acc, platformLevel, tdxModuleLevel, qeLevel: qe };
}
