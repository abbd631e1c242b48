import type { Command } from 'commander';
import { mkdir } from 'node:fs/promises';
import { action, createOutput } from './output.js';
import { configDir, configPaths, resolveKbsUrl } from './config.js';
import { CocoonError } from '../errors.js';
import { addCollateralOptions, collateralTrust, type CollateralCliOptions } from './verify.js';
import { MAX_PEM_FILE, collect, readArgFile } from './flags.js';

export function registerAttest(program: Command): void {
  const cmd = program
    .command('attest')
    .description("verify the KBS's own evidence and pin its deployment CA (and TLS key) in the config directory")
    .option('--kbs <url>', 'Key Broker Service URL (default: $COCOON_KBS_URL or the config file)')
    .option('--expect-measurement <hex>', 'SHA-384 (96 hex characters) the KBS measurement must be: the signed sim report, or the event log replayed against the TPM PCR / TDX RTMR3')
    .option('--trusted-ak <pem>', "PEM public key of the KBS's TPM attestation key (tpm evidence; repeatable); without it TPM evidence is refused (AK_NOT_TRUSTED)", collect, [])
    .option('--insecure-sim', 'accept INSECURE simulated evidence, verified against <config-dir>/sim/root.pem (development only)')
    .option('--sim-root <file>', 'with --insecure-sim: PEM root of the simulated TEE (default: <config-dir>/sim/root.pem)')
    .option('--config-dir <dir>', 'config directory')
    .option('--json', 'print JSON');
  addCollateralOptions(cmd, 'PEM chain: VCEK/VLEK, ASK/ASVK, ARK (snp; default: the VEK in the evidence + pinned AMD roots); ASK, ARK (az-snp-vtpm)')
    .addHelpText(
      'after',
      '\nFetches GET /cocoon/v1/attestation?nonce=<fresh> and checks that the evidence verifies and that its report data binds\n' +
        'the nonce, the TLS key of this connection (https) and the returned deployment CA root. Writes kbs-pin.json and\n' +
        'kbs-ca.pem to the config directory; later owner-API calls over HTTPS to that KBS must present the pinned TLS key.\n' +
        'Trust kbs-ca.pem to talk to workloads through their TLS ingress (docs/tls.md).\n' +
        'Hardware evidence is verified as by `cocoon verify` (pinned Intel/AMD roots; collateral from --collateral/--certs or,\n' +
        'unless --offline, Intel PCS / AMD KDS); TPM quotes only with a --trusted-ak key. On tpm, and tdx with RTMR3, the KBS\n' +
        'measurement is the replayed event log; snp, sgx and Azure evidence binds none (--expect-measurement is then refused).',
    )
    .action(
      action(async (opts: CollateralCliOptions & { kbs?: string; expectMeasurement?: string; trustedAk: string[]; insecureSim?: boolean; simRoot?: string; configDir?: string; json?: boolean }) => {
        const out = createOutput(opts);
        const dir = configDir(opts.configDir);
        const kbsUrl = await resolveKbsUrl(opts.kbs, dir);
        let insecureSimRoots: string[] | undefined;
        if (opts.insecureSim) {
          const file = opts.simRoot ?? configPaths(dir).simRoot;
          insecureSimRoots = [(await readArgFile(file, MAX_PEM_FILE, '--insecure-sim: the sim root (cocoon init creates it)')).toString('utf8')];
        } else if (opts.simRoot) {
          throw new CocoonError('BAD_USAGE', '--sim-root needs --insecure-sim');
        }
        const { readTrustedAkFiles } = await import('../kbs/verifier.js');
        const trustedAks = await readTrustedAkFiles(opts.trustedAk);
        const { attestKbs } = await import('../kbs/client/kbs-attest.js');
        const result = await attestKbs({
          kbsUrl,
          ...(opts.expectMeasurement !== undefined ? { expectMeasurement: opts.expectMeasurement.toLowerCase() } : {}),
          ...(insecureSimRoots ? { insecureSimRoots } : {}),
          trustedAks,
          trustFor: (tee) => collateralTrust(tee, opts),
        });
        if (result.insecure) out.warn('INSECURE: simulated TEE — the KBS evidence is signed by a software key and proves nothing');
        if (!result.tlsSpkiSha256) out.warn(`${kbsUrl} is plain HTTP: the CA root is pinned, but later calls to this KBS are not protected by TLS`);
        if (result.measurement === null) out.warn(`the ${result.tee} evidence binds no KBS measurement (no runtime register): only the TEE's launch measurement (see --json claims) says what runs`);
        else if (opts.expectMeasurement === undefined) out.warn('no --expect-measurement: any KBS measurement was accepted; compare it with the one you expect');
        if (result.claims.debug === true || result.claims.td_debug === true || result.claims.snp_debug === true) out.warn('the KBS runs in a DEBUG TEE: its memory is readable by the host');
        await mkdir(dir, { recursive: true, mode: 0o700 });
        const { writePin, pinPaths } = await import('./kbs-pin.js');
        const pin = await writePin(dir, result);
        out.result(
          `KBS ${result.kbsUrl} attested (${result.tee}${result.insecure ? ', INSECURE' : ''})${result.tcbStatus ? `\n  TCB status    ${result.tcbStatus}` : ''}\n  measurement   ${result.measurement ?? '(not bound by the evidence)'}\n  CA root       sha256:${result.caRootSha256} → ${pinPaths(dir).ca}\n  TLS key       ${result.tlsSpkiSha256 ? `sha256:${result.tlsSpkiSha256}` : '(plain HTTP)'}\n  pin           ${pinPaths(dir).json}`,
          { ...pin, caFile: pinPaths(dir).ca, pinFile: pinPaths(dir).json, ...(result.tcbStatus ? { tcbStatus: result.tcbStatus } : {}), claims: result.claims },
        );
      }),
    );
}
