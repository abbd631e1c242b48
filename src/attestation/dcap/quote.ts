/** Intel DCAP quote parser: SGX v3, TDX v4, TDX v5 (body type 2 / 3). Parses by length. */
import { MAX_EVIDENCE_BYTES, Reader, fail, need, toHex } from '../bytes.js';

export const INTEL_QE_VENDOR_ID = '939a7233f79c4ca9940a0db3957f0607';
export const TEE_TYPE_SGX = 0x00000000;
export const TEE_TYPE_TDX = 0x00000081;
const MAX_CERT_DATA = 64 * 1024;

export interface SgxReportBody {
  cpusvn: string;
  miscselect: number;
  attributes: string;
  mrenclave: string;
  mrsigner: string;
  isvprodid: number;
  isvsvn: number;
  report_data: string;
  raw: Buffer;
}

export interface TdReportBody {
  tee_tcb_svn: string;
  mr_seam: string;
  mr_signer_seam: string;
  seam_attributes: string;
  td_attributes: string;
  xfam: string;
  mr_td: string;
  mr_config_id: string;
  mr_owner: string;
  mr_owner_config: string;
  rtmr0: string;
  rtmr1: string;
  rtmr2: string;
  rtmr3: string;
  report_data: string;
  tee_tcb_svn2?: string;
  mr_servicetd?: string;
}

export interface DcapQuote {
  version: 3 | 4 | 5;
  attKeyType: number;
  teeType: number;
  qeSvn: number;
  pceSvn: number;
  qeVendorId: string;
  /** v5 body type (2 = TDX 1.0, 3 = TDX 1.5). */
  bodyType?: number;
  sgx?: SgxReportBody;
  td?: TdReportBody;
  /** Bytes covered by the quote signature. */
  signed: Buffer;
  signature: Buffer;
  attestKey: Buffer;
  qeReport: Buffer;
  qeReportBody: SgxReportBody;
  qeReportSignature: Buffer;
  qeAuthData: Buffer;
  certDataType: number;
  certData: Buffer;
  trailingBytes: number;
}

export function parseSgxReportBody(b: Buffer): SgxReportBody {
  need(b.length === 384, 'EVIDENCE_MALFORMED', 'SGX report body must be 384 bytes');
  return {
    cpusvn: toHex(b.subarray(0, 16)),
    miscselect: b.readUInt32LE(16),
    attributes: toHex(b.subarray(48, 64)),
    mrenclave: toHex(b.subarray(64, 96)),
    mrsigner: toHex(b.subarray(128, 160)),
    isvprodid: b.readUInt16LE(256),
    isvsvn: b.readUInt16LE(258),
    report_data: toHex(b.subarray(320, 384)),
    raw: b,
  };
}

const TD_FIELDS: [keyof TdReportBody, number][] = [
  ['tee_tcb_svn', 16],
  ['mr_seam', 48],
  ['mr_signer_seam', 48],
  ['seam_attributes', 8],
  ['td_attributes', 8],
  ['xfam', 8],
  ['mr_td', 48],
  ['mr_config_id', 48],
  ['mr_owner', 48],
  ['mr_owner_config', 48],
  ['rtmr0', 48],
  ['rtmr1', 48],
  ['rtmr2', 48],
  ['rtmr3', 48],
  ['report_data', 64],
];

export function parseTdReportBody(b: Buffer): TdReportBody {
  need(b.length === 584 || b.length === 648, 'EVIDENCE_MALFORMED', 'TD report body must be 584 or 648 bytes');
  const r = new Reader(b, 'TD report body');
  const td = {} as Record<string, string>;
  for (const [name, len] of TD_FIELDS) td[name] = toHex(r.take(len));
  if (b.length === 648) {
    td.tee_tcb_svn2 = toHex(r.take(16));
    td.mr_servicetd = toHex(r.take(48));
  }
  return td as unknown as TdReportBody;
}

export function parseDcapQuote(q: Buffer): DcapQuote {
  if (q.length > MAX_EVIDENCE_BYTES) fail('INPUT_TOO_LARGE', 'quote larger than 1 MiB');
  const r = new Reader(q, 'DCAP quote');
  const version = r.u16le();
  const attKeyType = r.u16le();
  const teeType = r.u32le();
  const qeSvn = r.u16le();
  const pceSvn = r.u16le();
  const qeVendorId = toHex(r.take(16));
  r.take(20); // user data
  let bodyType: number | undefined;
  let sgx: SgxReportBody | undefined;
  let td: TdReportBody | undefined;
  if (version === 3) {
    need(teeType === TEE_TYPE_SGX, 'EVIDENCE_MALFORMED', 'quote v3 must be an SGX quote');
    sgx = parseSgxReportBody(r.take(384));
  } else if (version === 4) {
    need(teeType === TEE_TYPE_TDX, 'EVIDENCE_MALFORMED', 'quote v4 must be a TDX quote');
    td = parseTdReportBody(r.take(584));
  } else if (version === 5) {
    need(teeType === TEE_TYPE_TDX, 'EVIDENCE_MALFORMED', 'quote v5 must be a TDX quote (SGX v5 bodies unsupported)');
    bodyType = r.u16le();
    const size = r.u32le();
    need((bodyType === 2 && size === 584) || (bodyType === 3 && size === 648), 'EVIDENCE_MALFORMED', `unsupported v5 body type ${bodyType} / size ${size}`);
    td = parseTdReportBody(r.take(size));
  } else {
    fail('EVIDENCE_MALFORMED', `unsupported quote version ${version}`);
  }
  const signed = q.subarray(0, r.pos);
  const sigLen = r.u32le();
  need(sigLen <= r.remaining, 'EVIDENCE_MALFORMED', `signature data length ${sigLen} exceeds the quote`);
  const sd = new Reader(r.take(sigLen), 'quote signature data');
  const trailingBytes = r.remaining;
  const signature = sd.take(64);
  const attestKey = sd.take(64);
  let inner = sd;
  if (version !== 3) {
    const t = sd.u16le();
    const size = sd.u32le();
    need(t === 6, 'EVIDENCE_MALFORMED', `outer certification data type ${t} != 6 (QE report)`);
    need(size <= sd.remaining, 'EVIDENCE_MALFORMED', 'QE report certification data exceeds signature data');
    inner = new Reader(sd.take(size), 'QE report certification data');
  }
  const qeReport = inner.take(384);
  const qeReportSignature = inner.take(64);
  const authLen = inner.u16le();
  const qeAuthData = inner.take(authLen);
  const certDataType = inner.u16le();
  const certSize = inner.u32le();
  need(certSize <= MAX_CERT_DATA, 'EVIDENCE_MALFORMED', `certification data size ${certSize} too large`);
  const certData = inner.take(certSize);
  return {
    version: version as 3 | 4 | 5,
    attKeyType,
    teeType,
    qeSvn,
    pceSvn,
    qeVendorId,
    ...(bodyType !== undefined ? { bodyType } : {}),
    ...(sgx ? { sgx } : {}),
    ...(td ? { td } : {}),
    signed,
    signature,
    attestKey,
    qeReport,
    qeReportBody: parseSgxReportBody(qeReport),
    qeReportSignature,
    qeAuthData,
    certDataType,
    certData,
    trailingBytes,
  };
}
