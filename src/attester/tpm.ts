/**
 * vTPM evidence with the raw TPM client (no tpm2-tools in the launcher root):
 * AK at a persistent handle (0x81010002 as CoCo; created in the endorsement hierarchy and
 * persisted when absent: ECC P-256, restricted signing, ECDSA-SHA256), the workload event
 * extended into one PCR of the SHA-256 bank, a quote over the selected PCRs with
 * qualifying data = the 64-byte report data.
 *
 * Evidence (Trustee TPM JSON as src/attestation accepts it, plus the Cocoon event log):
 *   {"ak_public": "<b64 SPKI DER>", "tpm_quote": {"message": "<b64 TPMS_ATTEST>",
 *    "signature": "<b64 TPMT_SIGNATURE>", "pcrs": ["<hex sha256 PCR0>", … 24 values]},
 *    "cocoon_event_log": {…}}
 */
import { createHash } from 'node:crypto';
import { CocoonError } from '../errors.js';
import { EVENT_LOG_KEY, eventDigest, workloadEvent, type CocoonEventLog } from '../attestation/eventlog.js';
import { parseAttest, parseTpmtPublic } from '../attestation/tpm/structs.js';
import { ALG, AK_ATTRIBUTES, RH_ENDORSEMENT, TpmClient, TpmResponseError, akTemplate } from './tpm/client.js';
import { DEFAULT_TCTI, parseTcti, type Tcti } from './tpm/tcti.js';
import type { Attester, WorkloadIdentity } from './types.js';

export const DEFAULT_AK_HANDLE = 0x81010002;
export const DEFAULT_WORKLOAD_PCR = 23;
/** PCRs that TPM 2.0 PC-client TPMs let locality 0 reset (16 debug, 23 application support). */
export const RESETTABLE_PCRS: readonly number[] = [16, 23];
const ALL_PCRS = Array.from({ length: 24 }, (_, i) => i);

export interface TpmAttesterOptions {
  tcti?: Tcti | string;
  /** PCR that receives the workload event (SHA-256 bank). */
  pcr?: number;
  /** PCRs covered by the quote (the workload PCR is always added). Default 0–7 and the workload PCR. */
  quotePcrs?: number[];
  akHandle?: number;
  /** Reset a resettable workload PCR (16, 23) before extending. Default true. */
  resetPcr?: boolean;
  connect?: (tcti: Tcti) => Promise<TpmClient>;
}

