/**
 * Ordinary workload → confidential workload. Pure: objects and options in, objects, warnings
 * and a policy snippet out. Used by `cocoon k8s render workload` (mode "render") and by the
 * admission webhook (mode "webhook", one Pod at a time).
 *
 * What changes in the pod (docs/kubernetes.md has the why of each line):
 *  - the Cocoon container's image becomes the wrapped image; `command` is refused (the
 *    entrypoint is the launcher and the original one is measured), `args` move to the policy;
 *  - its env keeps only the launcher's settings (COCOON_KBS_URL, COCOON_TEE): the launcher
 *    starts the app with the image env plus the policy env, nothing else. Literal values move
 *    to the policy `env`; values from Secrets/ConfigMaps become policy secrets (render mode)
 *    or are refused (webhook mode — the owner must move them into the policy);
 *  - a memory-backed emptyDir `cocoon-root` at /cocoon/root receives the decrypted root;
 *  - the launcher runs as root with a fixed capability set (it chroots and drops to the
 *    image's user itself);
 *  - TEE selection for the target (aks-cvm, kata-cc, sgx, sim).
 * The transformation is idempotent: transforming its own output changes nothing.
 */
import { createHash } from 'node:crypto';
import { CocoonError } from '../errors.js';
import { ENV_NAME_RE, SECRET_NAME_RE, WORKLOAD_NAME_RE, isPolicyName } from '../policy/names.js';
import { COCOON_INITDATA_KEY, KATA_INITDATA_ANNOTATION, cocoonEntryOf, decodeKataAnnotation, parseInitDataToml, renderInitData } from '../kbs/init-data.js';
import { clone, describe, isRecord, objectName, type K8sObject } from './manifest.js';
import { QUANTITY_RE, DNS_LABEL_RE } from './values.js';

export const TARGETS = ['aks-cvm', 'kata-cc', 'sgx', 'sim'] as const;
export type Target = (typeof TARGETS)[number];

export const ANNOTATION = {
  workload: 'cocoon.dev/workload',
  policy: 'cocoon.dev/policy',
  image: 'cocoon.dev/image',
  container: 'cocoon.dev/container',
  target: 'cocoon.dev/target',
  transformed: 'cocoon.dev/transformed',
  insecure: 'cocoon.dev/insecure',
} as const;

export const ROOT_VOLUME = 'cocoon-root';
export const ROOT_PATH = '/cocoon/root';
export const TEE_LABEL = 'cocoon.dev/tee';
const TRANSFORM_VERSION = 'v1';

/** Capabilities the launcher needs (the same set `cocoon run` gives it under runc). */
export const LAUNCHER_CAPABILITIES = ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP', 'NET_BIND_SERVICE', 'SYS_CHROOT', 'AUDIT_WRITE'];

export interface TargetOptions {
  target: Target;
  /** kata-cc: required; others: optional runtimeClassName. */
  runtimeClass?: string;
  /** aks-cvm: which CVM the node pool runs (default snp → COCOON_TEE=az-snp-vtpm). */
  vtpm?: 'snp' | 'tdx';
  /** aks-cvm: extended resource of a TPM device plugin; without it the vTPM is a hostPath device and the container privileged. */
  tpmResource?: string;
  /** sgx: which device plugin advertises EPC (default intel). */
  sgxPlugin?: 'intel' | 'aks';
  /** sgx: EPC to request: a quantity for intel (default 64Mi), MiB for aks (default 64). */
  sgxEpc?: string;
  /** sim: Secret holding the sim platform key (default cocoon-sim-platform). */
  simSecret?: string;
}

export interface TransformOptions extends TargetOptions {
  /** Wrapped image reference. */
  image: string;
  policy: string;
  workload: string;
  kbsUrl: string;
  /** Container to wrap when the pod has several. */
  container?: string;
  /** sizeLimit of the in-memory root (e.g. 2Gi). */
  rootSize?: string;
  /** Render mode: which workload object to transform when the input has several (Kind/name). */
  select?: string;
}

export interface EnvConversion {
  object: string;
  container: string;
  env: string;
  from: { kind: 'Secret' | 'ConfigMap'; name: string; key: string };
  policySecret: string;
}

export interface PolicySnippet {
  secrets: Record<string, { kind: 'imported' }>;
  workloads: Record<string, { secrets?: string[]; env?: Record<string, string>; args?: string[] }>;
}

export interface TransformResult {
  objects: K8sObject[];
  warnings: string[];
  conversions: EnvConversion[];
  /** null when nothing has to go into the policy. */
  policySnippet: PolicySnippet | null;
}

