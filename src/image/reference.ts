import { CocoonError } from '../errors.js';

/**
 * Image references, parsed once for every command: docker/skopeo style registry references
 * (`[registry[:port]/]repo/path[:tag][@sha256:…]`, Docker Hub defaults) and skopeo's transport
 * syntax (`oci:DIR[:TAG]`, `docker-archive:FILE[:REF]`, `docker://REF`).
 */

export interface DockerReference {
  /** Registry host as written, with port (`docker.io` for Docker Hub). */
  domain: string;
  /** Repository path (`library/redis`). */
  path: string;
  tag?: string;
  digest?: string;
}

export type ImageReference =
  | { transport: 'oci'; dir: string; tag?: string }
  | { transport: 'docker-archive'; file: string; ref?: DockerReference }
  | { transport: 'docker'; ref: DockerReference };

export const DOCKER_HUB_DOMAIN = 'docker.io';
export const DOCKER_HUB_REGISTRY = 'registry-1.docker.io';

const MAX_REF = 4096;
const MAX_NAME = 255;
const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const COMPONENT_RE = new RegExp(`^${COMPONENT}$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const DOMAIN_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$/;
const OCI_TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{0,255}$/;

function bad(input: string, why: string): never {
  throw new CocoonError('BAD_USAGE', `invalid image reference ${JSON.stringify(input.slice(0, 200))}: ${why}`);
}

function checkRaw(input: string): void {
  if (typeof input !== 'string' || input.length === 0) bad(String(input), 'empty');
  if (input.length > MAX_REF) bad(input, `longer than ${MAX_REF}`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(input)) bad(input, 'control characters');
}

/** Parses `[domain/]path[:tag][@digest]` like docker/distribution's reference.ParseNormalizedNamed. */
export function parseDockerReference(input: string): DockerReference {
  checkRaw(input);
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) bad(input, 'digest must be sha256:<64 lowercase hex>');
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) bad(input, 'tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}');
  }
  if (rest.length === 0) bad(input, 'no repository name');
  let domain = DOCKER_HUB_DOMAIN;
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      domain = first;
      path = rest.slice(slash + 1);
    }
  }
  if (!DOMAIN_RE.test(domain)) bad(input, `bad registry host ${JSON.stringify(domain)}`);
  const port = /:(\d+)$/.exec(domain)?.[1];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) bad(input, 'bad port');
  if (domain === 'index.docker.io') domain = DOCKER_HUB_DOMAIN;
  if (domain === DOCKER_HUB_DOMAIN && !path.includes('/')) path = `library/${path}`;
  const comps = path.split('/');
  for (const c of comps) if (!COMPONENT_RE.test(c)) bad(input, `bad repository path component ${JSON.stringify(c)} (lowercase letters, digits, separators)`);
  if (domain.length + 1 + path.length > MAX_NAME) bad(input, `name longer than ${MAX_NAME}`);
  const ref: DockerReference = { domain, path };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  if (tag === undefined && digest === undefined) ref.tag = 'latest';
  return ref;
}

/** The registry host the API is spoken to (Docker Hub's name differs from its API host). */
export function registryHost(ref: DockerReference): string {
  return ref.domain === DOCKER_HUB_DOMAIN ? DOCKER_HUB_REGISTRY : ref.domain;
}

/** `domain/path[:tag][@digest]` (normalised, always with the domain). */
export function formatDockerReference(ref: DockerReference): string {
  return `${ref.domain}/${ref.path}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/** Docker Hub short form where it applies (`redis:7`), for RepoTags and display. */
export function familiarName(ref: DockerReference): string {
  if (ref.domain !== DOCKER_HUB_DOMAIN) return formatDockerReference(ref);
  const path = ref.path.startsWith('library/') ? ref.path.slice('library/'.length) : ref.path;
  return `${path}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

export function formatImageReference(r: ImageReference): string {
  switch (r.transport) {
    case 'oci':
      return `oci:${r.dir}${r.tag !== undefined ? `:${r.tag}` : ''}`;
    case 'docker-archive':
      return `docker-archive:${r.file}${r.ref ? `:${familiarName(r.ref)}` : ''}`;
    case 'docker':
      return `docker://${formatDockerReference(r.ref)}`;
  }
}

