/**
 * DCAP collateral (dcap-qvl QuoteCollateralV3 shape): parsing into typed objects. The TCB
 * info / QE identity texts are kept verbatim because their signatures cover the exact bytes.
 */
import { fail, fromHex, need } from '../bytes.js';
import { parseCrl, pemCerts, type Cert, type Crl } from '../pki.js';

/** Wire form, as in the vectors' collateral.json and as our PCS client produces it. */
export interface QuoteCollateralV3 {
  pck_crl_issuer_chain: string;
  root_ca_crl: string;
  pck_crl: string;
  tcb_info_issuer_chain: string;
  tcb_info: string;
  tcb_info_signature: string;
  qe_identity_issuer_chain: string;
  qe_identity: string;
  qe_identity_signature: string;
}

export const COLLATERAL_KEYS = [
  'pck_crl_issuer_chain',
  'root_ca_crl',
  'pck_crl',
  'tcb_info_issuer_chain',
  'tcb_info',
  'tcb_info_signature',
  'qe_identity_issuer_chain',
  'qe_identity',
  'qe_identity_signature',
] as const;

export interface TcbComponentLevel {
  sgx: number[];
  pcesvn: number;
  tdx: number[];
}

export interface TcbLevel {
  tcb: TcbComponentLevel;
  tcbDate?: string;
  tcbStatus: string;
  advisoryIDs: string[];
}

export interface TdxModuleIdentity {
  id: string;
  mrsigner: string;
  attributes: string;
  attributesMask: string;
  tcbLevels: { isvsvn: number; tcbStatus: string; advisoryIDs: string[] }[];
}

export interface TcbInfo {
  id: 'SGX' | 'TDX';
  version: number;
  issueDate: Date;
  nextUpdate: Date;
  fmspc: string;
  pceId: string;
  tcbLevels: TcbLevel[];
  tdxModule?: { mrsigner: string; attributes: string; attributesMask: string };
  tdxModuleIdentities: TdxModuleIdentity[];
}

export interface QeIdentity {
  id: string;
  version: number;
  issueDate: Date;
  nextUpdate: Date;
  miscselect: string;
  miscselectMask: string;
  attributes: string;
  attributesMask: string;
  mrsigner: string;
  isvprodid: number;
  tcbLevels: { isvsvn: number; tcbStatus: string; advisoryIDs: string[] }[];
}

export interface DcapCollateral {
  rootCrl: Crl;
  pckCrl: Crl;
  pckCrlChain: Cert[];
  tcbChain: Cert[];
  qeChain: Cert[];
  tcbInfoText: string;
  tcbInfoSignature: Buffer;
  tcbInfo: TcbInfo;
  qeIdentityText: string;
  qeIdentitySignature: Buffer;
  qeIdentity: QeIdentity;
}

type J = Record<string, unknown>;
const MAX_TEXT = 512 * 1024;

function obj(v: unknown, what: string): J {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('COLLATERAL_MALFORMED', `${what} is not an object`);
  return v as J;
}
function str(o: J, k: string, what: string): string {
  const v = o[k];
  if (typeof v !== 'string') fail('COLLATERAL_MALFORMED', `${what}.${k} is not a string`);
  return v;
}
function num(o: J, k: string, what: string): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) fail('COLLATERAL_MALFORMED', `${what}.${k} is not a non-negative integer`);
  return v;
}
function arr(o: J, k: string, what: string, max = 4096): unknown[] {
  const v = o[k];
  if (!Array.isArray(v) || v.length > max) fail('COLLATERAL_MALFORMED', `${what}.${k} is not an array`);
  return v;
}
function date(o: J, k: string, what: string): Date {
  const d = new Date(str(o, k, what));
  if (Number.isNaN(d.getTime())) fail('COLLATERAL_MALFORMED', `${what}.${k} is not a date`);
  return d;
}
function advisories(o: J): string[] {
  const v = o.advisoryIDs;
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) fail('COLLATERAL_MALFORMED', 'advisoryIDs malformed');
  return v as string[];
}
const hexField = (o: J, k: string, what: string): string => fromHex(str(o, k, what), `${what}.${k}`, 'COLLATERAL_MALFORMED').toString('hex');

