import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { action, createOutput } from './output.js';
import { configDir, configPaths } from './config.js';
import { CocoonError } from '../errors.js';

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = listen.match(/^(?:\[([0-9a-fA-F:]+)\]|([^:[\]]+)):(\d{1,5})$/) ?? listen.match(/^()()(\d{1,5})$/);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new CocoonError('BAD_USAGE', `--listen must be HOST:PORT or PORT, got "${listen}"`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the Key Broker Service (RCAR attestation, policies, secrets, owner API)')
    .option('--data-dir <dir>', 'state directory: identity key, sealed data key, SQLite store', join(homedir(), '.local', 'share', 'cocoon', 'kbs'))
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:8080')
    .option('--owner <file>', 'owner public key (JWK, from `cocoon init`) allowed to use the owner API; repeatable', collect, [])
    .option('--allow-sim', 'accept INSECURE simulated-TEE evidence where a policy rule names `sim` (development only)')
    .option('--sim-root <file>', 'PEM root of the simulated TEE to trust with --allow-sim (default: <config-dir>/sim/root.pem)')
    .option('--config-dir <dir>', 'config directory (default owner key and sim root)')
    .option('--log-level <level>', 'fatal|error|warn|info|debug', 'info')
    .addHelpText('after', '\nWithout --owner, the owner public key of the config directory is registered if it exists.\nEndpoints: /kbs/v0/* (CoCo KBS protocol 0.4.0), /cocoon/v1/* (owner API, OpenAPI at /cocoon/v1/openapi.json), /healthz, /readyz.\nSee docs/kbs.md.')
    .action(
      action(async (opts: { dataDir: string; listen: string; owner: string[]; allowSim?: boolean; simRoot?: string; configDir?: string; logLevel: string }) => {
        const out = createOutput();
        const { host, port } = parseListen(opts.listen);
        if (!['fatal', 'error', 'warn', 'info', 'debug'].includes(opts.logLevel)) throw new CocoonError('BAD_USAGE', '--log-level must be fatal|error|warn|info|debug');
        const dir = configDir(opts.configDir);
        const { loadOwnerPublicJwk } = await import('../kbs/owner-key.js');
        const ownerFiles = opts.owner.length > 0 ? opts.owner : [configPaths(dir).ownerPublicKey];
        const owners = [];
        for (const file of ownerFiles) {
          try {
            owners.push(await loadOwnerPublicJwk(file));
          } catch (err) {
            if (opts.owner.length > 0) throw err;
          }
        }
        const simRoots: string[] = [];
        if (opts.allowSim) {
          const file = opts.simRoot ?? configPaths(dir).simRoot;
          simRoots.push(await readFile(file, 'utf8').catch((err) => {
            throw new CocoonError('BAD_USAGE', `--allow-sim needs the sim root: cannot read ${file} (run \`cocoon init\` or pass --sim-root)`, { cause: err });
          }));
          out.warn('INSECURE: --allow-sim: simulated-TEE evidence is accepted where a policy names `sim`');
        }
        const { startKbs } = await import('../kbs/app.js');
        const { createBrokerVerifier } = await import('../kbs/verifier.js');
        const kbs = await startKbs({
          dataDir: opts.dataDir,
          host,
          port,
          allowSim: Boolean(opts.allowSim),
          owners,
          verifier: createBrokerVerifier({ simRoots }),
          logger: { level: opts.logLevel },
        });
        process.stderr.write(`cocoon KBS listening on ${kbs.url} (data ${opts.dataDir}, ${owners.length} owner key(s)${opts.allowSim ? ', sim allowed' : ''})\n`);
        await new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
        });
        await kbs.close();
      }),
    );
}
