import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { action, createOutput, type Output } from './output.js';
import { CocoonError } from '../errors.js';
import type { KeyWrapper } from '../image/ocicrypt.js';
import type { Platform } from '../image/oci.js';
import type { ImageReference } from '../image/reference.js';
import type { RegistryOptions } from '../image/registry.js';
import type { LayerTransform, Progress, TransportOptions } from '../image/transport.js';
import type { SingleBar } from 'cli-progress';

/** `cocoon image copy|encrypt|decrypt|inspect|unpack`: images in any transport (docs/images.md). */

export interface TransportFlags {
  platform?: string;
  creds?: string;
  srcCreds?: string;
  destCreds?: string;
  authfile?: string;
  insecure?: boolean;
  ca?: string[];
  certDir?: string;
  timeout?: string;
  json?: boolean;
  quiet?: boolean;
}

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** Adds the transport flags every image command shares. */
export function addTransportOptions(cmd: Command, opts: { twoSided?: boolean } = {}): Command {
  cmd
    .option('--platform <os/arch[/variant]>', 'platform to pick from a multi-platform index (default: linux/<host arch>)')
    .option('--creds <user:password>', 'registry credentials (basic auth, or for the bearer token service)');
  if (opts.twoSided) {
    cmd.option('--src-creds <user:password>', 'credentials for the source registry only').option('--dest-creds <user:password>', 'credentials for the destination registry only');
  }
  return cmd
    .option('--authfile <file>', 'docker-style auth file (default: $REGISTRY_AUTH_FILE, ~/.docker/config.json)')
    .option('--insecure', 'speak plain HTTP to the registry (loopback/test registries only)')
    .option('--ca <file>', 'trust this CA certificate (PEM) for registry TLS; repeatable', collect)
    .option('--cert-dir <dir>', 'certs.d-style directory: *.crt CAs, a *.cert/*.key client certificate')
    .option('--timeout <seconds>', 'idle timeout of each registry request', '60')
    .option('--json', 'print the result as JSON')
    .option('-q, --quiet', 'no progress output');
}

export async function parseRef(s: string): Promise<ImageReference> {
  const { parseImageReference } = await import('../image/reference.js');
  return parseImageReference(s, { isLocalPath: existsSync });
}

export async function transportOptions(f: TransportFlags, side: 'src' | 'dest' | 'both', out?: Output): Promise<TransportOptions> {
  const { parseCredentials } = await import('../image/registry.js');
  const { parsePlatform } = await import('../image/layout.js');
  if (f.timeout !== undefined && (!/^\d{1,5}$/.test(f.timeout) || Number(f.timeout) < 1)) throw new CocoonError('BAD_USAGE', '--timeout must be whole seconds ≥ 1');
  const creds = side === 'src' ? (f.srcCreds ?? f.creds) : side === 'dest' ? (f.destCreds ?? f.creds) : f.creds;
  const registry: RegistryOptions = {
    ...(creds !== undefined ? { credentials: parseCredentials(creds) } : {}),
    ...(f.insecure ? { insecure: true } : {}),
    ...(f.ca ? { caFiles: f.ca } : {}),
    ...(f.certDir ? { certDir: f.certDir } : {}),
    ...(f.authfile ? { authFile: f.authfile } : {}),
    timeoutMs: Number(f.timeout ?? '60') * 1000,
  };
  if (f.insecure && out) out.warn('--insecure: registry traffic is plain HTTP (no TLS)');
  const platform: Platform | undefined = f.platform !== undefined ? parsePlatform(f.platform) : undefined;
  return { registry, ...(platform ? { platform } : {}) };
}

