import type { JWK } from 'jose';
import { canonicalJson } from '../crypto/canonical-json.js';
import { digest } from '../crypto/hash.js';

/** Protocol constants shared by the KBS and the launcher's client (kept free of server imports). */
export const RCAR_VERSION = '0.4.0';
export const SESSION_COOKIE = 'kbs-session-id';
/** TEE names of the CoCo protocol, plus Cocoon's `sim`. */
export const RCAR_TEES = ['az-snp-vtpm', 'az-tdx-vtpm', 'snp', 'sgx', 'tdx', 'cca', 'csv', 'se', 'tpm', 'sample', 'sim'] as const;

/**
 * report_data = SHA-384(canonicalJson({nonce, tee-pubkey})) zero-padded to 64 bytes (internals §5).
 * With a workload CSR (Cocoon extension of runtime-data) the object is {csr, nonce, tee-pubkey}:
 * the CSR's key is then bound in the evidence just like the tee-pubkey.
 */
export function rcarReportData(nonce: string, teePubkey: JWK, csr?: string): Buffer {
  const out = Buffer.alloc(64);
  digest('sha384', canonicalJson(csr === undefined ? { nonce, 'tee-pubkey': teePubkey } : { csr, nonce, 'tee-pubkey': teePubkey })).copy(out);
  return out;
}

/** Reserved resource name: a certificate from the deployment CA for the CSR sent with the evidence. */
export const WORKLOAD_CERT_RESOURCE = 'workload-cert';