const WORKLOAD_KINDS: Record<string, string[]> = {
  'apps/v1/Deployment': ['spec', 'template'],
  'apps/v1/StatefulSet': ['spec', 'template'],
  'apps/v1/DaemonSet': ['spec', 'template'],
  'apps/v1/ReplicaSet': ['spec', 'template'],
  'batch/v1/Job': ['spec', 'template'],
  'batch/v1/CronJob': ['spec', 'jobTemplate', 'spec', 'template'],
  'v1/Pod': [],
};

export function isWorkload(obj: K8sObject): boolean {
  return `${obj.apiVersion}/${obj.kind}` in WORKLOAD_KINDS;
}

type Json = Record<string, unknown>;
type EnvVar = { name: string; value?: string; valueFrom?: Json };

/** Checks options once (BAD_USAGE). */
export function checkTransformOptions(o: TransformOptions): void {
  if (!TARGETS.includes(o.target)) throw new CocoonError('BAD_USAGE', `--target must be one of ${TARGETS.join(', ')} (got "${String(o.target)}")`);
  if (!isPolicyName(o.policy)) throw new CocoonError('BAD_USAGE', `policy "${o.policy}" must be org/app (lower-case letters, digits, . _ -)`);
  if (!WORKLOAD_NAME_RE.test(o.workload)) throw new CocoonError('BAD_USAGE', `workload "${o.workload}" must match ${WORKLOAD_NAME_RE.source}`);
  if (!/^[A-Za-z0-9][A-Za-z0-9._\-/:@]{0,510}$/.test(o.image) || !/^[a-z0-9]/.test(o.image)) throw new CocoonError('BAD_USAGE', `image "${o.image}" is not an image reference`);
  if (o.kbsUrl.length > 2048) throw new CocoonError('BAD_USAGE', 'KBS URL longer than 2048 characters');
  let url: URL;
  try {
    url = new URL(o.kbsUrl);
  } catch {
    throw new CocoonError('BAD_USAGE', `KBS URL "${o.kbsUrl}" is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new CocoonError('BAD_USAGE', 'KBS URL must be http(s)');
  if (o.runtimeClass !== undefined && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(o.runtimeClass)) throw new CocoonError('BAD_USAGE', `runtime class "${o.runtimeClass}" is not a valid name`);
  if (o.target === 'kata-cc' && !o.runtimeClass) throw new CocoonError('BAD_USAGE', '--target kata-cc needs --runtime-class (e.g. kata-qemu-snp, kata-qemu-tdx, kata-cc-isolation)');
  if (o.vtpm !== undefined && o.vtpm !== 'snp' && o.vtpm !== 'tdx') throw new CocoonError('BAD_USAGE', '--vtpm must be snp or tdx');
  if (o.vtpm !== undefined && o.target !== 'aks-cvm') throw new CocoonError('BAD_USAGE', '--vtpm applies to --target aks-cvm only');
  if (o.tpmResource !== undefined && !/^[a-z0-9.-]+\/[A-Za-z0-9._-]+$/.test(o.tpmResource)) throw new CocoonError('BAD_USAGE', '--tpm-resource must be an extended resource name such as example.com/tpm');
  if (o.sgxPlugin !== undefined && o.sgxPlugin !== 'intel' && o.sgxPlugin !== 'aks') throw new CocoonError('BAD_USAGE', '--sgx-plugin must be intel or aks');
  if (o.sgxEpc !== undefined) {
    const ok = (o.sgxPlugin ?? 'intel') === 'aks' ? /^[1-9][0-9]{0,6}$/.test(o.sgxEpc) : QUANTITY_RE.test(o.sgxEpc);
    if (!ok) throw new CocoonError('BAD_USAGE', `--sgx-epc "${o.sgxEpc}" must be ${(o.sgxPlugin ?? 'intel') === 'aks' ? 'a number of MiB' : 'a quantity such as 64Mi'}`);
  }
  if (o.simSecret !== undefined && !DNS_LABEL_RE.test(o.simSecret)) throw new CocoonError('BAD_USAGE', '--sim-secret must be a Secret name');
  if (o.rootSize !== undefined && !QUANTITY_RE.test(o.rootSize)) throw new CocoonError('BAD_USAGE', `--root-size "${o.rootSize}" must be a quantity such as 2Gi`);
  if (o.container !== undefined && !DNS_LABEL_RE.test(o.container)) throw new CocoonError('BAD_USAGE', `container "${o.container}" is not a container name`);
}

/** COCOON_TEE for a target, or undefined when the launcher should detect it. */
export function teeFor(o: TargetOptions): string | undefined {
  switch (o.target) {
    case 'aks-cvm':
      return o.vtpm === 'tdx' ? 'az-tdx-vtpm' : 'az-snp-vtpm';
    case 'kata-cc':
      if (o.runtimeClass === 'kata-qemu-tdx' || o.runtimeClass?.includes('tdx')) return 'tdx';
      if (o.runtimeClass === 'kata-qemu-snp' || o.runtimeClass === 'kata-cc-isolation' || o.runtimeClass?.includes('snp')) return 'snp';
      return undefined;
    case 'sgx':
      return 'sgx';
    case 'sim':
      return 'sim';
  }
}

function podTemplatePath(obj: K8sObject): string[] | undefined {
  return WORKLOAD_KINDS[`${obj.apiVersion}/${obj.kind}`];
}

/** The pod (metadata + spec) of a workload object, creating metadata if absent. */
function podOf(obj: K8sObject): { meta: Json; spec: Json } {
  const path = podTemplatePath(obj);
  if (!path) throw new CocoonError('INTERNAL', `not a workload: ${describe(obj)}`);
  let node: unknown = obj;
  for (const key of path) {
    if (!isRecord(node) || !isRecord(node[key])) throw new CocoonError('INPUT_MALFORMED', `${describe(obj)}: missing ${path.join('.')}`);
    node = node[key];
  }
  const pod = node as Json;
  if (!isRecord(pod.spec)) throw new CocoonError('INPUT_MALFORMED', `${describe(obj)}: missing pod spec`);
  if (pod.metadata === undefined) pod.metadata = {};
  if (!isRecord(pod.metadata)) throw new CocoonError('INPUT_MALFORMED', `${describe(obj)}: pod metadata must be a mapping`);
  return { meta: pod.metadata, spec: pod.spec };
}

function containersOf(spec: Json, field: 'containers' | 'initContainers' | 'ephemeralContainers', where: string): Json[] {
  const list = spec[field];
  if (list === undefined) return [];
  if (!Array.isArray(list) || !list.every(isRecord)) throw new CocoonError('INPUT_MALFORMED', `${where}: ${field} must be a list of mappings`);
  return list;
}

function shortHash(s: string): string {
  return createHash('sha256').update(s).digest('hex').slice(0, 8);
}

function policySecretName(source: string, key: string, id: string, taken: Map<string, string>): string {
  let name = `${source}-${key}`.replace(/[^A-Za-z0-9._-]/g, '-');
  if (!/^[A-Za-z0-9]/.test(name)) name = `s${name}`;
  if (name.length > 64) name = `${name.slice(0, 55)}-${shortHash(id)}`;
  if (taken.has(name) && taken.get(name) !== id) name = `${name.slice(0, 55)}-${shortHash(id)}`;
  if (!SECRET_NAME_RE.test(name)) throw new CocoonError('INTERNAL', `derived secret name "${name}" is invalid`);
  taken.set(name, id);
  return name;
}

interface PodContext {
  mode: 'render' | 'webhook';
  where: string;
  options: TransformOptions;
  /** Secrets/ConfigMaps of the input by name (render mode), for envFrom. */
  sources: { Secret: Map<string, Json>; ConfigMap: Map<string, Json> };
  warnings: string[];
  denials: string[];
  conversions: EnvConversion[];
  snippet: { secrets: Map<string, string>; env: Map<string, string>; args: string[] | null };
}

function setEnv(env: EnvVar[], name: string, value: string): void {
  const existing = env.find((e) => e.name === name);
  if (existing) {
    if (existing.valueFrom !== undefined) delete existing.valueFrom;
    existing.value = value;
  } else {
    env.push({ name, value });
  }
}

/** Chooses the container to wrap. */
function chooseContainer(containers: Json[], ctx: PodContext, hint?: string): Json {
  const names = containers.map((c) => String(c.name));
  const wanted = ctx.options.container ?? hint;
  if (wanted) {
    const found = containers.find((c) => c.name === wanted);
    if (!found) throw new CocoonError('BAD_USAGE', `${ctx.where}: no container "${wanted}" (containers: ${names.join(', ')})`);
    return found;
  }
  if (containers.length === 1) return containers[0] as Json;
  const already = containers.filter((c) => c.image === ctx.options.image);
  if (already.length === 1) return already[0] as Json;
  throw new CocoonError('BAD_USAGE', `${ctx.where}: several containers (${names.join(', ')}); name the one to wrap with --container`);
}

function convertEnv(container: Json, ctx: PodContext): void {
  const cname = String(container.name);
  const rawEnv = container.env === undefined ? [] : container.env;
  if (!Array.isArray(rawEnv) || !rawEnv.every((e) => isRecord(e) && typeof e.name === 'string')) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: container ${cname}: env must be a list of {name, …}`);
  const kept: EnvVar[] = [];
  const taken = ctx.snippet.secrets;
  const addSecret = (envName: string, kind: 'Secret' | 'ConfigMap', name: string, key: string) => {
    if (!ENV_NAME_RE.test(envName)) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: container ${cname}: env name "${envName}" cannot be a policy env name`);
    const id = `${kind}/${name}/${key}`;
    const policySecret = [...taken.entries()].find(([, v]) => v === id)?.[0] ?? policySecretName(name, key, id, taken);
    ctx.snippet.env.set(envName, `{{ secret.${policySecret} }}`);
    ctx.conversions.push({ object: ctx.where, container: cname, env: envName, from: { kind, name, key }, policySecret });
  };
  for (const e of rawEnv as EnvVar[]) {
    if (e.name.startsWith('COCOON_')) {
      kept.push(e);
      continue;
    }
    if (e.valueFrom === undefined) {
      if (ctx.mode === 'webhook') {
        ctx.warnings.push(`${ctx.where}: container ${cname}: env ${e.name} is not passed to the application (the launcher starts it with the image env plus the policy env); move it into the policy`);
        kept.push(e);
        continue;
      }
      const value = e.value ?? '';
      if (!ENV_NAME_RE.test(e.name)) throw new CocoonError('BAD_USAGE', `${ctx.where}: container ${cname}: env name "${e.name}" cannot be a policy env name (${ENV_NAME_RE.source})`);
      if (value.includes('{{')) throw new CocoonError('BAD_USAGE', `${ctx.where}: container ${cname}: env ${e.name} contains "{{", which a policy reads as a template; keep such a value in a Secret`);
      ctx.snippet.env.set(e.name, value);
      continue;
    }
    const vf = e.valueFrom;
    if (!isRecord(vf)) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: container ${cname}: env ${e.name}: valueFrom must be a mapping`);
    const ref = isRecord(vf.secretKeyRef) ? { kind: 'Secret' as const, r: vf.secretKeyRef } : isRecord(vf.configMapKeyRef) ? { kind: 'ConfigMap' as const, r: vf.configMapKeyRef } : undefined;
    if (!ref) {
      const msg = `${ctx.where}: container ${cname}: env ${e.name} uses the downward API (${Object.keys(vf).join(', ')}), which cannot reach the application inside the TEE`;
      if (ctx.mode === 'webhook') {
        ctx.warnings.push(msg);
        kept.push(e);
      } else {
        ctx.warnings.push(`${msg}; removed`);
      }
      continue;
    }
    if (typeof ref.r.name !== 'string' || typeof ref.r.key !== 'string') throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: container ${cname}: env ${e.name}: ${ref.kind === 'Secret' ? 'secretKeyRef' : 'configMapKeyRef'} needs name and key`);
    if (ctx.mode === 'webhook') {
      ctx.denials.push(`container ${cname}: env ${e.name} reads ${ref.kind} ${ref.r.name} key ${ref.r.key}; under Cocoon such values come from the policy, not from plaintext Kubernetes objects (\`cocoon k8s render workload\` prints the policy snippet)`);
      kept.push(e);
      continue;
    }
    addSecret(e.name, ref.kind, ref.r.name, ref.r.key);
  }
  if (container.envFrom !== undefined) {
    if (!Array.isArray(container.envFrom) || !container.envFrom.every(isRecord)) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: container ${cname}: envFrom must be a list`);
    for (const ef of container.envFrom) {
      const ref = isRecord(ef.secretRef) ? { kind: 'Secret' as const, r: ef.secretRef } : isRecord(ef.configMapRef) ? { kind: 'ConfigMap' as const, r: ef.configMapRef } : undefined;
      if (!ref || typeof ref.r.name !== 'string') throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: container ${cname}: envFrom entries need secretRef.name or configMapRef.name`);
      if (ctx.mode === 'webhook') {
        ctx.denials.push(`container ${cname}: envFrom reads ${ref.kind} ${ref.r.name}; under Cocoon such values come from the policy (\`cocoon k8s render workload\` prints the policy snippet)`);
        continue;
      }
      const source = ctx.sources[ref.kind].get(ref.r.name);
      if (!source) {
        if (ref.r.optional === true) {
          ctx.warnings.push(`${ctx.where}: container ${cname}: optional envFrom ${ref.kind} ${ref.r.name} is not in the input; dropped`);
          continue;
        }
        throw new CocoonError('BAD_USAGE', `${ctx.where}: container ${cname}: envFrom ${ref.kind} ${ref.r.name} is not in the input, so its keys are unknown; add it to the file (-f) or list the keys as env entries`);
      }
      const prefix = typeof ef.prefix === 'string' ? ef.prefix : '';
      const keys = new Set<string>();
      for (const field of ['data', 'stringData', 'binaryData']) if (isRecord(source[field])) for (const k of Object.keys(source[field] as Json)) keys.add(k);
      for (const key of [...keys].sort()) {
        const envName = prefix + key;
        if (!ENV_NAME_RE.test(envName)) {
          ctx.warnings.push(`${ctx.where}: container ${cname}: ${ref.kind} ${ref.r.name} key "${key}" is not a valid env name; skipped (Kubernetes skips it too)`);
          continue;
        }
        if (rawEnv.some((x) => isRecord(x) && x.name === envName)) continue; // explicit env wins, as in Kubernetes
        addSecret(envName, ref.kind, ref.r.name, key);
      }
    }
  }
  if (ctx.mode === 'render') delete container.envFrom;
  const tee = teeFor(ctx.options);
  setEnv(kept, 'COCOON_KBS_URL', ctx.options.kbsUrl);
  if (tee) {
    setEnv(kept, 'COCOON_TEE', tee);
  } else {
    // The launcher detects the TEE; a stale COCOON_TEE (say, sim) must not survive.
    const idx = kept.findIndex((e) => e.name === 'COCOON_TEE');
    if (idx >= 0) {
      ctx.warnings.push(`${ctx.where}: container ${cname}: COCOON_TEE removed; the launcher detects the TEE`);
      kept.splice(idx, 1);
    }
  }
  if (ctx.options.target === 'kata-cc') {
    // The launcher sends the very init-data the hypervisor hashed into HOST_DATA / MRCONFIGID
    // (the annotation, through the downward API); the KBS checks the two agree.
    const fieldRef = { fieldRef: { fieldPath: `metadata.annotations['${KATA_INITDATA_ANNOTATION}']` } };
    const existing = kept.find((e) => e.name === 'COCOON_INIT_DATA');
    if (existing) {
      delete existing.value;
      existing.valueFrom = fieldRef;
    } else kept.push({ name: 'COCOON_INIT_DATA', valueFrom: fieldRef });
  }
  container.env = kept;
}

