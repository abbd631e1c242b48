/**
 * Schema validation of rendered objects without a cluster: built-in kinds through
 * kubernetes-models (the Kubernetes OpenAPI schemas); the few CRDs Cocoon renders
 * (ServiceMonitor, cert-manager Certificate/Issuer) through a small structural check of
 * the fields Cocoon sets. Every failure is MANIFEST_INVALID naming the object and the path.
 */
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { ReplicaSet } from 'kubernetes-models/apps/v1/ReplicaSet';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { CronJob } from 'kubernetes-models/batch/v1/CronJob';
import { Pod } from 'kubernetes-models/v1/Pod';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { PersistentVolumeClaim } from 'kubernetes-models/v1/PersistentVolumeClaim';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { MutatingWebhookConfiguration } from 'kubernetes-models/admissionregistration.k8s.io/v1/MutatingWebhookConfiguration';
import { CocoonError } from '../errors.js';
import { describe, isRecord, type K8sObject } from './manifest.js';

interface Validatable {
  validate(): void;
}
type ModelCtor = new (data: never) => Validatable;

const MODELS: Record<string, ModelCtor> = {
  'apps/v1/Deployment': Deployment as unknown as ModelCtor,
  'apps/v1/StatefulSet': StatefulSet as unknown as ModelCtor,
  'apps/v1/DaemonSet': DaemonSet as unknown as ModelCtor,
  'apps/v1/ReplicaSet': ReplicaSet as unknown as ModelCtor,
  'batch/v1/Job': Job as unknown as ModelCtor,
  'batch/v1/CronJob': CronJob as unknown as ModelCtor,
  'v1/Pod': Pod as unknown as ModelCtor,
  'v1/Service': Service as unknown as ModelCtor,
  'v1/ServiceAccount': ServiceAccount as unknown as ModelCtor,
  'v1/ConfigMap': ConfigMap as unknown as ModelCtor,
  'v1/Secret': Secret as unknown as ModelCtor,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim as unknown as ModelCtor,
  'v1/Namespace': Namespace as unknown as ModelCtor,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget as unknown as ModelCtor,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy as unknown as ModelCtor,
  'admissionregistration.k8s.io/v1/MutatingWebhookConfiguration': MutatingWebhookConfiguration as unknown as ModelCtor,
};

/** Kinds this module can check (apiVersion/kind). */
export const VALIDATED_KINDS: readonly string[] = [...Object.keys(MODELS), 'monitoring.coreos.com/v1/ServiceMonitor', 'cert-manager.io/v1/Certificate', 'cert-manager.io/v1/Issuer'];

const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function fail(obj: K8sObject, message: string): never {
  throw new CocoonError('MANIFEST_INVALID', `${obj.apiVersion} ${describe(obj)}: ${message}`);
}

function checkMetadata(obj: K8sObject): void {
  const meta = obj.metadata;
  if (!isRecord(meta)) fail(obj, 'metadata is required');
  const name = meta.name;
  if (typeof name === 'string') {
    if (name.length > 253 || !NAME_RE.test(name)) fail(obj, `metadata.name "${name}" is not a valid DNS subdomain name`);
  } else if (typeof meta.generateName !== 'string') {
    fail(obj, 'metadata.name is required');
  }
  for (const field of ['labels', 'annotations'] as const) {
    const map = meta[field];
    if (map === undefined) continue;
    if (!isRecord(map)) fail(obj, `metadata.${field} must be a map`);
    for (const [k, v] of Object.entries(map)) {
      if (typeof v !== 'string') fail(obj, `metadata.${field}["${k}"] must be a string`);
      if (field === 'labels' && (v.length > 63 || !/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/.test(v))) fail(obj, `label value "${v}" for "${k}" is invalid`);
    }
  }
}

function requireString(obj: K8sObject, value: unknown, path: string): void {
  if (typeof value !== 'string' || value === '') fail(obj, `${path} must be a non-empty string`);
}

