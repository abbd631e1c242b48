/** RFC 5280 CRLReason names accepted by `POST /cocoon/v1/ca/revoke` (removeFromCRL excluded: a revocation here is final). */
export const REVOCATION_REASONS = ['unspecified', 'keyCompromise', 'cACompromise', 'affiliationChanged', 'superseded', 'cessationOfOperation', 'certificateHold', 'privilegeWithdrawn', 'aACompromise'] as const;
export type RevocationReason = (typeof REVOCATION_REASONS)[number];

export function isRevocationReason(v: string): v is RevocationReason {
  return (REVOCATION_REASONS as readonly string[]).includes(v);
}
