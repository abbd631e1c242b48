/**
 * Generates docs/cli.md (every command's --help) and docs/errors.md (the error-code catalogue)
 * from the code, so they cannot drift: test/docs.test.ts fails when the committed files differ.
 *
 *   npx tsx scripts/gen-docs.ts          write the files
 *   npx tsx scripts/gen-docs.ts --check  exit 1 if they are stale
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ERROR_CODES } from '../src/errors.js';
import { packageRoot } from '../src/util/package-root.js';

const root = packageRoot();
const cli = join(root, 'dist', 'cli.mjs');

function help(args: string[]): string {
  return execFileSync(process.execPath, [cli, ...args, '--help'], { encoding: 'utf8', env: { ...process.env, COLUMNS: '100', NO_COLOR: '1' } });
}

function commandsOf(text: string): string[] {
  const section = text.split(/^Commands:$/m)[1] ?? '';
  return section
    .split('\n')
    .map((l) => l.match(/^ {2}([a-z][a-z0-9-]*)/)?.[1])
    .filter((c): c is string => c !== undefined && c !== 'help');
}

function cliDoc(): string {
  const parts = ['# Command reference', '', 'Generated from `cocoon --help` by `scripts/gen-docs.ts`; do not edit by hand.', ''];
  const visit = (path: string[], depth: number) => {
    const text = help(path);
    parts.push(`${'#'.repeat(Math.min(depth + 2, 4))} \`cocoon${path.length ? ' ' + path.join(' ') : ''}\``, '', '```', text.trimEnd(), '```', '');
    for (const sub of commandsOf(text)) visit([...path, sub], depth + 1);
  };
  visit([], 0);
  return parts.join('\n');
}

function errorsDoc(): string {
  const rows = Object.entries(ERROR_CODES).map(([code, v]) => `| \`${code}\` | ${v.status} | ${v.exit} |`);
  return [
    '# Error codes',
    '',
    'Every error Cocoon reports carries one of these stable codes — in CLI output (`error [CODE]: …`,',
    '`{"error":{"code":…}}` with `--json`), in HTTP problem documents (`code` member) and in tests.',
    'Generated from `src/errors.ts` by `scripts/gen-docs.ts`.',
    '',
    '| code | HTTP status | CLI exit status |',
    '|---|---|---|',
    ...rows,
    '',
  ].join('\n');
}

const files: Array<[string, string]> = [
  [join(root, 'docs', 'cli.md'), cliDoc()],
  [join(root, 'docs', 'errors.md'), errorsDoc()],
];
const check = process.argv.includes('--check');
let stale = false;
for (const [file, content] of files) {
  const current = (() => {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      return '';
    }
  })();
  if (current === content) continue;
  stale = true;
  if (!check) writeFileSync(file, content);
  console.log(`${check ? 'stale' : 'wrote'}: ${file}`);
}
if (check && stale) process.exit(1);
