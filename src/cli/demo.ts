import type { Command } from 'commander';
import { action, createOutput } from './output.js';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('the whole story in one command: KBS, wrapped Redis, policy, attested start, proof, refusal (simulated TEE)')
    .option('--json', 'print one JSON object summarising every step')
    .option('--keep', 'leave the KBS, the container and the temp directory running for a look around')
    .option('--image-cache <dir>', 'where test images are cached (default: $COCOON_CACHE or /var/cache/cocoon)')
    .addHelpText(
      'after',
      '\nSteps: 1 start `cocoon serve --allow-sim` on loopback; 2 build (or reuse) a Redis OCI image from Debian\n' +
        'packages; 3 `cocoon wrap` it; 4 apply a policy accepting its measurement and granting a random password;\n' +
        '5 `cocoon run` it with runc (the launcher attests and decrypts into memory); 6 PONG with the password,\n' +
        'NOAUTH without; 7 a modified image is refused (POLICY_DENIED). Needs root, runc (scripts/setup.sh).',
    )
    .action(
      action(async (opts: { json?: boolean; keep?: boolean; imageCache?: string }) => {
        const out = createOutput(opts);
        const { runDemo } = await import('./demo/run-demo.js');
        const summary = await runDemo({ keep: Boolean(opts.keep), out, ...(opts.imageCache ? { imageCache: opts.imageCache } : {}) });
        out.result(
          `\nmeasurement  ${summary.wrap.measurement}\npolicy       ${summary.policy.name} v${summary.policy.version}\nproof        ${summary.proof.withPassword.join(' ')} with password; ${summary.proof.withoutPassword.join(' ')} without\nrefused      modified image → ${summary.negative.code}, app started: ${summary.negative.appStarted}\ntimings ms   ${Object.entries(summary.timings).map(([k, v]) => `${k.replace(/Ms$/, '')}=${v}`).join(' ')}`,
          summary,
        );
      }),
    );
}
