/**
 * The admission webhook's configuration file (webhook.yaml), read strictly: unknown keys,
 * wrong types and unpinned wrapped images are BAD_USAGE naming the key.
 *
 * How the webhook tells a wrapped image from an unwrapped one: `images` maps each original
 * image to its wrapped image, pinned by digest (what `cocoon wrap` pushed). Only images that
 * appear there as `wrapped` may run under a Cocoon policy; an `original` is replaced by its
 * `wrapped`; anything else is refused. (No registry lookups: the webhook has no registry
 * credentials and must answer within the API server's timeout.)
 */
import { readFile } from 'node:fs/promises';
import { CocoonError } from '../errors.js';
import { WORKLOAD_NAME_RE, isPolicyName } from '../policy/names.js';
import { isRecord } from './manifest.js';
import { TARGETS, checkTransformOptions, type TargetOptions } from './transform.js';
import { parseStrictYaml } from './values.js';

export interface ImageMapping {
  original: string;
  wrapped: string;
  policy?: string;
  workload?: string;
}

export interface WebhookConfig {
  kbsUrl: string;
  target: TargetOptions;
  rootSize?: string;
  images: ImageMapping[];
  maxBodyBytes: number;
}

export const DEFAULT_MAX_BODY = 2 * 1024 * 1024;
const MAX_CONFIG_BYTES = 1024 * 1024;
const IMAGE_RE = /^[a-z0-9][A-Za-z0-9._\-/:@]{0,510}$/;

function str(obj: Record<string, unknown>, key: string, path: string, required: boolean): string | undefined {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (required) throw new CocoonError('BAD_USAGE', `webhook config: ${path}${key} is required`);
    return undefined;
  }
  if (typeof v !== 'string' || v === '') throw new CocoonError('BAD_USAGE', `webhook config: ${path}${key} must be a non-empty string`);
  return v;
}

function onlyKeys(obj: Record<string, unknown>, keys: readonly string[], path: string): void {
  for (const k of Object.keys(obj)) if (!keys.includes(k)) throw new CocoonError('BAD_USAGE', `webhook config: unknown key ${path}${k}`);
}

export function parseWebhookConfig(text: string, source = 'webhook config'): WebhookConfig {
  const raw = parseStrictYaml(text, source, MAX_CONFIG_BYTES);
  if (!isRecord(raw)) throw new CocoonError('BAD_USAGE', `${source}: expected a mapping`);
  onlyKeys(raw, ['kbsUrl', 'target', 'rootSize', 'images', 'maxBodyBytes'], '');
  const kbsUrl = str(raw, 'kbsUrl', '', true) as string;
  if (!isRecord(raw.target)) throw new CocoonError('BAD_USAGE', 'webhook config: target is required (a mapping with name: aks-cvm|kata-cc|sgx|sim)');
  const t = raw.target;
  onlyKeys(t, ['name', 'runtimeClass', 'vtpm', 'tpmResource', 'sgxPlugin', 'sgxEpc', 'simSecret'], 'target.');
  const name = str(t, 'name', 'target.', true) as string;
  if (!(TARGETS as readonly string[]).includes(name)) throw new CocoonError('BAD_USAGE', `webhook config: target.name must be one of ${TARGETS.join(', ')}`);
  const target: TargetOptions = { target: name as TargetOptions['target'] };
  const rc = str(t, 'runtimeClass', 'target.', false);
  if (rc) target.runtimeClass = rc;
  const vtpm = str(t, 'vtpm', 'target.', false);
  if (vtpm) target.vtpm = vtpm as 'snp' | 'tdx';
  const tpm = str(t, 'tpmResource', 'target.', false);
  if (tpm) target.tpmResource = tpm;
  const plugin = str(t, 'sgxPlugin', 'target.', false);
  if (plugin) target.sgxPlugin = plugin as 'intel' | 'aks';
  const epc = t.sgxEpc === undefined ? undefined : String(t.sgxEpc);
  if (epc) target.sgxEpc = epc;
  const sim = str(t, 'simSecret', 'target.', false);
  if (sim) target.simSecret = sim;
  const rootSize = str(raw, 'rootSize', '', false);

  if (!Array.isArray(raw.images)) throw new CocoonError('BAD_USAGE', 'webhook config: images must be a list of {original, wrapped, policy?, workload?}');
  if (raw.images.length > 1000) throw new CocoonError('BAD_USAGE', 'webhook config: at most 1000 images');
  const images: ImageMapping[] = raw.images.map((item: unknown, i: number) => {
    const path = `images[${i}].`;
    if (!isRecord(item)) throw new CocoonError('BAD_USAGE', `webhook config: images[${i}] must be a mapping`);
    onlyKeys(item, ['original', 'wrapped', 'policy', 'workload'], path);
    const original = str(item, 'original', path, true) as string;
    const wrapped = str(item, 'wrapped', path, true) as string;
    for (const [k, v] of [['original', original], ['wrapped', wrapped]] as const) if (!IMAGE_RE.test(v)) throw new CocoonError('BAD_USAGE', `webhook config: ${path}${k} "${v}" is not an image reference`);
    if (!/@sha256:[0-9a-f]{64}$/.test(wrapped)) throw new CocoonError('BAD_USAGE', `webhook config: ${path}wrapped must be pinned by digest (…@sha256:<64 hex>), got "${wrapped}"`);
    const m: ImageMapping = { original, wrapped };
    const policy = str(item, 'policy', path, false);
    if (policy !== undefined) {
      if (!isPolicyName(policy)) throw new CocoonError('BAD_USAGE', `webhook config: ${path}policy "${policy}" must be org/app`);
      m.policy = policy;
    }
    const workload = str(item, 'workload', path, false);
    if (workload !== undefined) {
      if (!WORKLOAD_NAME_RE.test(workload)) throw new CocoonError('BAD_USAGE', `webhook config: ${path}workload "${workload}" is invalid`);
      m.workload = workload;
    }
    return m;
  });
  const originals = new Set<string>();
  for (const m of images) {
    if (originals.has(m.original)) throw new CocoonError('BAD_USAGE', `webhook config: image ${m.original} is mapped twice`);
    originals.add(m.original);
  }
  let maxBodyBytes = DEFAULT_MAX_BODY;
  if (raw.maxBodyBytes !== undefined) {
    if (!Number.isInteger(raw.maxBodyBytes) || (raw.maxBodyBytes as number) < 4096 || (raw.maxBodyBytes as number) > 8 * 1024 * 1024) throw new CocoonError('BAD_USAGE', 'webhook config: maxBodyBytes must be an integer from 4096 to 8388608');
    maxBodyBytes = raw.maxBodyBytes as number;
  }
  const config: WebhookConfig = { kbsUrl, target, images, maxBodyBytes, ...(rootSize ? { rootSize } : {}) };
  // Same checks as the CLI (placeholder names; the real ones come per pod).
  checkTransformOptions({ ...target, kbsUrl, image: images[0]?.wrapped ?? 'placeholder/image', policy: 'check/check', workload: 'check', ...(rootSize ? { rootSize } : {}) });
  return config;
}

export async function loadWebhookConfig(file: string): Promise<WebhookConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new CocoonError('IO_ERROR', `cannot read webhook config ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseWebhookConfig(text, file);
}
