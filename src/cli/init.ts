import type { Command } from 'commander';
import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import { action, createOutput } from './output.js';
import { configDir, configPaths } from './config.js';
import { CocoonError } from '../errors.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('create your owner key and a simulated-TEE platform in the config directory')
    .option('--config-dir <dir>', 'config directory (default: $COCOON_CONFIG_DIR or ~/.config/cocoon)')
    .option('--kbs <url>', 'default KBS URL for later commands')
    .option('--force', 'replace an existing owner key (the KBS will no longer accept the old one)')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      '\nWrites owner.key.json (private, 0600), owner.pub.json (give it to `cocoon serve --owner`),\n' +
        'sim/root.pem (trusted by `cocoon serve --allow-sim`) and sim/platform/ (used by `cocoon run --tee sim`).',
    )
    .action(
      action(async (opts: { configDir?: string; kbs?: string; force?: boolean; json?: boolean }) => {
        const out = createOutput(opts);
        const dir = configDir(opts.configDir);
        const paths = configPaths(dir);
        const exists = await access(paths.ownerKey).then(() => true, () => false);
        if (exists && !opts.force) throw new CocoonError('CONFLICT', `${paths.ownerKey} exists; pass --force to replace it`);
        await mkdir(dir, { recursive: true, mode: 0o700 });
        if (exists) await Promise.all([rm(paths.ownerKey, { force: true }), rm(paths.ownerPublicKey, { force: true }), rm(paths.simDir, { recursive: true, force: true })]);
        const { createOwnerKey } = await import('../kbs/owner-key.js');
        const owner = await createOwnerKey(paths.ownerKey, paths.ownerPublicKey);
        const { createSimPlatform } = await import('../attester/sim-platform.js');
        await createSimPlatform(paths.simDir);
        if (opts.kbs) await writeFile(paths.settings, JSON.stringify({ kbsUrl: opts.kbs }, null, 2) + '\n', { mode: 0o600 });
        out.result(
          `initialised ${dir}\n  owner key      ${paths.ownerKey} (id ${owner.kid})\n  owner pub key  ${paths.ownerPublicKey}\n  sim root       ${paths.simRoot} (INSECURE: for development only)`,
          { configDir: dir, ownerKeyId: owner.kid, ownerKey: paths.ownerKey, ownerPublicKey: paths.ownerPublicKey, simRoot: paths.simRoot, simPlatform: paths.simPlatform },
        );
      }),
    );
}
