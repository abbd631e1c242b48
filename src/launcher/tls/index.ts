/** The launcher's attested-TLS step (docs/tls.md): key + CSR before attesting, proxies after. */
import { parseLaunchPlan } from '../../kbs/launch-plan.js';
import type { LaunchPlan } from '../../kbs/launch-plan.js';
import { WORKLOAD_CERT_RESOURCE_NAME } from '../../policy/names.js';
import type { LauncherLog } from '../log.js';
import { attestAndFetch } from '../../kbs/client/rcar.js';
import type { AttestAndFetchOptions } from '../../kbs/client/rcar.js';
import type { TlsLifecycleSettings } from '../config.js';
import { CrlMonitor } from './crl.js';
import { CertRenewer, leafSerial } from './lifecycle.js';
import { generateWorkloadKey, parseWorkloadCert } from './material.js';
import type { TlsMaterial, WorkloadKey } from './material.js';
import { startTlsProxies } from './proxy.js';
import type { ProxyOptions, TlsProxies } from './proxy.js';

export { generateWorkloadKey } from './material.js';
export type { WorkloadKey, TlsMaterial } from './material.js';
export type { TlsProxies } from './proxy.js';
export { CrlMonitor, verifyCrl } from './crl.js';
export { CertRenewer } from './lifecycle.js';

/** `moreResources` for attestAndFetch: the workload certificate when the plan declares `tls`. */
export function workloadCertIfTls(planResource: string): (fetched: Record<string, Buffer>) => string[] {
  const [org, app] = planResource.split('/') as [string, string];
  return (fetched) => (parseLaunchPlan(fetched[planResource]).tls ? [`${org}/${app}/${WORKLOAD_CERT_RESOURCE_NAME}`] : []);
}

/** Certificate lifecycle of the proxies: CRL checks and renewal (docs/tls.md "Revocation and renewal"). */
export interface TlsLifecycleOptions {
  kbsUrl: string;
  settings: TlsLifecycleSettings;
  /** Per KBS request. */
  timeoutMs: number;
  /** Attests again with a fresh key and CSR and returns the newly issued material. */
  renew: () => Promise<TlsMaterial>;
  now?: () => Date;
  fetchImpl?: typeof fetch;
}

export interface PlanTls extends TlsProxies {
  /** Present with a lifecycle: the CRL in force and the renewal state. */
  crl?: CrlMonitor;
  renewer?: CertRenewer;
}

/** Re-attestation for renewal: a fresh key pair and CSR in the TEE, only the certificate is fetched. */
export function renewViaAttestation(base: Omit<AttestAndFetchOptions, 'resources' | 'csr' | 'moreResources'>): () => Promise<TlsMaterial> {
  return async () => {
    const key = await generateWorkloadKey();
    const resource = `${base.initData.policy}/${WORKLOAD_CERT_RESOURCE_NAME}`;
    const fetched = await attestAndFetch({ ...base, resources: [resource], csr: key.csrPem });
    return parseWorkloadCert(fetched.resources[resource], key.keyPem);
  };
}

/** Starts the plan's TLS proxies with the issued certificate; undefined when the plan has no `tls`. */
export async function startPlanTls(plan: LaunchPlan, resources: Record<string, Buffer>, key: WorkloadKey, log: LauncherLog, opts: ProxyOptions & { lifecycle?: TlsLifecycleOptions } = {}): Promise<PlanTls | undefined> {
  if (!plan.tls) return undefined;
  const certResource = `${plan.policy}/${WORKLOAD_CERT_RESOURCE_NAME}`;
  const material = parseWorkloadCert(resources[certResource], key.keyPem);
  const { lifecycle, ...proxyOpts } = opts;
  if (!lifecycle) {
    log.info(`workload certificate for ${plan.policy}#${plan.workload} issued by the deployment CA, valid until ${material.notAfter.toISOString()} (no renewal configured)`);
    return startTlsProxies(plan.tls, material, log, proxyOpts);
  }
  const crl = new CrlMonitor({
    kbsUrl: lifecycle.kbsUrl,
    rootPem: material.rootPem,
    refreshMs: lifecycle.settings.crlRefreshMs,
    timeoutMs: lifecycle.timeoutMs,
    log,
    ...(lifecycle.now ? { now: lifecycle.now } : {}),
    ...(lifecycle.fetchImpl ? { fetchImpl: lifecycle.fetchImpl } : {}),
  });
  await crl.start();
  let proxies: TlsProxies;
  try {
    proxies = await startTlsProxies(plan.tls, material, log, { ...proxyOpts, checkRevocation: (serial) => crl.check(serial) });
  } catch (err) {
    crl.stop();
    throw err;
  }
  const renewer = new CertRenewer(material, proxies, lifecycle.renew, lifecycle.settings, log, lifecycle.now);
  renewer.start();
  log.info(`workload certificate for ${plan.policy}#${plan.workload} (serial ${leafSerial(material)}) valid until ${material.notAfter.toISOString()}; renewal in ${Math.round(renewer.delayFor(material) / 1000)} s, CRL refresh every ${Math.round(lifecycle.settings.crlRefreshMs / 1000)} s`);
  return {
    crl,
    renewer,
    update: (m) => proxies.update(m),
    close: async () => {
      renewer.stop();
      crl.stop();
      await proxies.close();
    },
  };
}
