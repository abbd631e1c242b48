/**
 * TPM 2.0 quote verification: signature by the AK (RSASSA, RSAPSS, ECDSA), extraData ==
 * expected nonce, PCR digest over the selected PCR values.
 *
 * SHA-1: quotes signed with SHA-1 and SHA-1 PCR banks are ACCEPTED (cryptographically
 * verified like any other hash) and reported through the `sig_hash` / `pcr_alg` claims, so
 * a policy can refuse them. Rationale in docs/verify.md.
 */
import { constants, createHash, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { fail, need, toHex } from '../bytes.js';
import type { Stages } from '../stages.js';
import type { Claims } from '../types.js';
import { HASH_NAME, parseAttest, parseTpmtSignature, TPM_ALG, type TpmsAttest, type TpmtSignature } from './structs.js';

/** PCR values: bank hash alg id → index → digest. */
export type PcrBanks = Map<number, Map<number, Buffer>>;

export interface TpmQuoteInput {
  ak: KeyObject;
  message: Buffer;
  signature: TpmtSignature | Buffer;
  pcrs: PcrBanks;
}

export function verifyTpmtSignature(ak: KeyObject, msg: Buffer, sig: TpmtSignature): boolean {
  const hash = HASH_NAME[sig.hash];
  if (!hash) return false;
  try {
    if (sig.alg === TPM_ALG.ECDSA) {
      if (ak.asymmetricKeyType !== 'ec') return false;
      const size = { 'prime256v1': 32, secp384r1: 48, secp521r1: 66 }[ak.asymmetricKeyDetails?.namedCurve ?? ''] ?? 0;
      if (!size || !sig.r || !sig.s || sig.r.length > size || sig.s.length > size) return false;
      const pad = (b: Buffer): Buffer => Buffer.concat([Buffer.alloc(size - b.length), b]);
      return cryptoVerify(hash, msg, { key: ak, dsaEncoding: 'ieee-p1363' }, Buffer.concat([pad(sig.r), pad(sig.s)]));
    }
    if (ak.asymmetricKeyType !== 'rsa') return false;
    if (sig.alg === TPM_ALG.RSASSA) return cryptoVerify(hash, msg, { key: ak, padding: constants.RSA_PKCS1_PADDING }, sig.sig!);
    if (sig.alg === TPM_ALG.RSAPSS) return cryptoVerify(hash, msg, { key: ak, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, sig.sig!);
  } catch {
    return false;
  }
  return false;
}

/** Runs parse / tpm_signature / tpm_nonce / pcr_digest; `pcrHash` forces the digest hash (Azure: sha256). */
export function verifyTpmQuote(input: TpmQuoteInput, nonce: Buffer | undefined, st: Stages, pcrHash?: 'sha256'): { attest?: TpmsAttest; claims: Claims } {
  const a = st.run('parse', 'EVIDENCE_MALFORMED', () => parseAttest(input.message));
  const sig = st.run('parse', 'EVIDENCE_MALFORMED', () => (Buffer.isBuffer(input.signature) ? parseTpmtSignature(input.signature) : input.signature));
  if (!a || !sig) return { claims: {} };
  st.run('tpm_signature', 'TPM_SIGNATURE_INVALID', () => need(verifyTpmtSignature(input.ak, input.message, sig), 'TPM_SIGNATURE_INVALID', 'TPM quote signature invalid for the attestation key'));
  if (nonce !== undefined)
    st.run('tpm_nonce', 'NONCE_INVALID', () => need(a.extraData.equals(nonce), 'NONCE_INVALID', `extraData ${toHex(a.extraData)} != expected nonce ${toHex(nonce)}`));
  st.run('pcr_digest', 'PCR_DIGEST_MISMATCH', () => {
    const h = createHash(pcrHash ?? HASH_NAME[sig.hash]!);
    for (const sel of a.pcrSelect) {
      const bank = input.pcrs.get(sel.hash);
      for (const i of sel.pcrs) h.update(bank?.get(i) ?? fail('PCR_DIGEST_MISMATCH', `PCR ${HASH_NAME[sel.hash] ?? sel.hash}:${i} value missing`));
    }
    need(h.digest().equals(a.pcrDigest), 'PCR_DIGEST_MISMATCH', 'pcrDigest does not match the supplied PCR values');
  });
  const claims: Claims = { nonce: toHex(a.extraData), sig_hash: HASH_NAME[sig.hash]!, clock: Number(a.clock), reset_count: a.resetCount, restart_count: a.restartCount };
  for (const sel of a.pcrSelect) {
    const bank = input.pcrs.get(sel.hash);
    for (const i of sel.pcrs) {
      const v = bank?.get(i);
      if (v) claims[`pcr${String(i).padStart(2, '0')}`] = toHex(v);
    }
    if (HASH_NAME[sel.hash]) claims.pcr_alg = HASH_NAME[sel.hash]!;
  }
  return { attest: a, claims };
}