function checkCrd(obj: K8sObject): void {
  const spec = obj.spec;
  if (!isRecord(spec)) fail(obj, 'spec is required');
  if (obj.kind === 'ServiceMonitor') {
    if (!isRecord(spec.selector)) fail(obj, 'spec.selector is required');
    if (!Array.isArray(spec.endpoints) || spec.endpoints.length === 0) fail(obj, 'spec.endpoints must be a non-empty list');
    spec.endpoints.forEach((e: unknown, i: number) => {
      if (!isRecord(e)) fail(obj, `spec.endpoints[${i}] must be a mapping`);
      requireString(obj, e.port, `spec.endpoints[${i}].port`);
      if (e.path !== undefined) requireString(obj, e.path, `spec.endpoints[${i}].path`);
    });
  } else if (obj.kind === 'Certificate') {
    requireString(obj, spec.secretName, 'spec.secretName');
    if (spec.dnsNames === undefined && spec.commonName === undefined) fail(obj, 'spec needs dnsNames or commonName');
    if (spec.dnsNames !== undefined && (!Array.isArray(spec.dnsNames) || spec.dnsNames.length === 0 || !spec.dnsNames.every((d) => typeof d === 'string' && d !== ''))) fail(obj, 'spec.dnsNames must be a non-empty list of strings');
    if (!isRecord(spec.issuerRef)) fail(obj, 'spec.issuerRef is required');
    requireString(obj, spec.issuerRef.name, 'spec.issuerRef.name');
    if (spec.isCA !== undefined && typeof spec.isCA !== 'boolean') fail(obj, 'spec.isCA must be a boolean');
  } else if (obj.kind === 'Issuer') {
    const kinds = ['selfSigned', 'ca', 'acme', 'vault', 'venafi'].filter((k) => spec[k] !== undefined);
    if (kinds.length !== 1) fail(obj, 'spec must name exactly one issuer type');
    if (isRecord(spec.ca)) requireString(obj, spec.ca.secretName, 'spec.ca.secretName');
  }
}

/** Validates `obj` with its kubernetes-models class; MANIFEST_INVALID with the first few schema errors. */
function checkSchema(Model: ModelCtor, obj: K8sObject): void {
  try {
    new Model(obj as never).validate();
  } catch (err) {
    const errors = (err as { errors?: Array<{ instancePath?: string; message?: string }> }).errors;
    const detail = errors?.length ? errors.slice(0, 5).map((e) => `${e.instancePath || '/'} ${e.message ?? 'invalid'}`).join('; ') : (err as Error).message;
    throw new CocoonError('MANIFEST_INVALID', `${obj.apiVersion}/${obj.kind} ${describe(obj)} does not match the Kubernetes schema: ${detail}`, { cause: err });
  }
}

/** Validates one object; throws MANIFEST_INVALID. Unknown kinds are refused unless `allowUnknown`. */
export function validateObject(obj: K8sObject, options: { allowUnknown?: boolean } = {}): void {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const Model = MODELS[key];
  if (Model) {
    checkMetadata(obj);
    checkSchema(Model, obj);
    return;
  }
  if (VALIDATED_KINDS.includes(key)) {
    checkMetadata(obj);
    checkCrd(obj);
    return;
  }
  if (!options.allowUnknown) fail(obj, `cannot validate ${key}: not a kind Cocoon renders`);
  checkMetadata(obj);
}

export function validateAll(objects: readonly K8sObject[], options: { allowUnknown?: boolean } = {}): void {
  for (const obj of objects) validateObject(obj, options);
}

const dynamicModels = new Map<string, ModelCtor | null>();

async function loadModel(apiVersion: string, kind: string): Promise<ModelCtor | null> {
  const key = `${apiVersion}/${kind}`;
  if (dynamicModels.has(key)) return dynamicModels.get(key) ?? null;
  let model: ModelCtor | null = null;
  // Strict shapes only: the parts become a module path.
  if (/^([a-z0-9][a-z0-9.-]{0,252}\/)?v[0-9]+((alpha|beta)[0-9]+)?$/.test(apiVersion) && /^[A-Z][A-Za-z0-9]{0,62}$/.test(kind)) {
    try {
      const mod = (await import(`kubernetes-models/${apiVersion}/${kind}`)) as Record<string, unknown>;
      const ctor = mod[kind];
      if (typeof ctor === 'function') model = ctor as ModelCtor;
    } catch {
      model = null; // not a built-in kind (a CRD): only metadata is checked
    }
  }
  dynamicModels.set(key, model);
  return model;
}

/**
 * Validates objects of any built-in kind (loaded from kubernetes-models on demand); objects of
 * unknown kinds (CRDs) get the metadata check only and are returned so callers can say so.
 */
export async function validateAnyKind(objects: readonly K8sObject[]): Promise<{ unchecked: string[] }> {
  const unchecked: string[] = [];
  for (const obj of objects) {
    const key = `${obj.apiVersion}/${obj.kind}`;
    if (MODELS[key] || VALIDATED_KINDS.includes(key)) {
      validateObject(obj);
      continue;
    }
    const Model = await loadModel(obj.apiVersion, obj.kind);
    checkMetadata(obj);
    if (!Model) {
      unchecked.push(`${key} ${describe(obj)}`);
      continue;
    }
    checkSchema(Model, obj);
  }
  return { unchecked };
}
