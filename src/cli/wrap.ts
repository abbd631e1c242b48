import type { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { action, createOutput } from './output.js';
import { CocoonError } from '../errors.js';
import { readFileBounded } from '../util/read-bounded.js';
import type { GramineOptions } from '../image/gramine.js';
import { defaultLauncherDir } from '../util/package-root.js';
import { addTransportOptions, createProgress, parseRef, transportOptions, type TransportFlags } from './image.js';

const MAX_KEY_FILE = 1024;

/** Reads the image KEK (base64 text, 32 bytes) or creates it, 0600, when the file is absent. */
export async function loadOrCreateKek(file: string): Promise<{ kek: Buffer; created: boolean }> {
  const exists = await access(file).then(() => true, () => false);
  if (!exists) {
    const kek = randomBytes(32);
    await writeFile(file, kek.toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
    return { kek, created: true };
  }
  const text = (await readFileBounded(file, { max: MAX_KEY_FILE, what: 'image key' })).toString('utf8');
  const kek = Buffer.from(text.trim(), 'base64');
  if (kek.length !== 32 || kek.toString('base64') !== text.trim()) throw new CocoonError('INPUT_MALFORMED', `${file}: expected 32 bytes, base64`);
  return { kek, created: false };
}

type WrapFlags = TransportFlags & {
  policy: string;
  workload: string;
  keyFile: string;
  launcherDir?: string;
  kbsResource?: string;
  launcherCache?: boolean;
  libos?: string;
  sgxEnclaveSize?: string;
  sgxMaxThreads?: string;
  sgxIsvprodid?: string;
  sgxIsvsvn?: string;
  sgxDebug?: boolean;
};

function intFlag(raw: string | undefined, flag: string): number | undefined {
  if (raw === undefined) return undefined;
  if (!/^\d{1,5}$/.test(raw)) throw new CocoonError('BAD_USAGE', `${flag} must be a whole number`);
  return Number(raw);
}

/** The Gramine options of the wrap flags; BAD_USAGE for SGX flags without --libos gramine. */
export function gramineFlags(opts: WrapFlags): { libos?: 'gramine'; gramine?: GramineOptions } {
  const sgxFlags = opts.sgxEnclaveSize !== undefined || opts.sgxMaxThreads !== undefined || opts.sgxIsvprodid !== undefined || opts.sgxIsvsvn !== undefined || opts.sgxDebug === true;
  if (opts.libos === undefined) {
    if (sgxFlags) throw new CocoonError('BAD_USAGE', 'the --sgx-* options need --libos gramine');
    return {};
  }
  if (opts.libos !== 'gramine') throw new CocoonError('BAD_USAGE', `--libos: unknown LibOS ${JSON.stringify(opts.libos)} (supported: gramine)`);
  const maxThreads = intFlag(opts.sgxMaxThreads, '--sgx-max-threads');
  const isvProdId = intFlag(opts.sgxIsvprodid, '--sgx-isvprodid');
  const isvSvn = intFlag(opts.sgxIsvsvn, '--sgx-isvsvn');
  return {
    libos: 'gramine',
    gramine: {
      ...(opts.sgxEnclaveSize !== undefined ? { enclaveSize: opts.sgxEnclaveSize } : {}),
      ...(maxThreads !== undefined ? { maxThreads } : {}),
      ...(isvProdId !== undefined ? { isvProdId } : {}),
      ...(isvSvn !== undefined ? { isvSvn } : {}),
      ...(opts.sgxDebug ? { debug: true } : {}),
    },
  };
}

/** What to do with the manifest once the image is written (no Gramine runs here). */
export function gramineNextSteps(dest: string, manifestPath: string, sha256: string, debug: boolean): string {
  const base = manifestPath.replace(/\.manifest$/, '');
  return [
    `Gramine manifest  ${manifestPath} (sha256 ${sha256})${debug ? '\n  WARNING: sgx.debug = true — a DEBUG enclave, readable by the host; the KBS refuses it unless the policy allows debug' : ''}`,
    'Next, build an image that has Gramine 1.9 installed and this image\'s /cocoon copied in unchanged',
    `(e.g. COPY --from=<this image> /cocoon /cocoon; the wrapped image itself has no OS to install Gramine into), then in it:`,
    `  gramine-sgx-sign --manifest ${manifestPath} --output ${manifestPath}.sgx --key <key.pem from gramine-sgx-gen-private-key>`,
    `  gramine-sgx-sigstruct-view ${base}.sig      # prints mr_enclave: the value the policy's sgx rule must accept`,
    `  entrypoint: gramine-sgx ${base}   (with /dev/sgx_enclave and the AESM/DCAP quote provider; env COCOON_KBS_URL)`,
    `Source image of that build: ${dest}. See docs/tee-support.md (SGX with Gramine).`,
  ].join('\n');
}

export function registerWrap(program: Command): void {
  addTransportOptions(
    program
      .command('wrap')
      .description('repackage an image for confidential execution: encrypt its layers, measure it, make the launcher its entrypoint')
      .argument('<source>', 'source image: oci:DIR[:TAG], docker-archive:FILE, docker://REF, a layout directory or a registry reference')
      .argument('<dest>', 'destination: oci:DIR[:TAG] (created), docker-archive:FILE[:NAME:TAG] or docker://REF')
      .requiredOption('--policy <org/app>', 'policy the workload belongs to (part of the measurement)')
      .requiredOption('--workload <name>', 'workload name inside the policy (part of the measurement)')
      .requiredOption('--key-file <file>', 'image key (KEK) file, base64; created if absent — upload it with `cocoon secret put <org/app>/layer-key --file FILE`')
      .option('--kbs-resource <repo/type/tag>', 'KBS resource holding the image key (default: <org/app>/layer-key)')
      .option('--launcher-dir <dir>', 'launcher files to embed (default: dist/launcher-rootfs/cocoon from `npm run build`)')
      .option('--no-launcher-cache', 'do not reuse a cached compressed launcher layer ($COCOON_CACHE or ~/.cache/cocoon)')
      .option('--libos <name>', 'also write a LibOS manifest for SGX: "gramine" (Gramine 1.9 syntax) puts /cocoon/gramine/cocoon.manifest in the image, listing the launcher files and payload.json as trusted files so that MRENCLAVE covers the workload measurement')
      .option('--sgx-enclave-size <size>', 'with --libos gramine: sgx.enclave_size of every enclave (launcher and application), e.g. 4G (default 4G)')
      .option('--sgx-max-threads <n>', 'with --libos gramine: sgx.max_threads (default 64)')
      .option('--sgx-isvprodid <n>', 'with --libos gramine: sgx.isvprodid, ISV product ID put in the signature (default 0)')
      .option('--sgx-isvsvn <n>', 'with --libos gramine: sgx.isvsvn, ISV security version number (default 0)')
      .option('--sgx-debug', 'with --libos gramine: INSECURE debug enclave (sgx.debug = true; the host can read its memory) — development only'),
    { twoSided: true },
  )
    .addHelpText(
      'after',
      '\nThe output is reproducible: the same source, policy/workload names and key give a byte-identical\nmanifest and measurement. The printed measurement is what the policy must accept.\nSources and destinations other than OCI layouts are staged in a temporary layout ($COCOON_TMPDIR or the\nsystem temp dir). Example:\n  cocoon wrap docker-archive:redis.tar docker://127.0.0.1:5000/shop/redis:7-cc --insecure \\\n    --policy shop/redis --workload redis --key-file redis.key\nWith --libos gramine the image also carries a Gramine manifest to sign with gramine-sgx-sign; no Gramine\nis needed to wrap (docs/tee-support.md).\nSee docs/images.md.',
    )
    .action(
      action(async (source: string, dest: string, opts: WrapFlags) => {
        const out = createOutput(opts);
        const libos = gramineFlags(opts);
        const srcRef = await parseRef(source);
        const dstRef = await parseRef(dest);
        const { kek, created } = await loadOrCreateKek(opts.keyFile);
        if (created) out.info(`created image key ${opts.keyFile} (keep it private)`);
        const { wrapImage } = await import('../image/wrap.js');
        const { openSource, openSink, copyImage, LayoutSink, LayoutSource } = await import('../image/transport.js');
        const srcOpts = await transportOptions(opts, 'src', out);
        const stageRoot = process.env.COCOON_TMPDIR || tmpdir();
        const stages: string[] = [];
        const bars = await createProgress(opts);
        try {
          let srcLayout: { dir: string; tag?: string };
          if (srcRef.transport === 'oci') srcLayout = srcRef.tag !== undefined ? { dir: srcRef.dir, tag: srcRef.tag } : { dir: srcRef.dir };
          else {
            const dir = await mkdtemp(join(stageRoot, 'cocoon-wrap-src-'));
            stages.push(dir);
            out.step(`fetching ${source}`);
            const src = await openSource(srcRef, srcOpts);
            try {
              await copyImage(src, new LayoutSink(dir, 'source'), bars.progress ? { progress: bars.progress } : {});
            } finally {
              await src.close();
            }
            srcLayout = { dir, tag: 'source' };
          }
          let dstLayout: { dir: string; tag?: string };
          if (dstRef.transport === 'oci') dstLayout = dstRef.tag !== undefined ? { dir: dstRef.dir, tag: dstRef.tag } : { dir: dstRef.dir };
          else {
            const dir = await mkdtemp(join(stageRoot, 'cocoon-wrap-out-'));
            stages.push(dir);
            dstLayout = { dir, tag: 'wrapped' };
          }
          out.step(`wrapping ${source} → ${dest}`);
          const result = await wrapImage({
            source: { layoutDir: srcLayout.dir, ...(srcLayout.tag !== undefined ? { ref: srcLayout.tag } : {}), ...(srcRef.transport === 'oci' && srcOpts.platform ? { platform: srcOpts.platform } : {}) },
            dest: { layoutDir: dstLayout.dir, ...(dstLayout.tag !== undefined ? { ref: dstLayout.tag } : {}) },
            launcherDir: opts.launcherDir ?? defaultLauncherDir(),
            policy: opts.policy,
            workload: opts.workload,
            kek,
            ...(opts.kbsResource !== undefined ? { kbsResource: opts.kbsResource } : {}),
            ...(opts.launcherCache === false ? { launcherCacheDir: false as const } : {}),
            onProgress: (m) => out.info(m),
            ...libos,
          });
          let manifestDigest = result.manifestDigest;
          if (dstRef.transport !== 'oci') {
            out.step(`writing ${dest}`);
            const sink = await openSink(dstRef, await transportOptions(opts, 'dest'));
            const r = await copyImage(new LayoutSource(dstLayout.dir, dstLayout.tag, undefined), sink, bars.progress ? { progress: bars.progress } : {});
            manifestDigest = r.manifestDigest;
          }
          bars.stop();
          const gm = result.gramineManifest;
          out.result(
            `wrapped ${result.layers.length} layer(s)\n  manifest     ${manifestDigest}\n  launcher     ${result.launcherDigest}\n  measurement  ${result.measurement}\n\nNext: accept this measurement in the policy of ${opts.policy}, workload ${opts.workload},\nand upload the image key: cocoon secret put ${opts.policy}/layer-key --file ${opts.keyFile}` +
              (gm ? `\n\n${gramineNextSteps(dest, gm.path, gm.sha256, libos.gramine?.debug === true)}` : ''),
            {
              manifestDigest,
              configDigest: result.configDigest,
              launcherDigest: result.launcherDigest,
              measurement: result.measurement,
              layers: result.layers.length,
              keyFile: opts.keyFile,
              keyCreated: created,
              destination: dest,
              ...(gm ? { gramineManifest: gm } : {}),
            },
          );
        } finally {
          bars.stop();
          await Promise.all(stages.map((d) => rm(d, { recursive: true, force: true })));
        }
      }),
    );
}