function looksLikePath(s: string): boolean {
  return s.startsWith('/') || s.startsWith('./') || s.startsWith('../') || s === '.' || s === '..' || s.startsWith('~/');
}

export interface ParseImageOptions {
  /**
   * Decides whether a bare word (no transport, not starting with / or .) names a local path;
   * when it does, the word is a layout directory (or a `.tar` docker archive), not a registry
   * reference. Default: never (pure parsing).
   */
  isLocalPath?: (s: string) => boolean;
}

/**
 * Parses an image argument. Transports: `oci:DIR[:TAG]` (the tag is everything after the
 * first colon following the directory, as skopeo does), `docker-archive:FILE[:REF]`,
 * `docker://REF`. Without a transport: a path (starting with `/`, `./`, `../`, `~/`, or one
 * `isLocalPath` accepts) is an OCI layout, or a docker archive when it ends in `.tar`; anything
 * else is a registry reference (`redis:7` → `docker.io/library/redis:7`).
 */
export function parseImageReference(input: string, opts: ParseImageOptions = {}): ImageReference {
  checkRaw(input);
  if (input.startsWith('oci:')) {
    const rest = input.slice('oci:'.length);
    const colon = rest.indexOf(':');
    const dir = colon < 0 ? rest : rest.slice(0, colon);
    const tag = colon < 0 ? undefined : rest.slice(colon + 1);
    if (!dir) bad(input, 'expected oci:DIR[:TAG]');
    if (tag !== undefined && !OCI_TAG_RE.test(tag)) bad(input, 'bad tag after oci:DIR:');
    return tag === undefined ? { transport: 'oci', dir } : { transport: 'oci', dir, tag };
  }
  if (input.startsWith('docker-archive:')) {
    const rest = input.slice('docker-archive:'.length);
    const colon = rest.indexOf(':');
    const file = colon < 0 ? rest : rest.slice(0, colon);
    if (!file) bad(input, 'expected docker-archive:FILE[:REF]');
    if (colon < 0) return { transport: 'docker-archive', file };
    const refText = rest.slice(colon + 1);
    const ref = parseDockerReference(refText);
    if (ref.digest !== undefined) bad(input, 'a docker-archive reference names a tag, not a digest');
    return { transport: 'docker-archive', file, ref };
  }
  if (input.startsWith('docker://')) return { transport: 'docker', ref: parseDockerReference(input.slice('docker://'.length)) };
  const m = /^([a-z][a-z0-9+-]{1,30}):/.exec(input);
  if (m && !looksLikePath(input) && ['dir', 'containers-storage', 'docker-daemon', 'oci-archive', 'sif', 'tarball'].includes(m[1] ?? '')) {
    bad(input, `transport ${m[1]}: is not supported (use oci:, docker-archive: or docker://)`);
  }
  if (looksLikePath(input) || opts.isLocalPath?.(input)) {
    return input.endsWith('.tar') ? { transport: 'docker-archive', file: input } : { transport: 'oci', dir: input };
  }
  return { transport: 'docker', ref: parseDockerReference(input) };
}

/** For commands that only read local layouts (`cocoon run`): the directory and tag, or BAD_USAGE. */
export function requireOciLayout(r: ImageReference, forWhat: string): { dir: string; tag?: string } {
  if (r.transport === 'oci') return r.tag === undefined ? { dir: r.dir } : { dir: r.dir, tag: r.tag };
  throw new CocoonError(
    'BAD_USAGE',
    `${forWhat} needs a local OCI layout, not ${formatImageReference(r)}; copy it first: cocoon image copy ${formatImageReference(r)} oci:DIR[:TAG]`,
  );
}
