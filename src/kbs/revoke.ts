/**
 * Revocation of deployment-CA certificates (docs/kbs.md "Deployment CA"): by serial, or every
 * still-valid workload certificate of `org/app#workload`. Recorded in `kbs_revoked` (listed in
 * the CRL at /cocoon/v1/ca/crl) and audited in the same transaction; revoking again is a no-op
 * that answers the same way (`alreadyRevoked: true`).
 */
import { CocoonError } from '../errors.js';
import { appendAudit, withRetry } from './audit.js';
import type { KbsContext } from './context.js';
import { currentPolicy, isAdmin } from './policies.js';
import { REVOCATION_REASONS, isRevocationReason } from './revocation-reasons.js';
import type { RevocationReason } from './revocation-reasons.js';

/** Most certificates of one workload a single request revokes (one per launch in the last 24 h). */
export const MAX_REVOKE_PER_WORKLOAD = 1000;

export interface RevokeRequest {
  serial?: string;
  /** `org/app#workload` */
  workload?: string;
  reason?: RevocationReason;
  /** Administrators: revoke a serial the KBS has no issuance record of (x509 secrets, certificates issued before this version). */
  force?: boolean;
}

export interface RevokeResult {
  serial?: string;
  workload?: string;
  reason: RevocationReason;
  /** True when this request revoked at least one certificate that was not revoked yet. */
  revoked: boolean;
  certificates: { serial: string; alreadyRevoked: boolean; policy: string | null; workload: string | null }[];
}

/** Whether `owner` is one of the policy's `owners` (who revoke its workloads' certificates; administrators revoke anything). */
async function ownsPolicy(ctx: KbsContext, owner: string, policy: string): Promise<boolean> {
  const head = await currentPolicy(ctx, policy);
  return head !== undefined && head.policy.owners.some((o) => o.kid === owner);
}

export async function revokeCertificates(ctx: KbsContext, owner: string, req: RevokeRequest): Promise<RevokeResult> {
  if ((req.serial === undefined) === (req.workload === undefined)) throw new CocoonError('BAD_USAGE', 'name exactly one of serial or workload');
  const reason: RevocationReason = req.reason ?? 'unspecified';
  if (!isRevocationReason(reason)) throw new CocoonError('BAD_USAGE', `reason must be one of ${REVOCATION_REASONS.join(', ')}`);
  const admin = await isAdmin(ctx, owner);
  const now = ctx.now().getTime();
  let targets: { serial: string; policy: string | null; workload: string | null }[];
  let auditPolicy: string | null = null;
  if (req.serial !== undefined) {
    const serial = req.serial.toLowerCase();
    const rec = await ctx.store.getCert(serial);
    // 403 before 404: a non-administrator learns nothing about serials of other policies.
    if (!admin && !(rec && (await ownsPolicy(ctx, owner, rec.policy)))) throw new CocoonError('FORBIDDEN', 'only KBS administrators, or owners of the policy the certificate was issued for, may revoke it');
    if (req.force && !admin) throw new CocoonError('FORBIDDEN', 'only KBS administrators may force a revocation');
    if (!rec && !req.force && !(await ctx.store.getRevoked(serial))) {
      throw new CocoonError('CERT_UNKNOWN', `the deployment CA issued no workload certificate with serial ${serial} (an x509 secret's certificate, or one issued before this KBS version: pass force)`);
    }
    targets = [{ serial, policy: rec?.policy ?? null, workload: rec?.workload ?? null }];
    auditPolicy = rec?.policy ?? null;
  } else {
    const m = /^([^#]+)#(.+)$/.exec(req.workload ?? '');
    if (!m) throw new CocoonError('BAD_USAGE', 'workload must be org/app#name');
    const [policy, workload] = [m[1] as string, m[2] as string];
    if (!admin && !(await ownsPolicy(ctx, owner, policy))) throw new CocoonError('FORBIDDEN', `only KBS administrators or owners of ${policy} may revoke its certificates`);
    const certs = await ctx.store.listCerts(policy, workload, now, MAX_REVOKE_PER_WORKLOAD);
    if (certs.length === 0) {
      const head = await currentPolicy(ctx, policy);
      if (!head?.policy.workloads[workload]) throw new CocoonError('CERT_UNKNOWN', `no current workload certificates of ${policy}#${workload} (no such workload)`);
    }
    targets = certs.map((c) => ({ serial: c.serial, policy, workload }));
    auditPolicy = policy;
  }
  const outcome = await withRetry(() =>
    ctx.store.transaction(async (tx) => {
      const out: RevokeResult['certificates'] = [];
      for (const t of targets) out.push({ ...t, alreadyRevoked: !(await tx.revokeSerial(t.serial, now, reason)) });
      await appendAudit(
        tx,
        ctx.auditKey,
        {
          actor: owner,
          action: 'ca.revoke',
          policy: auditPolicy,
          detail: {
            ...(req.serial !== undefined ? { serial: targets[0]?.serial } : { workload: req.workload }),
            reason,
            ...(req.force ? { force: true } : {}),
            fresh: out.filter((c) => !c.alreadyRevoked).map((c) => c.serial),
            already: out.filter((c) => c.alreadyRevoked).map((c) => c.serial),
          },
        },
        now,
      );
      return out;
    }),
  );
  ctx.log.info({ owner, serials: outcome.map((c) => c.serial), reason }, 'certificates revoked');
  return {
    ...(req.serial !== undefined ? { serial: targets[0]?.serial as string } : { workload: req.workload as string }),
    reason,
    revoked: outcome.some((c) => !c.alreadyRevoked),
    certificates: outcome,
  };
}
