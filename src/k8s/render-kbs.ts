/**
 * The KBS on Kubernetes: values (the same keys as deploy/helm/cocoon/values.yaml) → objects.
 * This renderer is the source of truth; the chart's templates produce the same objects
 * (guarded by test/k8s golden files and by the chart ↔ renderer kinds/names test).
 *
 * Two shapes:
 *  - store.type=postgres: a Deployment with N replicas; the database URL comes from a Secret,
 *    the KBS identity key and the sealing key from another Secret shared by all replicas.
 *  - store.type=sqlite: a single-replica StatefulSet with the SQLite file on a PVC.
 */
import { CocoonError } from '../errors.js';
import { isRecord, type K8sObject } from './manifest.js';
import { DNS_LABEL_RE, QUANTITY_RE, deepMerge, expectStringMap, expectType, rejectUnknownKeys } from './values.js';
import { validateAll } from './validate.js';

/** Chart appVersion and default image tag (deploy/helm/cocoon/Chart.yaml). */
export const APP_VERSION = '0.1.0';
export const KBS_PORT = 8080;
export const KBS_DATA_DIR = '/var/lib/cocoon/kbs';
export const KBS_CONFIG_DIR = '/etc/cocoon/kbs';
export const KBS_UID = 65532;
export const KBS_KEYS_MOUNT = '/etc/cocoon/kbs-keys';

export interface KbsValues {
  fullnameOverride: string;
  image: { repository: string; tag: string; digest: string; pullPolicy: string };
  imagePullSecrets: string[];
  replicas: number;
  store: {
    type: 'sqlite' | 'postgres';
    postgres: { existingSecret: string; secretKey: string; port: number };
    sqlite: { size: string; storageClass: string };
  };
  keys: { existingSecret: string };
  owners: Record<string, string>;
  sim: { enabled: boolean; rootPem: string };
  logLevel: string;
  service: { type: string; port: number };
  resources: { requests: Record<string, string>; limits: Record<string, string> };
  podDisruptionBudget: { enabled: boolean; maxUnavailable: number };
  networkPolicy: { enabled: boolean; ingressFrom: unknown[]; restrictEgress: boolean };
  serviceMonitor: { enabled: boolean; interval: string; labels: Record<string, string> };
  podAnnotations: Record<string, string>;
  nodeSelector: Record<string, string>;
  tolerations: unknown[];
  affinity: Record<string, unknown>;
}

/** Defaults — identical to deploy/helm/cocoon/values.yaml (a test compares them). */
export const DEFAULT_KBS_VALUES: KbsValues = {
  fullnameOverride: '',
  image: { repository: 'cocoon/kbs', tag: '', digest: '', pullPolicy: 'IfNotPresent' },
  imagePullSecrets: [],
  replicas: 1,
  store: {
    type: 'sqlite',
    postgres: { existingSecret: '', secretKey: 'url', port: 5432 },
    sqlite: { size: '1Gi', storageClass: '' },
  },
  keys: { existingSecret: '' },
  owners: {},
  sim: { enabled: false, rootPem: '' },
  logLevel: 'info',
  service: { type: 'ClusterIP', port: KBS_PORT },
  resources: { requests: { cpu: '100m', memory: '256Mi' }, limits: { memory: '512Mi' } },
  podDisruptionBudget: { enabled: true, maxUnavailable: 1 },
  networkPolicy: { enabled: true, ingressFrom: [], restrictEgress: true },
  serviceMonitor: { enabled: false, interval: '30s', labels: {} },
  podAnnotations: {},
  nodeSelector: {},
  tolerations: [],
  affinity: {},
};

const FREE_FORM = ['owners', 'resources.requests', 'resources.limits', 'networkPolicy.ingressFrom', 'serviceMonitor.labels', 'podAnnotations', 'nodeSelector', 'tolerations', 'affinity'];

export interface KbsRenderOptions {
  /** Helm release name (default "cocoon"); objects are named `<release>-kbs` unless fullnameOverride. */
  release?: string;
  /** Namespace written into every object (the chart uses .Release.Namespace). */
  namespace?: string;
  /** User values (already parsed), merged over the defaults. */
  values?: unknown;
}

export interface KbsRender {
  objects: K8sObject[];
  warnings: string[];
  values: KbsValues;
}

