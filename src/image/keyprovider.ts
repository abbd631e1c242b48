import { readFile } from 'node:fs/promises';
import { CocoonError } from '../errors.js';
import { ANNOTATION_PROVIDER_COCOON, KekWrapper } from './ocicrypt.js';
import { checkKbsResource } from './wrapped.js';

/**
 * Cocoon's ocicrypt key provider (`provider:cocoon:<kbs-resource-uri>`), and the ocicrypt
 * keyprovider command protocol (containers/ocicrypt, "keyprovider" key wrapper):
 *
 *   stdin  {"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"cocoon":["<b64 uri>"]},…},"optsdata":"<b64>"}}
 *   stdout {"keywrapresults":{"annotation":"<b64>"}}
 *   stdin  {"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"cocoon":["<b64 uri>"]}},"annotation":"<b64>"}}
 *   stdout {"keyunwrapresults":{"optsdata":"<b64>"}}
 *
 * The annotation is CoCo's attestation-agent shape, `{"kid":"kbs:///<repo>/<type>/<tag>",
 * "wrapped_data","iv","wrap_type":"A256GCM"}` (KekWrapper). The KEK is the KBS resource named by
 * the URI; keywrap reads it from a local key file (`?key-file=PATH` in the URI, else
 * $COCOON_KEYPROVIDER_KEK_FILE). keyunwrap uses such a file when one is named, else — inside a
 * TEE, with $COCOON_KBS_URL set — attests to the KBS and fetches the resource (kekFromKbs).
 */

export const PROVIDER_NAME = 'cocoon';
export const KEK_FILE_ENV = 'COCOON_KEYPROVIDER_KEK_FILE';
const MAX_REQUEST = 1 << 20;
const MAX_KEK_FILE = 1024;

export interface ProviderUri {
  /** `<repo>/<type>/<tag>` */
  resource: string;
  keyFile?: string;
}

