/**
 * Objects that run the admission webhook in a cluster, and its MutatingWebhookConfiguration.
 * Two ways to get the serving certificate:
 *  - without cert-manager: `cocoon k8s webhook-cert` makes a CA + serving cert and prints the
 *    kubernetes.io/tls Secret and the MutatingWebhookConfiguration with caBundle;
 *  - with cert-manager: a self-signed Issuer and a Certificate; cert-manager's CA injector
 *    fills caBundle from the annotation cert-manager.io/inject-ca-from.
 */
import { createHash } from 'node:crypto';
import { CocoonError } from '../errors.js';
import type { K8sObject } from './manifest.js';
import { validateAll } from './validate.js';
import { DNS_LABEL_RE } from './values.js';
import { serviceDnsNames } from './certs.js';
import { APP_VERSION } from './render-kbs.js';

export const NAMESPACE_LABEL = 'cocoon.dev/inject';
export const NAMESPACE_LABEL_VALUE = 'enabled';
export const WEBHOOK_PORT = 8443;

function labels(name: string): Record<string, string> {
  return { 'app.kubernetes.io/name': 'cocoon', 'app.kubernetes.io/instance': name, 'app.kubernetes.io/component': 'webhook', 'app.kubernetes.io/part-of': 'cocoon', 'app.kubernetes.io/version': APP_VERSION };
}

function checkNames(service: string, namespace: string): void {
  if (!DNS_LABEL_RE.test(service) || service.length > 63) throw new CocoonError('BAD_USAGE', `service name "${service}" is invalid`);
  if (!DNS_LABEL_RE.test(namespace) || namespace.length > 63) throw new CocoonError('BAD_USAGE', `namespace "${namespace}" is invalid`);
}

