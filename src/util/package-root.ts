import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The installed cocoon package's root directory (works from src/ under tsx and from dist/). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'cocoon') return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot locate the cocoon package root');
}

/** The launcher files built by `npm run build` (become /cocoon/ in wrapped images). */
export const defaultLauncherDir = () => join(packageRoot(), 'dist', 'launcher-rootfs', 'cocoon');