function parseJsonText(text: string, what: string): J {
  if (text.length > MAX_TEXT) fail('INPUT_TOO_LARGE', `${what} too large`);
  try {
    return obj(JSON.parse(text), what);
  } catch (e) {
    if (e instanceof SyntaxError) fail('COLLATERAL_MALFORMED', `${what} is not JSON`);
    throw e;
  }
}

export function parseTcbInfo(text: string): TcbInfo {
  const t = parseJsonText(text, 'tcb_info');
  const version = num(t, 'version', 'tcbInfo');
  need(version === 2 || version === 3, 'COLLATERAL_MALFORMED', `unsupported TCB info version ${version}`);
  const id = t.id === undefined ? 'SGX' : str(t, 'id', 'tcbInfo');
  need(id === 'SGX' || id === 'TDX', 'COLLATERAL_MALFORMED', `unknown TCB info id ${id}`);
  const levels: TcbLevel[] = arr(t, 'tcbLevels', 'tcbInfo').map((lv0) => {
    const lv = obj(lv0, 'tcbLevel');
    const tcb = obj(lv.tcb, 'tcbLevel.tcb');
    let sgx: number[];
    if (Array.isArray(tcb.sgxtcbcomponents)) sgx = tcb.sgxtcbcomponents.map((c) => num(obj(c, 'component'), 'svn', 'sgxtcbcomponent'));
    else {
      sgx = [];
      for (let i = 1; i <= 16; i++) sgx.push(num(tcb, `sgxtcbcomp${String(i).padStart(2, '0')}svn`, 'tcb'));
    }
    need(sgx.length === 16, 'COLLATERAL_MALFORMED', 'TCB level must have 16 SGX components');
    const tdx = Array.isArray(tcb.tdxtcbcomponents) ? tcb.tdxtcbcomponents.map((c) => num(obj(c, 'component'), 'svn', 'tdxtcbcomponent')) : [];
    need(tdx.length === 0 || tdx.length === 16, 'COLLATERAL_MALFORMED', 'TCB level must have 16 TDX components');
    return {
      tcb: { sgx, pcesvn: num(tcb, 'pcesvn', 'tcb'), tdx },
      ...(typeof lv.tcbDate === 'string' ? { tcbDate: lv.tcbDate } : {}),
      tcbStatus: str(lv, 'tcbStatus', 'tcbLevel'),
      advisoryIDs: advisories(lv),
    };
  });
  const moduleLevels = (m: J): TdxModuleIdentity['tcbLevels'] =>
    arr(m, 'tcbLevels', 'tdxModuleIdentity').map((x0) => {
      const x = obj(x0, 'module tcbLevel');
      return { isvsvn: num(obj(x.tcb, 'module tcb'), 'isvsvn', 'module tcb'), tcbStatus: str(x, 'tcbStatus', 'module tcbLevel'), advisoryIDs: advisories(x) };
    });
  const info: TcbInfo = {
    id,
    version,
    issueDate: date(t, 'issueDate', 'tcbInfo'),
    nextUpdate: date(t, 'nextUpdate', 'tcbInfo'),
    fmspc: hexField(t, 'fmspc', 'tcbInfo'),
    pceId: hexField(t, 'pceId', 'tcbInfo'),
    tcbLevels: levels,
    tdxModuleIdentities: [],
  };
  if (t.tdxModule !== undefined) {
    const m = obj(t.tdxModule, 'tdxModule');
    info.tdxModule = { mrsigner: hexField(m, 'mrsigner', 'tdxModule'), attributes: hexField(m, 'attributes', 'tdxModule'), attributesMask: hexField(m, 'attributesMask', 'tdxModule') };
  }
  if (t.tdxModuleIdentities !== undefined) {
    info.tdxModuleIdentities = arr(t, 'tdxModuleIdentities', 'tcbInfo').map((m0) => {
      const m = obj(m0, 'tdxModuleIdentity');
      return {
        id: str(m, 'id', 'tdxModuleIdentity'),
        mrsigner: hexField(m, 'mrsigner', 'tdxModuleIdentity'),
        attributes: hexField(m, 'attributes', 'tdxModuleIdentity'),
        attributesMask: hexField(m, 'attributesMask', 'tdxModuleIdentity'),
        tcbLevels: moduleLevels(m),
      };
    });
  }
  return info;
}