async function withClient<T>(connect: () => Promise<TpmClient>, fn: (c: TpmClient) => Promise<T>): Promise<T> {
  const c = await connect();
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/** Loads the AK at `handle`, creating and persisting it when absent. Returns its TPMT_PUBLIC. */
export async function ensureAk(c: TpmClient, handle: number): Promise<Buffer> {
  try {
    return checkAk(await c.readPublic(handle), handle);
  } catch (err) {
    if (!(err instanceof TpmResponseError && err.isHandleError)) throw err;
  }
  const created = await c.createPrimary(RH_ENDORSEMENT, akTemplate());
  let evictError: unknown;
  try {
    await c.evictControl(created.handle, handle);
  } catch (err) {
    // another launcher may have persisted it meanwhile (TPM_RC_NV_DEFINED): use that one
    if (!(err instanceof TpmResponseError)) throw err;
    evictError = err;
  } finally {
    await c.flushContext(created.handle).catch(() => undefined);
  }
  try {
    return checkAk(await c.readPublic(handle), handle);
  } catch (err) {
    throw evictError ?? err;
  }
}

function checkAk(tpmtPublic: Buffer, handle: number): Buffer {
  if (tpmtPublic.length < 8) throw new CocoonError('TPM_COMMAND_FAILED', 'AK public area truncated');
  const attrs = tpmtPublic.readUInt32BE(4);
  const need = 0x2 | 0x10000 | 0x40000; // fixedTPM | restricted | sign
  if ((attrs & need) !== need) throw new CocoonError('TPM_COMMAND_FAILED', `the key at 0x${handle.toString(16)} is not a restricted, fixedTPM signing key (attributes 0x${attrs.toString(16)}; Cocoon creates 0x${AK_ATTRIBUTES.toString(16)})`);
  return tpmtPublic;
}

export class TpmAttester implements Attester {
  readonly tee = 'tpm' as const;
  readonly tcti: Tcti;
  readonly pcr: number;
  private readonly quotePcrs: number[];
  private readonly akHandle: number;
  private eventLog: CocoonEventLog | undefined;

  constructor(private readonly options: TpmAttesterOptions = {}) {
    this.tcti = typeof options.tcti === 'object' ? options.tcti : parseTcti(options.tcti ?? DEFAULT_TCTI);
    this.pcr = options.pcr ?? DEFAULT_WORKLOAD_PCR;
    if (!Number.isInteger(this.pcr) || this.pcr < 0 || this.pcr > 23) throw new CocoonError('BAD_USAGE', 'workload PCR must be 0–23');
    this.quotePcrs = [...new Set([...(options.quotePcrs ?? [0, 1, 2, 3, 4, 5, 6, 7]), this.pcr])].sort((a, b) => a - b);
    for (const p of this.quotePcrs) if (!Number.isInteger(p) || p < 0 || p > 23) throw new CocoonError('BAD_USAGE', 'quote PCRs must be 0–23');
    this.akHandle = options.akHandle ?? DEFAULT_AK_HANDLE;
  }

  private connect(): Promise<TpmClient> {
    return (this.options.connect ?? ((t: Tcti) => TpmClient.connect(t)))(this.tcti);
  }

  async measure(identity: WorkloadIdentity): Promise<string> {
    if (this.eventLog) return `PCR ${this.pcr} (sha256)`;
    const event = workloadEvent(identity.measurement, identity.policy, identity.workload);
    const digest = eventDigest('sha256', event);
    await withClient(() => this.connect(), async (c) => {
      if ((this.options.resetPcr ?? true) && RESETTABLE_PCRS.includes(this.pcr)) await c.pcrReset(this.pcr);
      const before = (await c.pcrRead(ALG.SHA256, [this.pcr])).get(this.pcr)!;
      if (!before.every((b) => b === 0)) throw new CocoonError('ATTESTER_IO_FAILED', `PCR ${this.pcr} was already extended (${before.toString('hex').slice(0, 16)}…) and cannot be reset: use a PCR that only Cocoon extends (COCOON_TPM_PCR)`);
      await c.pcrExtend(this.pcr, ALG.SHA256, digest);
    });
    this.eventLog = { v: 1, register: `pcr${this.pcr}`, alg: 'sha256', events: [{ digest: digest.toString('hex'), event }] };
    return `PCR ${this.pcr} (sha256)`;
  }

  async getEvidence(reportData: Uint8Array): Promise<Record<string, unknown>> {
    if (reportData.length !== 64) throw new CocoonError('BAD_USAGE', 'TPM attester: report data must be 64 bytes');
    return withClient(() => this.connect(), async (c) => {
      const akPublic = await ensureAk(c, this.akHandle);
      const spki = parseTpmtPublic(akPublic).export({ type: 'spki', format: 'der' });
      let qualifying = Buffer.from(reportData);
      for (let attempt = 1; ; attempt++) {
        let q;
        try {
          q = await c.quote(this.akHandle, qualifying, ALG.SHA256, this.quotePcrs);
        } catch (err) {
          // TPM_RC_SIZE: TPM2B_DATA holds fewer than 64 bytes on TPMs without a SHA-512 bank
          if (!(err instanceof TpmResponseError && (err.rc & 0xbf) === 0x95) || qualifying.length !== 64) throw err;
          qualifying = createHash('sha256').update(reportData).digest();
          q = await c.quote(this.akHandle, qualifying, ALG.SHA256, this.quotePcrs);
        }
        const values = await c.pcrRead(ALG.SHA256, ALL_PCRS);
        const attest = parseAttest(q.message);
        const h = createHash('sha256');
        for (const p of this.quotePcrs) h.update(values.get(p)!);
        if (h.digest().equals(attest.pcrDigest)) {
          return {
            ak_public: spki.toString('base64'),
            tpm_quote: { message: q.message.toString('base64'), signature: q.signature.toString('base64'), pcrs: ALL_PCRS.map((p) => values.get(p)!.toString('hex')) },
            ...(this.eventLog ? { [EVENT_LOG_KEY]: this.eventLog } : {}),
          };
        }
        if (attempt >= 3) throw new CocoonError('TPM_COMMAND_FAILED', 'PCR values keep changing while quoting (3 attempts)');
      }
    });
  }
}
