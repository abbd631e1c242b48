import type { FlattenedJWE, JWTPayload } from 'jose';
import { isTeeKind } from '../attestation/types.js';
import type { TeeKind, VerificationResult } from '../attestation/types.js';
import { constantTimeEqual } from '../crypto/hash.js';
import { uuidV7 } from '../crypto/random-pool.js';
import { assertEcPublicKey } from '../crypto/ecdh-es.js';
import { CocoonError, ERROR_CODES, asCocoonError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import { evaluateAccept, grantedSecrets, workloadMeasurementOf } from '../policy/evaluate.js';
import { LAUNCH_PLAN_RESOURCE } from '../policy/names.js';
import { workloadCertGranted } from '../policy/types.js';
import type { Policy, SecretField, WorkloadSpec } from '../policy/types.js';
import type { Claims } from '../attestation/types.js';
import type { AuditInput } from './audit.js';
import type { JournalStep } from './journal.js';
import { assertFresh, issueChallenge, openChallenge } from './challenge.js';
import type { Challenge } from './challenge.js';
import { WORKLOAD_CERT_VALID_MS, parseCsr } from './ca.js';
import { generateStructured, parseStructured } from './secret-gen.js';
import { generateRandomSecret, readSecret } from './secrets.js';
import { openValue, sealValue } from './secret-box.js';
import type { KbsContext } from './context.js';
import { INSECURE_NOTICE, issueEar, verifyEar } from './ear.js';
import { renderLaunchPlan } from './launch-plan.js';
import { volumeGrantsFor } from './volumes.js';
import { currentPolicy } from './policies.js';
import type { CurrentPolicy } from './policies.js';
import { bindInitData, parseInitData } from './init-data.js';
import { RCAR_TEES, RCAR_VERSION, SESSION_COOKIE, WORKLOAD_CERT_RESOURCE, rcarReportData } from './rcar-protocol.js';
import { encryptToTee, parseTeePubkey } from './tee-key.js';
import type { TeePubkey } from './tee-key.js';
import type { EventRecord } from './store/types.js';

export { RCAR_TEES, RCAR_VERSION, SESSION_COOKIE, rcarReportData };

export interface AuthRequest {
  version: string;
  tee: string;
  'extra-params'?: unknown;
}

/** `/kbs/v0/auth`: a challenge in a self-authenticating cookie (src/kbs/challenge.ts); nothing is stored until it is answered. */
export function startSession(ctx: KbsContext, req: AuthRequest): { cookie: string; nonce: string; maxAgeS: number } {
  if (req.version !== RCAR_VERSION) throw new CocoonError('BAD_USAGE', `unsupported KBS protocol version ${req.version.slice(0, 32)} (this KBS speaks ${RCAR_VERSION})`);
  if (!(RCAR_TEES as readonly string[]).includes(req.tee)) throw new CocoonError('TEE_UNSUPPORTED', `unknown TEE ${req.tee.slice(0, 32)}`);
  if (req.tee === 'sim' && !ctx.allowSim) throw new CocoonError('SIM_NOT_ALLOWED', 'this KBS does not accept simulated TEEs (start it with --allow-sim for development)');
  const { cookie, challenge } = issueChallenge(ctx.dataKey, req.tee as Challenge['tee'], ctx.now().getTime(), ctx.sessionTtlS);
  return { cookie, nonce: challenge.nonce, maxAgeS: ctx.sessionTtlS };
}

export interface AttestRequest {
  'init-data'?: { format: string; body: string };
  'runtime-data': { nonce: string; 'tee-pubkey': unknown; csr?: string };
  'tee-evidence': { primary_evidence: unknown; additional_evidence?: string };
}

/** The attestation outcome kept in the session (and re-checked on every release). */
interface SessionGrant {
  policy: string;
  workload: string;
  tee: TeeKind;
  measurement: string | undefined;
  debug: boolean;
  insecure: boolean;
  /** Verified claims, TCB status and advisories: every release re-appraises them against the current policy. */
  claims?: Claims;
  tcbStatus?: string;
  advisories?: string[];
  /** PEM/base64 CSR bound in the evidence (runtime-data `csr`). */
  csr?: string;
}

export async function attest(ctx: KbsContext, cookie: string | undefined, req: AttestRequest): Promise<{ token: string; insecure: boolean }> {
  const now = ctx.now();
  const started = process.hrtime.bigint();
  let tee = 'unknown';
  let target: { policy: string; workload: string } | undefined;
  let measurement: string | undefined;
  let insecure = false;
  let challenge: Challenge | undefined;
  /** The challenge's session row exists (this attempt wrote it, or an earlier one did): nothing left to burn. */
  let spent = false;
  try {
    if (!cookie) throw new CocoonError('NONCE_INVALID', `no ${SESSION_COOKIE} cookie: request a challenge from /kbs/v0/auth first`);
    const opened = openChallenge(ctx.dataKey, cookie, ctx.sessionTtlS);
    assertFresh(opened, now.getTime());
    tee = opened.tee;
    // Spent already (answered, or refused): say so before verifying anything. The journal step
    // that spends it (below) settles races between concurrent answers.
    if (await ctx.store.sessionExists(opened.sessionId)) throw new CocoonError('NONCE_INVALID', 'nonce already used: request a new challenge');
    challenge = opened;
    const nonce = req['runtime-data'].nonce;
    if (!constantTimeEqual(Buffer.from(nonce, 'utf8'), Buffer.from(challenge.nonce, 'utf8'))) {
      throw new CocoonError('NONCE_INVALID', "nonce does not match the session's challenge");
    }
    if (!isTeeKind(challenge.tee)) throw new CocoonError('TEE_UNSUPPORTED', `Cocoon cannot verify ${challenge.tee} evidence`);
    const teeKind = challenge.tee;
    if (teeKind === 'sim' && !ctx.allowSim) throw new CocoonError('SIM_NOT_ALLOWED', 'this KBS does not accept simulated TEEs');
    const teePubkey = parseTeePubkey(req['runtime-data']['tee-pubkey']);
    // a key no resource could be encrypted to is refused here, not at every release
    if (teePubkey.alg === 'ECDH-ES+A256KW') assertEcPublicKey(teePubkey.jwk, 'tee-pubkey');
    const initData = parseInitData(req['init-data']);
    target = initData.target;
    const csr = req['runtime-data'].csr;
    if (csr !== undefined) await parseCsr(csr);
    const expected = rcarReportData(nonce, teePubkey.jwk, csr);

    const result = await runVerifier(ctx, teeKind, req['tee-evidence'].primary_evidence, now, expected);
    insecure = result.insecure === true || teeKind === 'sim';
    const claimedRd = result.claims.report_data;
    if (typeof claimedRd !== 'string' || !constantTimeEqual(Buffer.from(claimedRd.toLowerCase(), 'utf8'), Buffer.from(expected.toString('hex'), 'utf8'))) {
      throw new CocoonError('REPORT_DATA_MISMATCH', 'evidence report_data is not SHA-384(nonce, tee-pubkey)');
    }
    const initDataBinding = bindInitData(initData, teeKind, result.claims);
    measurement = workloadMeasurementOf(teeKind, result.claims);
    const debug = result.claims.debug === true;

    const current = await currentPolicy(ctx, target.policy);
    if (!current) throw new CocoonError('POLICY_DENIED', `no policy named ${target.policy}`);
    const workload = current.policy.workloads[target.workload];
    if (!workload) throw new CocoonError('POLICY_DENIED', `policy ${target.policy} has no workload ${target.workload}`);
    const appraisal = evaluateAccept(workload, {
      tee: teeKind,
      measurement,
      debug,
      allowSim: ctx.allowSim,
      claims: result.claims,
      ...(result.tcbStatus !== undefined ? { tcbStatus: result.tcbStatus } : {}),
      advisories: result.advisories,
    });
    if (!appraisal.allowed) throw new CocoonError(appraisal.initDataUnbound ? 'INIT_DATA_NOT_BOUND' : 'POLICY_DENIED', `${target.policy}#${target.workload}: ${appraisal.reason}`, { details: { reasons: appraisal.reasons } });
    const grant: SessionGrant & { claims: Claims } = {
      policy: target.policy,
      workload: target.workload,
      tee: teeKind,
      measurement,
      debug,
      insecure,
      claims: result.claims,
      ...(result.tcbStatus !== undefined ? { tcbStatus: result.tcbStatus } : {}),
      advisories: result.advisories,
      ...(csr !== undefined ? { csr } : {}),
    };
    // The token carries what the session keeps (bearer releases re-read it with claimsFromToken).
    const { token, exp } = await issueEar(ctx.identity, { ...grant, status: 'affirming', policyVersion: current.record.version, teePubkey: teePubkey.jwk, now, ttlS: ctx.tokenTtlS });
    const sessionId = opened.sessionId;
    const session = { id: sessionId, tee: opened.tee, nonce: opened.nonce, createdAt: now.getTime(), expiresAt: Math.max(exp * 1000, opened.expiresAtMs), teePubkey: JSON.stringify(teePubkey.jwk), attestation: JSON.stringify(grant) };
    // The challenge is spent in the transaction that writes this attestation's event and audit
    // entry: its session row (keyed by the challenge's session id, so a second answer finds it
    // and is a replay) and the activation count, both or neither.
    const { policy: policyName, workload: workloadName } = target;
    // A refusal for maxActivations is returned, not thrown, so the rest of the batch commits
    // (the challenge it burns is kept). An answer that lost a race for the same challenge
    // throws: that undoes its count (the batch is then written record by record).
    const spend: JournalStep = async (tx) => {
      const activation = await tx.countActivation(policyName, workloadName, workload.maxActivations);
      if (activation === false) {
        const burnt = await tx.insertSession({ ...session, teePubkey: null, attestation: null });
        return { refused: new SpendRefused(burnt ? 'max-activations' : 'replayed') };
      }
      if (!(await tx.insertSession(session))) throw new SpendRefused('replayed');
      return { detail: { activation } };
    };
    try {
      await record(
        ctx,
        { kind: 'attest', status: 'affirming', tee, target, sessionId, insecure, detail: `${insecure ? `${INSECURE_NOTICE}; ` : ''}measurement ${measurement ?? '-'}${initDataBinding ? `; init-data bound (${initDataBinding.register}, ${initDataBinding.algorithm})` : ''}` },
        {
          actor: `tee:${tee}`,
          action: 'attest',
          policy: target.policy,
          detail: { status: 'affirming', workload: target.workload, tee, measurement: measurement ?? null, insecure, session: sessionId, policyVersion: current.record.version, initData: initDataBinding ?? null },
        },
        spend,
      );
    } catch (err) {
      if (!(err instanceof SpendRefused)) throw err;
      spent = true;
      if (err.why === 'replayed') throw new CocoonError('NONCE_INVALID', 'nonce already used: request a new challenge');
      throw new CocoonError('POLICY_DENIED', `${target.policy}#${target.workload}: maxActivations (${workload.maxActivations ?? 0}) reached`);
    }
    const resourceGrant: ResourceGrant = { ...grant, teePubkey, via: 'session', sessionId, instance: { id: `session:${sessionId}`, expiresAt: session.expiresAt } };
    // Keyed by the whole cookie: a release presenting exactly this cookie needs no second MAC check.
    ctx.attested.remember(cookie, Object.freeze(resourceGrant), session.expiresAt);
    ctx.metrics.attestations.inc({ tee, status: 'affirming' });
    ctx.metrics.attestSeconds.observe({ tee }, Number(process.hrtime.bigint() - started) / 1e9);
    if (insecure) ctx.log.warn({ policy: target.policy, workload: target.workload, tee }, `attestation accepted — ${INSECURE_NOTICE}`);
    else ctx.log.info({ policy: target.policy, workload: target.workload, tee }, 'attestation accepted');
    return { token, insecure };
  } catch (err) {
    const e = asCocoonError(err);
    const sessionId = challenge?.sessionId;
    // One attempt per challenge, successful or not: a refused one spends it too.
    if (challenge && !spent) await burnChallenge(ctx, challenge, now.getTime()).catch((burnErr: unknown) => ctx.log.error({ err: burnErr }, 'cannot mark the refused challenge as used'));
    ctx.metrics.attestations.inc({ tee: (RCAR_TEES as readonly string[]).includes(tee) ? tee : 'unknown', status: e.code === 'POLICY_DENIED' ? 'contraindicated' : 'error' });
    await record(
      ctx,
      {
        kind: 'attest',
        status: e.code === 'POLICY_DENIED' ? 'contraindicated' : 'error',
        tee,
        target,
        sessionId: sessionId ?? null,
        insecure,
        code: e.code,
        detail: `${insecure ? `${INSECURE_NOTICE}; ` : ''}${e.message}${measurement ? ` (measurement ${measurement})` : ''}`,
      },
      {
        actor: `tee:${tee}`,
        action: 'attest',
        policy: target?.policy ?? null,
        detail: { status: e.code === 'POLICY_DENIED' ? 'contraindicated' : 'error', code: e.code, reason: e.message.slice(0, 500), workload: target?.workload ?? null, tee, insecure, session: sessionId ?? null },
      },
    ).catch((recordErr: unknown) => ctx.log.error({ err: recordErr }, 'cannot record the refused attestation (event + audit entry)'));
    ctx.log.warn({ code: e.code, tee, policy: target?.policy, workload: target?.workload, insecure }, `attestation refused: ${e.message}`);
    throw e;
  }
}

/** Why the journal step of an attestation did not spend its challenge (never leaves attest). */
class SpendRefused extends CocoonError {
  constructor(readonly why: 'replayed' | 'max-activations') {
    super('CONFLICT', why);
  }
}

/** Marks a refused challenge as used (its session row, without attestation); already there is fine. */
async function burnChallenge(ctx: KbsContext, c: Challenge, nowMs: number): Promise<void> {
  await ctx.store.insertSession({ id: c.sessionId, tee: c.tee, nonce: c.nonce, createdAt: nowMs, expiresAt: c.expiresAtMs, teePubkey: null, attestation: null });
}

async function runVerifier(ctx: KbsContext, tee: TeeKind, evidence: unknown, at: Date, reportData: Buffer): Promise<VerificationResult> {
  let result: VerificationResult;
  try {
    result = await ctx.verifier(tee, evidence, { at, reportData });
  } catch (err) {
    throw asCocoonError(err, 'EVIDENCE_MALFORMED');
  }
  if (result.tee !== tee) throw new CocoonError('EVIDENCE_MALFORMED', `evidence is ${result.tee}, the session announced ${tee}`);
  if (!result.verified) {
    const first = result.errors[0];
    const code: ErrorCode = first && first.code in ERROR_CODES ? (first.code as ErrorCode) : 'EVIDENCE_REJECTED';
    throw new CocoonError(code, `evidence rejected: ${result.errors.map((p) => `${p.code}: ${p.message}`).join('; ') || 'not verified'}`, { details: { problems: result.errors } });
  }
  return result;
}

/** Who may fetch resources: an attested session (cookie) or a bearer EAR token. */
export interface ResourceGrant extends SessionGrant {
  teePubkey: TeePubkey;
  via: 'session' | 'token';
  sessionId: string | null;
  /** The attested instance (its session, or the token's jti) and until when it is valid: per-instance secrets are kept per instance. */
  instance: { id: string; expiresAt: number };
}

export async function authorizeResource(ctx: KbsContext, auth: { cookie?: string; bearer?: string }): Promise<ResourceGrant> {
  const now = ctx.now();
  if (auth.bearer !== undefined) {
    const ear = await verifyEar(ctx.identity, auth.bearer, now);
    if (ear.status !== 'affirming') throw new CocoonError('POLICY_DENIED', 'attestation token is not affirming');
    if (!isTeeKind(ear.tee)) throw new CocoonError('AUTH_INVALID', 'attestation token names an unknown TEE');
    const fromToken = claimsFromToken(ear.payload);
    return {
      policy: ear.policy,
      workload: ear.workload,
      tee: ear.tee,
      measurement: workloadMeasurementOf(ear.tee, fromToken.claims),
      debug: fromToken.claims.debug === true,
      insecure: ear.insecure,
      claims: fromToken.claims,
      ...(fromToken.tcbStatus !== undefined ? { tcbStatus: fromToken.tcbStatus } : {}),
      advisories: fromToken.advisories,
      ...(fromToken.csr !== undefined ? { csr: fromToken.csr } : {}),
      teePubkey: parseTeePubkey(ear.teePubkey),
      via: 'token',
      sessionId: null,
      instance: { id: `token:${fromToken.jti}`, expiresAt: ear.exp * 1000 },
    };
  }
  if (!auth.cookie) throw new CocoonError('AUTH_REQUIRED', `no ${SESSION_COOKIE} cookie or bearer attestation token`);
  const attested = ctx.attested.get(auth.cookie, now.getTime());
  if (attested) return attested.value;
  let challenge: Challenge;
  try {
    challenge = openChallenge(ctx.dataKey, auth.cookie, ctx.sessionTtlS);
  } catch {
    throw new CocoonError('AUTH_INVALID', 'session unknown or expired: attest again');
  }
  const session = await ctx.store.getSession(challenge.sessionId);
  if (!session) {
    if (challenge.expiresAtMs <= now.getTime()) throw new CocoonError('AUTH_INVALID', 'session unknown or expired: attest again');
    throw new CocoonError('AUTH_REQUIRED', 'session is not attested yet');
  }
  if (session.expiresAt <= now.getTime()) throw new CocoonError('AUTH_INVALID', 'session unknown or expired: attest again');
  if (!session.attestation || !session.teePubkey) throw new CocoonError('AUTH_REQUIRED', 'session is not attested');
  const grant = JSON.parse(session.attestation) as SessionGrant;
  return { ...grant, teePubkey: parseTeePubkey(JSON.parse(session.teePubkey)), via: 'session', sessionId: session.id, instance: { id: `session:${session.id}`, expiresAt: session.expiresAt } };
}

/** The token's payload was verified by verifyEar; this only reads the annotated evidence. */
function claimsFromToken(payload: JWTPayload): { claims: Claims; tcbStatus: string | undefined; advisories: string[]; csr: string | undefined; jti: string } {
  if (typeof payload.jti !== 'string' || payload.jti.length > 64) throw new CocoonError('AUTH_INVALID', 'attestation token has no jti');
  const ev = ((payload.submods as Record<string, Record<string, unknown>> | undefined)?.cpu0?.['ear.veraison.annotated-evidence'] ?? {}) as Record<string, unknown>;
  const claims: Claims = {};
  for (const [k, v] of Object.entries(ev)) {
    if (k === 'tee' || k === 'init_data_claims' || k === 'runtime_data_claims' || k === 'cocoon_tcb') continue;
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' || (typeof v === 'object' && v !== null && !Array.isArray(v))) claims[k] = v as Claims[string];
  }
  const tcb = (ev.cocoon_tcb ?? {}) as { status?: unknown; advisories?: unknown };
  const rd = (ev.runtime_data_claims ?? {}) as { csr?: unknown };
  return {
    claims,
    tcbStatus: typeof tcb.status === 'string' ? tcb.status : undefined,
    advisories: Array.isArray(tcb.advisories) ? tcb.advisories.filter((a): a is string => typeof a === 'string') : [],
    csr: typeof rd.csr === 'string' ? rd.csr : undefined,
    jti: payload.jti,
  };
}


/**
 * Values of the granted secrets a release needs: shared values from the store, per-instance
 * values (generated at the instance's first release and kept, sealed, until the instance's
 * session or token expires), and secrets imported from another policy only while that
 * policy's current version exports them to this one.
 */
async function secretValues(ctx: KbsContext, policyName: string, policy: Policy, names: Iterable<string>, grant: ResourceGrant): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const name of names) {
    const spec = policy.secrets[name];
    if (!spec) throw new CocoonError('POLICY_DENIED', `secret ${name} is not declared`);
    let value: Buffer | undefined;
    if ('scope' in spec && spec.scope === 'instance') {
      const aad = `instance:${grant.instance.id}:${policyName}/${name}`;
      let stored = await ctx.store.getInstanceSecret(grant.instance.id, policyName, name);
      if (stored === undefined) {
        const fresh =
          spec.kind === 'random'
            ? generateRandomSecret(spec)
            : await generateStructured(spec, name, {
                ctx,
                policy: policyName,
                sibling: (n) => readSecret(ctx, policyName, n),
                identity: { workload: grant.workload, tee: grant.tee, insecure: grant.insecure, instance: true },
              });
        stored = await ctx.store.putInstanceSecretIfAbsent({ instance: grant.instance.id, policy: policyName, name, sealed: sealValue(ctx.dataKey, fresh, aad), expiresAt: grant.instance.expiresAt });
        fresh.fill(0);
      }
      value = openValue(ctx.dataKey, stored, aad);
    } else if (spec.kind === 'imported' && spec.from) {
      const exporter = await currentPolicy(ctx, spec.from.policy);
      if (!exporter || !(exporter.policy.exports[spec.from.secret] ?? []).includes(policyName)) {
        throw new CocoonError('POLICY_DENIED', `policy ${spec.from.policy} does not export ${spec.from.secret} to ${policyName}`);
      }
      value = await readSecret(ctx, spec.from.policy, spec.from.secret);
    } else {
      value = await readSecret(ctx, policyName, name);
    }
    if (!value) throw new CocoonError('SECRET_MISSING', `secret ${policyName}/${name} has no value yet; import it with "cocoon secret put"`);
    out.set(name, value);
  }
  return out;
}

