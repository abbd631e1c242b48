import type { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { access, readFile, writeFile } from 'node:fs/promises';
import { action, createOutput } from './output.js';
import { CocoonError } from '../errors.js';
import { defaultLauncherDir } from '../util/package-root.js';
import { splitImageRef } from '../runtime/runc.js';

const MAX_KEY_FILE = 1024;

/** Reads the image KEK (base64 text, 32 bytes) or creates it, 0600, when the file is absent. */
export async function loadOrCreateKek(file: string): Promise<{ kek: Buffer; created: boolean }> {
  const exists = await access(file).then(() => true, () => false);
  if (!exists) {
    const kek = randomBytes(32);
    await writeFile(file, kek.toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
    return { kek, created: true };
  }
  const text = await readFile(file, 'utf8');
  if (text.length > MAX_KEY_FILE) throw new CocoonError('INPUT_TOO_LARGE', `${file}: key file too large`);
  const kek = Buffer.from(text.trim(), 'base64');
  if (kek.length !== 32 || kek.toString('base64') !== text.trim()) throw new CocoonError('INPUT_MALFORMED', `${file}: expected 32 bytes, base64`);
  return { kek, created: false };
}

export function registerWrap(program: Command): void {
  program
    .command('wrap')
    .description('repackage an OCI image for confidential execution: encrypt its layers, measure it, make the launcher its entrypoint')
    .argument('<source>', 'source image: OCI layout directory, optionally oci:DIR:TAG')
    .argument('<dest>', 'destination OCI layout directory, optionally oci:DIR:TAG (created)')
    .requiredOption('--policy <org/app>', 'policy the workload belongs to (part of the measurement)')
    .requiredOption('--workload <name>', 'workload name inside the policy (part of the measurement)')
    .requiredOption('--key-file <file>', 'image key (KEK) file, base64; created if absent — upload it with `cocoon secret put <org/app>/layer-key --file FILE`')
    .option('--launcher-dir <dir>', 'launcher files to embed (default: dist/launcher-rootfs/cocoon from `npm run build`)')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nThe output is reproducible: the same source, policy/workload names and key give a byte-identical\nmanifest and measurement. The printed measurement is what the policy must accept. See docs/images.md.')
    .action(
      action(async (source: string, dest: string, opts: { policy: string; workload: string; keyFile: string; launcherDir?: string; json?: boolean }) => {
        const out = createOutput(opts);
        const [srcDir, srcRef] = splitImageRef(source);
        const [dstDir, dstRef] = splitImageRef(dest);
        const { kek, created } = await loadOrCreateKek(opts.keyFile);
        if (created) out.info(`created image key ${opts.keyFile} (keep it private)`);
        const { wrapImage } = await import('../image/wrap.js');
        out.step(`wrapping ${source} → ${dest}`);
        const result = await wrapImage({
          source: { layoutDir: srcDir, ...(srcRef ? { ref: srcRef } : {}) },
          dest: { layoutDir: dstDir, ...(dstRef ? { ref: dstRef } : {}) },
          launcherDir: opts.launcherDir ?? defaultLauncherDir(),
          policy: opts.policy,
          workload: opts.workload,
          kek,
        });
        out.result(
          `wrapped ${result.layers.length} layer(s)\n  manifest     ${result.manifestDigest}\n  launcher     ${result.launcherDigest}\n  measurement  ${result.measurement}\n\nNext: accept this measurement in the policy of ${opts.policy}, workload ${opts.workload},\nand upload the image key: cocoon secret put ${opts.policy}/layer-key --file ${opts.keyFile}`,
          { manifestDigest: result.manifestDigest, configDigest: result.configDigest, launcherDigest: result.launcherDigest, measurement: result.measurement, layers: result.layers.length, keyFile: opts.keyFile, keyCreated: created },
        );
      }),
    );
}