function ensureNamed(list: Json[], item: Json, key = 'name'): void {
  const idx = list.findIndex((x) => x[key] === item[key]);
  if (idx < 0) list.push(item);
  else if (JSON.stringify(list[idx]) !== JSON.stringify(item)) list[idx] = item;
}

function listField(obj: Json, field: string, where: string): Json[] {
  if (obj[field] === undefined) obj[field] = [];
  const list = obj[field];
  if (!Array.isArray(list) || !list.every(isRecord)) throw new CocoonError('INPUT_MALFORMED', `${where}: ${field} must be a list of mappings`);
  return list;
}

function setResource(container: Json, name: string, quantity: string, where: string): void {
  if (container.resources === undefined) container.resources = {};
  const res = container.resources;
  if (!isRecord(res)) throw new CocoonError('INPUT_MALFORMED', `${where}: resources must be a mapping`);
  for (const part of ['limits', 'requests']) {
    if (res[part] === undefined) res[part] = {};
    const map = res[part];
    if (!isRecord(map)) throw new CocoonError('INPUT_MALFORMED', `${where}: resources.${part} must be a mapping`);
    map[name] = quantity;
  }
}

function transformPodSpec(meta: Json, spec: Json, ctx: PodContext, hint?: string): void {
  const o = ctx.options;
  const containers = containersOf(spec, 'containers', ctx.where);
  if (containers.length === 0) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: the pod has no containers`);
  const container = chooseContainer(containers, ctx, hint);
  const cname = String(container.name);

  // Nothing else in the pod may touch the decrypted root.
  for (const field of ['containers', 'initContainers', 'ephemeralContainers'] as const) {
    for (const c of containersOf(spec, field, ctx.where)) {
      if (c === container) continue;
      const mounts = Array.isArray(c.volumeMounts) ? c.volumeMounts : [];
      if (mounts.some((m) => isRecord(m) && m.name === ROOT_VOLUME)) {
        const msg = `container ${String(c.name)} mounts ${ROOT_VOLUME}, the decrypted application root; only the Cocoon container may`;
        if (ctx.mode === 'webhook') ctx.denials.push(msg);
        else throw new CocoonError('BAD_USAGE', `${ctx.where}: ${msg}`);
      }
    }
  }
  if (containers.length > 1 || containersOf(spec, 'initContainers', ctx.where).length > 0) {
    ctx.warnings.push(`${ctx.where}: only container ${cname} runs under Cocoon; the other containers of the pod are not attested and get no policy secrets`);
  }

  if (container.command !== undefined) {
    const msg = `container ${cname} sets \`command\`: a wrapped image's entrypoint is the Cocoon launcher and the original entrypoint is part of the measurement — set it in the image before \`cocoon wrap\`, or remove \`command\``;
    if (ctx.mode === 'webhook') ctx.denials.push(msg);
    else throw new CocoonError('BAD_USAGE', `${ctx.where}: ${msg}`);
  }
  if (container.args !== undefined) {
    if (!Array.isArray(container.args) || !container.args.every((a) => typeof a === 'string')) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: container ${cname}: args must be a list of strings`);
    if (ctx.mode === 'webhook') {
      ctx.denials.push(`container ${cname} sets \`args\`, which would be passed to the launcher; put them into the policy's \`args\` instead`);
    } else {
      if (container.args.some((a: string) => a.includes('{{'))) throw new CocoonError('BAD_USAGE', `${ctx.where}: container ${cname}: args contain "{{", which a policy would read as a template`);
      ctx.snippet.args = [...(container.args as string[])];
      ctx.warnings.push(`${ctx.where}: container ${cname}: args moved to the policy (\`args\` replaces the image's Cmd)`);
      delete container.args;
    }
  }
  if (container.image !== o.image) container.image = o.image;

  convertEnv(container, ctx);

  // In-memory root.
  const mounts = listField(container, 'volumeMounts', `${ctx.where}: container ${cname}`);
  const others = mounts.filter((m) => m.name !== ROOT_VOLUME && !String(m.mountPath ?? '').startsWith('/dev/') && m.name !== 'cocoon-sim' && m.name !== 'cocoon-aesmd');
  if (others.length > 0) {
    ctx.warnings.push(`${ctx.where}: container ${cname}: volume mounts ${others.map((m) => String(m.mountPath)).join(', ')} are outside the application root (${ROOT_PATH}); the application does not see them, and data written there would not be protected`);
  }
  ensureNamed(mounts, { name: ROOT_VOLUME, mountPath: ROOT_PATH });
  const volumes = listField(spec, 'volumes', ctx.where);
  ensureNamed(volumes, { name: ROOT_VOLUME, emptyDir: { medium: 'Memory', ...(o.rootSize ? { sizeLimit: o.rootSize } : {}) } });

  for (const probe of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
    const p = container[probe];
    if (isRecord(p) && p.exec !== undefined) ctx.warnings.push(`${ctx.where}: container ${cname}: ${probe} runs a command outside the application root; prefer httpGet/tcpSocket probes`);
  }

  // The launcher runs as root, chroots into the in-memory root and drops to the image's user.
  const securityContext: Json = {
    runAsUser: 0,
    runAsNonRoot: false,
    allowPrivilegeEscalation: false,
    capabilities: { drop: ['ALL'], add: [...LAUNCHER_CAPABILITIES] },
  };

  // TEE selection.
  if (o.runtimeClass && o.target !== 'kata-cc') spec.runtimeClassName = o.runtimeClass;
  switch (o.target) {
    case 'aks-cvm': {
      const tee = teeFor(o) as string;
      if (spec.nodeSelector === undefined) spec.nodeSelector = {};
      if (!isRecord(spec.nodeSelector)) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: nodeSelector must be a mapping`);
      spec.nodeSelector[TEE_LABEL] = tee;
      ensureToleration(spec, { key: TEE_LABEL, operator: 'Equal', value: tee, effect: 'NoSchedule' }, ctx.where);
      if (o.tpmResource) {
        setResource(container, o.tpmResource, '1', `${ctx.where}: container ${cname}`);
      } else {
        ensureNamed(volumes, { name: 'cocoon-vtpm', hostPath: { path: '/dev/tpmrm0', type: 'CharDevice' } });
        ensureNamed(mounts, { name: 'cocoon-vtpm', mountPath: '/dev/tpmrm0' });
        securityContext.privileged = true;
        securityContext.allowPrivilegeEscalation = true;
        ctx.warnings.push(`${ctx.where}: container ${cname} runs privileged to open the node's vTPM (/dev/tpmrm0); install a TPM device plugin and pass --tpm-resource to avoid it`);
      }
      break;
    }
    case 'kata-cc':
      spec.runtimeClassName = o.runtimeClass;
      if (!teeFor(o)) ctx.warnings.push(`${ctx.where}: runtime class ${String(o.runtimeClass)}: COCOON_TEE not set, the launcher detects the TEE inside the pod VM (it never falls back to sim)`);
      break;
    case 'sgx': {
      if ((o.sgxPlugin ?? 'intel') === 'aks') {
        setResource(container, 'kubernetes.azure.com/sgx_epc_mem_in_MiB', o.sgxEpc ?? '64', `${ctx.where}: container ${cname}`);
      } else {
        setResource(container, 'sgx.intel.com/epc', o.sgxEpc ?? '64Mi', `${ctx.where}: container ${cname}`);
        setResource(container, 'sgx.intel.com/enclave', '1', `${ctx.where}: container ${cname}`);
        setResource(container, 'sgx.intel.com/provision', '1', `${ctx.where}: container ${cname}`);
      }
      ensureNamed(volumes, { name: 'cocoon-aesmd', hostPath: { path: '/var/run/aesmd', type: 'Directory' } });
      ensureNamed(mounts, { name: 'cocoon-aesmd', mountPath: '/var/run/aesmd' });
      break;
    }
    case 'sim': {
      const secretName = o.simSecret ?? 'cocoon-sim-platform';
      ensureNamed(volumes, { name: 'cocoon-sim', secret: { secretName, defaultMode: 0o400 } });
      ensureNamed(mounts, { name: 'cocoon-sim', mountPath: '/run/cocoon/sim', readOnly: true });
      ctx.warnings.push(`INSECURE: ${ctx.where}: --target sim — the simulated TEE protects nothing; for development clusters only (the KBS must run with --allow-sim and the policy must name sim)`);
      break;
    }
  }
  container.securityContext = securityContext;

  if (meta.annotations === undefined) meta.annotations = {};
  if (!isRecord(meta.annotations)) throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: annotations must be a mapping`);
  const ann = meta.annotations;
  const want: Record<string, string> = {
    [ANNOTATION.workload]: o.workload,
    [ANNOTATION.policy]: o.policy,
    [ANNOTATION.image]: o.image,
    [ANNOTATION.target]: o.target,
    [ANNOTATION.transformed]: TRANSFORM_VERSION,
  };
  if (o.target === 'sim') want[ANNOTATION.insecure] = 'INSECURE: simulated TEE';
  if (o.target === 'kata-cc') {
    const initData = kataInitData(ann[KATA_INITDATA_ANNOTATION], o, ctx);
    if (initData !== undefined) want[KATA_INITDATA_ANNOTATION] = initData;
  }
  for (const [k, v] of Object.entries(want)) if (ann[k] !== v) ann[k] = v;
}

/**
 * kata-cc: the init-data annotation Kata turns into SNP HOST_DATA / TDX MRCONFIGID, with
 * Cocoon's `cocoon.json` entry (policy, workload, KBS URL). An existing init-data (e.g. a Kata
 * agent policy) keeps its other entries and algorithm; an unchanged one is left as it is.
 */
function kataInitData(current: unknown, o: TransformOptions, ctx: PodContext): string | undefined {
  const fresh = { policy: o.policy, workload: o.workload, kbsUrl: o.kbsUrl };
  if (current === undefined) return renderInitData(fresh).annotation;
  try {
    if (typeof current !== 'string') throw new CocoonError('INPUT_MALFORMED', `${KATA_INITDATA_ANNOTATION} must be a string`);
    const { doc } = parseInitDataToml(decodeKataAnnotation(current));
    if (COCOON_INITDATA_KEY in doc.data) {
      const e = cocoonEntryOf(doc);
      if (e.policy === o.policy && e.workload === o.workload && e.kbs === o.kbsUrl) return current;
    }
    const others = Object.fromEntries(Object.entries(doc.data).filter(([k]) => k !== COCOON_INITDATA_KEY));
    ctx.warnings.push(`${ctx.where}: ${KATA_INITDATA_ANNOTATION}: Cocoon's "${COCOON_INITDATA_KEY}" entry set in the existing init-data (its other entries kept); its digest changes`);
    return renderInitData({ ...fresh, algorithm: doc.algorithm, data: others }).annotation;
  } catch (err) {
    const msg = `annotation ${KATA_INITDATA_ANNOTATION} is not a usable init-data document: ${(err as Error).message}`;
    if (ctx.mode === 'webhook') {
      ctx.denials.push(msg);
      return undefined;
    }
    throw new CocoonError('INPUT_MALFORMED', `${ctx.where}: ${msg}`, { cause: err });
  }
}