function fieldOf(value: Buffer, name: string, field: SecretField | undefined): Buffer {
  if (!field) return value;
  const doc = parseStructured(value, name);
  const v = doc[field];
  if (typeof v !== 'string') throw new CocoonError('SECRET_MISSING', `secret ${name} has no ${field}`);
  return Buffer.from(v, 'utf8');
}

/**
 * Re-appraises an attested grant against the *current* version of `policyName` (every release
 * and volume commit does), so removing a measurement or a workload takes effect immediately.
 */
export async function reappraiseGrant(ctx: KbsContext, grant: ResourceGrant, policyName: string): Promise<{ current: CurrentPolicy; workload: WorkloadSpec }> {
  if (policyName !== grant.policy) throw new CocoonError('POLICY_DENIED', `attested for policy ${grant.policy}, not ${policyName}`);
  const current = await currentPolicy(ctx, policyName);
  const workload = current?.policy.workloads[grant.workload];
  if (!current || !workload) throw new CocoonError('POLICY_DENIED', `workload ${grant.workload} is no longer in policy ${policyName}`);
  const appraisal = evaluateAccept(workload, {
    tee: grant.tee,
    measurement: grant.measurement,
    debug: grant.debug,
    allowSim: ctx.allowSim,
    ...(grant.claims ? { claims: grant.claims } : {}),
    ...(grant.tcbStatus !== undefined ? { tcbStatus: grant.tcbStatus } : {}),
    ...(grant.advisories ? { advisories: grant.advisories } : {}),
  });
  if (!appraisal.allowed) throw new CocoonError(appraisal.initDataUnbound ? 'INIT_DATA_NOT_BOUND' : 'POLICY_DENIED', `the current policy no longer accepts this workload: ${appraisal.reason}`);
  return { current, workload };
}

