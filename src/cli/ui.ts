import type { Command } from 'commander';
import { action, createOutput } from './output.js';
import { withOwnerOptions } from './owner-options.js';
import { configDir, configPaths, resolveKbsUrl } from './config.js';
import { CocoonError } from '../errors.js';

interface LoginOptions {
  kbs?: string;
  ownerKey?: string;
  configDir?: string;
  role: string;
  ttl: string;
  open?: boolean;
  json?: boolean;
}

/** `cocoon ui …`: the web dashboard served by `cocoon serve` at /ui/. */
export function registerUi(program: Command): void {
  const ui = program.command('ui').description('web dashboard (served by `cocoon serve` at /ui/)');
  withOwnerOptions(ui.command('login').description('mint a single-use dashboard login link, signed with your owner key'))
    .option('--role <role>', 'owner (may approve updates) or auditor (read-only)', 'owner')
    .option('--ttl <seconds>', 'lifetime of the login link, 10-300 s', '120')
    .option('--open', 'open the link in the default browser (xdg-open / open)')
    .addHelpText('after', '\nThe token travels in the URL fragment (#login=…), which browsers never send to a server or put in logs;\nthe dashboard posts it once to /ui/api/session and gets an HttpOnly session cookie. See docs/dashboard.md.')
    .action(
      action(async (opts: LoginOptions) => {
        if (opts.role !== 'owner' && opts.role !== 'auditor') throw new CocoonError('BAD_USAGE', `--role must be owner or auditor, got "${opts.role}"`);
        if (!/^[0-9]{1,3}$/.test(opts.ttl)) throw new CocoonError('BAD_USAGE', '--ttl must be a number of seconds (10-300)');
        const dir = configDir(opts.configDir);
        const kbsUrl = await resolveKbsUrl(opts.kbs, dir);
        const { OwnerClient } = await import('../kbs/client/owner.js');
        const { loadOwnerPrivateKey } = await import('../kbs/owner-key.js');
        const { mintUiLoginToken } = await import('../kbs/ui/login-token.js');
        const key = await loadOwnerPrivateKey(opts.ownerKey ?? configPaths(dir).ownerKey);
        const client = await OwnerClient.create({ kbsUrl, ownerKey: key });
        const { id } = await client.identity();
        const ttlS = Number(opts.ttl);
        const token = await mintUiLoginToken(key, id, { role: opts.role, ttlS });
        const url = `${kbsUrl}/ui/#login=${token}`;
        const out = createOutput(opts);
        if (opts.open) {
          const { spawn } = await import('node:child_process');
          const opener = process.platform === 'darwin' ? 'open' : 'xdg-open';
          try {
            const child = spawn(opener, [url], { stdio: 'ignore', detached: true });
            child.on('error', () => out.warn(`could not start ${opener}; open the link yourself`));
            child.unref();
          } catch {
            out.warn(`could not start ${opener}; open the link yourself`);
          }
        }
        out.result(`${url}\n  single use, valid ${ttlS} s, role ${opts.role}, owner ${key.kid}`, { url, role: opts.role, kid: key.kid, expiresInS: ttlS });
      }),
    );
}
