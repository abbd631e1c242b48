import type { Command } from 'commander';
import { action } from './output.js';

export function registerLaunch(program: Command): void {
  program
    .command('launch')
    .description('the launcher: PID 1 of a wrapped image (attest, unseal, decrypt, inject, start the app)')
    .addHelpText(
      'after',
      '\nYou do not normally run this yourself: `cocoon wrap` makes /cocoon/launcher.mjs the image entrypoint.\n' +
        'Settings come from the environment:\n' +
        '  COCOON_KBS_URL              Key Broker Service URL (required)\n' +
        '  COCOON_TEE                  sim|tdx|snp|sgx|tpm|az-snp-vtpm|az-tdx-vtpm (default: detect; sim only when named)\n' +
        '  COCOON_PAYLOAD              payload directory (default /cocoon/payload)\n' +
        '  COCOON_ROOT                 in-memory application root (default /cocoon/root)\n' +
        '  COCOON_SIM_DEVICE           sim platform key directory (default /run/cocoon/sim)\n' +
        '  COCOON_KBS_RETRIES          attempts to reach the KBS (default 6)\n' +
        '  COCOON_KBS_RETRY_DELAY_MS   first backoff delay (default 250, doubles, with jitter)\n' +
        '  COCOON_KBS_RETRY_MAX_DELAY_MS  backoff cap (default 5000)\n' +
        '  COCOON_KBS_TIMEOUT_MS       per-request timeout (default 10000)\n' +
        '  COCOON_STOP_GRACE_MS        SIGTERM grace before SIGKILL (default 10000)\n' +
        'See docs/launcher.md.',
    )
    .action(
      action(async () => {
        const { launcherConfigFromEnv } = await import('../launcher/config.js');
        const { createLauncherLog } = await import('../launcher/log.js');
        const { launch } = await import('../launcher/launch.js');
        return launch(launcherConfigFromEnv(process.env), createLauncherLog());
      }),
    );
}