export function parseQeIdentity(text: string): QeIdentity {
  const q = parseJsonText(text, 'qe_identity');
  return {
    id: str(q, 'id', 'qeIdentity'),
    version: num(q, 'version', 'qeIdentity'),
    issueDate: date(q, 'issueDate', 'qeIdentity'),
    nextUpdate: date(q, 'nextUpdate', 'qeIdentity'),
    miscselect: hexField(q, 'miscselect', 'qeIdentity'),
    miscselectMask: hexField(q, 'miscselectMask', 'qeIdentity'),
    attributes: hexField(q, 'attributes', 'qeIdentity'),
    attributesMask: hexField(q, 'attributesMask', 'qeIdentity'),
    mrsigner: hexField(q, 'mrsigner', 'qeIdentity'),
    isvprodid: num(q, 'isvprodid', 'qeIdentity'),
    tcbLevels: arr(q, 'tcbLevels', 'qeIdentity').map((x0) => {
      const x = obj(x0, 'qe tcbLevel');
      return { isvsvn: num(obj(x.tcb, 'qe tcb'), 'isvsvn', 'qe tcb'), tcbStatus: str(x, 'tcbStatus', 'qe tcbLevel'), advisoryIDs: advisories(x) };
    }),
  };
}

/** Validates the QuoteCollateralV3 wire shape (exact string fields). */
export function collateralFromJson(v: unknown): QuoteCollateralV3 {
  const o = obj(v, 'collateral');
  for (const k of COLLATERAL_KEYS) {
    const s = o[k];
    if (typeof s !== 'string') fail('COLLATERAL_MALFORMED', `collateral field ${k} missing`);
    if (s.length > MAX_TEXT) fail('INPUT_TOO_LARGE', `collateral field ${k} too large`);
  }
  if (Object.keys(o).length === COLLATERAL_KEYS.length) return o as unknown as QuoteCollateralV3; // keep identity (parse cache)
  const out = {} as Record<string, string>;
  for (const k of COLLATERAL_KEYS) out[k] = o[k] as string;
  return out as unknown as QuoteCollateralV3;
}

export function parseCollateral(c: QuoteCollateralV3): DcapCollateral {
  const sig = (s: string, what: string): Buffer => {
    const b = fromHex(s, what, 'COLLATERAL_MALFORMED');
    need(b.length === 64, 'COLLATERAL_MALFORMED', `${what} must be a 64-byte r||s`);
    return b;
  };
  const chain = (s: string, what: string): Cert[] => {
    const cs = pemCerts(s, 'COLLATERAL_MALFORMED');
    need(cs.length >= 2, 'COLLATERAL_MALFORMED', `${what} must hold at least 2 certificates`);
    return cs;
  };
  return {
    rootCrl: parseCrl(fromHex(c.root_ca_crl, 'root_ca_crl', 'COLLATERAL_MALFORMED')),
    pckCrl: parseCrl(fromHex(c.pck_crl, 'pck_crl', 'COLLATERAL_MALFORMED')),
    pckCrlChain: chain(c.pck_crl_issuer_chain, 'pck_crl_issuer_chain'),
    tcbChain: chain(c.tcb_info_issuer_chain, 'tcb_info_issuer_chain'),
    qeChain: chain(c.qe_identity_issuer_chain, 'qe_identity_issuer_chain'),
    tcbInfoText: c.tcb_info,
    tcbInfoSignature: sig(c.tcb_info_signature, 'tcb_info_signature'),
    tcbInfo: parseTcbInfo(c.tcb_info),
    qeIdentityText: c.qe_identity,
    qeIdentitySignature: sig(c.qe_identity_signature, 'qe_identity_signature'),
    qeIdentity: parseQeIdentity(c.qe_identity),
  };
}
