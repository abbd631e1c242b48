#!/usr/bin/env node
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = new URL('../dist/cli.mjs', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  console.error('cocoon: not built yet — run `npm run build` (or scripts/setup.sh) first');
  process.exit(2);
}
await import(cli.href);
