import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const repoRoot = join(import.meta.dirname, '..', '..');
export const distCli = join(repoRoot, 'dist', 'cli.mjs');
export const launcherDir = join(repoRoot, 'dist', 'launcher-rootfs', 'cocoon');

export const isRoot = process.getuid?.() === 0;

export function hasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export const cacheDir = process.env.COCOON_CACHE ?? '/var/cache/cocoon';

/** The images scripts/build-test-image.sh builds, with the reference each layout holds. */
export const TEST_IMAGE_REFS = { redis: 'redis:7', 'python-web': 'python-web:1' } as const;
export type TestImage = keyof typeof TEST_IMAGE_REFS;

/** Builds (or reuses from the cache) a test image; returns its layout dir, or a reason to skip. */
export function testImage(name: TestImage): { layout: string } | { skip: string } {
  if (!isRoot) return { skip: 'needs root' };
  if (!existsSync(distCli)) return { skip: 'dist/ not built (npm run build)' };
  try {
    const out = execFileSync('bash', [join(repoRoot, 'scripts', 'build-test-image.sh'), name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 });
    const lines = out.trim().split('\n');
    return { layout: lines[lines.length - 1] as string };
  } catch (err) {
    return { skip: `cannot build the ${name} test image: ${(err as Error).message.split('\n')[0]}` };
  }
}
