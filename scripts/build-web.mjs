#!/usr/bin/env node
// Builds the dashboard (src/web) into a directory served by `cocoon serve` at /ui/:
// app.js (preact + htm, bundled and minified), styles.css, index.html, icon.svg, and a
// Brotli (.br) and gzip (.gz) copy of each, so the KBS serves them compressed without work.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants as zc, gzipSync } from 'node:zlib';

export async function buildWeb(srcDir, outDir) {
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  await build({
    entryPoints: [join(srcDir, 'app.ts')],
    outfile: join(outDir, 'app.js'),
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    minify: true,
    legalComments: 'none',
    logLevel: 'warning',
  });
  await build({ entryPoints: [join(srcDir, 'styles.css')], outfile: join(outDir, 'styles.css'), bundle: false, minify: true, logLevel: 'warning' });
  for (const f of ['index.html', 'icon.svg']) copyFileSync(join(srcDir, f), join(outDir, f));
  let total = 0;
  for (const name of readdirSync(outDir)) {
    const data = readFileSync(join(outDir, name));
    const br = brotliCompressSync(data, { params: { [zc.BROTLI_PARAM_QUALITY]: 11, [zc.BROTLI_PARAM_SIZE_HINT]: data.length } });
    writeFileSync(join(outDir, `${name}.br`), br);
    writeFileSync(join(outDir, `${name}.gz`), gzipSync(data, { level: 9 }));
    total += br.length;
  }
  return { bytesBrotli: total };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const { bytesBrotli } = await buildWeb(join(root, 'src', 'web'), join(root, 'dist', 'web'));
  console.log(`built dist/web (${bytesBrotli} bytes brotli)`);
}
