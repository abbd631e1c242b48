import { x509 } from '../../crypto/x509.js';
import { CocoonError } from '../../errors.js';
import { workloadIdentityOf } from '../../kbs/certs.js';
import { peerNameText } from '../../policy/tls.js';
import type { PeerName } from '../../policy/tls.js';

/** The workload identity a deployment-CA workload certificate names (docs/kbs.md, "Deployment CA"). */
export interface WorkloadIdentity {
  policy: string;
  workload: string;
  tee: string;
  insecure: boolean;
}

const MAX_CERT_DER = 16 * 1024;

/**
 * Reads and strictly checks the workload-identity extension of a DER certificate. Throws
 * TLS_PEER_REJECTED when the certificate has none, or it is not a workload identity (an
 * `x509` secret issued by the deployment CA names a secret, not a workload).
 */
export function peerIdentity(der: Uint8Array): WorkloadIdentity {
  if (der.length === 0 || der.length > MAX_CERT_DER) throw new CocoonError('TLS_PEER_REJECTED', 'peer certificate missing or larger than 16 KiB');
  let id: Record<string, unknown> | undefined;
  try {
    id = workloadIdentityOf(new x509.X509Certificate(Buffer.from(der)));
  } catch (err) {
    throw new CocoonError('TLS_PEER_REJECTED', 'peer certificate or its workload-identity extension does not parse', { cause: err });
  }
  if (!id) throw new CocoonError('TLS_PEER_REJECTED', 'peer certificate has no Cocoon workload-identity extension');
  if (id.v !== 1 || typeof id.policy !== 'string' || typeof id.workload !== 'string' || typeof id.tee !== 'string' || typeof id.insecure !== 'boolean') {
    throw new CocoonError('TLS_PEER_REJECTED', 'peer certificate identity is not a workload identity (v1 {policy, workload, tee, insecure})');
  }
  return { policy: id.policy.slice(0, 128), workload: id.workload.slice(0, 64), tee: id.tee.slice(0, 32), insecure: id.insecure };
}

/** Whether `id` is one of `names`. */
function named(id: WorkloadIdentity, names: readonly PeerName[]): boolean {
  return names.some((n) => n.policy === id.policy && n.workload === id.workload);
}

/**
 * The egress check: the peer (whose chain Node has already verified against the deployment
 * root) must name exactly the expected policy and workload. Returns the identity; throws
 * TLS_PEER_REJECTED with both names otherwise.
 */
export function checkPeerIdentity(der: Uint8Array, expect: PeerName): WorkloadIdentity {
  const id = peerIdentity(der);
  if (!named(id, [expect])) {
    throw new CocoonError('TLS_PEER_REJECTED', `peer is ${peerNameText(id)}, expected ${peerNameText(expect)}`, {
      details: { peer: { policy: id.policy, workload: id.workload }, expected: expect },
    });
  }
  return id;
}

/**
 * The ingress allow-list check (`tls.ingress[].allow`): the verified client must be one of
 * `allow`; without a list any workload identity passes. Returns the identity; throws
 * TLS_PEER_REJECTED naming the peer and the list otherwise.
 */
export function checkPeerAllowed(der: Uint8Array, allow: readonly PeerName[] | undefined): WorkloadIdentity {
  const id = peerIdentity(der);
  if (allow && !named(id, allow)) {
    throw new CocoonError('TLS_PEER_REJECTED', `workload ${peerNameText(id)} is not in the allow list of this ingress (${allow.map(peerNameText).join(', ')})`, {
      details: { peer: { policy: id.policy, workload: id.workload }, allow },
    });
  }
  return id;
}

export function describeIdentity(id: WorkloadIdentity): string {
  return `${peerNameText(id)} (${id.tee}${id.insecure ? ', INSECURE simulated TEE' : ''})`;
}