/**
 * Releases `<org>/<app>/<name>` to the grant's TEE key. The grant is re-appraised against the
 * *current* policy version, so removing a measurement or a grant takes effect immediately.
 */
export async function releaseResource(ctx: KbsContext, grant: ResourceGrant, org: string, app: string, name: string): Promise<FlattenedJWE> {
  const policyName = `${org}/${app}`;
  const target = { policy: grant.policy, workload: grant.workload };
  const resource = `${policyName}/${name}`;
  try {
    const { current, workload } = await reappraiseGrant(ctx, grant, policyName);
    const granted = grantedSecrets(current.policy, grant.workload);
    let plaintext: Buffer;
    let serial: string | undefined;
    if (name === LAUNCH_PLAN_RESOURCE) {
      const values = await secretValues(ctx, policyName, current.policy, granted, grant);
      const plan = renderLaunchPlan(current.policy, grant.workload, grant.insecure, (s, field) => {
        const v = values.get(s);
        if (!v) throw new CocoonError('POLICY_DENIED', `secret ${s} is not granted to ${grant.workload}`);
        return fieldOf(v, s, field);
      });
      const volumes = await volumeGrantsFor(ctx, policyName, current.policy, grant.workload);
      if (volumes) plan.volumes = volumes;
      plaintext = Buffer.from(JSON.stringify(plan), 'utf8');
    } else if (name === WORKLOAD_CERT_RESOURCE) {
      if (!workloadCertGranted(workload)) throw new CocoonError('WORKLOAD_CERT_NOT_GRANTED', `workload ${grant.workload} of ${policyName} declares neither tls nor workloadCert: true; no workload certificate is issued to it`);
      if (!grant.csr) throw new CocoonError('POLICY_DENIED', 'no CSR was bound in the evidence (send runtime-data.csr when attesting)');
      const { publicKeyDer } = await parseCsr(grant.csr);
      const [org0, app0] = policyName.split('/') as [string, string];
      const issued = await ctx.ca.issue(publicKeyDer, {
        subject: `CN=${grant.workload}.${app0}.${org0}, O=Cocoon workload${grant.insecure ? ' (INSECURE simulated TEE)' : ''}`,
        sans: [`${grant.workload}.${app0}.${org0}.cocoon`],
        usage: 'both',
        keyUsage: ['digitalSignature'],
        validMs: ctx.workloadCertValidMs ?? WORKLOAD_CERT_VALID_MS,
        identity: { v: 1, policy: policyName, version: current.record.version, workload: grant.workload, tee: grant.tee, insecure: grant.insecure },
      });
      serial = issued.serial.toLowerCase();
      await ctx.store.recordCert({ serial, policy: policyName, workload: grant.workload, issuedAt: ctx.now().getTime(), notAfter: Date.parse(issued.notAfter) });
      plaintext = Buffer.from(JSON.stringify({ cert: issued.cert, chain: issued.chain, notAfter: issued.notAfter }), 'utf8');
    } else {
      if (!granted.has(name)) throw new CocoonError('POLICY_DENIED', `resource ${resource} is not granted to workload ${grant.workload}`);
      plaintext = (await secretValues(ctx, policyName, current.policy, [name], grant)).get(name) as Buffer;
    }
    let jwe: FlattenedJWE;
    try {
      jwe = await encryptToTee(grant.teePubkey, plaintext);
    } finally {
      plaintext.fill(0);
    }
    ctx.metrics.releases.inc({ status: 'released' });
    await record(
      ctx,
      { kind: 'release', status: 'affirming', tee: grant.tee, target, resource, sessionId: grant.sessionId, insecure: grant.insecure, detail: `released via ${grant.via}` },
      {
        actor: `tee:${grant.tee}`,
        action: 'release',
        policy: policyName,
        detail: { status: 'released', resource, workload: grant.workload, via: grant.via, session: grant.sessionId, insecure: grant.insecure, ...(serial ? { certificateSerial: serial } : {}) },
      },
    );
    return jwe;
  } catch (err) {
    const e = asCocoonError(err);
    ctx.metrics.releases.inc({ status: 'refused' });
    await record(
      ctx,
      { kind: 'release', status: 'error', tee: grant.tee, target, resource, sessionId: grant.sessionId, insecure: grant.insecure, code: e.code, detail: e.message },
      {
        actor: `tee:${grant.tee}`,
        action: 'release',
        policy: policyName,
        detail: { status: 'refused', code: e.code, reason: e.message.slice(0, 500), resource, workload: grant.workload, via: grant.via, session: grant.sessionId },
      },
    ).catch((recordErr: unknown) => ctx.log.error({ err: recordErr }, 'cannot record the refused release (event + audit entry)'));
    throw e;
  }
}

interface EventInput {
  kind: EventRecord['kind'];
  status: EventRecord['status'];
  tee: string;
  target: { policy: string; workload: string } | undefined;
  resource?: string;
  sessionId: string | null;
  insecure: boolean;
  code?: string;
  detail: string;
}

/** The event row and the audit entry of one attestation or release, committed together. */
async function record(ctx: KbsContext, e: EventInput, audit: AuditInput, step?: JournalStep): Promise<void> {
  const at = ctx.now().getTime();
  const event: EventRecord = {
    id: uuidV7(at),
    at,
    kind: e.kind,
    status: e.status,
    tee: e.tee,
    policy: e.target?.policy ?? null,
    workload: e.target?.workload ?? null,
    resource: e.resource ?? null,
    code: e.code ?? null,
    detail: e.detail.slice(0, 2000),
    insecure: e.insecure,
    sessionId: e.sessionId,
  };
  await ctx.journal.record(event, audit, at, step);
}
