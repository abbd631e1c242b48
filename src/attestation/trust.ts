/**
 * Trust material: the anchors a verification chains to. Built once at the edge; the
 * production default is the pinned Intel SGX Root CA and AMD ARK/ASK/ASVK of each product
 * line, each checked against its pinned SHA-256 fingerprint. Tests pass their own roots.
 */
import { CocoonError } from '../errors.js';
import * as A from './anchors.js';
import { parseCert, pemCerts, type Cert } from './pki.js';

export const AMD_PRODUCTS = ['milan', 'genoa', 'turin'] as const;
export type AmdProduct = (typeof AMD_PRODUCTS)[number];

export interface AmdAnchor {
  ark: Cert;
  ask: Cert;
  asvk?: Cert;
}

export interface TrustAnchors {
  /** Accepted Intel SGX root certificates (DCAP PCK chains, TCB signing chains, CRLs). */
  intelRoots: Cert[];
  /** AMD ARK (+ the ASK / ASVK it signed) per product line. */
  amd: Partial<Record<AmdProduct, AmdAnchor>>;
}

function pinned(pem: string, sha256: string): Cert {
  const [c] = pemCerts(pem, 'INTERNAL');
  if (!c || c.fingerprint !== sha256) throw new CocoonError('INTERNAL', 'embedded trust anchor does not match its pinned fingerprint');
  return c;
}

let defaults: TrustAnchors | undefined;

/** The pinned production anchors. */
export function defaultAnchors(): TrustAnchors {
  defaults ??= {
    intelRoots: [pinned(A.INTEL_SGX_ROOT_CA_PEM, A.INTEL_SGX_ROOT_CA_SHA256)],
    amd: {
      milan: { ark: pinned(A.AMD_MILAN_ARK_PEM, A.AMD_MILAN_ARK_SHA256), ask: pinned(A.AMD_MILAN_ASK_PEM, A.AMD_MILAN_ASK_SHA256), asvk: pinned(A.AMD_MILAN_ASVK_PEM, A.AMD_MILAN_ASVK_SHA256) },
      genoa: { ark: pinned(A.AMD_GENOA_ARK_PEM, A.AMD_GENOA_ARK_SHA256), ask: pinned(A.AMD_GENOA_ASK_PEM, A.AMD_GENOA_ASK_SHA256), asvk: pinned(A.AMD_GENOA_ASVK_PEM, A.AMD_GENOA_ASVK_SHA256) },
      turin: { ark: pinned(A.AMD_TURIN_ARK_PEM, A.AMD_TURIN_ARK_SHA256), ask: pinned(A.AMD_TURIN_ASK_PEM, A.AMD_TURIN_ASK_SHA256), asvk: pinned(A.AMD_TURIN_ASVK_PEM, A.AMD_TURIN_ASVK_SHA256) },
    },
  };
  return defaults;
}

/** Anchors from explicit certificates (tests, private PKI). */
export function customAnchors(input: { intelRoots?: (Cert | Buffer)[]; amd?: Partial<Record<AmdProduct, AmdAnchor>> }): TrustAnchors {
  return {
    intelRoots: (input.intelRoots ?? []).map((c) => (Buffer.isBuffer(c) ? parseCert(c, 'BAD_USAGE') : c)),
    amd: input.amd ?? {},
  };
}
