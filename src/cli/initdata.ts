import type { Command } from 'commander';
import { writeFile } from 'node:fs/promises';
import { CocoonError } from '../errors.js';
import { action, createOutput } from './output.js';
import { collect } from './flags.js';
import { readArgFile } from './flags.js';

/** The init-data bound (src/kbs/init-data.ts MAX_INITDATA_BYTES) for every file that goes into one. */
const MAX_FILE = 64 * 1024;

async function readSmall(file: string, what: string): Promise<string> {
  return (await readArgFile(file, MAX_FILE, what)).toString('utf8');
}

export function registerInitData(program: Command): void {
  program
    .command('initdata')
    .description('print the init-data document (CoCo TOML) that binds a confidential VM to a policy workload, its SNP HOST_DATA / TDX MRCONFIGID and the Kata annotation value')
    .option('--policy <org/app>', 'policy the workload belongs to (required unless --from)')
    .option('--workload <name>', 'workload name in the policy (required unless --from)')
    .option('--kbs-url <url>', 'KBS URL recorded in the cocoon.json entry (for the launcher; not needed by the KBS)')
    .option('--algorithm <alg>', 'digest algorithm: sha256 (default; fits SNP HOST_DATA), sha384 (fits TDX MRCONFIGID) or sha512')
    .option('--agent-policy <file>', 'Kata agent policy (Rego) to add as the policy.rego entry')
    .option('--data <key=file>', 'add another [data] entry from a file (repeatable; key "cocoon.json" is reserved)', collect)
    .option('--from <file>', 'describe an existing init-data TOML file instead of writing one (digests and annotation of its exact bytes)')
    .option('-o, --out <file>', 'write the TOML document to this file (exact bytes the digest covers) instead of printing it')
    .option('--json', 'print JSON {toml, algorithm, digest, hostData, mrConfigId, annotation: {name, value}}')
    .addHelpText(
      'after',
      '\nThe digest is the algorithm over the exact TOML bytes; SNP HOST_DATA takes its first 32 bytes, TDX MRCONFIGID\n' +
        'the digest zero-padded (or truncated) to 48 bytes. Kata (kata-qemu-snp / kata-qemu-tdx) sets the register from the\n' +
        'pod annotation io.katacontainers.config.hypervisor.cc_init_data (base64 of the gzipped TOML). A policy accept rule\n' +
        'with `initData: bound` then requires the launcher to send this document (format toml) and the evidence to carry its\n' +
        'digest; the KBS takes policy and workload from its "cocoon.json" entry. See docs/tee-support.md.\n\n' +
        'Examples:\n  cocoon initdata --policy shop/web --workload web --kbs-url https://kbs.example:8443\n  cocoon initdata --policy shop/web --workload web --algorithm sha384 -o initdata.toml\n  cocoon initdata --from initdata.toml --json',
    )
    .action(
      action(async (opts: { policy?: string; workload?: string; kbsUrl?: string; algorithm?: string; agentPolicy?: string; data?: string[]; from?: string; out?: string; json?: boolean }) => {
        const out = createOutput(opts);
        const { describeInitData, renderInitData, isInitDataAlgorithm, INITDATA_ALGORITHMS, KATA_INITDATA_ANNOTATION, COCOON_INITDATA_KEY, cocoonEntryOf, parseInitDataToml } = await import('../kbs/init-data.js');
        let rendered;
        if (opts.from !== undefined) {
          for (const [flag, v] of [['--policy', opts.policy], ['--workload', opts.workload], ['--kbs-url', opts.kbsUrl], ['--algorithm', opts.algorithm], ['--agent-policy', opts.agentPolicy], ['--data', opts.data]] as const) {
            if (v !== undefined) throw new CocoonError('BAD_USAGE', `${flag} cannot be combined with --from`);
          }
          const text = await readSmall(opts.from, 'init-data file');
          rendered = describeInitData(text);
          const { doc } = parseInitDataToml(text);
          if (!(COCOON_INITDATA_KEY in doc.data)) out.warn(`${opts.from} has no "${COCOON_INITDATA_KEY}" entry: a Cocoon KBS cannot select a policy from it`);
          else cocoonEntryOf(doc); // refuses a malformed entry
        } else {
          if (!opts.policy || !opts.workload) throw new CocoonError('BAD_USAGE', '--policy and --workload are required (or --from FILE)');
          if (opts.algorithm !== undefined && !isInitDataAlgorithm(opts.algorithm)) throw new CocoonError('BAD_USAGE', `--algorithm must be one of ${INITDATA_ALGORITHMS.join(', ')}`);
          if (opts.kbsUrl !== undefined && !/^https?:\/\/[^\s'"]+$/.test(opts.kbsUrl)) throw new CocoonError('BAD_USAGE', '--kbs-url must be an http(s) URL');
          const data: Record<string, string> = {};
          if (opts.agentPolicy !== undefined) data['policy.rego'] = await readSmall(opts.agentPolicy, 'agent policy');
          for (const d of opts.data ?? []) {
            const eq = d.indexOf('=');
            if (eq <= 0 || eq === d.length - 1) throw new CocoonError('BAD_USAGE', `--data ${d}: expected KEY=FILE`);
            const key = d.slice(0, eq);
            if (key === COCOON_INITDATA_KEY) throw new CocoonError('BAD_USAGE', `--data: the key ${COCOON_INITDATA_KEY} is written by this command`);
            if (key in data) throw new CocoonError('BAD_USAGE', `--data: key ${key} given twice`);
            data[key] = await readSmall(d.slice(eq + 1), `--data ${key}`);
          }
          rendered = renderInitData({
            policy: opts.policy,
            workload: opts.workload,
            ...(opts.kbsUrl !== undefined ? { kbsUrl: opts.kbsUrl } : {}),
            ...(opts.algorithm !== undefined ? { algorithm: opts.algorithm as 'sha256' } : {}),
            data,
          });
        }
        if (opts.out) await writeFile(opts.out, rendered.toml, { mode: 0o644 });
        const r = rendered;
        out.result(
          () => {
            if (!opts.out) process.stdout.write(`${r.toml}\n`);
            process.stdout.write(
              `# digest       ${r.algorithm}:${r.digest}\n` +
                `# HOST_DATA    ${r.hostData}   (SNP, 32 bytes)\n` +
                `# MRCONFIGID   ${r.mrConfigId}   (TDX, 48 bytes)\n` +
                `# annotation   ${KATA_INITDATA_ANNOTATION}:\n${r.annotation}\n`,
            );
          },
          { toml: r.toml, algorithm: r.algorithm, digest: r.digest, hostData: r.hostData, mrConfigId: r.mrConfigId, annotation: { name: KATA_INITDATA_ANNOTATION, value: r.annotation }, ...(opts.out ? { file: opts.out } : {}) },
        );
      }),
    );
}