/** Merges and checks values; BAD_USAGE names the offending key. */
export function resolveKbsValues(user: unknown): KbsValues {
  if (user !== undefined && user !== null && !isRecord(user)) throw new CocoonError('BAD_USAGE', 'values: the top level must be a map');
  rejectUnknownKeys(user, DEFAULT_KBS_VALUES, '', FREE_FORM);
  const v = deepMerge(structuredClone(DEFAULT_KBS_VALUES), user ?? {});
  expectType(v.fullnameOverride, 'string', 'fullnameOverride');
  if (v.fullnameOverride && (!DNS_LABEL_RE.test(v.fullnameOverride) || v.fullnameOverride.length > 52)) throw new CocoonError('BAD_USAGE', 'values: fullnameOverride must be a DNS label of at most 52 characters');
  for (const k of ['repository', 'tag', 'digest', 'pullPolicy'] as const) expectType(v.image[k], 'string', `image.${k}`);
  if (!/^[a-z0-9][a-z0-9._/:-]*$/.test(v.image.repository)) throw new CocoonError('BAD_USAGE', `values: image.repository "${v.image.repository}" is not an image repository`);
  if (v.image.tag && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(v.image.tag)) throw new CocoonError('BAD_USAGE', `values: image.tag "${v.image.tag}" is invalid`);
  if (v.image.digest && !/^sha256:[0-9a-f]{64}$/.test(v.image.digest)) throw new CocoonError('BAD_USAGE', 'values: image.digest must be sha256:<64 hex>');
  if (!['IfNotPresent', 'Always', 'Never'].includes(v.image.pullPolicy)) throw new CocoonError('BAD_USAGE', 'values: image.pullPolicy must be IfNotPresent, Always or Never');
  expectType(v.imagePullSecrets, 'array', 'imagePullSecrets');
  for (const s of v.imagePullSecrets) if (typeof s !== 'string' || !DNS_LABEL_RE.test(s)) throw new CocoonError('BAD_USAGE', 'values: imagePullSecrets must be Secret names');
  if (!Number.isInteger(v.replicas) || v.replicas < 1 || v.replicas > 50) throw new CocoonError('BAD_USAGE', 'values: replicas must be an integer from 1 to 50');
  if (v.store.type !== 'sqlite' && v.store.type !== 'postgres') throw new CocoonError('BAD_USAGE', 'values: store.type must be sqlite or postgres');
  for (const [k, val] of [['store.postgres.existingSecret', v.store.postgres.existingSecret], ['keys.existingSecret', v.keys.existingSecret]] as const) {
    expectType(val, 'string', k);
    if (val && !DNS_LABEL_RE.test(val)) throw new CocoonError('BAD_USAGE', `values: ${k} "${val}" is not a Secret name`);
  }
  expectType(v.store.postgres.secretKey, 'string', 'store.postgres.secretKey');
  if (!/^[-._a-zA-Z0-9]{1,253}$/.test(v.store.postgres.secretKey)) throw new CocoonError('BAD_USAGE', 'values: store.postgres.secretKey is not a Secret key');
  if (!Number.isInteger(v.store.postgres.port) || v.store.postgres.port < 1 || v.store.postgres.port > 65535) throw new CocoonError('BAD_USAGE', 'values: store.postgres.port must be a port number');
  if (typeof v.store.sqlite.size !== 'string' || !QUANTITY_RE.test(v.store.sqlite.size)) throw new CocoonError('BAD_USAGE', 'values: store.sqlite.size must be a quantity such as 1Gi');
  expectType(v.store.sqlite.storageClass, 'string', 'store.sqlite.storageClass');
  if (v.store.type === 'sqlite' && v.replicas !== 1) throw new CocoonError('BAD_USAGE', 'values: SQLite allows one replica only; use store.type=postgres (--postgres-secret) for replicas > 1');
  if (v.store.type === 'postgres' && !v.store.postgres.existingSecret) throw new CocoonError('BAD_USAGE', 'values: store.type=postgres needs store.postgres.existingSecret (a Secret holding the database URL)');
  const owners = expectStringMap(v.owners, 'owners');
  for (const [file, jwk] of Object.entries(owners)) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(file)) throw new CocoonError('BAD_USAGE', `values: owners key "${file}" must be a file name`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(jwk);
    } catch {
      parsed = undefined;
    }
    if (!isRecord(parsed) || typeof parsed.kty !== 'string' || 'd' in parsed) throw new CocoonError('BAD_USAGE', `values: owners.${file} must be an owner PUBLIC key (JWK JSON without "d")`);
  }
  expectType(v.sim.enabled, 'boolean', 'sim.enabled');
  expectType(v.sim.rootPem, 'string', 'sim.rootPem');
  if (v.sim.enabled && !v.sim.rootPem.includes('-----BEGIN CERTIFICATE-----')) throw new CocoonError('BAD_USAGE', 'values: sim.enabled needs sim.rootPem (the sim root certificate, PEM)');
  if (!['fatal', 'error', 'warn', 'info', 'debug'].includes(v.logLevel)) throw new CocoonError('BAD_USAGE', 'values: logLevel must be fatal|error|warn|info|debug');
  if (!['ClusterIP', 'NodePort', 'LoadBalancer'].includes(v.service.type)) throw new CocoonError('BAD_USAGE', 'values: service.type must be ClusterIP, NodePort or LoadBalancer');
  if (!Number.isInteger(v.service.port) || v.service.port < 1 || v.service.port > 65535) throw new CocoonError('BAD_USAGE', 'values: service.port must be a port number');
  for (const part of ['requests', 'limits'] as const) {
    for (const [k, q] of Object.entries(expectStringMap(v.resources[part], `resources.${part}`))) {
      if (!QUANTITY_RE.test(q)) throw new CocoonError('BAD_USAGE', `values: resources.${part}.${k} "${q}" is not a quantity`);
    }
  }
  expectType(v.podDisruptionBudget.enabled, 'boolean', 'podDisruptionBudget.enabled');
  if (!Number.isInteger(v.podDisruptionBudget.maxUnavailable) || v.podDisruptionBudget.maxUnavailable < 1) throw new CocoonError('BAD_USAGE', 'values: podDisruptionBudget.maxUnavailable must be an integer ≥ 1');
  expectType(v.networkPolicy.enabled, 'boolean', 'networkPolicy.enabled');
  expectType(v.networkPolicy.ingressFrom, 'array', 'networkPolicy.ingressFrom');
  expectType(v.networkPolicy.restrictEgress, 'boolean', 'networkPolicy.restrictEgress');
  expectType(v.serviceMonitor.enabled, 'boolean', 'serviceMonitor.enabled');
  if (typeof v.serviceMonitor.interval !== 'string' || !/^[0-9]+(ms|s|m|h)$/.test(v.serviceMonitor.interval)) throw new CocoonError('BAD_USAGE', 'values: serviceMonitor.interval must be a duration such as 30s');
  expectStringMap(v.serviceMonitor.labels, 'serviceMonitor.labels');
  expectStringMap(v.podAnnotations, 'podAnnotations');
  expectStringMap(v.nodeSelector, 'nodeSelector');
  expectType(v.tolerations, 'array', 'tolerations');
  expectType(v.affinity, 'object', 'affinity');
  return v;
}

