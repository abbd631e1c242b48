import type { Command } from 'commander';
import { mkdir, readFile } from 'node:fs/promises';
import { action, createOutput } from './output.js';
import { configDir, configPaths, resolveKbsUrl } from './config.js';
import { CocoonError } from '../errors.js';

export function registerAttest(program: Command): void {
  program
    .command('attest')
    .description("verify the KBS's own evidence and pin its deployment CA (and TLS key) in the config directory")
    .option('--kbs <url>', 'Key Broker Service URL (default: $COCOON_KBS_URL or the config file)')
    .option('--expect-measurement <hex>', 'SHA-384 (96 hex characters) the KBS must report')
    .option('--insecure-sim', 'accept INSECURE simulated evidence, verified against <config-dir>/sim/root.pem (development only)')
    .option('--sim-root <file>', 'with --insecure-sim: PEM root of the simulated TEE (default: <config-dir>/sim/root.pem)')
    .option('--config-dir <dir>', 'config directory')
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      '\nFetches GET /cocoon/v1/attestation?nonce=<fresh> and checks that the evidence verifies and that its report data binds\n' +
        'the nonce, the TLS key of this connection (https) and the returned deployment CA root. Writes kbs-pin.json and\n' +
        'kbs-ca.pem to the config directory; later owner-API calls over HTTPS to that KBS must present the pinned TLS key.\n' +
        'Trust kbs-ca.pem to talk to workloads through their TLS ingress (docs/tls.md).',
    )
    .action(
      action(async (opts: { kbs?: string; expectMeasurement?: string; insecureSim?: boolean; simRoot?: string; configDir?: string; json?: boolean }) => {
        const out = createOutput(opts);
        const dir = configDir(opts.configDir);
        const kbsUrl = await resolveKbsUrl(opts.kbs, dir);
        let insecureSimRoots: string[] | undefined;
        if (opts.insecureSim) {
          const file = opts.simRoot ?? configPaths(dir).simRoot;
          const pem = await readFile(file, 'utf8').catch((err: unknown) => {
            throw new CocoonError('BAD_USAGE', `--insecure-sim: cannot read the sim root ${file} (cocoon init creates it)`, { cause: err });
          });
          if (pem.length > 64 * 1024) throw new CocoonError('INPUT_TOO_LARGE', `${file} larger than 64 KiB`);
          insecureSimRoots = [pem];
        } else if (opts.simRoot) {
          throw new CocoonError('BAD_USAGE', '--sim-root needs --insecure-sim');
        }
        const { attestKbs } = await import('../kbs/client/kbs-attest.js');
        const result = await attestKbs({ kbsUrl, ...(opts.expectMeasurement !== undefined ? { expectMeasurement: opts.expectMeasurement.toLowerCase() } : {}), ...(insecureSimRoots ? { insecureSimRoots } : {}) });
        if (result.insecure) out.warn('INSECURE: simulated TEE — the KBS evidence is signed by a software key and proves nothing');
        if (!result.tlsSpkiSha256) out.warn(`${kbsUrl} is plain HTTP: the CA root is pinned, but later calls to this KBS are not protected by TLS`);
        if (opts.expectMeasurement === undefined) out.warn('no --expect-measurement: any KBS measurement was accepted; compare it with the one you expect');
        await mkdir(dir, { recursive: true, mode: 0o700 });
        const { writePin, pinPaths } = await import('./kbs-pin.js');
        const pin = await writePin(dir, result);
        out.result(
          `KBS ${result.kbsUrl} attested (${result.tee}${result.insecure ? ', INSECURE' : ''})\n  measurement   ${result.measurement}\n  CA root       sha256:${result.caRootSha256} → ${pinPaths(dir).ca}\n  TLS key       ${result.tlsSpkiSha256 ? `sha256:${result.tlsSpkiSha256}` : '(plain HTTP)'}\n  pin           ${pinPaths(dir).json}`,
          { ...pin, caFile: pinPaths(dir).ca, pinFile: pinPaths(dir).json },
        );
      }),
    );
}