export function renderMutatingWebhookConfiguration(options: { service: string; namespace: string; caBundlePem?: string; certManagerCertificate?: string }): K8sObject {
  checkNames(options.service, options.namespace);
  const annotations = options.certManagerCertificate ? { 'cert-manager.io/inject-ca-from': `${options.namespace}/${options.certManagerCertificate}` } : undefined;
  const clientConfig: Record<string, unknown> = { service: { name: options.service, namespace: options.namespace, path: '/mutate', port: 443 } };
  if (options.caBundlePem) clientConfig.caBundle = Buffer.from(options.caBundlePem).toString('base64');
  const obj: K8sObject = {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'MutatingWebhookConfiguration',
    metadata: { name: options.service, labels: labels(options.service), ...(annotations ? { annotations } : {}) },
    webhooks: [
      {
        name: 'pods.cocoon.dev',
        admissionReviewVersions: ['v1'],
        sideEffects: 'None',
        // Fail closed: in an opted-in namespace no pod starts while the webhook cannot vet it.
        failurePolicy: 'Fail',
        matchPolicy: 'Equivalent',
        reinvocationPolicy: 'IfNeeded',
        timeoutSeconds: 10,
        namespaceSelector: { matchLabels: { [NAMESPACE_LABEL]: NAMESPACE_LABEL_VALUE } },
        // UPDATE too: a pod's image is mutable, and a Cocoon pod may only switch to a wrapped image.
        rules: [{ operations: ['CREATE', 'UPDATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }],
        clientConfig,
      },
    ],
  };
  validateAll([obj]);
  return obj;
}

export interface WebhookRenderOptions {
  namespace: string;
  image: string;
  /** The webhook.yaml text (already parsed and checked by the caller). */
  configYaml: string;
  name?: string;
  replicas?: number;
  certManager?: boolean;
  /** Secret holding tls.crt/tls.key (default `<name>-tls`). */
  tlsSecret?: string;
}

/** Deployment, Service, ConfigMap, PDB, NetworkPolicy (+ Issuer, Certificate and the MutatingWebhookConfiguration with cert-manager). */
export function renderWebhook(options: WebhookRenderOptions): K8sObject[] {
  const name = options.name ?? 'cocoon-webhook';
  const { namespace } = options;
  checkNames(name, namespace);
  const replicas = options.replicas ?? 2;
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > 10) throw new CocoonError('BAD_USAGE', '--replicas must be an integer from 1 to 10');
  const tlsSecret = options.tlsSecret ?? `${name}-tls`;
  if (!DNS_LABEL_RE.test(tlsSecret)) throw new CocoonError('BAD_USAGE', `--tls-secret "${tlsSecret}" is not a Secret name`);
  const l = labels(name);
  const selector = { 'app.kubernetes.io/name': 'cocoon', 'app.kubernetes.io/instance': name, 'app.kubernetes.io/component': 'webhook' };
  const meta = () => ({ name, namespace, labels: l });
  const objects: K8sObject[] = [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta(), automountServiceAccountToken: false },
    { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(), data: { 'webhook.yaml': options.configYaml } },
    { apiVersion: 'v1', kind: 'Service', metadata: meta(), spec: { type: 'ClusterIP', selector, ports: [{ name: 'https', port: 443, targetPort: 'https', protocol: 'TCP' }] } },
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: meta(),
      spec: {
        replicas,
        selector: { matchLabels: selector },
        template: {
          // A changed webhook.yaml rolls the pods (the webhook reads it at start).
          metadata: { labels: l, annotations: { 'cocoon.dev/config-sha256': createHash('sha256').update(options.configYaml).digest('hex') } },
          spec: {
            serviceAccountName: name,
            automountServiceAccountToken: false,
            securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } },
            containers: [
              {
                name: 'webhook',
                image: options.image,
                args: ['k8s', 'webhook', '--listen', `0.0.0.0:${WEBHOOK_PORT}`, '--tls-cert', '/etc/cocoon/tls/tls.crt', '--tls-key', '/etc/cocoon/tls/tls.key', '--config', '/etc/cocoon/webhook/webhook.yaml'],
                ports: [{ name: 'https', containerPort: WEBHOOK_PORT, protocol: 'TCP' }],
                livenessProbe: { httpGet: { path: '/healthz', port: 'https', scheme: 'HTTPS' }, periodSeconds: 10, timeoutSeconds: 3 },
                readinessProbe: { httpGet: { path: '/healthz', port: 'https', scheme: 'HTTPS' }, periodSeconds: 5, timeoutSeconds: 3 },
                resources: { requests: { cpu: '50m', memory: '96Mi' }, limits: { memory: '256Mi' } },
                securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
                volumeMounts: [
                  { name: 'tls', mountPath: '/etc/cocoon/tls', readOnly: true },
                  { name: 'config', mountPath: '/etc/cocoon/webhook', readOnly: true },
                ],
              },
            ],
            volumes: [
              { name: 'tls', secret: { secretName: tlsSecret, defaultMode: 0o440 } },
              { name: 'config', configMap: { name } },
            ],
          },
        },
      },
    },
    { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: meta(), spec: { maxUnavailable: 1, selector: { matchLabels: selector } } },
    {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: meta(),
      spec: { podSelector: { matchLabels: selector }, policyTypes: ['Ingress', 'Egress'], ingress: [{ ports: [{ protocol: 'TCP', port: WEBHOOK_PORT }] }], egress: [] },
    },
  ];
  if (options.certManager) {
    objects.push({ apiVersion: 'cert-manager.io/v1', kind: 'Issuer', metadata: { name: `${name}-selfsigned`, namespace, labels: l }, spec: { selfSigned: {} } });
    objects.push({
      apiVersion: 'cert-manager.io/v1',
      kind: 'Certificate',
      metadata: meta(),
      spec: {
        secretName: tlsSecret,
        dnsNames: serviceDnsNames(name, namespace),
        duration: '2160h',
        renewBefore: '360h',
        privateKey: { algorithm: 'ECDSA', size: 256, rotationPolicy: 'Always' },
        usages: ['server auth', 'digital signature'],
        issuerRef: { name: `${name}-selfsigned`, kind: 'Issuer' },
      },
    });
    objects.push(renderMutatingWebhookConfiguration({ service: name, namespace, certManagerCertificate: name }));
  }
  validateAll(objects);
  return objects;
}

/** The kubernetes.io/tls Secret for `webhook-cert` (without cert-manager). */
export function renderTlsSecret(options: { name: string; namespace: string; certPem: string; keyPem: string; caPem: string }): K8sObject {
  checkNames(options.name, options.namespace);
  const obj: K8sObject = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: options.name, namespace: options.namespace, labels: labels(options.name) },
    type: 'kubernetes.io/tls',
    data: {
      'tls.crt': Buffer.from(options.certPem).toString('base64'),
      'tls.key': Buffer.from(options.keyPem).toString('base64'),
      'ca.crt': Buffer.from(options.caPem).toString('base64'),
    },
  };
  validateAll([obj]);
  return obj;
}
