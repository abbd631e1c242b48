#!/usr/bin/env node
// Builds dist/: the CLI bundle and the launcher root (what `cocoon wrap` puts in layer 0).
// The launcher root holds the Node binary this machine runs, the shared libraries it needs
// (resolved with ldd) and the dynamic loader, so wrapped images need nothing from their base.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, rmSync, writeFileSync, readFileSync, existsSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildWeb } from './build-web.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const launcherRoot = join(dist, 'launcher-rootfs', 'cocoon');
const requireBanner = "import { createRequire as __cocoonCreateRequire } from 'node:module'; const require = __cocoonCreateRequire(import.meta.url);";

rmSync(join(dist, 'launcher-rootfs'), { recursive: true, force: true });
mkdirSync(join(launcherRoot, 'bin'), { recursive: true });
mkdirSync(join(launcherRoot, 'lib'), { recursive: true });

await build({
  entryPoints: [join(root, 'src/cli/main.ts')],
  outfile: join(dist, 'cli.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  sourcemap: 'linked',
  logLevel: 'warning',
});

// The dashboard served at /ui/ (preact + htm; pre-compressed .br/.gz next to each file).
await buildWeb(join(root, 'src/web'), join(dist, 'web'));

// The launcher is self-contained: every dependency bundled, no node_modules in the image.
await build({
  entryPoints: [join(root, 'src/launcher/main.ts')],
  outfile: join(launcherRoot, 'launcher.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  banner: { js: requireBanner },
  legalComments: 'none',
  logLevel: 'warning',
});

execFileSync('cc', ['-static', '-Os', '-Wall', '-Wextra', '-Werror', '-o', join(launcherRoot, 'bin', 'cocoon-exec'), join(root, 'src/launcher/native/cocoon-exec.c')], { stdio: 'inherit' });

const nodeBinary = process.execPath;
copyFileSync(nodeBinary, join(launcherRoot, 'bin', 'node'));
const lddOutput = execFileSync('ldd', [nodeBinary], { encoding: 'utf8' });
for (const line of lddOutput.split('\n')) {
  const arrow = line.match(/=>\s+(\/\S+)/);
  const loader = line.match(/^\s*(\/\S+ld-linux\S*)\s/);
  const path = arrow?.[1] ?? loader?.[1];
  if (path) copyFileSync(path, join(launcherRoot, 'lib', basename(path)));
}
if (!existsSync(join(launcherRoot, 'lib', 'ld-linux-x86-64.so.2'))) throw new Error('build: dynamic loader not found by ldd');
for (const dir of ['bin', 'lib']) {
  for (const name of execFileSync('ls', [join(launcherRoot, dir)], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
    chmodSync(join(launcherRoot, dir, name), 0o755);
  }
}
chmodSync(join(launcherRoot, 'launcher.mjs'), 0o644);

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
writeFileSync(join(dist, 'build.json'), JSON.stringify({ version: pkg.version, node: process.version, launcherBytes: statSync(join(launcherRoot, 'launcher.mjs')).size }, null, 2) + '\n');
console.log(`built dist/cli.mjs, dist/web and dist/launcher-rootfs (node ${process.version})`);