/** Parses `kbs:///<repo>/<type>/<tag>[?key-file=PATH]`. */
export function parseProviderUri(s: string): ProviderUri {
  if (s.length > 4096) throw new CocoonError('BAD_USAGE', 'key provider URI too long');
  const m = /^kbs:\/\/\/([^?#]+)(?:\?([^#]*))?$/.exec(s);
  if (!m || !m[1]) throw new CocoonError('BAD_USAGE', `key provider URI must look like kbs:///<repo>/<type>/<tag>[?key-file=PATH]: ${JSON.stringify(s.slice(0, 120))}`);
  const resource = m[1];
  checkKbsResource(resource);
  const out: ProviderUri = { resource };
  if (m[2] !== undefined && m[2] !== '') {
    const q = new URLSearchParams(m[2]);
    for (const k of q.keys()) if (k !== 'key-file') throw new CocoonError('BAD_USAGE', `key provider URI: unknown parameter ${JSON.stringify(k)}`);
    const f = q.get('key-file');
    if (f) out.keyFile = f;
  }
  return out;
}

/** Strict reader of a KEK file: 32 bytes, base64 text (what `cocoon wrap --key-file` writes). */
export async function readKekFile(path: string): Promise<Buffer> {
  let text: string;
  try {
    const b = await readFile(path);
    if (b.length > MAX_KEK_FILE) throw new CocoonError('INPUT_TOO_LARGE', `${path}: key file too large`);
    text = b.toString('utf8').trim();
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new CocoonError((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  const kek = Buffer.from(text, 'base64');
  if (kek.length !== 32 || kek.toString('base64') !== text) throw new CocoonError('INPUT_MALFORMED', `${path}: expected 32 bytes, base64`);
  return kek;
}

export async function kekFor(uri: ProviderUri, env: NodeJS.ProcessEnv = process.env): Promise<Buffer> {
  const file = uri.keyFile ?? env[KEK_FILE_ENV];
  if (!file) {
    throw new CocoonError(
      'SECRET_MISSING',
      `no key for kbs:///${uri.resource}: name a local key file (?key-file=PATH or $${KEK_FILE_ENV}); inside a TEE the launcher gets it from the KBS after attestation`,
    );
  }
  return readKekFile(file);
}

/** A 32-byte KEK from a released secret: raw bytes, or base64 text as `cocoon wrap --key-file` writes it. */
function kekFromSecret(b: Buffer, what: string): Buffer {
  if (b.length === 32) return Buffer.from(b);
  const text = b.toString('utf8').trim();
  const k = Buffer.from(text, 'base64');
  if (k.length === 32 && k.toString('base64') === text) return k;
  throw new CocoonError('INPUT_MALFORMED', `${what}: the released key is not 32 bytes`);
}

/**
 * keyunwrap inside a TEE: attest to the KBS ($COCOON_KBS_URL, RCAR with the TEE's evidence —
 * $COCOON_TEE or detection, as the launcher does) as workload $COCOON_WORKLOAD with measurement
 * $COCOON_MEASUREMENT of policy <repo>/<type>, and fetch the resource named by the kid. The KBS
 * releases `<org>/<app>/layer-key` only to a workload its policy accepts.
 */
export async function kekFromKbs(uri: ProviderUri, env: NodeJS.ProcessEnv): Promise<Buffer> {
  const workload = env.COCOON_WORKLOAD ?? '';
  const measurement = env.COCOON_MEASUREMENT ?? '';
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(workload)) throw new CocoonError('BAD_USAGE', 'COCOON_WORKLOAD must name the workload to attest as');
  if (!/^[0-9a-f]{96}$/.test(measurement)) throw new CocoonError('BAD_USAGE', 'COCOON_MEASUREMENT must be the workload measurement (96 lowercase hex digits)');
  const [org, app] = uri.resource.split('/') as [string, string];
  const { launcherConfigFromEnv } = await import('../launcher/config.js');
  const { chooseAttester } = await import('../launcher/detect.js');
  const { attestAndFetch } = await import('../kbs/client/rcar.js');
  const cfg = launcherConfigFromEnv(env);
  const { attester } = chooseAttester(cfg.tee, cfg.simDir, undefined, cfg.attester);
  const fetched = await attestAndFetch({
    kbsUrl: cfg.kbsUrl,
    tee: attester.tee,
    evidenceProvider: (reportData) => attester.getEvidence(reportData, measurement),
    initData: { policy: `${org}/${app}`, workload },
    resources: [uri.resource],
    retry: cfg.retry,
    timeoutMs: cfg.requestTimeoutMs,
  });
  const released = fetched.resources[uri.resource];
  if (!released) throw new CocoonError('SECRET_MISSING', `the KBS released nothing for ${uri.resource}`);
  try {
    return kekFromSecret(released, `kbs:///${uri.resource}`);
  } finally {
    released.fill(0);
  }
}

/** The KeyWrapper for `--recipient provider:cocoon:<uri>` (and for decrypting with a key file). */
export async function providerWrapper(uriText: string, env: NodeJS.ProcessEnv = process.env): Promise<KekWrapper> {
  const uri = parseProviderUri(uriText);
  return new KekWrapper(await kekFor(uri, env), `kbs:///${uri.resource}`);
}

// ---- the command protocol ----------------------------------------------------------------------

type Json = Record<string, unknown>;

function bad(msg: string): never {
  throw new CocoonError('INPUT_MALFORMED', `keyprovider request: ${msg}`);
}

function b64(v: unknown, what: string, max = MAX_REQUEST): Buffer {
  if (typeof v !== 'string' || v.length > max || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) bad(`${what} must be base64`);
  return Buffer.from(v, 'base64');
}

/** The provider parameters ocicrypt passes (`Parameters.cocoon`: base64 strings), decoded. */
function providerParams(cfg: unknown, what: string): string[] {
  if (cfg === undefined || cfg === null) return [];
  if (typeof cfg !== 'object' || Array.isArray(cfg)) bad(`${what} must be an object`);
  const params = (cfg as Json).Parameters;
  if (params === undefined || params === null) return [];
  if (typeof params !== 'object' || Array.isArray(params)) bad(`${what}.Parameters must be an object`);
  const list = (params as Json)[PROVIDER_NAME];
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list) || list.length > 64) bad(`${what}.Parameters.${PROVIDER_NAME} must be an array`);
  return list.map((x, i) => b64(x, `${what}.Parameters.${PROVIDER_NAME}[${i}]`, 8192).toString('utf8'));
}

/** Handles one keyprovider request (the bytes read from stdin); returns the bytes for stdout. */
export async function handleKeyProviderRequest(input: Buffer, env: NodeJS.ProcessEnv = process.env): Promise<Buffer> {
  if (input.length > MAX_REQUEST) throw new CocoonError('INPUT_TOO_LARGE', `keyprovider request larger than ${MAX_REQUEST} bytes`);
  let req: Json;
  try {
    req = JSON.parse(input.toString('utf8')) as Json;
  } catch {
    bad('not JSON');
  }
  if (typeof req !== 'object' || req === null || Array.isArray(req)) bad('expected an object');
  if (req.op === 'keywrap') {
    const p = req.keywrapparams as Json | undefined;
    if (typeof p !== 'object' || p === null) bad('keywrapparams missing');
    const optsData = b64(p.optsdata, 'keywrapparams.optsdata');
    const uris = providerParams(p.ec, 'keywrapparams.ec');
    const [uri, ...more] = uris;
    if (uri === undefined) bad(`keywrapparams.ec.Parameters has no ${PROVIDER_NAME} entry (use --encryption-key provider:${PROVIDER_NAME}:kbs:///<repo>/<type>/<tag>)`);
    if (more.length > 0) throw new CocoonError('BAD_USAGE', `one provider:${PROVIDER_NAME} recipient per image (got ${uris.length})`);
    const w = await providerWrapper(uri, env);
    const annotation = Buffer.from(await w.wrap(optsData), 'base64');
    return Buffer.from(JSON.stringify({ keywrapresults: { annotation: annotation.toString('base64') } }));
  }
  if (req.op === 'keyunwrap') {
    const p = req.keyunwrapparams as Json | undefined;
    if (typeof p !== 'object' || p === null) bad('keyunwrapparams missing');
    const annotation = b64(p.annotation, 'keyunwrapparams.annotation');
    let kid: unknown;
    try {
      kid = (JSON.parse(annotation.toString('utf8')) as Json).kid;
    } catch {
      throw new CocoonError('IMAGE_INVALID', 'key provider annotation: not JSON');
    }
    if (typeof kid !== 'string') throw new CocoonError('IMAGE_INVALID', 'key provider annotation: no kid');
    const fromKid = parseProviderUri(kid);
    // a key file named in the decryption parameters for the same resource wins over the environment
    const given = providerParams(p.dc, 'keyunwrapparams.dc')
      .filter((u) => u.startsWith('kbs:///'))
      .map(parseProviderUri)
      .find((u) => u.resource === fromKid.resource && u.keyFile !== undefined);
    const local = given ?? fromKid;
    // a local key file (URI or environment) first; else, with a KBS configured, attest for it
    const kek = local.keyFile === undefined && env[KEK_FILE_ENV] === undefined && env.COCOON_KBS_URL ? await kekFromKbs(fromKid, env) : await kekFor(local, env);
    const w = new KekWrapper(kek, kid);
    const optsData = await w.unwrap(annotation.toString('base64'));
    return Buffer.from(JSON.stringify({ keyunwrapresults: { optsdata: optsData.toString('base64') } }));
  }
  bad(`unknown op ${JSON.stringify(String(req.op).slice(0, 40))}`);
}

export { ANNOTATION_PROVIDER_COCOON };