/** Per-layer progress bars on a TTY; nothing with --json/--quiet or when stderr is not a terminal. */
export async function createProgress(f: { json?: boolean; quiet?: boolean }): Promise<{ progress?: Progress; stop(): void }> {
  if (f.json || f.quiet || !process.stderr.isTTY) return { stop: () => undefined };
  const cliProgress = (await import('cli-progress')).default;
  const multi = new cliProgress.MultiBar(
    {
      stream: process.stderr,
      clearOnComplete: false,
      hideCursor: true,
      format: ' {label} [{bar}] {percentage}% {valueMiB}/{totalMiB} MiB {note}',
      fps: 8,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, { bar: SingleBar; value: number; total: number }>();
  const mib = (n: number) => (n / 1048576).toFixed(1);
  return {
    progress: {
      start(id, label, total) {
        const bar = multi.create(Math.max(total, 1), 0, { label, note: '', valueMiB: mib(0), totalMiB: mib(total) });
        bars.set(id, { bar, value: 0, total });
      },
      advance(id, n) {
        const b = bars.get(id);
        if (!b) return;
        b.value += n;
        b.bar.update(Math.min(b.value, Math.max(b.total, 1)), { valueMiB: mib(b.value) });
      },
      done(id, note) {
        const b = bars.get(id);
        if (!b) return;
        b.bar.update(Math.max(b.total, 1), { note, valueMiB: mib(b.total) });
      },
    },
    stop: () => multi.stop(),
  };
}

interface KeyFlags {
  key?: string[];
  keyFile?: string;
  passphrase?: string;
}

/** Recipients able to open layers: JWE private keys (--key) and/or a Cocoon KEK (--key-file). */
export async function decryptionWrappers(f: KeyFlags): Promise<KeyWrapper[]> {
  const out: KeyWrapper[] = [];
  if (f.key && f.key.length > 0) {
    const { JweWrapper, loadPrivateKey } = await import('../image/jwe.js');
    const keys = [];
    for (const k of f.key) keys.push(await loadPrivateKey(k, f.passphrase ?? process.env.COCOON_KEY_PASSPHRASE));
    out.push(new JweWrapper([], keys));
  }
  if (f.keyFile) {
    const { readKekFile } = await import('../image/keyprovider.js');
    const { KekWrapper } = await import('../image/ocicrypt.js');
    out.push(new KekWrapper(await readKekFile(f.keyFile), 'kbs:///local/key/file'));
  }
  return out;
}

/** `--recipient jwe:FILE` (several collapse into one JWE) and `--recipient provider:cocoon:kbs:///…`. */
export async function encryptionWrappers(recipients: string[], keyFile: string | undefined): Promise<{ wrappers: KeyWrapper[]; kek?: Buffer }> {
  const jweFiles: string[] = [];
  const providers: string[] = [];
  for (const r of recipients) {
    if (r.startsWith('jwe:')) jweFiles.push(r.slice(4));
    else if (r.startsWith('provider:cocoon:')) providers.push(r.slice('provider:cocoon:'.length));
    else throw new CocoonError('BAD_USAGE', `--recipient must be jwe:FILE or provider:cocoon:kbs:///<repo>/<type>/<tag>: ${JSON.stringify(r.slice(0, 80))}`);
  }
  if (providers.length > 1) throw new CocoonError('BAD_USAGE', 'at most one provider:cocoon recipient');
  const wrappers: KeyWrapper[] = [];
  let kek: Buffer | undefined;
  if (jweFiles.length > 0) {
    const { JweWrapper, loadPublicKey } = await import('../image/jwe.js');
    const keys = [];
    for (const f of jweFiles) keys.push(await loadPublicKey(f));
    wrappers.push(new JweWrapper(keys));
  }
  const provider = providers[0];
  if (provider !== undefined) {
    const { parseProviderUri, readKekFile, kekFor } = await import('../image/keyprovider.js');
    const { KekWrapper } = await import('../image/ocicrypt.js');
    const uri = parseProviderUri(provider);
    kek = keyFile ? await readKekFile(keyFile) : await kekFor(uri);
    wrappers.push(new KekWrapper(kek, `kbs:///${uri.resource}`));
  }
  if (wrappers.length === 0) throw new CocoonError('BAD_USAGE', 'give at least one --recipient');
  return kek ? { wrappers, kek } : { wrappers };
}

function parseLayerList(s: string | undefined): number[] | undefined {
  if (s === undefined) return undefined;
  if (!/^-?\d{1,4}(,-?\d{1,4}){0,511}$/.test(s)) throw new CocoonError('BAD_USAGE', '--layers must be a comma-separated list of indexes (0-based; negative from the end)');
  return s.split(',').map(Number);
}

function human(bytes: number): string {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MiB` : bytes >= 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${bytes} B`;
}

async function runCopy(
  source: string,
  dest: string,
  f: TransportFlags,
  transform: LayerTransform | undefined,
  verb: string,
): Promise<void> {
  const out = createOutput(f);
  const { openSource, openSink, copyImage } = await import('../image/transport.js');
  const srcRef = await parseRef(source);
  const dstRef = await parseRef(dest);
  const src = await openSource(srcRef, await transportOptions(f, 'src', out));
  const dst = await openSink(dstRef, await transportOptions(f, 'dest'));
  const bars = await createProgress(f);
  try {
    out.step(`${verb} ${src.name} → ${dst.name}`);
    const r = await copyImage(src, dst, { ...(transform ? { transform } : {}), ...(bars.progress ? { progress: bars.progress } : {}) });
    bars.stop();
    out.result(
      `${verb} ${r.layers.length} layer(s) (${r.layers.filter((l) => l.skipped).length} already present)\n  manifest  ${r.manifestDigest}\n  source    ${r.sourceManifestDigest}`,
      { source: src.name, destination: dst.name, manifestDigest: r.manifestDigest, sourceManifestDigest: r.sourceManifestDigest, configDigest: r.configDigest, layers: r.layers },
    );
  } finally {
    bars.stop();
    await src.close();
  }
}

export function registerImage(program: Command): void {
  const image = program.command('image').description('copy, encrypt, decrypt, inspect and unpack images: OCI layouts, docker-archive tars, registries');
  const refHelp =
    '\nImage references: oci:DIR[:TAG], docker-archive:FILE[:NAME:TAG], docker://[REGISTRY/]REPO[:TAG][@sha256:…],\nor a bare path (a directory is an OCI layout, FILE.tar a docker archive) or registry reference (redis:7 = docker.io/library/redis:7).\nSee docs/images.md.';

  addTransportOptions(
    image
      .command('copy')
      .description('copy an image between transports (one platform); blobs already at the destination are skipped')
      .argument('<source>', 'source image reference')
      .argument('<dest>', 'destination image reference'),
    { twoSided: true },
  )
    .addHelpText('after', refHelp)
    .action(action(async (source: string, dest: string, f: TransportFlags) => runCopy(source, dest, f, undefined, 'copied')));

  addTransportOptions(
    image
      .command('encrypt')
      .description('encrypt layers in the ocicrypt format (readable by skopeo/containerd imgcrypt and CoCo)')
      .argument('<source>', 'source image reference')
      .argument('<dest>', 'destination image reference')
      .requiredOption('--recipient <spec>', 'jwe:PUBKEY.pem (RSA-OAEP / ECDH-ES+A256KW) or provider:cocoon:kbs:///<repo>/<type>/<tag>[?key-file=PATH]; repeatable', collect)
      .option('--key-file <file>', 'KEK (32 bytes, base64) for the provider:cocoon recipient (default: ?key-file= in the URI, else $COCOON_KEYPROVIDER_KEK_FILE)')
      .option('--layers <list>', 'encrypt only these layer indexes (0-based, negative from the end; default all)'),
    { twoSided: true },
  )
    .addHelpText('after', '\nWith a provider:cocoon recipient the layer keys are derived from the KEK (reproducible output);\nwith JWE recipients only they are random, as in ocicrypt.' + refHelp)
    .action(
      action(async (source: string, dest: string, f: TransportFlags & { recipient: string[]; keyFile?: string; layers?: string }) => {
        const layers = parseLayerList(f.layers);
        const { wrappers, kek } = await encryptionWrappers(f.recipient, f.keyFile);
        const { encryptTransform } = await import('../image/crypt.js');
        await runCopy(source, dest, f, encryptTransform(wrappers, { ...(kek ? { kek } : {}), ...(layers ? { layers } : {}) }), 'encrypted');
      }),
    );

  addTransportOptions(
    image
      .command('decrypt')
      .description('decrypt ocicrypt-encrypted layers (written by Cocoon, skopeo, imgcrypt)')
      .argument('<source>', 'source image reference')
      .argument('<dest>', 'destination image reference')
      .option('--key <file>', 'private key of a JWE recipient (PEM/DER/JWK); repeatable', collect)
      .option('--passphrase <text>', 'passphrase of an encrypted PEM key (default: $COCOON_KEY_PASSPHRASE)')
      .option('--key-file <file>', 'Cocoon KEK (32 bytes, base64) for provider.cocoon recipients'),
    { twoSided: true },
  )
    .addHelpText('after', '\nEach layer is authenticated (HMAC-SHA256 over the ciphertext) and its decrypted digest checked;\nnothing is committed at the destination when either fails.' + refHelp)
    .action(
      action(async (source: string, dest: string, f: TransportFlags & KeyFlags) => {
        const wrappers = await decryptionWrappers(f);
        const { decryptTransform } = await import('../image/crypt.js');
        await runCopy(source, dest, f, decryptTransform(wrappers), 'decrypted');
      }),
    );

  addTransportOptions(image.command('inspect').description('show an image: config, layers, labels; for wrapped images the measurement and the original launch config').argument('<image>', 'image reference'))
    .addHelpText('after', refHelp)
    .action(
      action(async (ref: string, f: TransportFlags) => {
        const out = createOutput(f);
        const { openSource } = await import('../image/transport.js');
        const { inspectImage } = await import('../image/operations.js');
        const src = await openSource(await parseRef(ref), await transportOptions(f, 'src', out));
        try {
          const r = await inspectImage(src);
          out.result(() => {
            const lines = [`${r.name}`, `  manifest   ${r.manifestDigest} (${r.manifestMediaType})`, `  config     ${r.configDigest}`, `  platform   ${r.platform}`, `  size       ${human(r.size)}`];
            for (const [k, v] of Object.entries(r.config)) lines.push(`  ${k.padEnd(10)} ${JSON.stringify(v)}`);
            lines.push('  labels');
            for (const [k, v] of Object.entries(r.labels).sort()) lines.push(`    ${k}=${v}`);
            lines.push('  layers');
            for (const l of r.layers) lines.push(`    ${l.digest}  ${human(l.size).padStart(10)}  ${l.compression}${l.encrypted ? ` encrypted (${(l.recipients ?? []).join(', ')})` : ''}`);
            if (r.wrapped) {
              lines.push('  wrapped by Cocoon', `    measurement  ${r.wrapped.measurement}`, `    policy       ${r.wrapped.policy}`, `    workload     ${r.wrapped.workload}`, `    kbs resource ${r.wrapped.kbsResource}`, `    launcher     ${r.wrapped.launcherDigest}`);
              const lc = r.wrapped.launchConfig;
              lines.push(`    entrypoint   ${JSON.stringify(lc.entrypoint)}`, `    cmd          ${JSON.stringify(lc.cmd)}`, `    env          ${JSON.stringify(lc.env)}`, `    workdir      ${lc.workingDir}`, `    user         ${lc.user}`);
              lines.push(`    encrypted application layers: ${r.wrapped.encryptedLayers.length}`);
            }
            process.stdout.write(lines.join('\n') + '\n');
          }, r);
        } finally {
          await src.close();
        }
      }),
    );

  addTransportOptions(
    image
      .command('unpack')
      .description('unpack an image into a directory with the safe unpacker (traversal, links, whiteouts, bombs checked)')
      .argument('<image>', 'image reference')
      .argument('<dir>', 'target directory (created; must be empty)')
      .option('--key <file>', 'private key for JWE-encrypted layers; repeatable', collect)
      .option('--passphrase <text>', 'passphrase of an encrypted PEM key')
      .option('--key-file <file>', 'Cocoon KEK for provider.cocoon-encrypted layers')
      .option('--allow-devices', 'create FIFOs and device nodes (devices need root); default: skip them'),
  )
    .addHelpText('after', '\nOwnership from the tar is applied when running as root. Limits and error codes: docs/images.md.' + refHelp)
    .action(
      action(async (ref: string, dir: string, f: TransportFlags & KeyFlags & { allowDevices?: boolean }) => {
        const out = createOutput(f);
        const { openSource } = await import('../image/transport.js');
        const { unpackImage } = await import('../image/operations.js');
        const keys = await decryptionWrappers(f);
        const src = await openSource(await parseRef(ref), await transportOptions(f, 'src', out));
        const bars = await createProgress(f);
        try {
          const r = await unpackImage(src, dir, { keys, ...(f.allowDevices ? { allowDevices: true } : {}), ...(bars.progress ? { progress: bars.progress } : {}), onWarning: (m) => out.warn(m) });
          bars.stop();
          out.result(`unpacked ${r.layers} layer(s) into ${dir}`, { dir, ...r });
        } finally {
          bars.stop();
          await src.close();
        }
      }),
    );
}
