import { CocoonError } from '../errors.js';
import { DEPLOYMENT_CA } from '../policy/parse.js';
import type { SecretSpec } from '../policy/types.js';
import { createRootCa, generateKeyPairPem, importSigningKey, issueLeaf } from './certs.js';
import type { KbsContext } from './context.js';
import type { CaRecord } from './store/types.js';
import { x509 } from '../crypto/x509.js';

/** JSON value of keypair / x509 / x509-ca secrets: PEM strings selected by template fields. */
export interface StructuredValue {
  key: string;
  public: string;
  cert?: string;
  chain?: string;
}

export function parseStructured(value: Buffer, what: string): StructuredValue {
  try {
    const v = JSON.parse(value.toString('utf8')) as StructuredValue;
    if (typeof v.key === 'string' && typeof v.public === 'string') return v;
  } catch {
    // below
  }
  throw new CocoonError('INTERNAL', `stored value of ${what} is not a key document`);
}

export interface GenerateContext {
  ctx: KbsContext;
  policy: string;
  /** Looks up another secret of the same policy (a policy CA); may be generated in the same apply. */
  sibling: (name: string) => Promise<Buffer | undefined>;
  /** Intermediate about to become current (apply), so x509 secrets chain to it. */
  intermediate?: CaRecord;
  /** Workload and TEE for per-instance certificates. */
  identity?: Record<string, unknown>;
}

/** Generates the value of a KBS-generated secret (random, keypair, x509, x509-ca). */
export async function generateStructured(spec: SecretSpec, name: string, g: GenerateContext): Promise<Buffer> {
  const now = g.ctx.now();
  switch (spec.kind) {
    case 'keypair': {
      const kp = await generateKeyPairPem(spec.keyType);
      return json({ key: kp.key, public: kp.public });
    }
    case 'x509-ca': {
      const kp = await generateKeyPairPem(spec.keyType);
      const cert = await createRootCa(kp.keys, { subject: spec.subject, validMs: spec.validityDays * 86_400_000, now, pathLength: 0 });
      return json({ key: kp.key, public: kp.public, cert: cert.toString('pem') });
    }
    case 'x509': {
      const kp = await generateKeyPairPem(spec.keyType);
      const identity = { v: 1, policy: g.policy, secret: name, ...(g.identity ?? {}) };
      const params = { subject: spec.subject, sans: spec.sans, usage: spec.usage, keyUsage: spec.keyUsage, validMs: spec.validityDays * 86_400_000, identity };
      if (spec.issuer === DEPLOYMENT_CA) {
        const issued = await g.ctx.ca.issue(kp.keys.publicKey, params, g.intermediate);
        return json({ key: kp.key, public: kp.public, cert: issued.cert, chain: issued.chain });
      }
      const caValue = await g.sibling(spec.issuer);
      if (!caValue) throw new CocoonError('SECRET_MISSING', `CA secret ${g.policy}/${spec.issuer} has no value`);
      const ca = parseStructured(caValue, `${g.policy}/${spec.issuer}`);
      if (!ca.cert) throw new CocoonError('INTERNAL', `${g.policy}/${spec.issuer} is not a CA`);
      const caCert = new x509.X509Certificate(ca.cert);
      const caKey = await importSigningKey(ca.key, keyTypeOfCert(caCert));
      const cert = await issueLeaf({ cert: caCert, key: caKey }, kp.keys.publicKey, { ...params, now });
      return json({ key: kp.key, public: kp.public, cert: cert.toString('pem'), chain: ca.cert });
    }
    default:
      throw new CocoonError('INTERNAL', `secret kind ${spec.kind} is not generated here`);
  }
}

function keyTypeOfCert(cert: x509.X509Certificate) {
  const alg = cert.publicKey.algorithm as { name: string; namedCurve?: string; modulusLength?: number };
  if (alg.name === 'ECDSA') return alg.namedCurve === 'P-384' ? ('P-384' as const) : ('P-256' as const);
  if (alg.name === 'Ed25519') return 'Ed25519' as const;
  return alg.modulusLength === 3072 ? ('RSA-3072' as const) : ('RSA-2048' as const);
}

function json(v: StructuredValue): Buffer {
  return Buffer.from(JSON.stringify(v), 'utf8');
}
