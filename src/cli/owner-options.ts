import type { Command } from 'commander';
import { configDir, configPaths, resolveKbsUrl } from './config.js';
import type { OwnerClient } from '../kbs/client/owner.js';

/** Flags shared by every command that talks to the owner API. */
export interface OwnerOptions {
  kbs?: string;
  ownerKey?: string;
  configDir?: string;
  json?: boolean;
}

export function withOwnerOptions(cmd: Command): Command {
  return cmd
    .option('--kbs <url>', 'Key Broker Service URL (default: $COCOON_KBS_URL or the config file)')
    .option('--owner-key <file>', 'owner private key (default: <config-dir>/owner.key.json)')
    .option('--config-dir <dir>', 'config directory')
    .option('--json', 'print JSON');
}

export async function ownerClient(opts: OwnerOptions): Promise<OwnerClient> {
  const dir = configDir(opts.configDir);
  const { OwnerClient } = await import('../kbs/client/owner.js');
  const kbsUrl = await resolveKbsUrl(opts.kbs, dir);
  const { pinnedFetchFor } = await import('./kbs-pin.js'); // HTTPS to a KBS pinned by `cocoon attest` must present the pinned TLS key
  return OwnerClient.create({ kbsUrl, ownerKeyFile: opts.ownerKey ?? configPaths(dir).ownerKey, ...(await pinnedFetchFor(kbsUrl, dir)) });
}