function ensureToleration(spec: Json, tol: Json, where: string): void {
  const list = listField(spec, 'tolerations', where);
  if (!list.some((t) => t.key === tol.key && t.value === tol.value && t.effect === tol.effect && t.operator === tol.operator)) list.push(tol);
}

function newContext(mode: 'render' | 'webhook', where: string, options: TransformOptions, sources: PodContext['sources']): PodContext {
  return { mode, where, options, sources, warnings: [], denials: [], conversions: [], snippet: { secrets: new Map(), env: new Map(), args: null } };
}

function snippetOf(ctx: PodContext, workload: string): PolicySnippet | null {
  if (ctx.snippet.secrets.size === 0 && ctx.snippet.env.size === 0 && !ctx.snippet.args) return null;
  const secrets: PolicySnippet['secrets'] = {};
  for (const name of [...ctx.snippet.secrets.keys()].sort()) secrets[name] = { kind: 'imported' };
  const w: PolicySnippet['workloads'][string] = {};
  if (ctx.snippet.secrets.size) w.secrets = Object.keys(secrets);
  if (ctx.snippet.env.size) w.env = Object.fromEntries([...ctx.snippet.env.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  if (ctx.snippet.args) w.args = ctx.snippet.args;
  return { secrets, workloads: { [workload]: w } };
}

/** Render mode: multi-object input → transformed objects. */
export function transformManifests(input: readonly K8sObject[], options: TransformOptions): TransformResult {
  checkTransformOptions(options);
  const objects = input.map((o) => clone(o));
  const sources: PodContext['sources'] = { Secret: new Map(), ConfigMap: new Map() };
  for (const obj of objects) {
    if (obj.apiVersion === 'v1' && (obj.kind === 'Secret' || obj.kind === 'ConfigMap')) sources[obj.kind].set(objectName(obj), obj);
  }
  const workloads = objects.filter(isWorkload);
  let chosen: K8sObject[];
  if (options.select) {
    chosen = workloads.filter((w) => `${w.kind}/${objectName(w)}` === options.select);
    if (chosen.length !== 1) throw new CocoonError('BAD_USAGE', `--select ${options.select}: no such workload in the input (workloads: ${workloads.map(describe).join(', ') || 'none'})`);
  } else if (workloads.length === 1) {
    chosen = workloads;
  } else if (workloads.length === 0) {
    throw new CocoonError('BAD_USAGE', 'the input has no Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob or Pod');
  } else {
    throw new CocoonError('BAD_USAGE', `the input has several workloads (${workloads.map(describe).join(', ')}); one wrapped image is one workload: choose with --select Kind/name`);
  }
  const target = chosen[0] as K8sObject;
  const ctx = newContext('render', describe(target), options, sources);
  const { meta, spec } = podOf(target);
  transformPodSpec(meta, spec, ctx);

  // Plaintext Secrets whose values now come from the policy are not emitted.
  const stillUsed = new Set<string>();
  for (const obj of objects) {
    if (!isWorkload(obj)) continue;
    const text = JSON.stringify(podOf(obj).spec);
    for (const name of sources.Secret.keys()) if (text.includes(`"${name}"`)) stillUsed.add(name);
  }
  const converted = new Set(ctx.conversions.filter((c) => c.from.kind === 'Secret').map((c) => c.from.name));
  const out: K8sObject[] = [];
  for (const obj of objects) {
    if (obj.apiVersion === 'v1' && obj.kind === 'Secret' && converted.has(objectName(obj))) {
      if (stillUsed.has(objectName(obj))) {
        ctx.warnings.push(`Secret ${objectName(obj)} is still referenced elsewhere in the pods; it stays a plaintext Kubernetes Secret`);
      } else {
        ctx.warnings.push(`Secret ${objectName(obj)} is not emitted: its values now come from the policy (import them with \`cocoon secret put\`)`);
        continue;
      }
    }
    out.push(obj);
  }
  for (const c of ctx.conversions) {
    ctx.warnings.push(`${c.object}: container ${c.container}: env ${c.env} from ${c.from.kind} ${c.from.name} key ${c.from.key} → policy secret "${c.policySecret}" (set it: cocoon secret put ${options.policy}/${c.policySecret} --file <value file>)`);
  }
  return { objects: out, warnings: ctx.warnings, conversions: ctx.conversions, policySnippet: snippetOf(ctx, options.workload) };
}

export interface PodTransform {
  pod: Json;
  warnings: string[];
  denials: string[];
}

/** Webhook mode: one Pod object → the desired Pod, or denials. `container` is the container to wrap. */
export function transformPod(pod: Json, options: TransformOptions, container?: string): PodTransform {
  checkTransformOptions(options);
  const copy = clone(pod);
  if (!isRecord(copy.spec)) throw new CocoonError('INPUT_MALFORMED', 'pod has no spec');
  if (copy.metadata === undefined) copy.metadata = {};
  if (!isRecord(copy.metadata)) throw new CocoonError('INPUT_MALFORMED', 'pod metadata must be a mapping');
  const where = `Pod/${typeof copy.metadata.name === 'string' ? copy.metadata.name : typeof copy.metadata.generateName === 'string' ? `${copy.metadata.generateName}*` : '(unnamed)'}`;
  const ctx = newContext('webhook', where, options, { Secret: new Map(), ConfigMap: new Map() });
  transformPodSpec(copy.metadata, copy.spec, ctx, container);
  return { pod: copy, warnings: ctx.warnings, denials: ctx.denials };
}
