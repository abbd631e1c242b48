/**
 * A small TPM 2.0 client speaking the command protocol directly (TPM 2.0 Part 3 byte layouts),
 * so the launcher needs no tpm2-tools in its root. Only the commands Cocoon uses:
 * PCR_Read, PCR_Extend, PCR_Reset, ReadPublic, CreatePrimary, EvictControl, FlushContext,
 * Quote, NV_ReadPublic, NV_Read. Authorization is always the empty password (TPM_RS_PW).
 * Every response is parsed with a bounded reader; a TPM error becomes TPM_COMMAND_FAILED
 * with the response code in `details.rc`.
 */
import { CocoonError } from '../../errors.js';
import { Reader } from '../../attestation/bytes.js';
import { openTransport, type TpmTransport } from './transport.js';
import type { Tcti } from './tcti.js';

const ST_NO_SESSIONS = 0x8001;
const ST_SESSIONS = 0x8002;
const RS_PW = 0x40000009;
export const RH_OWNER = 0x40000001;
export const RH_ENDORSEMENT = 0x4000000b;

export const CC = {
  EvictControl: 0x120,
  CreatePrimary: 0x131,
  PCR_Reset: 0x13d,
  NV_Read: 0x14e,
  Quote: 0x158,
  FlushContext: 0x165,
  NV_ReadPublic: 0x169,
  ReadPublic: 0x173,
  PCR_Read: 0x17e,
  PCR_Extend: 0x182,
} as const;

export const ALG = { RSA: 0x0001, SHA1: 0x0004, SHA256: 0x000b, SHA384: 0x000c, SHA512: 0x000d, NULL: 0x0010, RSASSA: 0x0014, ECDSA: 0x0018, ECC: 0x0023 } as const;
export const DIGEST_SIZE: Record<number, number> = { [ALG.SHA1]: 20, [ALG.SHA256]: 32, [ALG.SHA384]: 48, [ALG.SHA512]: 64 };
export const ALG_BY_NAME = { sha1: ALG.SHA1, sha256: ALG.SHA256, sha384: ALG.SHA384, sha512: ALG.SHA512 } as const;
export type PcrBankName = keyof typeof ALG_BY_NAME;

/** fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign */
export const AK_ATTRIBUTES = 0x00050072;
const ECC_NIST_P256 = 0x0003;

/** A TPM error response. `rc` is the raw TPM_RC. */
export class TpmResponseError extends CocoonError {
  constructor(readonly command: string, readonly rc: number) {
    super('TPM_COMMAND_FAILED', `TPM2_${command} failed with TPM_RC 0x${rc.toString(16).padStart(3, '0')}${rcHint(rc)}`, { details: { command, rc } });
  }
  /** TPM_RC_HANDLE (format 1, any handle/parameter number): the object/index does not exist. */
  get isHandleError(): boolean {
    return (this.rc & 0x80) !== 0 && (this.rc & 0x3f) === 0x0b;
  }
}

function rcHint(rc: number): string {
  if (rc & 0x80) {
    const e = rc & 0x3f;
    const names: Record<number, string> = { 0x01: 'asymmetric', 0x02: 'attributes', 0x03: 'hash', 0x04: 'value', 0x05: 'hierarchy', 0x07: 'key size', 0x0b: 'handle (object absent)', 0x0e: 'auth fail', 0x15: 'size', 0x18: 'scheme', 0x1d: 'NV range', 0x22: 'bad auth', 0x26: 'policy' };
    return names[e] ? ` (${names[e]})` : '';
  }
  const names: Record<number, string> = { 0x100: ' (initialize: TPM2_Startup not run)', 0x101: ' (failure mode)', 0x149: ' (NV locked)', 0x14c: ' (NV uninitialized)', 0x902: ' (object memory full)', 0x908: ' (retry)', 0x921: ' (lockout)' };
  return names[rc] ?? '';
}

