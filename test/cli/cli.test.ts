import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { distCli, repoRoot } from '../helpers/env.js';

const execFileAsync = promisify(execFile);
const skip = existsSync(distCli) ? false : 'dist/ not built (npm run build)';

async function cocoon(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [distCli, ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

test('help, version and usage errors have the documented exit codes', { skip }, async () => {
  const help = await cocoon(['--help']);
  assert.equal(help.code, 0);
  for (const command of ['demo', 'init', 'serve', 'wrap', 'policy', 'secret', 'run', 'ps', 'stop', 'logs', 'verify', 'launch']) {
    assert.match(help.stdout, new RegExp(`^  ${command}\\b`, 'm'), `${command} listed in --help`);
  }
  assert.equal((await cocoon(['--version'])).code, 0);
  assert.equal((await cocoon(['no-such-command'])).code, 2);
  assert.equal((await cocoon(['wrap', 'only-one-arg'])).code, 2);
  assert.equal((await cocoon(['run', 'x', '--tee', 'bogus', '--kbs', 'http://127.0.0.1:1'])).code, 2);
});

test('docs/cli.md and docs/errors.md match the code (npx tsx scripts/gen-docs.ts to refresh)', { skip }, async () => {
  const { code, stdout } = await execFileAsync(process.execPath, ['--import', 'tsx', join(repoRoot, 'scripts', 'gen-docs.ts'), '--check']).then(
    (r) => ({ code: 0, stdout: r.stdout }),
    (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout }),
  );
  assert.equal(code, 0, stdout);
});

test('every option in the command reference has a description', { skip }, async () => {
  const doc = await readFile(join(repoRoot, 'docs', 'cli.md'), 'utf8');
  const bare = doc.split('\n').filter((l) => /^ {2}(-\w, )?--[\w-]+( <[^>]+>| \[[^\]]+\])?\s*$/.test(l));
  assert.deepEqual(bare, []);
});

test('policy check reports file:line:column for an unknown secret reference; policy apply without a KBS is a usage error', { skip }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'bad.yaml');
  await writeFile(file, `name: shop/app\nsecrets:\n  pw: { kind: random, size: 16 }\nworkloads:\n  app:\n    accept: [{ tee: [sim], measurement: "${'a'.repeat(96)}" }]\n    secrets: [pw]\n    env: { X: "{{ secret.nope }}" }\n`);
  const check = await cocoon(['policy', 'check', file]);
  assert.equal(check.code, 1);
  assert.match(check.stderr, /POLICY_INVALID/);
  assert.match(check.stderr, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:8:\\d+`));
  const apply = await cocoon(['policy', 'apply', file, '--config-dir', dir], { COCOON_KBS_URL: '' });
  assert.equal(apply.code, 1, 'the policy is checked before the KBS is needed');
  assert.match(apply.stderr, /POLICY_INVALID/);
});

test('init writes an owner key (0600) and a sim platform; a second init needs --force', { skip }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const first = await cocoon(['init', '--config-dir', join(dir, 'cfg'), '--json']);
  assert.equal(first.code, 0, first.stderr);
  const result = JSON.parse(first.stdout);
  const { statSync } = await import('node:fs');
  assert.equal(statSync(result.ownerKey).mode & 0o777, 0o600);
  assert.ok(existsSync(result.simRoot));
  const second = await cocoon(['init', '--config-dir', join(dir, 'cfg')]);
  assert.equal(second.code, 1);
  assert.match(second.stderr, /CONFLICT/);
  const forced = await cocoon(['init', '--config-dir', join(dir, 'cfg'), '--force', '--json']);
  assert.equal(forced.code, 0, forced.stderr);
  assert.notEqual(JSON.parse(forced.stdout).ownerKeyId, result.ownerKeyId);
});
