/** The launcher's attested-TLS step (docs/tls.md): key + CSR before attesting, proxies after. */
import { parseLaunchPlan } from '../../kbs/launch-plan.js';
import type { LaunchPlan } from '../../kbs/launch-plan.js';
import { WORKLOAD_CERT_RESOURCE_NAME } from '../../policy/names.js';
import type { LauncherLog } from '../log.js';
import { parseWorkloadCert } from './material.js';
import type { WorkloadKey } from './material.js';
import { startTlsProxies } from './proxy.js';
import type { ProxyOptions, TlsProxies } from './proxy.js';

export { generateWorkloadKey } from './material.js';
export type { WorkloadKey, TlsMaterial } from './material.js';
export type { TlsProxies } from './proxy.js';

/** `moreResources` for attestAndFetch: the workload certificate when the plan declares `tls`. */
export function workloadCertIfTls(planResource: string): (fetched: Record<string, Buffer>) => string[] {
  const [org, app] = planResource.split('/') as [string, string];
  return (fetched) => (parseLaunchPlan(fetched[planResource]).tls ? [`${org}/${app}/${WORKLOAD_CERT_RESOURCE_NAME}`] : []);
}

/** Starts the plan's TLS proxies with the issued certificate; undefined when the plan has no `tls`. */
export async function startPlanTls(plan: LaunchPlan, resources: Record<string, Buffer>, key: WorkloadKey, log: LauncherLog, opts: ProxyOptions = {}): Promise<TlsProxies | undefined> {
  if (!plan.tls) return undefined;
  const certResource = `${plan.policy}/${WORKLOAD_CERT_RESOURCE_NAME}`;
  const material = parseWorkloadCert(resources[certResource], key.keyPem);
  log.info(`workload certificate for ${plan.policy}#${plan.workload} issued by the deployment CA, valid until ${material.notAfter.toISOString()} (not renewed: restart before then)`);
  return startTlsProxies(plan.tls, material, log, opts);
}