class Writer {
  private parts: Buffer[] = [];
  u8(v: number): this {
    this.parts.push(Buffer.from([v & 0xff]));
    return this;
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  bytes(b: Uint8Array): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  tpm2b(b: Uint8Array): this {
    return this.u16(b.length).bytes(b);
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** TPML_PCR_SELECTION with one bank. */
export function pcrSelection(alg: number, pcrs: readonly number[]): Buffer {
  const bitmap = Buffer.alloc(3);
  for (const p of pcrs) {
    if (!Number.isInteger(p) || p < 0 || p > 23) throw new CocoonError('BAD_USAGE', `PCR index ${p} out of range 0–23`);
    bitmap[p >> 3]! |= 1 << (p & 7);
  }
  return new Writer().u32(1).u16(alg).u8(3).bytes(bitmap).done();
}

function readSelection(r: Reader): Array<{ alg: number; pcrs: number[] }> {
  const count = r.u32be();
  if (count > 16) throw new CocoonError('TPM_COMMAND_FAILED', `PCR selection count ${count} too large`);
  const out: Array<{ alg: number; pcrs: number[] }> = [];
  for (let i = 0; i < count; i++) {
    const alg = r.u16be();
    const n = r.u8();
    if (n > 32) throw new CocoonError('TPM_COMMAND_FAILED', 'PCR select bitmap too large');
    const bm = r.take(n);
    const pcrs: number[] = [];
    for (let j = 0; j < n * 8; j++) if ((bm[j >> 3]! >> (j & 7)) & 1) pcrs.push(j);
    out.push({ alg, pcrs });
  }
  return out;
}

/** The ECC P-256 / ECDSA-SHA256 restricted signing key template Cocoon uses for its AK. */
export function akTemplate(): Buffer {
  return new Writer()
    .u16(ALG.ECC)
    .u16(ALG.SHA256)
    .u32(AK_ATTRIBUTES)
    .tpm2b(Buffer.alloc(0)) // authPolicy
    .u16(ALG.NULL) // symmetric
    .u16(ALG.ECDSA)
    .u16(ALG.SHA256) // scheme
    .u16(ECC_NIST_P256)
    .u16(ALG.NULL) // kdf
    .tpm2b(Buffer.alloc(0))
    .tpm2b(Buffer.alloc(0)) // unique x, y
    .done();
}

export interface QuoteResult {
  /** TPMS_ATTEST bytes (the signed message). */
  message: Buffer;
  /** TPMT_SIGNATURE bytes. */
  signature: Buffer;
}

export class TpmClient {
  private busy: Promise<unknown> = Promise.resolve();

  constructor(private readonly transport: TpmTransport) {}

  static async connect(tcti: Tcti, timeoutMs?: number): Promise<TpmClient> {
    return new TpmClient(await openTransport(tcti, timeoutMs));
  }

  close(): Promise<void> {
    return this.transport.close();
  }

  /** Sends one command; returns the reader positioned after the response handles and parameterSize. */
  private async run(name: string, code: number, handles: number[], authCount: number, params: Buffer, outHandles = 0): Promise<{ handles: number[]; r: Reader }> {
    const w = new Writer();
    const auth = new Writer();
    for (let i = 0; i < authCount; i++) auth.u32(RS_PW).tpm2b(Buffer.alloc(0)).u8(0).tpm2b(Buffer.alloc(0));
    const authBytes = auth.done();
    for (const h of handles) w.u32(h);
    if (authCount > 0) w.u32(authBytes.length).bytes(authBytes);
    w.bytes(params);
    const body = w.done();
    const header = new Writer().u16(authCount > 0 ? ST_SESSIONS : ST_NO_SESSIONS).u32(10 + body.length).u32(code).done();
    const command = Buffer.concat([header, body]);
    // TPM_RC_YIELDED / TPM_RC_TESTING / TPM_RC_RETRY: the TPM asks to send the command again
    const exec = async (): Promise<Buffer> => {
      for (let attempt = 1; ; attempt++) {
        const resp = await this.transport.send(command);
        const rc = resp.length >= 10 ? resp.readUInt32BE(6) : 0;
        if (![0x908, 0x90a, 0x922].includes(rc) || attempt >= 20) return resp;
        await new Promise((resolve) => setTimeout(resolve, Math.min(5 * attempt, 50)));
      }
    };
    const next = this.busy.then(exec, exec);
    this.busy = next.catch(() => undefined);
    const resp = await next;
    const r = new Reader(resp, `TPM2_${name} response`, 'TPM_COMMAND_FAILED');
    const tag = r.u16be();
    const size = r.u32be();
    const rc = r.u32be();
    if (size !== resp.length) throw new CocoonError('TPM_COMMAND_FAILED', `TPM2_${name}: response size field ${size} != ${resp.length}`);
    if (rc !== 0) throw new TpmResponseError(name, rc);
    const outH: number[] = [];
    for (let i = 0; i < outHandles; i++) outH.push(r.u32be());
    if (tag === ST_SESSIONS) {
      const paramSize = r.u32be();
      if (paramSize > r.remaining) throw new CocoonError('TPM_COMMAND_FAILED', `TPM2_${name}: parameter size ${paramSize} exceeds the response`);
      return { handles: outH, r: new Reader(r.take(paramSize), `TPM2_${name} parameters`, 'TPM_COMMAND_FAILED') };
    }
    if (tag !== ST_NO_SESSIONS) throw new CocoonError('TPM_COMMAND_FAILED', `TPM2_${name}: bad response tag 0x${tag.toString(16)}`);
    return { handles: outH, r };
  }

  /** Reads PCR values of one bank (several commands: a TPM returns at most 8 digests per call). */
  async pcrRead(alg: number, pcrs: readonly number[]): Promise<Map<number, Buffer>> {
    const want = new Set(pcrs);
    const out = new Map<number, Buffer>();
    for (let round = 0; want.size > 0 && round < 8; round++) {
      const { r } = await this.run('PCR_Read', CC.PCR_Read, [], 0, pcrSelection(alg, [...want]));
      r.u32be(); // pcrUpdateCounter
      const sel = readSelection(r);
      const count = r.u32be();
      if (count > 8) throw new CocoonError('TPM_COMMAND_FAILED', `PCR_Read returned ${count} digests`);
      const digests: Buffer[] = [];
      for (let i = 0; i < count; i++) digests.push(Buffer.from(r.tpm2b(64)));
      const got = sel.filter((s) => s.alg === alg).flatMap((s) => s.pcrs);
      if (got.length !== count) throw new CocoonError('TPM_COMMAND_FAILED', 'PCR_Read selection and digest count disagree');
      if (count === 0) break;
      got.forEach((p, i) => {
        const d = digests[i]!;
        if (d.length !== DIGEST_SIZE[alg]) throw new CocoonError('TPM_COMMAND_FAILED', `PCR ${p} digest has ${d.length} bytes`);
        out.set(p, d);
        want.delete(p);
      });
    }
    if (want.size > 0) throw new CocoonError('TPM_COMMAND_FAILED', `PCR bank 0x${alg.toString(16)} is not allocated on this TPM (PCRs ${[...want].join(',')} unreadable)`);
    return out;
  }

  async pcrExtend(pcr: number, alg: number, digest: Buffer): Promise<void> {
    if (digest.length !== DIGEST_SIZE[alg]) throw new CocoonError('BAD_USAGE', 'PCR_Extend digest size does not match its algorithm');
    await this.run('PCR_Extend', CC.PCR_Extend, [pcr], 1, new Writer().u32(1).u16(alg).bytes(digest).done());
  }

  async pcrReset(pcr: number): Promise<void> {
    await this.run('PCR_Reset', CC.PCR_Reset, [pcr], 1, Buffer.alloc(0));
  }

  /** TPM2B_PUBLIC contents (TPMT_PUBLIC) of a loaded or persistent object. */
  async readPublic(handle: number): Promise<Buffer> {
    const { r } = await this.run('ReadPublic', CC.ReadPublic, [handle], 0, Buffer.alloc(0));
    return Buffer.from(r.tpm2b(1024));
  }

  async createPrimary(hierarchy: number, template: Buffer): Promise<{ handle: number; public: Buffer }> {
    const sensitive = new Writer().tpm2b(Buffer.alloc(0)).tpm2b(Buffer.alloc(0)).done();
    const params = new Writer().tpm2b(sensitive).tpm2b(template).tpm2b(Buffer.alloc(0)).u32(0).done();
    const { handles, r } = await this.run('CreatePrimary', CC.CreatePrimary, [hierarchy], 1, params, 1);
    return { handle: handles[0]!, public: Buffer.from(r.tpm2b(1024)) };
  }

  async evictControl(transient: number, persistent: number): Promise<void> {
    await this.run('EvictControl', CC.EvictControl, [RH_OWNER, transient], 1, new Writer().u32(persistent).done());
  }

  async flushContext(handle: number): Promise<void> {
    await this.run('FlushContext', CC.FlushContext, [], 0, new Writer().u32(handle).done());
  }

  /** TPM2_Quote with the key's own scheme; returns raw TPMS_ATTEST and TPMT_SIGNATURE. */
  async quote(signHandle: number, qualifyingData: Buffer, alg: number, pcrs: readonly number[]): Promise<QuoteResult> {
    if (qualifyingData.length > 64) throw new CocoonError('BAD_USAGE', 'qualifying data larger than 64 bytes');
    const params = new Writer().tpm2b(qualifyingData).u16(ALG.NULL).bytes(pcrSelection(alg, pcrs)).done();
    const { r } = await this.run('Quote', CC.Quote, [signHandle], 1, params);
    const message = Buffer.from(r.tpm2b(4096));
    const start = r.pos;
    const sigAlg = r.u16be();
    r.u16be(); // hash
    if (sigAlg === ALG.ECDSA) {
      r.tpm2b(128);
      r.tpm2b(128);
    } else if (sigAlg === ALG.RSASSA || sigAlg === 0x0016) r.tpm2b(1024);
    else throw new CocoonError('TPM_COMMAND_FAILED', `TPM2_Quote: unsupported signature algorithm 0x${sigAlg.toString(16)}`);
    const signature = Buffer.from(r.buf.subarray(start, r.pos));
    return { message, signature };
  }

  async nvReadPublic(index: number): Promise<{ dataSize: number; attributes: number }> {
    const { r } = await this.run('NV_ReadPublic', CC.NV_ReadPublic, [index], 0, Buffer.alloc(0));
    const pub = new Reader(r.tpm2b(512), 'TPMS_NV_PUBLIC', 'TPM_COMMAND_FAILED');
    const got = pub.u32be();
    if (got !== index) throw new CocoonError('TPM_COMMAND_FAILED', `NV_ReadPublic answered for index 0x${got.toString(16)}`);
    pub.u16be(); // nameAlg
    const attributes = pub.u32be();
    pub.tpm2b(64); // authPolicy
    return { dataSize: pub.u16be(), attributes };
  }

  /** Reads a whole NV index in chunks (owner authorization, empty password). */
  async nvRead(index: number, maxBytes = 16 * 1024, chunk = 1024): Promise<Buffer> {
    const { dataSize } = await this.nvReadPublic(index);
    if (dataSize > maxBytes) throw new CocoonError('TPM_COMMAND_FAILED', `NV index 0x${index.toString(16)} holds ${dataSize} bytes (limit ${maxBytes})`);
    const parts: Buffer[] = [];
    for (let off = 0; off < dataSize; ) {
      const n = Math.min(chunk, dataSize - off);
      const { r } = await this.run('NV_Read', CC.NV_Read, [RH_OWNER, index], 1, new Writer().u16(n).u16(off).done());
      const data = r.tpm2b(n);
      if (data.length === 0) throw new CocoonError('TPM_COMMAND_FAILED', 'NV_Read returned no data');
      parts.push(Buffer.from(data));
      off += data.length;
    }
    return Buffer.concat(parts);
  }
}