function imageRef(v: KbsValues): string {
  if (v.image.digest) return `${v.image.repository}@${v.image.digest}`;
  return `${v.image.repository}:${v.image.tag || APP_VERSION}`;
}

/** Renders the KBS objects; every object is validated before it is returned. */
export function renderKbs(options: KbsRenderOptions = {}): KbsRender {
  const release = options.release ?? 'cocoon';
  if (!DNS_LABEL_RE.test(release) || release.length > 48) throw new CocoonError('BAD_USAGE', `release name "${release}" must be a DNS label of at most 48 characters`);
  const namespace = options.namespace ?? 'cocoon';
  if (!DNS_LABEL_RE.test(namespace) || namespace.length > 63) throw new CocoonError('BAD_USAGE', `namespace "${namespace}" is not a valid namespace name`);
  const v = resolveKbsValues(options.values);
  const warnings: string[] = [];
  const name = v.fullnameOverride || `${release}-kbs`;
  const postgres = v.store.type === 'postgres';
  const keysSecret = v.keys.existingSecret || (postgres ? `${name}-keys` : '');
  const selector = { 'app.kubernetes.io/name': 'cocoon', 'app.kubernetes.io/instance': release, 'app.kubernetes.io/component': 'kbs' };
  const labels = { ...selector, 'app.kubernetes.io/part-of': 'cocoon', 'app.kubernetes.io/version': APP_VERSION };
  const meta = (suffix = '', extra: Record<string, string> = {}) => ({ name: name + suffix, namespace, labels: { ...labels, ...extra } });
  const hasConfig = Object.keys(v.owners).length > 0 || v.sim.enabled;

  if (postgres && !v.keys.existingSecret) warnings.push(`replicas share the KBS identity and sealing keys: create Secret ${keysSecret} with kbs-identity.jwk and seal.key before installing (docs/kubernetes.md)`);
  if (v.sim.enabled) warnings.push('INSECURE: sim.enabled — the KBS accepts simulated-TEE evidence where a policy names `sim` (development clusters only)');

  const objects: K8sObject[] = [];
  objects.push({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta(), automountServiceAccountToken: false });

  if (hasConfig) {
    const data: Record<string, string> = {};
    for (const file of Object.keys(v.owners).sort()) data[`owner-${file}`] = v.owners[file] ?? '';
    if (v.sim.enabled) data['sim-root.pem'] = v.sim.rootPem;
    objects.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(), data });
  }

  objects.push({
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(),
    spec: { type: v.service.type, selector, ports: [{ name: 'http', port: v.service.port, targetPort: 'http', protocol: 'TCP' }] },
  });

  const args = ['serve', '--listen', `0.0.0.0:${KBS_PORT}`, '--data-dir', KBS_DATA_DIR, '--log-level', v.logLevel];
  // Kubernetes expands $(VAR) in args from the container env: the URL stays in the Secret.
  if (postgres) args.push('--postgres', '$(COCOON_DATABASE_URL)');
  for (const file of Object.keys(v.owners).sort()) args.push('--owner', `${KBS_CONFIG_DIR}/owner-${file}`);
  if (v.sim.enabled) args.push('--allow-sim', '--sim-root', `${KBS_CONFIG_DIR}/sim-root.pem`);

  const env: Array<Record<string, unknown>> = [];
  if (postgres) env.push({ name: 'COCOON_DATABASE_URL', valueFrom: { secretKeyRef: { name: v.store.postgres.existingSecret, key: v.store.postgres.secretKey } } });

  const volumeMounts: Array<Record<string, unknown>> = [
    { name: 'data', mountPath: KBS_DATA_DIR },
    { name: 'tmp', mountPath: '/tmp' },
  ];
  if (hasConfig) volumeMounts.push({ name: 'config', mountPath: KBS_CONFIG_DIR, readOnly: true });

  const volumes: Array<Record<string, unknown>> = [];
  if (postgres) volumes.push({ name: 'data', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } });
  volumes.push({ name: 'tmp', emptyDir: { sizeLimit: '64Mi' } });
  // Secret files are root-owned and group-readable (fsGroup), which the KBS refuses for key
  // files; an init container copies them into the data directory as 0600 files of the KBS user.
  if (keysSecret) volumes.push({ name: 'keys', secret: { secretName: keysSecret, defaultMode: 0o440, items: [{ key: 'kbs-identity.jwk', path: 'kbs-identity.jwk' }, { key: 'seal.key', path: 'seal.key' }] } });
  if (hasConfig) volumes.push({ name: 'config', configMap: { name } });

  const containerSecurity = { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } };
  const initContainers: Array<Record<string, unknown>> = [];
  if (keysSecret) {
    initContainers.push({
      name: 'install-keys',
      image: imageRef(v),
      imagePullPolicy: v.image.pullPolicy,
      args: ['k8s', 'install-keys', '--from', KBS_KEYS_MOUNT, '--to', KBS_DATA_DIR],
      resources: { requests: { cpu: '10m', memory: '64Mi' }, limits: { memory: '128Mi' } },
      securityContext: containerSecurity,
      volumeMounts: [
        { name: 'keys', mountPath: KBS_KEYS_MOUNT, readOnly: true },
        { name: 'data', mountPath: KBS_DATA_DIR },
      ],
    });
  }

  const container: Record<string, unknown> = {
    name: 'kbs',
    image: imageRef(v),
    imagePullPolicy: v.image.pullPolicy,
    args,
    ...(env.length ? { env } : {}),
    ports: [{ name: 'http', containerPort: KBS_PORT, protocol: 'TCP' }],
    startupProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 2, failureThreshold: 30 },
    livenessProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 10, timeoutSeconds: 3, failureThreshold: 3 },
    readinessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 5, timeoutSeconds: 3, failureThreshold: 3 },
    resources: v.resources,
    securityContext: containerSecurity,
    volumeMounts,
  };

  const podSpec: Record<string, unknown> = {
    serviceAccountName: name,
    automountServiceAccountToken: false,
    ...(v.imagePullSecrets.length ? { imagePullSecrets: v.imagePullSecrets.map((n) => ({ name: n })) } : {}),
    securityContext: { runAsNonRoot: true, runAsUser: KBS_UID, runAsGroup: KBS_UID, fsGroup: KBS_UID, seccompProfile: { type: 'RuntimeDefault' } },
    ...(initContainers.length ? { initContainers } : {}),
    containers: [container],
    volumes,
    ...(Object.keys(v.nodeSelector).length ? { nodeSelector: v.nodeSelector } : {}),
    ...(v.tolerations.length ? { tolerations: v.tolerations } : {}),
    ...(Object.keys(v.affinity).length ? { affinity: v.affinity } : {}),
  };
  if (postgres && v.replicas > 1) {
    podSpec.topologySpreadConstraints = [{ maxSkew: 1, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'ScheduleAnyway', labelSelector: { matchLabels: selector } }];
  }
  const template = { metadata: { labels, ...(Object.keys(v.podAnnotations).length ? { annotations: v.podAnnotations } : {}) }, spec: podSpec };

  if (postgres) {
    objects.push({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: meta(),
      spec: {
        replicas: v.replicas,
        selector: { matchLabels: selector },
        strategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
        template,
      },
    });
  } else {
    objects.push({
      apiVersion: 'apps/v1',
      kind: 'StatefulSet',
      metadata: meta(),
      spec: {
        replicas: 1,
        serviceName: name,
        selector: { matchLabels: selector },
        updateStrategy: { type: 'RollingUpdate' },
        template,
        volumeClaimTemplates: [
          {
            metadata: { name: 'data' },
            spec: {
              accessModes: ['ReadWriteOnce'],
              ...(v.store.sqlite.storageClass ? { storageClassName: v.store.sqlite.storageClass } : {}),
              resources: { requests: { storage: v.store.sqlite.size } },
            },
          },
        ],
      },
    });
  }

  if (v.podDisruptionBudget.enabled) {
    objects.push({ apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: meta(), spec: { maxUnavailable: v.podDisruptionBudget.maxUnavailable, selector: { matchLabels: selector } } });
  }

  if (v.networkPolicy.enabled) {
    const ingress: Record<string, unknown> = { ports: [{ protocol: 'TCP', port: KBS_PORT }] };
    if (v.networkPolicy.ingressFrom.length) ingress.from = v.networkPolicy.ingressFrom;
    const spec: Record<string, unknown> = {
      podSelector: { matchLabels: selector },
      policyTypes: v.networkPolicy.restrictEgress ? ['Ingress', 'Egress'] : ['Ingress'],
      ingress: [ingress],
    };
    if (v.networkPolicy.restrictEgress) {
      const egress: Array<Record<string, unknown>> = [
        { ports: [{ protocol: 'UDP', port: 53 }, { protocol: 'TCP', port: 53 }] },
        { ports: [{ protocol: 'TCP', port: 443 }] },
      ];
      if (postgres) egress.push({ ports: [{ protocol: 'TCP', port: v.store.postgres.port }] });
      spec.egress = egress;
    }
    objects.push({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: meta(), spec });
  }

  if (v.serviceMonitor.enabled) {
    objects.push({
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'ServiceMonitor',
      metadata: meta('', v.serviceMonitor.labels),
      spec: { selector: { matchLabels: selector }, endpoints: [{ port: 'http', path: '/metrics', interval: v.serviceMonitor.interval }] },
    });
  }

  validateAll(objects);
  return { objects, warnings, values: v };
}

/** `repo[:tag]` or `repo@sha256:…` → image values. */
export function parseImageRef(ref: string): { repository: string; tag: string; digest: string } {
  const at = ref.indexOf('@');
  if (at >= 0) return { repository: ref.slice(0, at), tag: '', digest: ref.slice(at + 1) };
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  if (colon > slash) return { repository: ref.slice(0, colon), tag: ref.slice(colon + 1), digest: '' };
  return { repository: ref, tag: '', digest: '' };
}
