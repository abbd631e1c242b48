/** Name rules shared by the policy parser, the KBS routes and the clients. */
export const SEGMENT_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const SECRET_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const WORKLOAD_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
export const MEASUREMENT_RE = /^[0-9a-f]{96}$/;

/** Resource name the KBS answers with the rendered launch plan; no secret may use it. */
export const LAUNCH_PLAN_RESOURCE = 'launch-plan';
/** Resource name of the workload certificate for an attested CSR; no secret may use it either. */
export const WORKLOAD_CERT_RESOURCE_NAME = 'workload-cert';
/** The one secret name of kind `layer-key` (docs/internals.md §3: kbs:///<org>/<app>/layer-key). */
export const LAYER_KEY_SECRET = 'layer-key';

export function isPolicyName(name: string): boolean {
  const parts = name.split('/');
  return parts.length === 2 && parts.every((p) => SEGMENT_RE.test(p));
}
