import { homedir } from 'node:os';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { CocoonError } from '../errors.js';

/** The user's Cocoon directory: owner key, sim platform, defaults. */
export function configDir(explicit?: string): string {
  return explicit ?? process.env.COCOON_CONFIG_DIR ?? join(homedir(), '.config', 'cocoon');
}

export const configPaths = (dir: string) => ({
  ownerKey: join(dir, 'owner.key.json'),
  ownerPublicKey: join(dir, 'owner.pub.json'),
  simDir: join(dir, 'sim'),
  simRoot: join(dir, 'sim', 'root.pem'),
  simPlatform: join(dir, 'sim', 'platform'),
  settings: join(dir, 'config.json'),
});

export interface Settings {
  kbsUrl?: string;
}

export async function readSettings(dir: string): Promise<Settings> {
  try {
    return JSON.parse(await readFile(configPaths(dir).settings, 'utf8')) as Settings;
  } catch {
    return {};
  }
}

/** --kbs flag, else COCOON_KBS_URL, else the config file, else a clear error. */
export async function resolveKbsUrl(flag: string | undefined, dir: string): Promise<string> {
  const url = flag || process.env.COCOON_KBS_URL || (await readSettings(dir)).kbsUrl;
  if (!url) throw new CocoonError('BAD_USAGE', 'no KBS URL: pass --kbs URL, set COCOON_KBS_URL, or run `cocoon init --kbs URL`');
  try {
    return new URL(url).href.replace(/\/$/, '');
  } catch {
    throw new CocoonError('BAD_USAGE', `invalid KBS URL "${url}"`);
  }
}
